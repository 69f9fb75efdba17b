//! The last applied policy, kept self-contained in the data directory.
//!
//! Whoever applies a policy (`edgeblock apply`, the daemon) writes it here as one TOML policy
//! file with every include inlined, so that `edgeblock block` and `unblock` can recompute
//! "policy + runtime layer" later without the daemon and without the operator's file, which
//! may have been edited into an invalid state since. It is an ordinary policy: `edgeblock
//! check` reads it, and [`load`] validates it again like any other.

use std::{collections::BTreeMap, path::Path};

use serde::Serialize;

use crate::{
    policy::{self, Policy, PolicyErrors},
    runtime::{RuntimeError, write_atomic},
};

/// The file under the data directory.
pub const SNAPSHOT_FILE: &str = "applied-policy.toml";

#[derive(Serialize)]
struct File<'a> {
    malformed: &'static str,
    reject_rate: u32,
    reject_burst: u32,
    protect: Vec<String>,
    notice: BTreeMap<&'a str, Notice<'a>>,
    rule: Vec<RuleOut<'a>>,
}

#[derive(Serialize)]
struct Notice<'a> {
    interface: &'a str,
    next_hop: String,
}

#[derive(Serialize)]
struct RuleOut<'a> {
    name: &'a str,
    direction: &'static str,
    action: &'static str,
    prefixes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    allow_local: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    https: Option<&'static str>,
}

/// `policy` as the text of a policy file that loads back to the same rules.
pub fn to_toml(policy: &Policy) -> Result<String, toml::ser::Error> {
    let file = File {
        malformed: policy.malformed.as_str(),
        reject_rate: policy.reject_rate,
        reject_burst: policy.reject_burst,
        protect: policy.protect.iter().map(|p| p.net.to_string()).collect(),
        notice: policy
            .notices
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    Notice {
                        interface: &n.interface,
                        next_hop: n.next_hop.to_string(),
                    },
                )
            })
            .collect(),
        rule: policy
            .rules
            .iter()
            .map(|r| RuleOut {
                name: &r.name,
                direction: r.direction.as_str(),
                action: r.action.as_str(),
                prefixes: r.prefixes.iter().map(|p| p.net.to_string()).collect(),
                comment: r.comment.as_deref(),
                expires: r.expires.map(|e| e.to_string()),
                allow_local: r.allow_local,
                notice: r.notice.as_ref().map(|n| n.target.as_str()),
                notice_text: r.notice.as_ref().and_then(|n| n.text.as_deref()),
                notice_url: r.notice.as_ref().and_then(|n| n.url.as_deref()),
                notice_status: r.notice.as_ref().map(|n| n.status),
                https: r.notice.as_ref().map(|n| n.https.as_str()),
            })
            .collect(),
    };
    let header = format!(
        "# The policy edgeblock last applied, from {}, with its includes inlined.\n\
         # Written by edgeblock; `edgeblock block` and `unblock` build on it.\n\n",
        policy.path.display()
    );
    Ok(header + &toml::to_string(&file)?)
}

/// Record `policy` as the last applied one under `data_dir`.
pub fn save(data_dir: &Path, policy: &Policy) -> Result<(), RuntimeError> {
    let path = data_dir.join(SNAPSHOT_FILE);
    let text = to_toml(policy).map_err(|e| RuntimeError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, text.as_bytes())
}

/// The last applied policy, if one was recorded. Rules that have expired since are left out,
/// as for any policy file.
pub fn load(data_dir: &Path, now: jiff::Timestamp) -> Option<Result<Policy, PolicyErrors>> {
    let path = data_dir.join(SNAPSHOT_FILE);
    path.exists().then(|| policy::load(&path, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_loads_back_to_the_same_rules() {
        let text = r#"
malformed = "pass"
protect = ["192.0.2.0/24"]
reject_rate = 7

[notice.main]
interface = "lo"
next_hop = "192.0.2.1"

[[rule]]
name = "court-order"
action = "redirect"
notice = "main"
notice_text = "Blocked \"by order\""
notice_status = 403
https = "notice"
prefixes = ["203.0.113.0/24", "2001:db8::1"]

[[rule]]
name = "src"
direction = "src"
action = "reject"
comment = "abuse"
expires = "2099-01-01T00:00:00Z"
prefixes = ["198.51.100.7"]
"#;
        let now = jiff::Timestamp::UNIX_EPOCH;
        let no_includes = |p: &Path| {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                p.display().to_string(),
            ))
        };
        let original = policy::parse(text, Path::new("a.toml"), now, no_includes)
            .unwrap_or_else(|e| panic!("{e}"));
        let written = to_toml(&original).expect("serialise");
        let again = policy::parse(&written, Path::new("a.toml"), now, no_includes)
            .unwrap_or_else(|e| panic!("{e}\n{written}"));
        let strip = |p: &Policy| {
            let mut p = p.clone();
            for r in &mut p.rules {
                r.location.line = 0;
                for e in &mut r.prefixes {
                    e.location.line = 0;
                }
            }
            for e in &mut p.protect {
                e.location.line = 0;
            }
            for n in &mut p.notices {
                n.location.line = 0;
            }
            p.notes.clear();
            p
        };
        assert_eq!(strip(&original), strip(&again), "{written}");
        assert_eq!(
            crate::compile::compile(&original).hash,
            crate::compile::compile(&again).hash
        );
    }
}
