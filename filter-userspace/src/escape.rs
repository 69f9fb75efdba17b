//! Showing strings from files and the command line in messages without letting them write to
//! the terminal: control and other non-printable characters are escaped the way `{:?}` escapes
//! them (`\n`, `\u{1b}`, `\u{202e}`), so a rule name, a path or a list line cannot move the
//! cursor, change colours, set the window title or reorder the text around it.
//!
//! Quoted values in messages use `{:?}` on the `String` (the same escaping, plus quotes);
//! [`Escaped`] is for what is shown without quotes, such as paths.

use std::fmt;
use std::path::Path;

/// Displays its text with non-printable characters escaped and no quotes around it.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for c in self.0.chars() {
            // `escape_debug` also escapes quotes and backslashes; quotes need no escaping
            // outside quotes, backslashes keep the output unambiguous.
            if matches!(c, '"' | '\'') {
                f.write_char(c)?;
            } else {
                write!(f, "{}", c.escape_debug())?;
            }
        }
        Ok(())
    }
}

/// A path, escaped like [`Escaped`] (invalid UTF-8 shown as U+FFFD).
pub fn path(p: &Path) -> impl fmt::Display + '_ {
    PathShown(p)
}

struct PathShown<'a>(&'a Path);

impl fmt::Display for PathShown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaped(&self.0.to_string_lossy()).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped() {
        let hostile = "a\u{1b}]0;title\u{7}b\nc\rd\u{202e}e\u{0}f\u{9b}g";
        let shown = Escaped(hostile).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "bidi override kept: {shown:?}");
        assert_eq!(
            shown,
            "a\\u{1b}]0;title\\u{7}b\\nc\\rd\\u{202e}e\\0f\\u{9b}g"
        );
        assert_eq!(
            Escaped("lists/drop \"v4\".txt").to_string(),
            "lists/drop \"v4\".txt"
        );
        assert_eq!(path(Path::new("a\nb")).to_string(), "a\\nb");
    }
}
