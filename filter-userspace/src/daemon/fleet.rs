//! The daemon's other policy source: a key in a NATS JetStream bucket instead of a file
//! (`edgeblock run --policy-source nats://HOST:PORT/BUCKET/KEY`, docs/fleet.md).
//!
//! [`crate::fleet::follow`] runs as a task and hands each revision to the control loop;
//! [`super::Daemon::apply_revision`] validates it on this host (signatures against the trusted
//! keys, lockout against this host's addresses) and applies it through the same
//! [`super::Daemon::enforce`] as a file edit, so a refused revision is recorded like a refused
//! edit and leaves the last good policy in force. What the host runs is reported into the
//! status bucket, and the last good revision is cached in the data directory for a start
//! while NATS is down.

use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};

use super::{Config, Daemon, DaemonError, Event, Input, Trigger};
use crate::{
    compile::{compile, hash_hex},
    fleet::{
        self, Auth, Bucket, Cache, HostStatus, Published, Rejected, Revision, Source,
        revision_location,
    },
    policy::Policy,
    signing::{TrustStore, check_signatures},
};

/// How long a start without a cached revision waits for NATS.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the policy comes from when it is not a file.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub source: Source,
    pub auth: Auth,
    /// This host's name in the status bucket.
    pub host: String,
    /// How often the host reports even when nothing changed.
    pub report_interval: Duration,
}

/// What the daemon knows about the fleet key.
pub(super) struct State {
    pub(super) config: FleetConfig,
    /// The revision in force.
    applied: u64,
    hash: String,
    applied_at: Timestamp,
    rejected: Option<Rejected>,
    /// Started from the cache and has not heard from NATS since.
    from_cache: bool,
    /// The revision being applied, named in the audit records.
    pub(super) pending: Option<u64>,
    status: watch::Sender<HostStatus>,
}

/// A revision that passed validation on this host (not yet the lockout check, which needs the
/// runtime layer: [`Daemon::enforce`] does it).
struct Valid {
    published: Published,
    policy: Policy,
    signers: Vec<String>,
}

/// Parse and validate a revision's value, and check its signatures when this host trusts
/// keys. One problem per line.
fn validate(
    source: &Source,
    revision: &Revision,
    trust: &TrustStore,
    now: Timestamp,
) -> Result<Valid, String> {
    let location = revision_location(source, revision.revision);
    let value = revision.value.as_deref().ok_or_else(|| {
        format!("{location}: the key was deleted; the last good revision stays in force")
    })?;
    let published = Published::from_json(value, &location).map_err(|e| e.to_string())?;
    let files = published.files(&location);
    let policy = files.parse(now).map_err(|errors| {
        format!(
            "{errors}\n{location}: {} error(s); nothing was changed",
            errors.0.len()
        )
    })?;
    let signers = check_signatures(&files, &policy, &published.bundle.signatures, trust)
        .map_err(|e| e.to_string())?
        .map(|v| v.signers)
        .unwrap_or_default();
    Ok(Valid {
        published,
        policy,
        signers,
    })
}

/// The policy a fleet daemon starts with: its cached revision, else the latest one from NATS.
pub(super) fn initial(
    config: &Config,
    fleet: &FleetConfig,
    trust: &TrustStore,
    now: Timestamp,
) -> Result<(Policy, Vec<String>, Start), DaemonError> {
    let refused = |e: String| DaemonError::Refused(e);
    match Cache::load(&config.data_dir, &fleet.source) {
        Ok(Some(cache)) => {
            let revision = Revision {
                revision: cache.revision,
                value: Some(cache.value.to_json()),
            };
            match validate(&fleet.source, &revision, trust, now) {
                Ok(v) => {
                    tracing::info!(
                        event = "fleet-cache",
                        revision = cache.revision,
                        "starting with the cached revision; catching up once NATS answers"
                    );
                    return Ok((
                        v.policy,
                        v.signers,
                        Start {
                            revision: cache.revision,
                            published: v.published,
                            from_cache: true,
                        },
                    ));
                }
                Err(e) => {
                    tracing::warn!(event = "fleet-cache", error = %e, "the cached revision is not valid here; fetching the latest");
                }
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(event = "fleet-cache", error = %e, "cannot read the cache"),
    }
    let fetch = async {
        let client = fleet::connect(&fleet.source.server, &fleet.auth, "edgeblock run").await?;
        let bucket =
            Bucket::open(&client, &fleet.source.server, &fleet.source.bucket, None).await?;
        bucket.latest(&fleet.source.key).await
    };
    let latest = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current()
            .block_on(async { tokio::time::timeout(START_TIMEOUT, fetch).await })
    })
    .map_err(|_| {
        refused(format!(
            "{}: NATS did not answer within {START_TIMEOUT:?} and {} holds no cached revision; \
             start it when NATS is reachable",
            fleet.source,
            config.data_dir.join(fleet::CACHE_FILE).display()
        ))
    })?
    .map_err(|e| {
        refused(format!(
            "{e}\n{} holds no cached revision to start with; start it when NATS is reachable",
            config.data_dir.join(fleet::CACHE_FILE).display()
        ))
    })?
    .ok_or_else(|| {
        refused(format!(
            "{}: the key has no revision yet; `edgeblock publish` one first",
            fleet.source
        ))
    })?;
    let revision = Revision::from(latest);
    let v = validate(&fleet.source, &revision, trust, now).map_err(refused)?;
    Ok((
        v.policy,
        v.signers,
        Start {
            revision: revision.revision,
            published: v.published,
            from_cache: false,
        },
    ))
}

/// The revision a daemon started with.
pub(super) struct Start {
    revision: u64,
    published: Published,
    from_cache: bool,
}

impl State {
    /// After the start's policy was applied.
    pub(super) fn new(
        config: FleetConfig,
        start: Start,
        policy: &Policy,
        data_dir: &std::path::Path,
    ) -> Self {
        save_cache(&config.source, start.revision, &start.published, data_dir);
        let hash = hash_hex(&compile(policy).hash);
        let now = Timestamp::now();
        let status = HostStatus {
            host: config.host.clone(),
            key: config.source.key.clone(),
            revision: Some(start.revision),
            hash: Some(hash.clone()),
            applied_at: Some(now),
            rejected: None,
            from_cache: start.from_cache,
            reported_at: now,
            report_interval_ms: config.report_interval.as_millis() as u64,
        };
        Self {
            config,
            applied: start.revision,
            hash,
            applied_at: now,
            rejected: None,
            from_cache: start.from_cache,
            pending: None,
            status: watch::Sender::new(status),
        }
    }

    fn publish_status(&self) {
        self.status.send_replace(HostStatus {
            host: self.config.host.clone(),
            key: self.config.source.key.clone(),
            revision: Some(self.applied),
            hash: Some(self.hash.clone()),
            applied_at: Some(self.applied_at),
            rejected: self.rejected.clone(),
            from_cache: self.from_cache,
            reported_at: Timestamp::now(),
            report_interval_ms: self.config.report_interval.as_millis() as u64,
        });
    }

    /// Start following the key: revisions arrive on `tx` as [`Input::Revision`].
    pub(super) fn spawn(&self, tx: mpsc::UnboundedSender<Input>) {
        let (rev_tx, mut rev_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(r) = rev_rx.recv().await {
                if tx.send(Input::Revision(r)).is_err() {
                    break;
                }
            }
        });
        let c = &self.config;
        tokio::spawn(fleet::follow(
            c.source.clone(),
            c.auth.clone(),
            c.host.clone(),
            c.report_interval,
            rev_tx,
            self.status.subscribe(),
        ));
    }
}

fn save_cache(source: &Source, revision: u64, published: &Published, data_dir: &std::path::Path) {
    let cache = Cache {
        bucket: source.bucket.clone(),
        key: source.key.clone(),
        revision,
        value: published.clone(),
    };
    if let Err(e) = cache.save(data_dir) {
        tracing::error!(event = "fleet-cache", error = %e, "cannot cache the revision; a start while NATS is down would use an older one");
    }
}

impl Daemon {
    /// A revision arrived from NATS: apply it if it is newer than the one in force and valid
    /// here; else record the refusal. Either way, report.
    pub(super) fn apply_revision(&mut self, revision: Revision) {
        let trust = &self.trust;
        let Some(state) = self.fleet.as_mut() else {
            return;
        };
        state.from_cache = false;
        let seen = revision.revision <= state.applied
            || state
                .rejected
                .as_ref()
                .is_some_and(|r| revision.revision <= r.revision);
        if seen {
            state.publish_status();
            return;
        }
        let source = state.config.source.clone();
        state.pending = Some(revision.revision);
        let result = match validate(&source, &revision, trust, Timestamp::now()) {
            Err(errors) => {
                self.record(Event::Refused {
                    trigger: Trigger::Fleet,
                    policy: self.config.policy.clone(),
                    errors: errors.clone(),
                });
                Err(errors)
            }
            Ok(v) => {
                let trigger = if v.published.rollback_of.is_some() {
                    Trigger::Rollback
                } else {
                    Trigger::Fleet
                };
                let hash = hash_hex(&compile(&v.policy).hash);
                self.enforce(trigger, v.policy, v.signers)
                    .map(|()| (v.published, hash))
            }
        };
        let data_dir = self.config.data_dir.clone();
        let Some(state) = self.fleet.as_mut() else {
            return;
        };
        state.pending = None;
        match result {
            Ok((published, hash)) => {
                save_cache(&source, revision.revision, &published, &data_dir);
                state.applied = revision.revision;
                state.hash = hash;
                state.applied_at = Timestamp::now();
                state.rejected = None;
            }
            Err(error) => {
                state.rejected = Some(Rejected {
                    revision: revision.revision,
                    error,
                });
            }
        }
        state.publish_status();
    }

    /// ", revision N" while a fleet revision is being applied, for the audit records.
    pub(super) fn revision_note(&self) -> String {
        self.fleet
            .as_ref()
            .and_then(|f| f.pending)
            .map(|r| format!(", revision {r}"))
            .unwrap_or_default()
    }
}
