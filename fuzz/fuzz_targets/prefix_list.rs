//! A downloaded prefix list (FireHOL netset, Spamhaus DROP), hostile:
//! `edgeblock::policy::parse_prefix_list` must accept exactly the lines that hold a prefix,
//! keep them in order with their line numbers, and report bad lines briefly and escaped.
//!
//! Input: the list text (invalid UTF-8 replaced).
#![no_main]

use std::path::Path;

use edgeblock::policy::{MAX_LIST_ERRORS, PolicyError, parse_prefix_list};
use edgeblock_fuzz::{LIST_PATH, assert_canonical, check_list_line_quoted};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(LIST_PATH);
    // The lines that hold an entry, by the documented rules: a leading byte-order mark is not
    // content, `#` and `;` start a comment, whitespace around an entry is trimmed.
    let body = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let entry_lines: Vec<usize> = body
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            !line
                .split(['#', ';'])
                .next()
                .unwrap_or("")
                .trim()
                .is_empty()
        })
        .map(|(index, _)| index + 1)
        .collect();
    match parse_prefix_list(&text, path) {
        Ok(entries) => {
            let lines: Vec<usize> = entries.iter().map(|e| e.location.line).collect();
            assert_eq!(
                lines, entry_lines,
                "one entry per line that holds one, in order"
            );
            for entry in &entries {
                assert_canonical(entry.net);
                assert_eq!(&*entry.location.file, path);
            }
            // What was read is a list again, and reads back the same.
            let written: String = entries.iter().map(|e| format!("{}\n", e.net)).collect();
            let again = parse_prefix_list(&written, path)
                .unwrap_or_else(|e| panic!("{written:?} no longer parses: {e:?}"));
            let nets =
                |v: &[edgeblock::policy::PrefixEntry]| v.iter().map(|e| e.net).collect::<Vec<_>>();
            assert_eq!(nets(&again), nets(&entries));
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused with no error");
            assert!(
                errors.len() <= MAX_LIST_ERRORS + 1,
                "{} errors: at most {MAX_LIST_ERRORS} and a summary",
                errors.len()
            );
            for (i, error) in errors.iter().enumerate() {
                let message = error.to_string();
                assert!(
                    message.starts_with(&format!("{LIST_PATH}:")),
                    "{message:?} does not name the list"
                );
                assert!(
                    !message.chars().any(char::is_control),
                    "a control character in {message:?}"
                );
                check_list_line_quoted(error);
                match error {
                    PolicyError::BadPrefix { location, .. } => assert!(
                        entry_lines.contains(&location.line),
                        "an error on line {}, which holds no entry",
                        location.line
                    ),
                    PolicyError::MoreBadLines { .. } => {
                        assert_eq!(
                            i, MAX_LIST_ERRORS,
                            "the summary comes last, after the limit"
                        )
                    }
                    other => panic!("a list cannot cause {other:?}"),
                }
            }
        }
    }
});
