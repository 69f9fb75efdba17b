//! `edgeblock fleet status`, and what every fleet verb shares: the NATS credentials flags and
//! a runtime for the client.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context as _;
use edgeblock::fleet::{self, Auth, Bucket, HostStatus, Server, checked_name, status_bucket};
use jiff::Timestamp;
use serde::Serialize;

/// How to authenticate to NATS. Secrets never go on the command line (where `ps` and shell
/// history would show them): a file, or the environment.
#[derive(Debug, clap::Args)]
pub struct NatsArgs {
    /// NATS credentials file (TOML, mode 0600): `token = "..."`, or `user = "..."` and
    /// `password = "..."`. Without it, $EDGEBLOCK_NATS_TOKEN, or $EDGEBLOCK_NATS_USER and
    /// $EDGEBLOCK_NATS_PASSWORD, are used when set.
    #[arg(long, value_name = "FILE", env = "EDGEBLOCK_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) that signed the NATS server's certificate, for tls:// servers with
    /// a private CA (implies TLS).
    #[arg(long, value_name = "FILE")]
    nats_ca: Option<PathBuf>,
}

impl NatsArgs {
    pub fn auth(&self) -> anyhow::Result<Auth> {
        Ok(Auth::load(
            self.nats_creds.as_deref(),
            self.nats_ca.clone(),
        )?)
    }
}

/// How long a fleet verb waits for NATS in all before it gives up.
const VERB_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `f` on a small runtime (the CLI verbs are synchronous, the NATS client is not), for
/// at most [`VERB_TIMEOUT`].
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async { tokio::time::timeout(VERB_TIMEOUT, f).await })
        .map_err(|_| anyhow::anyhow!("NATS did not answer within {VERB_TIMEOUT:?}"))
}

/// A bucket or key name from the command line, checked.
pub fn name(what: &'static str, value: &str) -> Result<String, String> {
    checked_name(what, value)
        .map(str::to_owned)
        .map_err(|e| e.to_string())
}

pub fn bucket_name(value: &str) -> Result<String, String> {
    name("bucket", value)
}

pub fn key_name(value: &str) -> Result<String, String> {
    name("key", value)
}

/// The edge hosts that follow a policy bucket.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    Status(StatusArgs),
}

/// What each host runs: its revision and policy hash, how long since it reported, and which
/// hosts are behind the latest revision, failing (refused a newer one) or silent (no report
/// for three of its report intervals).
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The NATS server, nats://HOST:PORT or tls://HOST:PORT.
    #[arg(long, value_name = "URL")]
    from: Server,
    /// The policy bucket; hosts report into BUCKET-status.
    #[arg(long, value_parser = bucket_name)]
    bucket: String,
    /// Only the hosts that follow this key.
    #[arg(long, value_parser = key_name)]
    key: Option<String>,
    /// One JSON object per host, for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Status(a) => status(a),
    }
}

/// One host in `fleet status`.
#[derive(Debug, Serialize)]
struct Row {
    host: String,
    key: String,
    revision: Option<u64>,
    /// The latest revision of the key the host follows.
    latest: Option<u64>,
    hash: Option<String>,
    /// When the host applied the revision it runs.
    applied_at: Option<Timestamp>,
    reported_at: Timestamp,
    age_seconds: f64,
    /// current, behind, failing or silent.
    state: &'static str,
    /// The revision the host refused, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<fleet::Rejected>,
    from_cache: bool,
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let auth = args.nats.auth()?;
    let reports = block_on(async {
        let client = fleet::connect(&args.from, &auth, "edgeblock fleet status").await?;
        let policies = Bucket::open(&client, &args.from, &args.bucket, None).await?;
        let status = Bucket::open(&client, &args.from, &status_bucket(&args.bucket), None)
            .await
            .context("no host has reported yet (the status bucket is missing)")?;
        let mut hosts = Vec::new();
        for entry in status.all().await? {
            match serde_json::from_slice::<HostStatus>(&entry.value) {
                Ok(h) => hosts.push(h),
                Err(e) => eprintln!(
                    "warning: the status of {:?} is unreadable: {e}",
                    edgeblock::escape::Escaped(&entry.key).to_string()
                ),
            }
        }
        hosts.retain(|h| args.key.as_ref().is_none_or(|k| *k == h.key));
        let mut latest = BTreeMap::new();
        for h in &hosts {
            if !latest.contains_key(&h.key) {
                let rev = policies.latest(&h.key).await?.map(|e| e.revision);
                latest.insert(h.key.clone(), rev);
            }
        }
        anyhow::Ok((hosts, latest))
    })??;
    let (hosts, latest) = reports;
    let now = Timestamp::now();
    let rows: Vec<Row> = hosts
        .into_iter()
        .map(|h| {
            let latest = latest.get(&h.key).copied().flatten();
            let age = now.duration_since(h.reported_at).as_secs_f64().max(0.0);
            let interval = Duration::from_millis(h.report_interval_ms).as_secs_f64();
            let state = if h.rejected.is_some() {
                "failing"
            } else if latest.is_some_and(|l| h.revision.is_none_or(|r| r < l)) {
                "behind"
            } else if age > 3.0 * interval {
                "silent"
            } else {
                "current"
            };
            Row {
                host: h.host,
                key: h.key,
                revision: h.revision,
                latest,
                hash: h.hash,
                applied_at: h.applied_at,
                reported_at: h.reported_at,
                age_seconds: (age * 10.0).round() / 10.0,
                state,
                rejected: h.rejected,
                from_cache: h.from_cache,
            }
        })
        .collect();
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if rows.is_empty() {
        println!("no host has reported into {}", status_bucket(&args.bucket));
        return Ok(());
    }
    let show = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    println!(
        "{:<20} {:<16} {:>8} {:>8} {:<16} {:>9} STATE",
        "HOST", "KEY", "REVISION", "LATEST", "HASH", "REPORTED"
    );
    for r in &rows {
        let hash = r.hash.as_deref().map_or("-", |h| &h[..h.len().min(16)]);
        println!(
            "{:<20} {:<16} {:>8} {:>8} {:<16} {:>8.1}s {}{}",
            r.host,
            r.key,
            show(r.revision),
            show(r.latest),
            hash,
            r.age_seconds,
            r.state,
            if r.from_cache { " (from cache)" } else { "" }
        );
    }
    for r in rows.iter().filter(|r| r.rejected.is_some()) {
        if let Some(rej) = &r.rejected {
            println!("\n{} refused revision {}:", r.host, rej.revision);
            for line in rej.error.lines() {
                println!("  {line}");
            }
        }
    }
    Ok(())
}
