//! The fleet: one policy to every edge host through a NATS JetStream key-value bucket.
//!
//! A policy is published as a new revision of one key (`edgeblock publish`); every host's
//! daemon watches that key (`edgeblock run --policy-source nats://HOST:PORT/BUCKET/KEY`),
//! validates each revision against itself and applies it, and writes what it runs into the
//! status bucket `<BUCKET>-status` under its host name (`edgeblock fleet status`). The value of
//! a revision is a [`Published`]: the policy as a [`Bundle`] (its includes inlined, its
//! signatures along), who published it and when, and whether it is a rollback.
//!
//! Credentials come from a file or the environment, never from the command line; a `tls://`
//! URL makes TLS mandatory. See docs/fleet.md.

use std::{
    fmt, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::{
    escape::Escaped,
    policy::{Policy, PolicyErrors},
    signing::{Bundle, PolicyFiles, SignatureError},
};

/// The `format` of a [`Published`] value.
pub const FORMAT: &str = "edgeblock-fleet-1";
/// How many revisions of each key a bucket that `publish` creates keeps (JetStream's limit is
/// 64): what `rollback` can go back to.
pub const DEFAULT_HISTORY: i64 = 64;
/// How long connecting and each request may take before it counts as a failure.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait between two connection attempts of a daemon.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Environment variables read when no credentials file is given.
pub const ENV_TOKEN: &str = "EDGEBLOCK_NATS_TOKEN";
pub const ENV_USER: &str = "EDGEBLOCK_NATS_USER";
pub const ENV_PASSWORD: &str = "EDGEBLOCK_NATS_PASSWORD";

#[derive(Debug, Error)]
pub enum FleetError {
    #[error("{url:?} is not a policy source: expected nats://HOST:PORT/BUCKET/KEY (or tls://...)")]
    BadSource { url: String },
    #[error("{url:?} is not a NATS server URL: expected nats://HOST:PORT or tls://HOST:PORT")]
    BadServer { url: String },
    #[error("{what} {name:?} is not a valid NATS key-value name: use letters, digits, - and _")]
    BadName { what: &'static str, name: String },
    #[error("credentials file {path}: {problem}")]
    Credentials { path: PathBuf, problem: String },
    #[error("{ENV_USER} is set without {ENV_PASSWORD} (or the other way round)")]
    HalfCredentials,
    // `error`, not `source`: these errors print their own causes, which a chain would repeat.
    #[error("cannot connect to NATS at {server}: {}", concise(.error))]
    Connect {
        server: String,
        error: async_nats::ConnectError,
    },
    #[error("NATS at {server}, bucket {bucket:?}: {what}: {}", concise(.error))]
    Nats {
        server: String,
        bucket: String,
        what: &'static str,
        error: async_nats::Error,
    },
    #[error("{location}: not an edgeblock fleet revision: {problem}")]
    BadValue { location: String, problem: String },
    #[error(transparent)]
    Bundle(#[from] SignatureError),
}

/// The client's errors repeat their causes in their own text ("failed to get the bucket:
/// jetstream error: stream not found: failed to get the bucket: ..."): each part once.
fn concise(error: &dyn fmt::Display) -> String {
    let text = error.to_string();
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// A NATS server, `nats://HOST:PORT` or `tls://HOST:PORT` (TLS required).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server(String);

impl FromStr for Server {
    type Err = FleetError;

    fn from_str(url: &str) -> Result<Self, FleetError> {
        let bad = || FleetError::BadServer { url: url.into() };
        let rest = url
            .strip_prefix("nats://")
            .or_else(|| url.strip_prefix("tls://"))
            .ok_or_else(bad)?;
        // Credentials in the URL would end up in `ps` and shell history.
        if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
            return Err(bad());
        }
        Ok(Self(url.to_owned()))
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a daemon takes its policy from: `nats://HOST:PORT/BUCKET/KEY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub server: Server,
    pub bucket: String,
    pub key: String,
}

impl FromStr for Source {
    type Err = FleetError;

    fn from_str(url: &str) -> Result<Self, FleetError> {
        let bad = || FleetError::BadSource { url: url.into() };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let mut parts = rest.splitn(3, '/');
        let (Some(host), Some(bucket), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let server: Server = format!("{scheme}://{host}").parse().map_err(|_| bad())?;
        Ok(Self {
            server,
            bucket: checked_name("bucket", bucket)?.into(),
            key: checked_name("key", key)?.into(),
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.server, self.bucket, self.key)
    }
}

/// Bucket names and keys (and host names, which are status keys): what both JetStream and a
/// subject token accept.
pub fn checked_name<'a>(what: &'static str, name: &'a str) -> Result<&'a str, FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(FleetError::BadName {
            what,
            name: Escaped(name).to_string(),
        })
    }
}

/// The status bucket of a policy bucket.
pub fn status_bucket(bucket: &str) -> String {
    format!("{bucket}-status")
}

/// How to authenticate to NATS, and which CA to trust for TLS.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    credential: Option<Credential>,
    ca: Option<PathBuf>,
}

#[derive(Clone, PartialEq, Eq)]
enum Credential {
    Token(String),
    UserPassword { user: String, password: String },
}

impl fmt::Debug for Auth {
    // Never print a secret, not even in a debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.credential {
            None => "none",
            Some(Credential::Token(_)) => "token",
            Some(Credential::UserPassword { .. }) => "user and password",
        };
        f.debug_struct("Auth")
            .field("credential", &kind)
            .field("ca", &self.ca)
            .finish()
    }
}

/// The credentials file: `token = "..."`, or `user = "..."` and `password = "..."`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

impl Auth {
    /// Credentials from `file` when given, else from the environment ([`ENV_TOKEN`], or
    /// [`ENV_USER`] and [`ENV_PASSWORD`]), else none; `ca` verifies a tls:// server.
    pub fn load(file: Option<&Path>, ca: Option<PathBuf>) -> Result<Self, FleetError> {
        let credential = match file {
            Some(path) => Some(read_credentials(path)?),
            None => {
                let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
                match (var(ENV_TOKEN), var(ENV_USER), var(ENV_PASSWORD)) {
                    (Some(token), None, None) => Some(Credential::Token(token)),
                    (None, Some(user), Some(password)) => {
                        Some(Credential::UserPassword { user, password })
                    }
                    (None, None, None) => None,
                    (Some(_), ..) => {
                        return Err(FleetError::Credentials {
                            path: PathBuf::from("(environment)"),
                            problem: format!(
                                "{ENV_TOKEN} and {ENV_USER}/{ENV_PASSWORD} are both set; set one"
                            ),
                        });
                    }
                    _ => return Err(FleetError::HalfCredentials),
                }
            }
        };
        Ok(Self { credential, ca })
    }

    fn options(&self, name: &str) -> async_nats::ConnectOptions {
        let mut o = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(TIMEOUT)
            .request_timeout(Some(TIMEOUT));
        match &self.credential {
            Some(Credential::Token(t)) => o = o.token(t.clone()),
            Some(Credential::UserPassword { user, password }) => {
                o = o.user_and_password(user.clone(), password.clone());
            }
            None => {}
        }
        if let Some(ca) = &self.ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        o
    }
}

fn read_credentials(path: &Path) -> Result<Credential, FleetError> {
    let problem = |problem: String| FleetError::Credentials {
        path: path.to_path_buf(),
        problem,
    };
    let meta = fs::metadata(path).map_err(|e| problem(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(problem(format!(
            "readable by others (mode {:o}); `chmod 600 {}`",
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let file: CredentialsFile = toml::from_str(&text).map_err(|e| problem(e.to_string()))?;
    match file {
        CredentialsFile {
            token: Some(token),
            user: None,
            password: None,
        } => Ok(Credential::Token(token)),
        CredentialsFile {
            token: None,
            user: Some(user),
            password: Some(password),
        } => Ok(Credential::UserPassword { user, password }),
        _ => Err(problem(
            "expected `token = \"...\"`, or `user = \"...\"` and `password = \"...\"`".into(),
        )),
    }
}

/// Connect to `server`; `name` is how the server lists this client.
pub async fn connect(
    server: &Server,
    auth: &Auth,
    name: &str,
) -> Result<async_nats::Client, FleetError> {
    auth.options(name)
        .connect(server.0.as_str())
        .await
        .map_err(|error| FleetError::Connect {
            server: server.to_string(),
            error,
        })
}

/// One bucket on one server, for error messages.
#[derive(Clone)]
pub struct Bucket {
    pub server: Server,
    pub name: String,
    pub store: kv::Store,
}

impl Bucket {
    fn err(&self, what: &'static str) -> impl FnOnce(async_nats::Error) -> FleetError + '_ {
        move |error| FleetError::Nats {
            server: self.server.to_string(),
            bucket: self.name.clone(),
            what,
            error,
        }
    }

    /// Open `name`; with `create`, make it first if absent (keeping `history` revisions per
    /// key).
    pub async fn open(
        client: &async_nats::Client,
        server: &Server,
        name: &str,
        create: Option<i64>,
    ) -> Result<Self, FleetError> {
        let js = jetstream::new(client.clone());
        let err = |what, error: async_nats::Error| FleetError::Nats {
            server: server.to_string(),
            bucket: name.into(),
            what,
            error,
        };
        let store = match js.get_key_value(name).await {
            Ok(s) => s,
            Err(e) => match create {
                Some(history) => {
                    // The stream `create_key_value` would make, made directly: that call first
                    // reads the account info, whose 2.9 form the client no longer parses.
                    js.create_stream(jetstream::stream::Config {
                        name: format!("KV_{name}"),
                        subjects: vec![format!("$KV.{name}.>")],
                        max_messages_per_subject: history,
                        max_messages: -1,
                        max_bytes: -1,
                        max_message_size: -1,
                        max_consumers: -1,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        discard: jetstream::stream::DiscardPolicy::New,
                        duplicate_window: Duration::from_secs(120),
                        num_replicas: 1,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| err("creating the bucket", e.into()))?;
                    js.get_key_value(name)
                        .await
                        .map_err(|e| err("opening the bucket", e.into()))?
                }
                None => {
                    return Err(err(
                        "opening the bucket (`edgeblock publish` creates it)",
                        e.into(),
                    ));
                }
            },
        };
        Ok(Self {
            server: server.clone(),
            name: name.into(),
            store,
        })
    }

    /// Put `value` under `key`; its revision.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, FleetError> {
        self.store
            .put(key, value.into())
            .await
            .map_err(|e| self.err("putting a revision")(e.into()))
    }

    /// The latest revision of `key`, if any (a deleted key counts as a revision).
    pub async fn latest(&self, key: &str) -> Result<Option<kv::Entry>, FleetError> {
        self.store
            .entry(key)
            .await
            .map_err(|e| self.err("reading the latest revision")(e.into()))
    }

    /// Revision `revision` of `key`, if the bucket still holds it.
    pub async fn revision(
        &self,
        key: &str,
        revision: u64,
    ) -> Result<Option<kv::Entry>, FleetError> {
        self.store
            .entry_for_revision(key, revision)
            .await
            .map_err(|e| self.err("reading a revision")(e.into()))
    }

    /// Every revision of `key` the bucket holds, oldest first.
    pub async fn history(&self, key: &str) -> Result<Vec<kv::Entry>, FleetError> {
        let mut entries = self
            .store
            .history(key)
            .await
            .map_err(|e| self.err("reading the history")(e.into()))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            out.push(entry.map_err(|e| self.err("reading the history")(e.into()))?);
        }
        Ok(out)
    }

    /// The value of every key, keys in order (deleted ones left out).
    pub async fn all(&self) -> Result<Vec<kv::Entry>, FleetError> {
        // The stream's subject counts, a plain request: `Store::keys` runs a consumer that
        // waits for a last message, which keeps it waiting while hosts keep reporting.
        let prefix = format!("$KV.{}.", self.name);
        let mut subjects = self
            .store
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| self.err("listing the keys")(e.into()))?;
        let mut names = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| self.err("listing the keys")(e.into()))?;
            if let Some(key) = subject.strip_prefix(&prefix) {
                names.push(key.to_owned());
            }
        }
        names.sort();
        let mut out = Vec::new();
        for key in names {
            if let Some(entry) = self.latest(&key).await?
                && entry.operation == kv::Operation::Put
            {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// The value of one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub format: String,
    /// `operator@host` of whoever published it.
    pub published_by: String,
    pub published_at: Timestamp,
    /// Set by `edgeblock rollback`: the revision whose policy this one republishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// The policy, its includes and its signatures.
    pub bundle: Bundle,
}

impl Published {
    pub fn new(bundle: Bundle, published_by: String, rollback_of: Option<u64>) -> Self {
        Self {
            format: FORMAT.into(),
            published_by,
            published_at: Timestamp::now(),
            rollback_of,
            bundle,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse a revision's value; `location` names it in errors.
    pub fn from_json(value: &[u8], location: &str) -> Result<Self, FleetError> {
        let bad = |problem: String| FleetError::BadValue {
            location: location.into(),
            problem,
        };
        let published: Self = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
        if published.format != FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {FORMAT:?}",
                Escaped(&published.format).to_string()
            )));
        }
        published.bundle.check_format(Path::new(location))?;
        Ok(published)
    }

    /// The bundled files, named `<location>/<policy file name>` in messages.
    pub fn files(&self, location: &str) -> PolicyFiles {
        self.bundle.files(Path::new(location))
    }

    /// Validate the policy as `check --offline` does.
    pub fn parse(&self, location: &str, now: Timestamp) -> Result<Policy, PolicyErrors> {
        self.files(location).parse(now)
    }
}

/// How a revision is named in messages and audit records: `nats://HOST:PORT/B/K@REV`.
pub fn revision_location(source: &Source, revision: u64) -> String {
    format!("{source}@{revision}")
}

/// What a host reports into the status bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    /// The key the host follows.
    pub key: String,
    /// The revision in force, if one is.
    pub revision: Option<u64>,
    /// The compiled hash of that revision's policy, as `edgeblock check` prints it.
    pub hash: Option<String>,
    pub applied_at: Option<Timestamp>,
    /// The newest revision this host refused, if newer than the one in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
    /// The host is running from its cache because NATS was unreachable when it started.
    #[serde(default)]
    pub from_cache: bool,
    pub reported_at: Timestamp,
    /// How often the host reports, so that a silent one can be told apart.
    pub report_interval_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub revision: u64,
    pub error: String,
}

/// One revision as a daemon receives it.
#[derive(Clone, Debug)]
pub struct Revision {
    pub revision: u64,
    /// `None`: the key was deleted or purged.
    pub value: Option<Vec<u8>>,
}

impl From<kv::Entry> for Revision {
    fn from(e: kv::Entry) -> Self {
        let value = (e.operation == kv::Operation::Put).then(|| e.value.to_vec());
        Self {
            revision: e.revision,
            value,
        }
    }
}

/// Follow `source` for a daemon until `revisions` closes: send every new revision of the key
/// (the latest one first, on every (re)connection), and put `status` into the status bucket
/// whenever it changes and every `interval`. Reconnects on any failure, with backoff.
pub async fn follow(
    source: Source,
    auth: Auth,
    host: String,
    interval: Duration,
    revisions: mpsc::UnboundedSender<Revision>,
    mut status: watch::Receiver<HostStatus>,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        let result = session(&source, &auth, &host, interval, &revisions, &mut status).await;
        // A connection that held for a while was good: retry the next loss quickly.
        if started.elapsed() > 5 * MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        }
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(event = "fleet-disconnected", source = %source, error = %e, "NATS unreachable; filtering with the policy in force, retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if revisions.is_closed() {
            return;
        }
    }
}

/// One connection: Ok when the daemon is gone, Err when the connection is.
async fn session(
    source: &Source,
    auth: &Auth,
    host: &str,
    interval: Duration,
    revisions: &mpsc::UnboundedSender<Revision>,
    status: &mut watch::Receiver<HostStatus>,
) -> Result<(), FleetError> {
    let (lost_tx, mut lost) = mpsc::unbounded_channel();
    let client = auth
        .options(&format!("edgeblock {host}"))
        .event_callback(move |event| {
            let lost = lost_tx.clone();
            async move {
                if matches!(
                    event,
                    async_nats::Event::Disconnected | async_nats::Event::Closed
                ) {
                    let _ = lost.send(());
                }
            }
        })
        .connect(source.server.0.as_str())
        .await
        .map_err(|error| FleetError::Connect {
            server: source.server.to_string(),
            error,
        })?;
    let policy = Bucket::open(&client, &source.server, &source.bucket, None).await?;
    let reports = Bucket::open(
        &client,
        &source.server,
        &status_bucket(&source.bucket),
        Some(1),
    )
    .await?;
    let mut entries = policy
        .store
        .watch_with_history(&source.key)
        .await
        .map_err(|e| policy.err("watching the key")(e.into()))?;
    tracing::info!(event = "fleet-connected", source = %source, "following the policy key");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut newest = 0;
    loop {
        tokio::select! {
            entry = entries.next() => match entry {
                Some(Ok(entry)) => {
                    newest = newest.max(entry.revision);
                    if revisions.send(entry.into()).is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(policy.err("watching the key")(e.into())),
                None => return Err(policy.err("watching the key")("the watch ended".into())),
            },
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                report(&reports, host, status).await?;
            }
            _ = tick.tick() => {
                report(&reports, host, status).await?;
                // A watch that silently stalled would leave the host behind: compare.
                if let Some(latest) = policy.latest(&source.key).await?
                    && latest.revision > newest
                {
                    newest = latest.revision;
                    if revisions.send(latest.into()).is_err() {
                        return Ok(());
                    }
                }
            }
            Some(()) = lost.recv() => {
                return Err(policy.err("connection")("lost the connection".into()));
            }
        }
    }
}

async fn report(
    bucket: &Bucket,
    host: &str,
    status: &mut watch::Receiver<HostStatus>,
) -> Result<(), FleetError> {
    let mut s = status.borrow_and_update().clone();
    s.reported_at = Timestamp::now();
    let value = serde_json::to_vec(&s).unwrap_or_default();
    bucket.put(host, value).await.map(drop)
}

/// A daemon's cached revision, in its data directory: what it filters with when NATS is down
/// at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cache {
    pub bucket: String,
    pub key: String,
    pub revision: u64,
    pub value: Published,
}

/// The file under the data directory.
pub const CACHE_FILE: &str = "fleet-policy.json";

impl Cache {
    pub fn save(&self, data_dir: &Path) -> Result<(), crate::runtime::RuntimeError> {
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::runtime::write_atomic(&data_dir.join(CACHE_FILE), &text)
    }

    /// The cached revision of `source`, if any; a cache of another bucket or key is ignored.
    pub fn load(data_dir: &Path, source: &Source) -> Result<Option<Self>, FleetError> {
        let path = data_dir.join(CACHE_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(FleetError::BadValue {
                    location: path.display().to_string(),
                    problem: e.to_string(),
                });
            }
        };
        let cache: Self = serde_json::from_slice(&text).map_err(|e| FleetError::BadValue {
            location: path.display().to_string(),
            problem: e.to_string(),
        })?;
        Ok((cache.bucket == source.bucket && cache.key == source.key).then_some(cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_refuse_what_is_not_one() {
        let s: Source = "nats://127.0.0.1:4222/fleet/edge".parse().expect("valid");
        assert_eq!(s.server.to_string(), "nats://127.0.0.1:4222");
        assert_eq!((s.bucket.as_str(), s.key.as_str()), ("fleet", "edge"));
        assert_eq!(s.to_string(), "nats://127.0.0.1:4222/fleet/edge");
        let tls: Source = "tls://nats.example:4222/b/k".parse().expect("valid");
        assert_eq!(tls.server.to_string(), "tls://nats.example:4222");
        for bad in [
            "nats://127.0.0.1:4222/fleet",
            "http://h:1/b/k",
            "nats://user:secret@h:1/b/k",
            "nats://h:1/b/k/extra",
            "nats://h:1/b.x/k",
            "nats://h:1//k",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad} must be refused");
        }
        assert!("nats://h:4222".parse::<Server>().is_ok());
        assert!("nats://h:4222/b".parse::<Server>().is_err());
    }

    #[test]
    fn repeated_causes_are_said_once() {
        let text = "failed to get the bucket: jetstream error: stream not found (code 404): \
                    failed to get the bucket: jetstream error: stream not found (code 404)";
        assert_eq!(
            concise(&text),
            "failed to get the bucket: jetstream error: stream not found (code 404)"
        );
    }

    #[test]
    fn credentials_files_must_be_private_and_well_formed() {
        let dir = std::env::temp_dir().join(format!("eb-fleet-creds-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("creds.toml");
        let write = |text: &str, mode: u32| {
            fs::write(&file, text).expect("write");
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("token = \"s3cret\"\n", 0o600);
        let auth = Auth::load(Some(&file), None).expect("token file");
        assert!(auth.credential == Some(Credential::Token("s3cret".into())));
        assert!(
            !format!("{auth:?}").contains("s3cret"),
            "Debug leaks the token"
        );
        write("user = \"u\"\npassword = \"p\"\n", 0o600);
        assert!(Auth::load(Some(&file), None).is_ok());
        write("token = \"s3cret\"\n", 0o644);
        let e = Auth::load(Some(&file), None).expect_err("world-readable");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        write("user = \"u\"\n", 0o600);
        assert!(
            Auth::load(Some(&file), None).is_err(),
            "user without password"
        );
        write("token = \"t\"\nuser = \"u\"\npassword = \"p\"\n", 0o600);
        assert!(Auth::load(Some(&file), None).is_err(), "both kinds");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_published_value_round_trips_and_refuses_other_formats() {
        let files = PolicyFiles {
            path: PathBuf::from("/etc/edgeblock/policy.toml"),
            text:
                "[[rule]]\nname = \"r\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\ninclude = [\"l.txt\"]\n"
                    .into(),
            includes: [("l.txt".to_owned(), Some("198.51.100.0/24\n".to_owned()))].into(),
        };
        let p = Published::new(Bundle::new(files, Vec::new()), "op@h".into(), None);
        let back = Published::from_json(&p.to_json(), "nats://h:1/b/k@3").expect("round trip");
        assert_eq!(back, p);
        let policy = back
            .parse("nats://h:1/b/k@3", Timestamp::UNIX_EPOCH)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(policy.rules[0].prefixes.len(), 2, "the include is inlined");
        let mut other = p.clone();
        other.format = "something-else".into();
        assert!(Published::from_json(&other.to_json(), "x").is_err());
        assert!(Published::from_json(b"[[rule]]", "x").is_err());
    }
}
