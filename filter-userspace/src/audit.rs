//! The audit trail: one JSON line per change to what the filter does, hash-chained so that an
//! edited, deleted or truncated record is detected (format and guarantees:
//! `docs/accountability.md`).
//!
//! # API
//!
//! - [`Log::open`]`(data_dir)` opens (creating, mode 0600) `<data_dir>/audit.log`, checking that
//!   its last record is whole; [`Log::append`]`(Entry)` adds one record under an flock on the
//!   log, fsyncs it and moves the tip file (`audit.tip`) forward.
//! - [`Entry`] is what a caller records: time, host, operator ([`Actor::current`]), [`Action`],
//!   policy hashes before and after, and the per-rule diff ([`RuleChange`], built from an apply
//!   plan by [`rule_changes`]).
//! - [`read`]`(data_dir)` returns every record; [`verify`]`(data_dir)` checks the chain and the
//!   tip and names the line where it breaks ([`Break`]).
//!
//! # The chain
//!
//! A record is written as the JSON object of its [`Body`] (`seq`, `prev`, then the entry's
//! fields) with `,"hash":"<hex>"` spliced in before the closing brace, where the hash is the
//! SHA-256 of the body's exact bytes. `prev` is the hash of the record before, or [`GENESIS`]
//! for the first; `seq` counts from 1. Hashing the bytes as written, rather than a
//! re-serialisation, means any change to a record, down to one space, breaks it.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::{apply::Plan, compile::hash_hex, policy::Policy};

/// The log file, under the data directory.
pub const LOG_FILE: &str = "audit.log";
/// The last record's sequence number and hash, rewritten after every append: lets `verify`
/// notice whole records cut from the end of the log.
pub const TIP_FILE: &str = "audit.tip";
/// What the first record's `prev` holds.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Prefixes listed per rule and direction of change; the rest are only counted.
pub const LISTED_PREFIXES: usize = 20;

/// What happened. Every change to what the filter does has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A policy was applied.
    Apply,
    /// A prefix was blocked at run time (outside the policy file).
    Block,
    /// A run-time block was lifted.
    Unblock,
    /// A rule or run-time block expired and was removed.
    Expiry,
    /// A previous policy was put back.
    Rollback,
    /// The program was attached to an interface.
    Attach,
    /// The program was detached from an interface (or purged).
    Detach,
    /// A change was refused: invalid policy, lockout, missing or bad signatures. Nothing
    /// changed.
    Refused,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Block => "block",
            Self::Unblock => "unblock",
            Self::Expiry => "expiry",
            Self::Rollback => "rollback",
            Self::Attach => "attach",
            Self::Detach => "detach",
            Self::Refused => "refused",
        }
    }
}

/// A list of prefixes, summarised when large: the total and the first [`LISTED_PREFIXES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefixes {
    pub count: usize,
    pub first: Vec<String>,
}

impl Prefixes {
    pub fn new<T: ToString>(all: &[T]) -> Self {
        Self {
            count: all.len(),
            first: all
                .iter()
                .take(LISTED_PREFIXES)
                .map(ToString::to_string)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// How one rule changed, with the grounds its policy gave for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleChange {
    pub rule: String,
    /// The rule's action in the new policy ("drop", ...), or in the old one if it was removed.
    pub action: String,
    /// "added", "removed", "changed" (action or direction) or "prefixes" (only its prefixes).
    pub change: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub added: Prefixes,
    pub removed: Prefixes,
}

/// What a caller records. `Log::append` adds the sequence number and the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub time: Timestamp,
    pub host: String,
    pub operator: String,
    pub action: Action,
    /// The policy file (or bundle) involved, as given on the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The hash of the policy in force before, as `status` shows it; `None` if none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash_before: Option<String>,
    /// The hash in force after (for `refused`: of the policy that was refused, if it compiled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Trusted keys whose signatures the policy carried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    /// Why a change was refused or failed, or a note (the attach mode, --force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleChange>,
}

impl Entry {
    /// An entry for `action` now, by `actor`, with nothing else filled in.
    pub fn new(actor: &Actor, action: Action) -> Self {
        Self {
            time: Timestamp::now(),
            host: actor.host.clone(),
            operator: actor.operator.clone(),
            action,
            policy: None,
            policy_hash_before: None,
            policy_hash_after: None,
            interface: None,
            signers: Vec::new(),
            detail: None,
            rules: Vec::new(),
        }
    }
}

/// Who is acting, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub host: String,
    pub operator: String,
}

impl Actor {
    /// This host, and `operator` if given, else `$SUDO_USER` (the person behind `sudo`), else
    /// `$USER`, else `uid N`.
    pub fn current(operator: Option<&str>) -> Self {
        let from_env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let operator = operator
            .map(str::to_owned)
            .or_else(|| from_env("SUDO_USER"))
            .or_else(|| from_env("USER"))
            .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        Self { host, operator }
    }
}

/// The hashed part of a record.
#[derive(Serialize)]
pub struct Body<'a> {
    pub seq: u64,
    pub prev: &'a str,
    #[serde(flatten)]
    pub entry: &'a Entry,
}

/// One record as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub prev: String,
    #[serde(flatten)]
    pub entry: Entry,
    pub hash: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Tip {
    seq: u64,
    hash: String,
}

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "{}: the last line ({line}) is not a whole record (a crash or truncation); run \
         `edgeblock audit verify`, keep the log as evidence and move it aside to start a new one",
        path.display()
    )]
    PartialTail { path: PathBuf, line: usize },
    #[error(
        "{}:{line}: the last record cannot be read ({problem}); run `edgeblock audit verify`",
        path.display()
    )]
    BadTail {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("encoding an audit record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Where and why the chain breaks. `line` is 1-based in the log.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Break {
    #[error("line {line}: not a readable record ({problem})")]
    Unreadable { line: usize, problem: String },
    #[error(
        "line {line}: record {seq} was altered after it was written (its contents do not match its hash)"
    )]
    Edited { line: usize, seq: u64 },
    #[error(
        "line {line}: record {found} does not follow record {expected_prev_seq}: {missing} record(s) deleted or inserted before it (it chains to {prev}, the record before is {expected})",
        missing = found.abs_diff(*expected_prev_seq + 1)
    )]
    Chain {
        line: usize,
        found: u64,
        expected_prev_seq: u64,
        prev: String,
        expected: String,
    },
    #[error("line {line}: the log ends in a partial record (truncated or cut off while writing)")]
    PartialTail { line: usize },
    #[error(
        "the log ends at record {last} but {TIP_FILE} says {tip_seq} records were written: the last {} record(s) were removed",
        tip_seq.saturating_sub(*last)
    )]
    Truncated { last: u64, tip_seq: u64 },
    #[error(
        "record {seq} has hash {found} but {TIP_FILE} recorded {expected}: the end of the log was replaced"
    )]
    TipMismatch {
        seq: u64,
        found: String,
        expected: String,
    },
}

/// What `verify` found.
#[derive(Debug)]
pub struct Report {
    pub records: u64,
    /// The last record's hash (GENESIS when empty): keep it elsewhere to anchor the log.
    pub tip: String,
    /// The log is one record ahead of the tip file: an append was interrupted between the two
    /// writes (harmless; the next append repairs it).
    pub tip_lags: bool,
    /// There is no tip file, so records removed from the end cannot be detected.
    pub no_tip: bool,
    /// The first break found, if any.
    pub broken: Option<Break>,
}

/// The audit log under a data directory, open for appending.
pub struct Log {
    file: File,
    path: PathBuf,
    tip_path: PathBuf,
}

impl Log {
    /// Open (creating the directory 0700 and the log 0600 if needed) and check that the last
    /// record is whole, so that a change is refused before it happens if it could not be
    /// recorded.
    pub fn open(data_dir: &Path) -> Result<Self, AuditError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AuditError::Io {
                path,
                error: source,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io(data_dir))?;
        let path = data_dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let mut log = Self {
            file,
            tip_path: data_dir.join(TIP_FILE),
            path,
        };
        log.tail()?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record, chained to the last; returns it. Holds an flock on the log for the
    /// read-append-fsync, so concurrent writers (the CLI and the daemon) serialise.
    pub fn append(&mut self, entry: Entry) -> Result<Record, AuditError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: flock on a descriptor we own; released on unlock below or on close.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(self.io(io::Error::last_os_error()));
        }
        let result = self.append_locked(entry);
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        result
    }

    fn append_locked(&mut self, entry: Entry) -> Result<Record, AuditError> {
        let (seq, prev) = match self.tail()? {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_owned()),
        };
        let (line, hash) = encode(seq, &prev, &entry)?;
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| self.io(e))?;
        let tip = serde_json::to_string(&Tip {
            seq,
            hash: hash.clone(),
        })?;
        let tmp = self.tip_path.with_extension("tip.tmp");
        let write_tip = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(tip.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.tip_path)
        };
        write_tip().map_err(|source| AuditError::Io {
            path: self.tip_path.clone(),
            error: source,
        })?;
        Ok(Record {
            seq,
            prev,
            entry,
            hash,
        })
    }

    /// The last record's (seq, hash), or None for an empty log.
    fn tail(&mut self) -> Result<Option<(u64, String)>, AuditError> {
        let Some((last, lines)) = last_line(&mut self.file).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        if !last.ends_with(b"\n") {
            return Err(AuditError::PartialTail {
                path: self.path.clone(),
                line: lines,
            });
        }
        let record =
            parse_line(&last[..last.len() - 1]).map_err(|problem| AuditError::BadTail {
                path: self.path.clone(),
                line: lines,
                problem,
            })?;
        Ok(Some((record.seq, record.hash)))
    }

    fn io(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.path.clone(),
            error: source,
        }
    }
}

/// The line to write (with its newline) and its hash.
fn encode(seq: u64, prev: &str, entry: &Entry) -> Result<(String, String), serde_json::Error> {
    let body = serde_json::to_string(&Body { seq, prev, entry })?;
    let hash = hash_hex(&Sha256::digest(body.as_bytes()).into());
    let open = body.strip_suffix('}').unwrap_or(&body);
    Ok((format!("{open},\"hash\":\"{hash}\"}}\n"), hash))
}

/// Parse one line (without its newline) and check it against its own hash.
fn parse_line(line: &[u8]) -> Result<Record, String> {
    let record: Record = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let suffix = format!(",\"hash\":\"{}\"}}", record.hash);
    let body = line
        .strip_suffix(suffix.as_bytes())
        .ok_or("the hash is not the record's last field")?;
    let mut h = Sha256::new();
    h.update(body);
    h.update(b"}");
    if hash_hex(&h.finalize().into()) != record.hash {
        return Err(EDITED.into());
    }
    Ok(record)
}

const EDITED: &str = "contents do not match the hash";

/// The last line of the file (with its newline, if any) and the number of lines, reading only
/// the tail when the last line is short. None for an empty file.
fn last_line(file: &mut File) -> io::Result<Option<(Vec<u8>, usize)>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    // Counting lines needs the whole file; the log is small next to what an apply reads (a
    // record is a few hundred bytes to a few KiB), and this runs once per change.
    file.seek(SeekFrom::Start(0))?;
    let mut all = Vec::with_capacity(len as usize);
    file.read_to_end(&mut all)?;
    let body = all.strip_suffix(b"\n").unwrap_or(&all);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = all[..start].iter().filter(|&&b| b == b'\n').count() + 1;
    Ok(Some((all[start..].to_vec(), lines)))
}

/// Every record of the log under `data_dir`, in order; empty if there is no log. Stops at the
/// first line that cannot be read (`verify` says why).
pub fn read(data_dir: &Path) -> Result<Vec<Record>, AuditError> {
    let path = data_dir.join(LOG_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AuditError::Io {
                path,
                error: source,
            });
        }
    };
    Ok(text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map_while(|l| serde_json::from_slice::<Record>(l).ok())
        .collect())
}

/// Check the whole chain and the tip file. A missing log is an empty, intact one.
pub fn verify(data_dir: &Path) -> Result<Report, AuditError> {
    let path = data_dir.join(LOG_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(AuditError::Io {
                path,
                error: source,
            });
        }
    };
    let tip_path = data_dir.join(TIP_FILE);
    let tip: Option<Tip> = match fs::read(&tip_path) {
        Ok(t) => Some(serde_json::from_slice(&t).map_err(|e| AuditError::BadTail {
            path: tip_path.clone(),
            line: 1,
            problem: e.to_string(),
        })?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AuditError::Io {
                path: tip_path,
                error: source,
            });
        }
    };
    Ok(verify_bytes(&text, tip.as_ref()))
}

fn verify_bytes(text: &[u8], tip: Option<&Tip>) -> Report {
    let mut report = Report {
        records: 0,
        tip: GENESIS.to_owned(),
        tip_lags: false,
        no_tip: tip.is_none(),
        broken: None,
    };
    let mut last_seq = 0;
    for (i, raw) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let Some(content) = raw.strip_suffix(b"\n") else {
            report.broken = Some(Break::PartialTail { line });
            return report;
        };
        let record = match parse_line(content) {
            Ok(r) => r,
            Err(problem) => {
                // A record whose JSON still reads but whose bytes changed was edited; one that
                // no longer reads at all may also be the cut-off end of a record.
                let seq = serde_json::from_slice::<Record>(content).map(|r| r.seq);
                report.broken = Some(match seq {
                    Ok(seq) if problem == EDITED => Break::Edited { line, seq },
                    _ => Break::Unreadable { line, problem },
                });
                return report;
            }
        };
        if record.prev != report.tip || record.seq != last_seq + 1 {
            report.broken = Some(Break::Chain {
                line,
                found: record.seq,
                expected_prev_seq: last_seq,
                prev: record.prev,
                expected: report.tip.clone(),
            });
            return report;
        }
        last_seq = record.seq;
        report.tip = record.hash;
        report.records += 1;
    }
    if let Some(tip) = tip {
        if last_seq < tip.seq {
            report.broken = Some(Break::Truncated {
                last: last_seq,
                tip_seq: tip.seq,
            });
        } else if last_seq == tip.seq && report.tip != tip.hash {
            report.broken = Some(Break::TipMismatch {
                seq: last_seq,
                found: report.tip.clone(),
                expected: tip.hash.clone(),
            });
        } else if last_seq == tip.seq + 1 {
            report.tip_lags = true;
        } else if last_seq > tip.seq + 1 {
            report.broken = Some(Break::TipMismatch {
                seq: tip.seq,
                found: format!("{} records", last_seq),
                expected: format!("{} records", tip.seq),
            });
        }
    }
    report
}

/// The per-rule diff of an apply: what each rule gained and lost, with its `reference` and
/// `reason` from `policy` (a removed rule has none: the new policy no longer holds it).
pub fn rule_changes(plan: &Plan, policy: &Policy) -> Vec<RuleChange> {
    let moves = plan.prefix_moves();
    let mut changes = Vec::new();
    let mut names: Vec<&str> = moves.keys().map(String::as_str).collect();
    for r in plan
        .rules_added
        .iter()
        .chain(&plan.rules_changed)
        .chain(&plan.rules_removed)
    {
        if !names.contains(&r.as_str()) {
            names.push(r);
        }
    }
    names.sort_unstable();
    for name in names {
        let rule = policy.rules.iter().find(|r| r.name == name);
        let change = if plan.rules_added.iter().any(|r| r == name) {
            "added"
        } else if plan.rules_removed.iter().any(|r| r == name) {
            "removed"
        } else if plan.rules_changed.iter().any(|r| r == name) {
            "changed"
        } else {
            "prefixes"
        };
        let moved = moves.get(name);
        changes.push(RuleChange {
            rule: name.to_owned(),
            action: match (rule, moved) {
                (Some(r), _) => r.action.to_string(),
                (None, Some(m)) => m.action.to_owned(),
                (None, None) => "?".to_owned(),
            },
            change: change.to_owned(),
            reference: rule.and_then(|r| r.reference.clone()),
            reason: rule.and_then(|r| r.reason.clone()),
            added: moved.map(|m| Prefixes::new(&m.added)).unwrap_or_default(),
            removed: moved.map(|m| Prefixes::new(&m.removed)).unwrap_or_default(),
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("edgeblock-audit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entry(action: Action, n: usize) -> Entry {
        let actor = Actor {
            host: "edge1".into(),
            operator: "alice".into(),
        };
        let mut e = Entry::new(&actor, action);
        e.policy = Some(format!("policy-{n}.toml"));
        e.rules.push(RuleChange {
            rule: "r".into(),
            action: "drop".into(),
            change: "prefixes".into(),
            reference: Some(format!("CASE-{n}")),
            reason: None,
            added: Prefixes::new(&["192.0.2.0/24"]),
            removed: Prefixes::default(),
        });
        e
    }

    /// A log of five records; returns its directory.
    fn five(name: &str) -> PathBuf {
        let d = dir(name);
        let mut log = Log::open(&d).expect("open");
        for n in 0..5 {
            let r = log.append(entry(Action::Apply, n)).expect("append");
            assert_eq!(r.seq, n as u64 + 1);
        }
        d
    }

    fn lines(d: &Path) -> Vec<String> {
        fs::read_to_string(d.join(LOG_FILE))
            .expect("log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(d: &Path, lines: &[String]) {
        fs::write(d.join(LOG_FILE), lines.join("\n") + "\n").expect("write log");
    }

    #[test]
    fn an_intact_log_verifies_and_reads_back() {
        let d = five("intact");
        let report = verify(&d).expect("verify");
        assert_eq!(report.broken, None, "an untouched log must verify");
        assert_eq!(report.records, 5);
        assert!(!report.no_tip && !report.tip_lags);
        let records = read(&d).expect("read");
        assert_eq!(records.len(), 5);
        assert_eq!(records[0].prev, GENESIS);
        assert_eq!(records[1].prev, records[0].hash);
        assert_eq!(records[4].hash, report.tip);
        assert_eq!(
            records[2].entry.rules[0].reference.as_deref(),
            Some("CASE-2")
        );
        let mode = fs::metadata(d.join(LOG_FILE)).expect("meta");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        // Reopening chains on.
        let r = Log::open(&d)
            .expect("reopen")
            .append(entry(Action::Detach, 9))
            .expect("append");
        assert_eq!((r.seq, r.prev.as_str()), (6, report.tip.as_str()));
        assert_eq!(verify(&d).expect("verify").broken, None);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_edited_record_is_found_at_its_line() {
        let d = five("edited");
        let mut l = lines(&d);
        l[2] = l[2].replace("CASE-2", "CASE-X");
        write_lines(&d, &l);
        assert_eq!(
            verify(&d).expect("verify").broken,
            Some(Break::Edited { line: 3, seq: 3 })
        );
        // Even whitespace counts.
        let mut l = lines(&d);
        l[2] = l[2].replace("CASE-X", "CASE-2").replacen(':', ": ", 1);
        write_lines(&d, &l);
        assert_eq!(
            verify(&d).expect("verify").broken,
            Some(Break::Edited { line: 3, seq: 3 })
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_deleted_record_breaks_the_chain_at_the_next_line() {
        let d = five("deleted");
        let mut l = lines(&d);
        l.remove(1);
        write_lines(&d, &l);
        match verify(&d).expect("verify").broken {
            Some(Break::Chain {
                line: 2,
                found: 3,
                expected_prev_seq: 1,
                ..
            }) => {}
            other => panic!("deleting record 2 must break at line 2, got {other:?}"),
        }
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn truncation_is_detected_partial_or_whole_records() {
        let d = five("truncated");
        let full = fs::read(d.join(LOG_FILE)).expect("log");
        // Cut in the middle of the last record.
        fs::write(d.join(LOG_FILE), &full[..full.len() - 10]).expect("cut");
        assert_eq!(
            verify(&d).expect("verify").broken,
            Some(Break::PartialTail { line: 5 })
        );
        // Appending refuses rather than chaining onto half a record.
        match Log::open(&d) {
            Err(AuditError::PartialTail { line: 5, .. }) => {}
            Err(other) => panic!("expected PartialTail at line 5, got {other}"),
            Ok(_) => panic!("opening a log with a partial last record must fail"),
        }
        // Two whole records removed from the end: the tip file notices.
        let l = lines(&d);
        write_lines(&d, &l[..3]);
        assert_eq!(
            verify(&d).expect("verify").broken,
            Some(Break::Truncated {
                last: 3,
                tip_seq: 5
            })
        );
        // Without the tip, that cannot be seen: the report says so.
        fs::remove_file(d.join(TIP_FILE)).expect("rm tip");
        let report = verify(&d).expect("verify");
        assert_eq!(report.broken, None);
        assert!(report.no_tip);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_tip_one_behind_is_an_interrupted_append_not_tampering() {
        let d = five("lag");
        let records = read(&d).expect("read");
        let tip = Tip {
            seq: 4,
            hash: records[3].hash.clone(),
        };
        let report = verify_bytes(&fs::read(d.join(LOG_FILE)).expect("log"), Some(&tip));
        assert_eq!(report.broken, None);
        assert!(report.tip_lags);
        let _ = fs::remove_dir_all(&d);
    }
}
