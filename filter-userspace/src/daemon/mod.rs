//! `edgeblock run`: keep the filter on the interfaces and the maps equal to the policy file
//! plus the runtime layer, expire what expires, repair what others remove, serve metrics.
//!
//! One control loop owns the loaded filter and reacts to inputs: file changes (debounced),
//! SIGHUP, the next expiry, the repair tick, metrics scrapes, SIGTERM/SIGINT. Every change is
//! taken under the same lock as the CLI's, and every change made or refused goes through
//! [`Daemon::record`].
//!
//! Modules: `events` (what happened, logged), `watch` (inotify), `metrics` (Prometheus),
//! `repair` (pins and links put back), `fleet` (the policy from a NATS key instead of a file).

pub mod events;
pub mod fleet;
pub mod metrics;
mod repair;
mod watch;

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use jiff::Timestamp;
use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    time::Instant,
};

pub use events::{Event, Trigger};
pub use fleet::FleetConfig;
use metrics::DaemonStats;

use crate::{
    apply::apply,
    audit::{self, Action, Actor, Entry, Log},
    compile::hash_hex,
    enforce::{prepare, unix},
    loader::{AttachMode, Filter, LoaderError},
    lock::{Lock, LockError},
    maps::MapsError,
    pins::Pins,
    policy::{self, Policy},
    runtime::{BlockStore, RuntimeBlock, RuntimeError, create_private_dir, next_expiry},
    signing::{self, LoadError, TrustStore},
    snapshot,
};

/// Everything `edgeblock run` was told.
#[derive(Clone, Debug)]
pub struct Config {
    /// The policy file; with `fleet`, only the name the policy goes by in logs and records.
    pub policy: PathBuf,
    /// Take the policy from a NATS key instead of the file (docs/fleet.md).
    pub fleet: Option<FleetConfig>,
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    pub metrics: Option<SocketAddr>,
    /// Remove the filter from the interfaces on SIGTERM/SIGINT (default: leave it).
    pub detach_on_exit: bool,
    pub pins: Pins,
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Trusted public keys: when it holds any, every policy version must be signed.
    pub trusted_dir: PathBuf,
    /// Who the audit records name (default: $SUDO_USER, $USER, uid).
    pub operator: Option<String>,
    pub lock_timeout: Duration,
    /// How often pins and links are checked.
    pub repair_interval: Duration,
    /// Quiet time after a file event before reloading (editors write in several steps).
    pub debounce: Duration,
}

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(
        "{path}: {errors}\n{path}: the policy is invalid and no earlier policy was recorded in the data directory; fix it and start again"
    )]
    Policy {
        path: PathBuf,
        errors: policy::PolicyErrors,
    },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Signature(#[from] crate::signing::SignatureError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("watching the policy with inotify: {0}")]
    Watch(#[from] notify::Error),
    #[error("metrics address {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the control loop reacts to, besides its timers.
pub enum Input {
    PolicyChanged,
    BlocksChanged,
    Hangup,
    Stop,
    Scrape(oneshot::Sender<Result<String, MapsError>>),
    /// A revision of the fleet key arrived.
    Revision(crate::fleet::Revision),
}

/// Run until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io {
            what: "starting the async runtime",
            source,
        })?;
    runtime.block_on(main_loop(config))
}

struct Daemon {
    config: Config,
    filter: Filter,
    /// The last good policy file (not merged).
    policy: Policy,
    blocks: Vec<RuntimeBlock>,
    store: BlockStore,
    stats: DaemonStats,
    watch: watch::Watch,
    /// Interfaces whose repair failed, so a persistent failure is logged once.
    broken: BTreeSet<String>,
    /// Every change and refusal is appended here (`edgeblock audit`).
    audit: Log,
    actor: Actor,
    trust: TrustStore,
    /// Who signed the last good policy.
    signers: Vec<String>,
    /// The fleet key the policy comes from, when it does.
    fleet: Option<fleet::State>,
}

async fn main_loop(mut config: Config) -> Result<(), DaemonError> {
    if config.fleet.is_none() {
        config.policy = std::path::absolute(&config.policy).map_err(|source| DaemonError::Io {
            what: "resolving the policy path",
            source,
        })?;
    }
    config.data_dir = std::path::absolute(&config.data_dir).map_err(|source| DaemonError::Io {
        what: "resolving the data directory",
        source,
    })?;
    create_private_dir(&config.data_dir).map_err(|source| DaemonError::Io {
        what: "creating the data directory",
        source,
    })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Signal handlers first: SIGHUP's default action would end the process.
    let mut hangup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let listener = match config.metrics {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };

    let store = BlockStore::new(&config.data_dir);
    let watch = watch::Watch::new(store.path().to_path_buf(), tx.clone())?;
    let mut daemon = tokio::task::block_in_place(|| Daemon::start(config, store, watch))?;
    if let Some(fleet) = &daemon.fleet {
        fleet.spawn(tx.clone());
    }

    if let Some(listener) = listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(event = "metrics", address = %addr, "serving metrics at /metrics");
        }
        tokio::spawn(metrics::serve(listener, tx.clone()));
    }
    let signals = tx.clone();
    tokio::spawn(async move {
        loop {
            let input = tokio::select! {
                _ = hangup.recv() => Input::Hangup,
                _ = terminate.recv() => Input::Stop,
                _ = interrupt.recv() => Input::Stop,
            };
            if signals.send(input).is_err() {
                break;
            }
        }
    });

    let mut repair_tick = tokio::time::interval(daemon.config.repair_interval);
    repair_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pending debounced reloads: (deadline, policy file, blocks file).
    let mut pending: Option<(Instant, bool, bool)> = None;
    loop {
        let expiry = daemon.expiry_deadline();
        let debounce = pending.map(|(at, ..)| at);
        tokio::select! {
            input = rx.recv() => match input {
                None | Some(Input::Stop) => break,
                Some(Input::Hangup) => tokio::task::block_in_place(|| {
                    daemon.reload_policy(Trigger::Hangup);
                }),
                Some(Input::PolicyChanged) => {
                    let (_, _, b) = pending.unwrap_or((Instant::now(), false, false));
                    pending = Some((Instant::now() + daemon.config.debounce, true, b));
                }
                Some(Input::BlocksChanged) => {
                    let (_, p, _) = pending.unwrap_or((Instant::now(), false, false));
                    pending = Some((Instant::now() + daemon.config.debounce, p, true));
                }
                Some(Input::Scrape(reply)) => {
                    daemon.refresh_interfaces();
                    let _ = reply.send(metrics::render(&daemon.filter, &daemon.stats));
                }
                Some(Input::Revision(revision)) => tokio::task::block_in_place(|| {
                    daemon.apply_revision(revision);
                }),
            },
            () = sleep_until(debounce), if debounce.is_some() => {
                let (_, policy, blocks) = pending.take().unwrap_or((Instant::now(), false, false));
                tokio::task::block_in_place(|| {
                    if policy {
                        daemon.reload_policy(Trigger::File);
                    } else if blocks {
                        daemon.reload_blocks();
                    }
                });
            }
            () = tokio::time::sleep_until(expiry) => {
                tokio::task::block_in_place(|| daemon.expire());
            }
            _ = repair_tick.tick() => {
                tokio::task::block_in_place(|| daemon.repair());
            }
        }
    }
    tokio::task::block_in_place(|| daemon.stop());
    Ok(())
}

fn sig_err(source: std::io::Error) -> DaemonError {
    DaemonError::Io {
        what: "installing the signal handlers",
        source,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The longest the loop sleeps towards an expiry: a wall-clock jump (NTP step, suspend) is
/// noticed within this, since the timer runs on the monotonic clock.
const MAX_EXPIRY_SLEEP: Duration = Duration::from_secs(60);

impl Daemon {
    fn start(config: Config, store: BlockStore, watch: watch::Watch) -> Result<Self, DaemonError> {
        let now = Timestamp::now();
        // A change that could not be recorded is not made: the log opens first.
        let audit = Log::open(&config.data_dir)?;
        let trust = TrustStore::load(&config.trusted_dir)?;
        // An invalid or badly signed file falls back to the last applied policy, which passed
        // the same checks when it was applied.
        let mut fleet_start = None;
        let loaded = match &config.fleet {
            Some(f) => {
                let (policy, signers, start) = fleet::initial(&config, f, &trust, now)?;
                fleet_start = Some((f.clone(), start));
                Ok((policy, signers))
            }
            None => signing::load_checked(&config.policy, now, &trust)
                .map(|(p, verified)| (p, verified.map(|v| v.signers).unwrap_or_default())),
        };
        let (policy, signers, refused) = match loaded {
            Ok((p, signers)) => (p, signers, None),
            Err(error) => match snapshot::load(&config.data_dir, now) {
                Some(Ok(p)) => (p, Vec::new(), Some(error.to_string())),
                _ => {
                    return Err(match error {
                        LoadError::Invalid(errors) => DaemonError::Policy {
                            path: config.policy.clone(),
                            errors,
                        },
                        LoadError::Signature(e) => DaemonError::Signature(e),
                    });
                }
            },
        };
        let (filter, adopted) = {
            let _lock = lock(&config)?;
            let adopted = config.pins.exists();
            let filter = Filter::load_or_open(&config.pins)?;
            (filter, adopted)
        };
        let config_operator = config.operator.clone();
        let mut daemon = Self {
            stats: DaemonStats {
                interfaces: config
                    .interfaces
                    .iter()
                    .map(|i| (i.clone(), false))
                    .collect(),
                ..DaemonStats::default()
            },
            config,
            filter,
            policy: policy.clone(),
            blocks: Vec::new(),
            store,
            watch,
            broken: BTreeSet::new(),
            actor: Actor::current(config_operator.as_deref()),
            audit,
            trust,
            signers: Vec::new(),
            fleet: None,
        };
        daemon.record(Event::Started {
            policy: daemon.config.policy.clone(),
            interfaces: daemon.config.interfaces.clone(),
            adopted,
        });
        if let Some(errors) = refused {
            daemon.refused(Trigger::Start, errors);
            tracing::warn!(
                event = "fallback",
                snapshot = %daemon.config.data_dir.join(snapshot::SNAPSHOT_FILE).display(),
                "enforcing the last applied policy until the file is fixed"
            );
        }
        // Apply before attaching: a freshly loaded filter goes on the wire already holding
        // the policy, never empty.
        daemon
            .enforce(Trigger::Start, policy, signers)
            .map_err(DaemonError::Refused)?;
        if let Some((config, start)) = fleet_start {
            daemon.fleet = Some(fleet::State::new(
                config,
                start,
                &daemon.policy,
                &daemon.config.data_dir,
            ));
        }
        daemon.watch_policy_files();
        let _lock = lock(&daemon.config)?;
        for iface in daemon.config.interfaces.clone() {
            daemon.filter.attach(&iface, daemon.config.mode)?;
        }
        daemon.refresh_interfaces();
        Ok(daemon)
    }

    /// Log and count one change, made or refused. The single place every change goes
    /// through.
    fn record(&mut self, event: Event) {
        event.log();
        if let Some(entry) = self.audit_entry(&event)
            && let Err(e) = self.audit.append(entry)
        {
            // The change is in force already (or was refused); say loudly that its record
            // is missing rather than undo it.
            tracing::error!(event = "audit-failed", error = %e, "could not record the change in the audit log");
        }
        match &event {
            Event::Applied { .. } => self.stats.last_reload = Some((Timestamp::now(), true)),
            Event::Refused { .. } => {
                self.stats.reload_errors += 1;
                self.stats.last_reload = Some((Timestamp::now(), false));
            }
            Event::Repaired { .. } => self.stats.repairs += 1,
            _ => {}
        }
    }

    /// The audit record of an event, if it changed what the filter does or refused a change.
    /// Runtime blocks are recorded by `edgeblock block`/`unblock`, which make that change;
    /// the daemon records their expiry.
    fn audit_entry(&self, event: &Event) -> Option<Entry> {
        let policy = Some(self.config.policy.display().to_string());
        let entry = |action| Entry::new(&self.actor, action);
        match event {
            Event::Applied {
                trigger,
                hash,
                unchanged: false,
                hash_before,
                changes,
                signers,
                ..
            } => Some(Entry {
                policy,
                policy_hash_before: hash_before.clone(),
                policy_hash_after: Some(hash.clone()),
                signers: signers.clone(),
                rules: changes.clone(),
                detail: Some(format!("edgeblock run ({trigger}{})", self.revision_note())),
                ..entry(match trigger {
                    Trigger::Expiry => Action::Expiry,
                    Trigger::Rollback => Action::Rollback,
                    _ => Action::Apply,
                })
            }),
            Event::Refused {
                trigger, errors, ..
            } => Some(Entry {
                policy,
                policy_hash_before: self.live_hash(),
                detail: Some(format!(
                    "edgeblock run ({trigger}{}): {errors}",
                    self.revision_note()
                )),
                ..entry(Action::Refused)
            }),
            Event::Started {
                interfaces,
                adopted,
                ..
            } => Some(Entry {
                policy,
                policy_hash_before: self.live_hash(),
                interface: Some(interfaces.join(",")),
                detail: Some(format!(
                    "edgeblock run started ({})",
                    if *adopted {
                        "adopted the pinned filter"
                    } else {
                        "loaded the filter"
                    }
                )),
                ..entry(Action::Attach)
            }),
            Event::Repaired { what } => Some(Entry {
                detail: Some(format!("edgeblock run repaired: {what}")),
                ..entry(Action::Attach)
            }),
            Event::Stopping { detached } if !detached.is_empty() => Some(Entry {
                interface: Some(detached.join(",")),
                detail: Some("edgeblock run stopped with --detach-on-exit".into()),
                ..entry(Action::Detach)
            }),
            Event::RuleExpired {
                rule,
                location,
                expires,
            } => Some(Entry {
                policy,
                detail: Some(format!("rule {rule:?} ({location}) expired at {expires}")),
                ..entry(Action::Expiry)
            }),
            Event::BlockExpired { block } => Some(Entry {
                detail: Some(format!(
                    "runtime block {} {} {} ({}, by {}) expired",
                    block.action, block.direction, block.prefix, block.reason, block.who
                )),
                ..entry(Action::Expiry)
            }),
            _ => None,
        }
    }

    /// The hash of the policy in force, if any.
    fn live_hash(&self) -> Option<String> {
        self.filter
            .maps
            .config()
            .ok()
            .filter(|c| c.generation > 0)
            .map(|c| hash_hex(&c.policy_hash))
    }

    fn refused(&mut self, trigger: Trigger, errors: String) {
        self.record(Event::Refused {
            trigger,
            policy: self.config.policy.clone(),
            errors,
        });
    }

    /// Reread the policy file; an invalid version is refused and the last good one stays.
    fn reload_policy(&mut self, trigger: Trigger) {
        if self.fleet.is_some() {
            // No file to reread: apply the revision in force again (with the runtime layer).
            let _ = self.enforce(trigger, self.policy.clone(), self.signers.clone());
            return;
        }
        match signing::load_checked(&self.config.policy, Timestamp::now(), &self.trust) {
            Ok((p, verified)) => {
                for note in &p.notes {
                    tracing::info!(event = "note", policy = %self.config.policy.display(), "{note}");
                }
                let signers = verified.map(|v| v.signers).unwrap_or_default();
                if self.enforce(trigger, p, signers).is_ok() {
                    self.watch_policy_files();
                }
            }
            Err(error) => self.refused(trigger, error.to_string()),
        }
    }

    /// The runtime blocks file changed: apply it if its content did.
    fn reload_blocks(&mut self) {
        match self.store.load() {
            Ok(blocks) if blocks == self.blocks => {}
            Ok(_) => {
                let _ = self.enforce(Trigger::Blocks, self.policy.clone(), self.signers.clone());
            }
            Err(e) => self.refused(Trigger::Blocks, e.to_string()),
        }
    }

    /// Merge the runtime layer (read now, under the lock) onto `policy`, check it and apply
    /// it. On success `policy` becomes the last good one and is recorded for the CLI; on
    /// failure nothing changes and the error is recorded.
    fn enforce(
        &mut self,
        trigger: Trigger,
        policy: Policy,
        signers: Vec<String>,
    ) -> Result<(), String> {
        let result = self.try_enforce(trigger, &policy, &signers);
        match result {
            Ok(event) => {
                self.policy = policy;
                self.signers = signers;
                self.record(event);
                Ok(())
            }
            Err(errors) => {
                self.refused(trigger, errors.clone());
                Err(errors)
            }
        }
    }

    fn try_enforce(
        &mut self,
        trigger: Trigger,
        policy: &Policy,
        signers: &[String],
    ) -> Result<Event, String> {
        let _lock = lock(&self.config).map_err(|e| e.to_string())?;
        let now = Timestamp::now();
        let mut blocks = self.store.load().map_err(|e| e.to_string())?;
        if blocks.iter().any(|b| b.expired(now)) {
            // Prune what expired, so `list` and the file agree with the maps.
            let (expired, kept): (Vec<_>, Vec<_>) =
                blocks.into_iter().partition(|b| b.expired(now));
            self.store.save(&kept).map_err(|e| e.to_string())?;
            for block in expired {
                if self.blocks.contains(&block) {
                    self.record(Event::BlockExpired { block });
                }
            }
            blocks = kept;
        }
        let prepared =
            prepare(policy, &blocks, self.store.path(), now).map_err(|e| e.to_string())?;
        if !prepared.lockout.is_empty() {
            let list: Vec<String> = prepared.lockout.iter().map(ToString::to_string).collect();
            return Err(format!(
                "{}\n{} lockout problem(s); nothing was changed",
                list.join("\n"),
                list.len()
            ));
        }
        let before = self.live_hash();
        let plan = apply(
            &mut self.filter.maps,
            &prepared.compiled,
            &prepared.targets,
            unix(now),
        )
        .map_err(|e| format!("applying failed part-way (the next apply converges): {e}"))?;
        snapshot::save(&self.config.data_dir, policy).map_err(|e| e.to_string())?;
        let (added, removed, changed) = plan.counts();
        let unchanged = plan.rules_added.is_empty()
            && plan.rules_removed.is_empty()
            && plan.rules_changed.is_empty()
            && added + removed + changed == 0;
        // Runtime blocks that appeared or went since the last apply (`block`/`unblock`).
        let new_blocks: Vec<RuntimeBlock> = blocks
            .iter()
            .filter(|b| !self.blocks.contains(b))
            .cloned()
            .collect();
        for block in new_blocks {
            self.record(Event::Blocked { block });
        }
        for b in self.blocks.clone().iter().filter(|b| !blocks.contains(b)) {
            if !b.expired(now) {
                self.record(Event::Unblocked { block: b.clone() });
            }
        }
        self.stats.runtime_blocks = blocks.len();
        self.blocks = blocks;
        let generation = self.filter.maps.config().map_or(0, |c| c.generation);
        Ok(Event::Applied {
            trigger,
            policy: policy.path.clone(),
            generation,
            hash: hash_hex(&prepared.compiled.hash),
            rules: prepared.compiled.rules.len(),
            prefixes_added: added,
            prefixes_removed: removed,
            prefixes_changed: changed,
            changes: audit::rule_changes(&plan, &prepared.merged),
            rules_added: plan.rules_added,
            rules_removed: plan.rules_removed,
            unchanged,
            hash_before: before,
            signers: signers.to_vec(),
        })
    }

    /// When the next rule or block expires, as a monotonic deadline.
    fn expiry_deadline(&self) -> Instant {
        let now = Timestamp::now();
        let wait = next_expiry(&self.policy, &self.blocks, now)
            .and_then(|at| Duration::try_from(at.duration_since(now)).ok())
            .unwrap_or(MAX_EXPIRY_SLEEP)
            .min(MAX_EXPIRY_SLEEP);
        Instant::now() + wait
    }

    /// Take out of the maps whatever has expired by now.
    fn expire(&mut self) {
        let now = Timestamp::now();
        let rules: Vec<Event> = self
            .policy
            .rules
            .iter()
            .filter(|r| r.expires.is_some_and(|e| e <= now))
            .map(|r| Event::RuleExpired {
                rule: r.name.clone(),
                location: r.location.to_string(),
                expires: r.expires.unwrap_or(now),
            })
            .collect();
        let blocks_due = self.blocks.iter().any(|b| b.expired(now));
        if rules.is_empty() && !blocks_due {
            return;
        }
        let mut policy = self.policy.clone();
        policy.rules.retain(|r| r.expires.is_none_or(|e| e > now));
        if self
            .enforce(Trigger::Expiry, policy, self.signers.clone())
            .is_ok()
        {
            for event in rules {
                self.record(event);
            }
        }
    }

    /// Watch the policy file and every file its rules' prefixes came from.
    fn watch_policy_files(&mut self) {
        if self.fleet.is_some() {
            return;
        }
        // The signature beside the policy too: signing a version is what makes it apply.
        let mut files: BTreeSet<PathBuf> = BTreeSet::from([
            self.config.policy.clone(),
            signing::sig_path(&self.config.policy),
        ]);
        // Distinct files first: a list of a million lines is one file.
        let included: BTreeSet<&std::path::Path> = self
            .policy
            .rules
            .iter()
            .flat_map(|r| r.prefixes.iter().map(|p| &*p.location.file))
            .collect();
        files.extend(included.into_iter().map(std::path::Path::to_path_buf));
        // Only the snapshot's own name would show up when running from the fallback.
        files.retain(|f| !f.starts_with(&self.config.data_dir));
        if let Err(e) = self.watch.set_policy_files(files) {
            tracing::error!(error = %e, "cannot watch the policy's files; SIGHUP still reloads");
        }
    }

    fn refresh_interfaces(&mut self) {
        self.stats.interfaces = repair::interface_health(&self.filter, &self.config.interfaces);
    }

    fn repair(&mut self) {
        repair::run(self);
        self.refresh_interfaces();
    }

    fn stop(mut self) {
        let mut detached = Vec::new();
        if self.config.detach_on_exit {
            match lock(&self.config) {
                Ok(_lock) => {
                    for iface in self.config.interfaces.clone() {
                        match self.filter.detach(&iface) {
                            Ok(_) => detached.push(iface),
                            Err(e) => {
                                tracing::error!(interface = %iface, error = %e, "detach failed")
                            }
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot detach: the lock is held"),
            }
        }
        self.record(Event::Stopping { detached });
    }
}

fn lock(config: &Config) -> Result<Lock, LockError> {
    Lock::acquire(&config.state_dir, config.lock_timeout, |holder| {
        tracing::info!(holder, "waiting for another edgeblock to finish");
    })
}
