//! The runtime layer: prefixes blocked with `edgeblock block` on top of the policy file.
//!
//! Blocks live in `<data-dir>/runtime-blocks.jsonl`, one JSON object per line (so an error
//! names a line), rewritten whole through a temporary file, fsync and rename: a crash leaves
//! the old file or the new one, never half of either. They survive restarts and reboots; a
//! block whose `expires` has passed is ignored by everyone and pruned by whoever next writes
//! the file.
//!
//! [`merge`] puts the unexpired blocks in front of the policy's rules as one rule per action
//! and direction (`runtime-drop-dst`, ...): the compiler keeps the first rule that lists a
//! prefix, so a runtime block wins over the policy for the very same prefix, and the longest
//! prefix still wins across prefixes as everywhere else. The merged policy goes through the
//! same lockout check and the same gapless apply as a policy file.

use std::{
    fmt, fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::{Action, Direction, Location, Policy, PrefixEntry, Rule};

/// The file under the data directory.
pub const BLOCKS_FILE: &str = "runtime-blocks.jsonl";

/// Every merged rule's name starts with this; a policy rule may not use those names.
pub const RULE_PREFIX: &str = "runtime-";

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{location}: not a runtime block: {message}")]
    Parse { location: Location, message: String },
    #[error(
        "{location}: rule name {name:?} is reserved for runtime blocks (`edgeblock block`); rename the rule"
    )]
    ReservedName { location: Location, name: String },
}

/// What a runtime block does; `redirect` needs a notice target and stays in the policy file.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    Drop,
    Reject,
    /// An exception: let the prefix through inside a wider block.
    Pass,
}

impl BlockAction {
    pub const fn action(self) -> Action {
        match self {
            Self::Drop => Action::Drop,
            Self::Reject => Action::Reject,
            Self::Pass => Action::Pass,
        }
    }
}

impl fmt::Display for BlockAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action().as_str())
    }
}

/// Which address of a packet a runtime block matches.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BlockDirection {
    Dst,
    Src,
}

impl BlockDirection {
    pub const fn direction(self) -> Direction {
        match self {
            Self::Dst => Direction::Dst,
            Self::Src => Direction::Src,
        }
    }
}

impl fmt::Display for BlockDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.direction().as_str())
    }
}

/// One runtime block: what, who, when, why, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeBlock {
    pub prefix: IpNet,
    pub direction: BlockDirection,
    pub action: BlockAction,
    pub reason: String,
    pub who: String,
    pub added: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

impl RuntimeBlock {
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// The blocks file of a data directory.
#[derive(Clone, Debug)]
pub struct BlockStore {
    path: PathBuf,
}

impl BlockStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(BLOCKS_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every block in the file, expired ones included, in file order; none when there is no
    /// file.
    pub fn load(&self) -> Result<Vec<RuntimeBlock>, RuntimeError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RuntimeError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| RuntimeError::Parse {
                    location: Location {
                        file: self.path.as_path().into(),
                        line: i + 1,
                    },
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Replace the file with `blocks`, atomically and durably.
    pub fn save(&self, blocks: &[RuntimeBlock]) -> Result<(), RuntimeError> {
        let mut text = String::new();
        for b in blocks {
            // Serialising plain data into a String cannot fail.
            text.push_str(&serde_json::to_string(b).map_err(|e| RuntimeError::Io {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?);
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory: fsync the file,
/// rename it over `path`, fsync the directory. Readers see the old content or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    stage(path, bytes)?.commit()
}

/// A file written and synced under a temporary name beside its path, not in place yet:
/// [`Staged::commit`] renames it over the path. Dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    let path = p.to_path_buf();
    move |source| RuntimeError::Io { path, source }
}

/// The first half of [`write_atomic`]: `bytes` written and synced beside `path`.
pub fn stage(path: &Path, bytes: &[u8]) -> Result<Staged, RuntimeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).map_err(io_err(dir))?;
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let staged = Staged {
        tmp: dir.join(format!(".{name}.tmp-{}", std::process::id())),
        path: path.to_path_buf(),
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&staged.tmp)
        .map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))?;
    Ok(staged)
}

impl Staged {
    /// Put the file in place: rename it over its path and fsync the directory.
    pub fn commit(self) -> Result<(), RuntimeError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::rename(&self.tmp, &self.path)
            .and_then(|()| fs::File::open(dir)?.sync_all())
            .map_err(io_err(&self.path))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // After a commit the name is gone and this fails, harmlessly.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Create the data directory readable by root only: it says who blocked what and why.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Whether [`merge`] at `now` keeps the policy's rules as they are: no block in force and no
/// rule expired. The merged policy then compiles to what the policy does.
pub fn merge_keeps_rules(policy: &Policy, blocks: &[RuntimeBlock], now: Timestamp) -> bool {
    blocks.iter().all(|b| b.expired(now))
        && policy
            .rules
            .iter()
            .all(|r| r.expires.is_none_or(|e| e > now))
}

/// Rule names starting with [`RULE_PREFIX`] belong to the runtime layer; a policy file may
/// not use them, with or without blocks in force.
pub fn check_reserved(policy: &Policy) -> Result<(), RuntimeError> {
    match policy
        .rules
        .iter()
        .find(|r| r.name.starts_with(RULE_PREFIX))
    {
        Some(rule) => Err(RuntimeError::ReservedName {
            location: rule.location.clone(),
            name: rule.name.clone(),
        }),
        None => Ok(()),
    }
}

/// The policy with the unexpired `blocks` (from `file`) in front of its rules and the rules
/// expired at `now` left out. Each block's location is its line in `file`.
pub fn merge(
    policy: &Policy,
    blocks: &[RuntimeBlock],
    file: &Path,
    now: Timestamp,
) -> Result<Policy, RuntimeError> {
    check_reserved(policy)?;
    let mut groups: std::collections::BTreeMap<(BlockAction, BlockDirection), Vec<PrefixEntry>> =
        Default::default();
    for (i, b) in blocks.iter().enumerate() {
        if b.expired(now) {
            continue;
        }
        groups
            .entry((b.action, b.direction))
            .or_default()
            .push(PrefixEntry {
                net: b.prefix,
                location: Location {
                    file: file.into(),
                    line: i + 1,
                },
            });
    }
    let mut rules: Vec<Rule> = groups
        .into_iter()
        .map(|((action, direction), prefixes)| Rule {
            name: rule_name(action, direction),
            direction: direction.direction(),
            action: action.action(),
            // Runtime blocks are emergency measures: enforced even under a shadow policy.
            mode: crate::policy::Mode::Enforce,
            location: prefixes[0].location.clone(),
            prefixes,
            comment: Some("runtime blocks (edgeblock block)".into()),
            // Each block carries its own reason; `edgeblock list` and the audit log show them.
            reference: None,
            reason: None,
            expires: None,
            allow_local: false,
            notice: None,
        })
        .collect();
    rules.extend(
        policy
            .rules
            .iter()
            .filter(|r| r.expires.is_none_or(|e| e > now))
            .cloned(),
    );
    // Field by field: `..policy.clone()` would copy every rule only to drop the copies.
    Ok(Policy {
        path: policy.path.clone(),
        malformed: policy.malformed,
        protect: policy.protect.clone(),
        rules,
        notices: policy.notices.clone(),
        reject_rate: policy.reject_rate,
        reject_burst: policy.reject_burst,
        mode: policy.mode,
        require_reference: policy.require_reference,
        signatures_required: policy.signatures_required,
        notes: Vec::new(),
    })
}

/// The merged rule holding the blocks of one action and direction.
pub fn rule_name(action: BlockAction, direction: BlockDirection) -> String {
    format!("{RULE_PREFIX}{action}-{direction}")
}

/// The earliest expiry after `now` among the policy's rules and the blocks: when the maps
/// must next change by themselves.
pub fn next_expiry(policy: &Policy, blocks: &[RuntimeBlock], now: Timestamp) -> Option<Timestamp> {
    policy
        .rules
        .iter()
        .filter_map(|r| r.expires)
        .chain(blocks.iter().filter_map(|b| b.expires))
        .filter(|&e| e > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::compile, policy};

    #[test]
    fn a_staged_file_is_in_place_only_once_committed_and_gone_if_dropped() {
        let dir = std::env::temp_dir().join(format!("edgeblock-stage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("state.toml");
        write_atomic(&path, b"old").expect("first write");
        let leftovers = || {
            fs::read_dir(&dir)
                .expect("dir")
                .flatten()
                .filter(|e| e.file_name() != "state.toml")
                .count()
        };

        let staged = stage(&path, b"new").expect("stage");
        assert_eq!(
            fs::read(&path).expect("read"),
            b"old",
            "not in place before commit"
        );
        drop(staged);
        assert_eq!(fs::read(&path).expect("read"), b"old");
        assert_eq!(leftovers(), 0, "a dropped stage leaves no file");

        stage(&path, b"new")
            .expect("stage")
            .commit()
            .expect("commit");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert_eq!(leftovers(), 0);
        fs::remove_dir_all(&dir).expect("clean up");
    }

    fn block(prefix: &str, action: BlockAction, expires: Option<i64>) -> RuntimeBlock {
        RuntimeBlock {
            prefix: prefix.parse().expect("test prefix"),
            direction: BlockDirection::Dst,
            action,
            reason: "test".into(),
            who: "tester".into(),
            added: Timestamp::UNIX_EPOCH,
            expires: expires.map(|s| Timestamp::from_second(s).expect("test time")),
        }
    }

    const POLICY: &str = r#"
[[rule]]
name = "wide"
action = "drop"
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "soon"
action = "drop"
prefixes = ["198.51.100.0/24"]
expires = "2030-01-01T00:00:00Z"
"#;

    #[test]
    fn runtime_block_wins_for_the_same_prefix_and_expired_entries_leave() {
        let p = policy::for_test(POLICY);
        let blocks = [
            block("203.0.113.0/24", BlockAction::Pass, None),
            block("192.0.2.7/32", BlockAction::Drop, Some(100)),
            block("192.0.2.8/32", BlockAction::Reject, None),
        ];
        let now = Timestamp::from_second(100).expect("time");
        let merged = merge(&p, &blocks, Path::new("b.jsonl"), now).expect("merge");
        let names: Vec<&str> = merged.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["runtime-reject-dst", "runtime-pass-dst", "wide", "soon"]
        );
        let c = compile(&merged);
        let v = c.verdict(
            "203.0.113.9".parse().expect("addr"),
            "192.0.2.1".parse().expect("addr"),
        );
        assert_eq!(v.action, filter_common::action::PASS);
        assert_eq!(merged.rules[1].prefixes[0].location.line, 1);
        assert_eq!(merged.rules[0].prefixes[0].location.line, 3);
    }

    #[test]
    fn merge_keeps_rules_exactly_when_the_merged_policy_compiles_the_same() {
        let p = policy::for_test(POLICY);
        let now = Timestamp::from_second(100).expect("time");
        let expired = [block("192.0.2.7/32", BlockAction::Drop, Some(100))];
        let in_force = [block("192.0.2.7/32", BlockAction::Drop, Some(101))];
        for blocks in [&[][..], &expired[..]] {
            assert!(merge_keeps_rules(&p, blocks, now));
            let merged = merge(&p, blocks, Path::new("b"), now).expect("merge");
            assert_eq!(compile(&merged), compile(&p));
        }
        assert!(!merge_keeps_rules(&p, &in_force, now));
        let at = Timestamp::from_second(1_893_456_000).expect("2030-01-01");
        assert!(
            !merge_keeps_rules(&p, &[], at),
            "the rule \"soon\" expires at `at`"
        );
    }

    #[test]
    fn policy_rules_leave_at_their_expiry_and_the_next_one_is_found() {
        let p = policy::for_test(POLICY);
        let at = Timestamp::from_second(1_893_456_000).expect("2030-01-01");
        let before = merge(
            &p,
            &[],
            Path::new("b"),
            at - jiff::SignedDuration::from_secs(1),
        )
        .expect("merge");
        assert_eq!(before.rules.len(), 2);
        let after = merge(&p, &[], Path::new("b"), at).expect("merge");
        assert_eq!(
            after.rules.len(),
            1,
            "a rule leaves at its expiry, to the second"
        );
        let blocks = [block("192.0.2.7/32", BlockAction::Drop, Some(50))];
        assert_eq!(
            next_expiry(&p, &blocks, Timestamp::UNIX_EPOCH),
            Some(Timestamp::from_second(50).expect("time"))
        );
        assert_eq!(next_expiry(&p, &blocks, at), None);
    }

    #[test]
    fn reserved_names_are_refused_with_their_line() {
        let p = policy::for_test(
            "[[rule]]\nname = \"runtime-drop-dst\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\n",
        );
        let err = merge(&p, &[], Path::new("b"), Timestamp::UNIX_EPOCH)
            .expect_err("reserved name must be refused");
        assert!(err.to_string().starts_with("p.toml:2: "), "{err}");
    }

    #[test]
    fn store_round_trips_atomically_and_names_bad_lines() {
        let dir = std::env::temp_dir().join(format!("edgeblock-runtime-{}", std::process::id()));
        let store = BlockStore::new(&dir);
        assert!(store.load().expect("missing file is empty").is_empty());
        let blocks = vec![
            block("192.0.2.7/32", BlockAction::Drop, Some(50)),
            block("2001:db8::/32", BlockAction::Reject, None),
        ];
        store.save(&blocks).expect("save");
        assert_eq!(store.load().expect("load"), blocks);
        fs::write(store.path(), "{\"prefix\": 1}\n").expect("write");
        let err = store.load().expect_err("bad line");
        assert!(
            err.to_string().contains("runtime-blocks.jsonl:1: "),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
