//! The last applied policy, kept self-contained in the data directory.
//!
//! Whoever applies a policy (`edgeblock apply`, the daemon) writes it here as one TOML policy
//! file with every include inlined, so that `edgeblock block` and `unblock` can recompute
//! "policy + runtime layer" later without the daemon and without the operator's file, which
//! may have been edited into an invalid state since. It is an ordinary policy: `edgeblock
//! check` reads it, and [`load`] validates it again like any other.

use std::{collections::BTreeMap, path::Path};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    policy::{self, Policy, PolicyErrors},
    runtime::{RuntimeError, Staged, stage, write_atomic},
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
}

/// One `[[rule]]` table, serialised on its own so that its prefixes can follow it.
#[derive(Serialize)]
struct OneRule<'a> {
    rule: [RuleOut<'a>; 1],
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
///
/// The scalar keys go through `toml`; each rule's prefixes, which are most of the file (a
/// million at the edge), are written straight after its table as a `prefixes` array: prefix
/// literals need no quoting, and serialising them one by one took longer than applying them.
pub fn to_toml(policy: &Policy) -> Result<String, toml::ser::Error> {
    let head = File {
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
    };
    let prefixes: usize = policy.rules.iter().map(|r| r.prefixes.len()).sum();
    let mut out = String::with_capacity(4096 + prefixes * 24);
    out.push_str(&format!(
        "# The policy edgeblock last applied, from {}, with its includes inlined.\n\
         # Written by edgeblock; `edgeblock block` and `unblock` build on it.\n\n",
        policy.path.display()
    ));
    out.push_str(&toml::to_string(&head)?);
    for r in &policy.rules {
        let table = OneRule {
            rule: [RuleOut {
                name: &r.name,
                direction: r.direction.as_str(),
                action: r.action.as_str(),
                comment: r.comment.as_deref(),
                expires: r.expires.map(|e| e.to_string()),
                allow_local: r.allow_local,
                notice: r.notice.as_ref().map(|n| n.target.as_str()),
                notice_text: r.notice.as_ref().and_then(|n| n.text.as_deref()),
                notice_url: r.notice.as_ref().and_then(|n| n.url.as_deref()),
                notice_status: r.notice.as_ref().map(|n| n.status),
                https: r.notice.as_ref().map(|n| n.https.as_str()),
            }],
        };
        out.push('\n');
        out.push_str(&toml::to_string(&table)?);
        out.push_str("prefixes = [\n");
        for p in &r.prefixes {
            out.push_str("  \"");
            push_net(&mut out, &p.net);
            out.push_str("\",\n");
        }
        out.push_str("]\n");
    }
    Ok(out)
}

/// `net` as `Display` writes it; IPv4 by hand, as formatting a million of them is most of the
/// snapshot's time.
fn push_net(out: &mut String, net: &IpNet) {
    use std::fmt::Write as _;
    match net {
        IpNet::V4(n) => {
            for (i, octet) in n.addr().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, octet);
            }
            out.push('/');
            push_decimal(out, n.prefix_len());
        }
        // Writing to a String cannot fail.
        IpNet::V6(n) => drop(write!(out, "{n}")),
    }
}

fn push_decimal(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + n / 10 % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

/// Record `policy` as the last applied one under `data_dir`.
pub fn save(data_dir: &Path, policy: &Policy) -> Result<(), RuntimeError> {
    let path = data_dir.join(SNAPSHOT_FILE);
    write_atomic(&path, text(&path, policy)?.as_bytes())
}

fn text(path: &Path, policy: &Policy) -> Result<String, RuntimeError> {
    to_toml(policy).map_err(|e| RuntimeError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })
}

/// [`save`] begun before the policy is applied: the file is written and synced beside the
/// snapshot on another thread (a million prefixes make 20 MB to sync), and only
/// [`Pending::finish`] puts it in place. Dropped unfinished, it waits for the write and
/// removes the file.
pub struct Pending(Option<std::thread::JoinHandle<Result<Staged, RuntimeError>>>);

impl Pending {
    pub fn start(data_dir: &Path, policy: &Policy) -> Self {
        let path = data_dir.join(SNAPSHOT_FILE);
        let text = text(&path, policy);
        Self(Some(std::thread::spawn(move || {
            stage(&path, text?.as_bytes())
        })))
    }

    /// Put the snapshot in place: the policy has been applied.
    pub fn finish(mut self) -> Result<(), RuntimeError> {
        let handle = self.0.take().expect("finished once");
        match handle.join() {
            Ok(staged) => staged?.commit(),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // The staged file, if any, is removed as it drops.
            let _ = handle.join();
        }
    }
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
    fn prefixes_are_written_as_display_writes_them() {
        let mut x: u32 = 0x9e37_79b9;
        let mut nets: Vec<IpNet> = [
            "0.0.0.0/0",
            "255.255.255.255/32",
            "10.0.100.0/24",
            "2001:db8::/32",
            "::/0",
        ]
        .iter()
        .map(|t| t.parse().expect("a prefix"))
        .collect();
        for len in 0..=32u8 {
            x = x.wrapping_mul(0x0019_660d).wrapping_add(0x3c6e_f35f);
            let net = ipnet::Ipv4Net::new(x.into(), len).expect("a length up to 32");
            nets.push(IpNet::V4(net.trunc()));
        }
        for net in nets {
            let mut out = String::new();
            push_net(&mut out, &net);
            assert_eq!(out, net.to_string());
        }
    }

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
