//! Command-line front end: one file per verb. Parse (clap), validate into plain values, and
//! only then touch the kernel through the library.

mod apply;
mod attach;
mod audit;
mod block;
mod check;
mod detach;
mod fleet;
mod keygen;
mod lookup;
mod notice_server;
mod publish;
mod rollback;
mod run;
mod sign;
mod stats;
mod status;
mod tail;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use edgeblock::{
    audit::{Actor, Log},
    loader::{Filter, Loaded, LoaderError},
    lock::{DEFAULT_STATE_DIR, Lock},
    pins::{DEFAULT_PIN_ROOT, Pins},
    privileges::Need,
    signing::{DEFAULT_TRUSTED_DIR, TrustStore},
};

/// A program being loaded beside a first `apply`'s validation (`Global::preload`).
type Preload = std::thread::JoinHandle<Result<Loaded, LoaderError>>;

/// edgeblock: drop traffic to (and from) blocked prefixes at the NIC driver, with XDP.
///
/// The program, its maps and links are pinned under --pin-root, so filtering continues after
/// this command exits. Typical use: `edgeblock apply policy.toml` then `edgeblock attach eth0`.
#[derive(Debug, Parser)]
#[command(name = "edgeblock", version)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Global {
    /// bpffs directory holding the pinned program, maps and links.
    #[arg(long, env = "EDGEBLOCK_PIN_ROOT", default_value = DEFAULT_PIN_ROOT, global = true)]
    pin_root: PathBuf,
    /// Directory for edgeblock's lock file.
    #[arg(long, env = "EDGEBLOCK_STATE_DIR", default_value = DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,
    /// How long to wait for another edgeblock that is changing state (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    lock_timeout: Duration,
    /// Directory for persistent state: runtime blocks, the audit log, cached policies.
    #[arg(long, env = "EDGEBLOCK_DATA_DIR", default_value = edgeblock::DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// Who is making the change, for the audit log (default: $SUDO_USER, else $USER, else the
    /// uid).
    #[arg(long, env = "EDGEBLOCK_OPERATOR", global = true)]
    operator: Option<String>,
    /// Public keys (*.pub) whose signatures this host accepts, and trust.toml. With no keys
    /// there, signatures are not checked; with keys, `apply` refuses unsigned policies.
    #[arg(long, env = "EDGEBLOCK_TRUSTED_DIR", default_value = DEFAULT_TRUSTED_DIR, global = true)]
    trusted_dir: PathBuf,
}

impl Global {
    fn pins(&self) -> Pins {
        Pins::new(&self.pin_root)
    }

    /// Load the program in the background, if nothing is pinned yet: see `Filter::preload`.
    fn preload(&self) -> Option<Preload> {
        (!self.pins().exists()).then(|| std::thread::spawn(Filter::preload))
    }

    fn lock(&self, verb: &str) -> anyhow::Result<Lock> {
        let lock = Lock::acquire(&self.state_dir, self.lock_timeout, |holder| {
            eprintln!("waiting for another edgeblock ({holder}) to finish...");
        });
        match lock {
            Err(e @ edgeblock::lock::LockError::Timeout { .. }) => {
                Err(anyhow::Error::new(e).context("another edgeblock invocation is changing state"))
            }
            other => other.map_err(|e| privileged(verb, Need::Change, e.into())),
        }
    }

    /// Open the pinned program and maps, for commands that only read them.
    fn open(&self, verb: &str) -> anyhow::Result<Filter> {
        Filter::open(&self.pins()).map_err(|e| privileged(verb, Need::Read, e.into()))
    }

    /// Open the pinned program and maps, loading them first when absent.
    fn load_or_open(&self, verb: &str) -> anyhow::Result<Filter> {
        self.install(verb, None)
    }

    /// [`Self::load_or_open`], with the program a first `apply` loaded while it validated
    /// its policy (`Filter::preload`) when there is one; a preload that failed is not
    /// reported, the ordinary load is made instead and reports its own error.
    fn install(&self, verb: &str, preload: Option<Preload>) -> anyhow::Result<Filter> {
        let pins = self.pins();
        match preload.and_then(|p| p.join().ok()).and_then(Result::ok) {
            Some(loaded) => Filter::install(&pins, loaded),
            None => Filter::load_or_open(&pins),
        }
        .with_context(|| format!("loading edgeblock under {}", pins.root().display()))
        .map_err(|e| privileged(verb, Need::Change, e))
    }

    fn actor(&self) -> Actor {
        Actor::current(self.operator.as_deref())
    }

    /// The audit log, opened before anything changes: a change that could not be recorded is
    /// not made.
    fn audit_log(&self, verb: &str) -> anyhow::Result<Log> {
        Log::open(&self.data_dir)
            .with_context(|| {
                format!(
                    "opening the audit log under {} (--data-dir); nothing was changed",
                    self.data_dir.display()
                )
            })
            .map_err(|e| privileged(verb, Need::Change, e))
    }

    fn trust(&self) -> anyhow::Result<TrustStore> {
        TrustStore::load(&self.trusted_dir).with_context(|| {
            format!(
                "reading the trusted keys in {} (--trusted-dir); nothing was changed",
                self.trusted_dir.display()
            )
        })
    }
}

/// A failure of BPF work, explained by what this process lacks when it lacks something
/// (`edgeblock status` as a normal user would otherwise say "not loaded" or pass on EPERM).
fn privileged(verb: &str, need: Need, error: anyhow::Error) -> anyhow::Error {
    match edgeblock::privileges::lacking(need) {
        Some(why) => error.context(format!("edgeblock {verb} failed: {why}")),
        None => error,
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Attach(attach::Args),
    Detach(detach::Args),
    Check(check::Args),
    Apply(apply::Args),
    Status(status::Args),
    Stats(stats::Args),
    Lookup(lookup::Args),
    NoticeServer(notice_server::Args),
    Run(run::Args),
    Block(block::BlockArgs),
    Unblock(block::UnblockArgs),
    List(block::ListArgs),
    Audit(audit::Args),
    Keygen(keygen::Args),
    Sign(sign::Args),
    Publish(publish::Args),
    #[command(subcommand)]
    Fleet(fleet::Cmd),
    Rollback(rollback::Args),
    Tail(tail::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Attach(a) => attach::run(g, a),
        Cmd::Detach(a) => detach::run(g, a),
        Cmd::Check(a) => check::run(a),
        Cmd::Apply(a) => apply::run(g, a),
        Cmd::Status(a) => status::run(g, a),
        Cmd::Stats(a) => stats::run(g, a),
        Cmd::Lookup(a) => lookup::run(g, a),
        Cmd::NoticeServer(a) => notice_server::run(a),
        Cmd::Run(a) => run::run(g, a),
        Cmd::Block(a) => block::block(g, a),
        Cmd::Unblock(a) => block::unblock(g, a),
        Cmd::List(a) => block::list(g, a),
        Cmd::Audit(a) => audit::run(g, a),
        Cmd::Keygen(a) => keygen::run(a),
        Cmd::Sign(a) => sign::run(a),
        Cmd::Publish(a) => publish::run(g, a),
        Cmd::Fleet(c) => fleet::run(c),
        Cmd::Rollback(a) => rollback::run(g, a),
        Cmd::Tail(a) => tail::run(g, a),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration such as 10s or 1m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} must not be negative"))
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Load, validate and compile a policy file, printing its notes (expired rules,
/// deduplicated prefixes). Every validation error is reported, not just the first.
fn load_policy(
    path: &std::path::Path,
) -> anyhow::Result<(edgeblock::policy::Policy, edgeblock::compile::Compiled)> {
    let files = edgeblock::signing::PolicyFiles::read(path).context("nothing was changed")?;
    parse_policy(&files)
}

/// [`load_policy`] from files already read (so that the bytes validated are the bytes whose
/// signatures are checked).
fn parse_policy(
    files: &edgeblock::signing::PolicyFiles,
) -> anyhow::Result<(edgeblock::policy::Policy, edgeblock::compile::Compiled)> {
    let path = &files.path;
    let policy = files.parse(now()).map_err(|errors| {
        anyhow::anyhow!(
            "{errors}\n{}: {} error(s); nothing was changed",
            path.display(),
            errors.0.len()
        )
    })?;
    for note in &policy.notes {
        eprintln!("note: {note}");
    }
    let compiled = edgeblock::compile::compile(&policy);
    Ok((policy, compiled))
}

/// Lockout problems of a compiled policy on this host.
fn lockout_problems(
    policy: &edgeblock::policy::Policy,
    compiled: &edgeblock::compile::Compiled,
) -> anyhow::Result<Vec<edgeblock::lockout::LockoutError>> {
    let host = edgeblock::lockout::HostAddrs::discover()
        .context("reading this host's addresses and gateways for the lockout check")?;
    Ok(edgeblock::lockout::check(compiled, &host, &policy.protect))
}

/// Resolve every notice target the policy uses (interface, MACs) before anything is touched:
/// an unresolvable target fails the command.
fn resolve_targets(
    compiled: &edgeblock::compile::Compiled,
) -> anyhow::Result<Vec<filter_common::NoticeTarget>> {
    Ok(edgeblock::enforce::resolve_targets(compiled)?)
}

fn summary(compiled: &edgeblock::compile::Compiled) -> String {
    let t = &compiled.tables;
    format!(
        "{} rules, {} prefixes (dst v4 {}, src v4 {}, dst v6 {}, src v6 {}), hash {}",
        compiled.rules.len(),
        t.dst_v4.len() + t.src_v4.len() + t.dst_v6.len() + t.src_v6.len(),
        t.dst_v4.len(),
        t.src_v4.len(),
        t.dst_v6.len(),
        t.src_v6.len(),
        edgeblock::compile::hash_hex(&compiled.hash),
    )
}
