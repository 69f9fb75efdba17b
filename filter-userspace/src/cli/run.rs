use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use edgeblock::{
    daemon::{self, Config, FleetConfig},
    fleet::{Auth, Source, checked_name},
    loader::AttachMode,
};
use tracing_subscriber::{EnvFilter, fmt};

use super::{Global, fleet::NatsArgs, parse_duration};

/// Run as a service: keep the filter on the interfaces and the maps equal to the policy file
/// plus the runtime blocks.
///
/// Adopts the pinned program and maps when they exist (filtering never stops across a
/// restart), else loads them, applies the policy and only then attaches. Reloads when the
/// policy file or an include changes (inotify) and on SIGHUP; a version that fails validation
/// is logged with file:line and the last good policy stays. Takes rules and runtime blocks out
/// at their expiry, to the second. Puts back pins and links that others remove. On SIGTERM or
/// SIGINT the filter stays in place (fail-static) unless --detach-on-exit.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML).
    #[arg(long, value_name = "FILE", required_unless_present = "policy_source")]
    policy: Option<PathBuf>,
    /// Take the policy from a NATS JetStream key instead of a file, e.g.
    /// nats://nats.example:4222/edgeblock/edge (tls:// for TLS): apply each new revision that
    /// is valid on this host and report into the bucket's -status bucket (docs/fleet.md).
    #[arg(long, value_name = "URL", conflicts_with = "policy")]
    policy_source: Option<String>,
    /// This host's name in the fleet's status bucket (default: the system host name).
    #[arg(long, value_name = "NAME", requires = "policy_source")]
    host_name: Option<String>,
    /// How often this host reports into the status bucket when nothing changes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    report_interval: Duration,
    #[command(flatten)]
    nats: NatsArgs,
    /// Interface to filter (repeat for several).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    interfaces: Vec<String>,
    /// Attach mode: auto tries native (driver) mode first, then generic.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    mode: AttachMode,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9477.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, detach from the interfaces. Without it the filter stays in place
    /// when the daemon stops, so a restart never opens a hole.
    #[arg(long)]
    detach_on_exit: bool,
    /// Log format: text (one line per event, for journald) or json.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How often pins and links are checked and put back if someone removed them.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    repair_interval: Duration,
    /// Quiet time after a change to the policy's files before it is reloaded.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    debounce: Duration,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.repair_interval.is_zero(),
        "--repair-interval must be longer than 0"
    );
    // EDGEBLOCK_LOG (tracing's filter syntax, e.g. `debug`) overrides the default `info`.
    let filter =
        EnvFilter::try_from_env("EDGEBLOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        // journald stamps every line itself, and colour codes would end up in the journal.
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    let fleet = match &args.policy_source {
        Some(url) => Some(fleet_config(
            url,
            args.host_name.clone(),
            args.report_interval,
            &args.nats,
        )?),
        None => None,
    };
    let policy = match (&args.policy, &fleet) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => PathBuf::from(f.source.to_string()),
        (None, None) => anyhow::bail!("give --policy FILE or --policy-source URL"),
    };
    daemon::run(Config {
        policy,
        fleet,
        interfaces: args.interfaces,
        mode: args.mode,
        metrics: args.metrics,
        detach_on_exit: args.detach_on_exit,
        pins: g.pins(),
        state_dir: g.state_dir.clone(),
        data_dir: g.data_dir.clone(),
        trusted_dir: g.trusted_dir.clone(),
        operator: g.operator.clone(),
        lock_timeout: g.lock_timeout,
        repair_interval: args.repair_interval,
        debounce: args.debounce,
    })
    .context("edgeblock run")
}

fn fleet_config(
    url: &str,
    host: Option<String>,
    report_interval: Duration,
    nats: &NatsArgs,
) -> anyhow::Result<FleetConfig> {
    anyhow::ensure!(
        !report_interval.is_zero(),
        "--report-interval must be longer than 0"
    );
    let source: Source = url.parse().context("--policy-source")?;
    let host = match host {
        Some(h) => h,
        None => nix::unistd::gethostname()
            .context("reading the host name; give --host-name")?
            .into_string()
            .map_err(|_| anyhow::anyhow!("the host name is not UTF-8; give --host-name"))?,
    };
    checked_name("host name", &host).context("give --host-name with letters, digits, - and _")?;
    let auth: Auth = nats.auth()?;
    Ok(FleetConfig {
        source,
        auth,
        host,
        report_interval,
    })
}
