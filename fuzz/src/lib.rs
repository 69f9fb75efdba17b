//! What the fuzz targets in `fuzz_targets/` share: how one libFuzzer input is cut into the
//! texts a target needs, the fixed clock policies are parsed at, and the checks that hold for
//! every policy `edgeblock::policy::parse` accepts (docs/policy.md, "Validation").
//!
//! An input is one or more parts separated by NUL bytes: the policy text, then the text every
//! include reads, then (for `compile`) bytes that name addresses to look up. TOML forbids NUL
//! in a document, so the separator takes nothing away from the policy's grammar; the last part
//! keeps any further NULs. Each part is read as UTF-8 with invalid sequences replaced, so that
//! inputs the mutator breaks still reach the parser instead of being thrown away.

use std::collections::BTreeSet;

use edgeblock::policy::{
    Action, BadValue, Direction, MAX_QUOTED, Policy, PolicyError, PolicyErrors, PrefixOwner,
};
use ipnet::IpNet;

/// Where the fuzzed policy claims to live; includes resolve relative to its directory.
pub const POLICY_PATH: &str = "fuzz/policy.toml";
/// The name the fuzzed prefix list is reported under.
pub const LIST_PATH: &str = "fuzz/list.netset";

/// The first `N - 1` NUL-separated parts of `data`, and the rest as the last one. Missing
/// parts are empty.
pub fn split<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut parts = [&data[data.len()..]; N];
    let mut rest = data;
    for part in parts.iter_mut().take(N - 1) {
        match rest.iter().position(|&b| b == 0) {
            Some(at) => {
                *part = &rest[..at];
                rest = &rest[at + 1..];
            }
            None => {
                *part = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    parts[N - 1] = rest;
    parts
}

/// 2026-06-01T00:00:00Z: rules that expire before it are dropped, later ones kept.
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_780_272_000).expect("a valid timestamp")
}

/// Every promise `parse` makes about a policy it accepts.
pub fn check_policy(policy: &Policy) {
    assert!(
        policy.rules.len() <= filter_common::MAX_RULES as usize,
        "{} rules loaded; at most {} may be",
        policy.rules.len(),
        filter_common::MAX_RULES
    );
    assert!(
        (1..=1_000_000).contains(&policy.reject_rate),
        "reject_rate {}",
        policy.reject_rate
    );
    assert!(
        (1..=100_000).contains(&policy.reject_burst),
        "reject_burst {}",
        policy.reject_burst
    );
    for entry in &policy.protect {
        assert_canonical(entry.net);
    }
    let mut names = BTreeSet::new();
    let mut seen: [BTreeSet<IpNet>; 2] = [BTreeSet::new(), BTreeSet::new()];
    for rule in &policy.rules {
        assert!(
            !rule.name.is_empty()
                && rule.name.len() <= filter_common::RULE_NAME_LEN
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "rule name {:?} is not a valid name",
            rule.name
        );
        assert!(
            names.insert(rule.name.as_str()),
            "rule name {:?} loaded twice",
            rule.name
        );
        assert!(
            !rule.prefixes.is_empty(),
            "rule {:?} was accepted with no prefixes",
            rule.name
        );
        assert!(
            rule.expires.is_none_or(|t| t > now()),
            "rule {:?} expired at {:?} but was loaded",
            rule.name,
            rule.expires
        );
        let is_redirect = rule.action == Action::Redirect;
        assert_eq!(
            rule.notice.is_some(),
            is_redirect,
            "rule {:?}: a notice exactly for redirect rules",
            rule.name
        );
        if is_redirect {
            assert_eq!(
                rule.direction,
                Direction::Dst,
                "redirect rule {:?} matches sources",
                rule.name
            );
        }
        let table = &mut seen[usize::from(rule.direction == Direction::Src)];
        let mut own = BTreeSet::new();
        for entry in &rule.prefixes {
            assert_canonical(entry.net);
            assert!(
                own.insert(entry.net),
                "rule {:?} holds {} twice; duplicates within a rule are loaded once",
                rule.name,
                entry.net
            );
            assert!(
                table.insert(entry.net),
                "{} is in two {} rules; validation must refuse that",
                entry.net,
                rule.direction
            );
        }
    }
}

/// What every refusal must look like: at least one error, each with a message.
pub fn check_errors(errors: &PolicyErrors) {
    assert!(!errors.0.is_empty(), "refused with no error");
    for error in &errors.0 {
        assert!(
            !error.to_string().trim().is_empty(),
            "empty message: {error:?}"
        );
        check_list_line_quoted(error);
    }
}

/// A bad line of a prefix list is shown escaped, and only when it looks like an address
/// (`policy::BadValue`): a downloaded list is not trusted, and an include may name any file.
/// No message, whatever it is about, may carry a control character: rule names, paths and
/// lines are escaped (`edgeblock::escape`), so nothing can put line breaks or terminal escapes
/// into edgeblock's output.
pub fn check_list_line_quoted(error: &PolicyError) {
    let message = error.to_string();
    assert!(
        !message.chars().any(char::is_control),
        "a control character in {message:?}"
    );
    if let PolicyError::BadPrefix {
        owner: PrefixOwner::List | PrefixOwner::Include { .. },
        value,
        problem,
        ..
    } = error
    {
        let shown = format!("{value} {problem}");
        assert!(
            message.ends_with(&shown),
            "{message:?} does not end with the shown line"
        );
        if let BadValue::Quoted(line) = value {
            assert!(
                line.chars().count() <= MAX_QUOTED + 3,
                "{line:?} is longer than a prefix can be"
            );
        }
    }
}

/// A prefix as validation promises it: its network address, no host bits.
pub fn assert_canonical(net: IpNet) {
    assert_eq!(net, net.trunc(), "{net} has host bits set");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_at_nul_and_keeps_the_rest_whole() {
        assert_eq!(split::<2>(b"a\0b\0c"), [&b"a"[..], b"b\0c"]);
        assert_eq!(split::<3>(b"a\0b"), [&b"a"[..], b"b", b""]);
        assert_eq!(split::<3>(b""), [&b""[..], b"", b""]);
        assert_eq!(split::<1>(b"a\0b"), [&b"a\0b"[..]]);
    }
}
