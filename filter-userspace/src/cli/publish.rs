use std::path::PathBuf;

use anyhow::Context as _;
use edgeblock::{
    fleet::{self, Bucket, DEFAULT_HISTORY, Published, Server, status_bucket},
    signing::{Bundle, PolicyFiles, check_signatures, read_signatures},
};

use super::{
    Global,
    fleet::{NatsArgs, block_on, bucket_name, key_name},
    parse_policy, summary,
};

/// Publish a policy to the fleet: validate it as `check --offline` does, then put it, with its
/// includes inlined and its signatures (POLICY.sig) along, as a new revision of KEY in a NATS
/// JetStream bucket. Every `edgeblock run --policy-source` following the key applies it. An
/// invalid policy is not published. Prints the revision.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML).
    policy: PathBuf,
    /// The NATS server, nats://HOST:PORT or tls://HOST:PORT.
    #[arg(long, value_name = "URL")]
    to: Server,
    /// The key-value bucket (created when absent, with BUCKET-status beside it).
    #[arg(long, value_parser = bucket_name)]
    bucket: String,
    /// The key the hosts follow.
    #[arg(long, value_parser = key_name)]
    key: String,
    /// Revisions kept per key when the bucket is created: how far `rollback` can go back
    /// (at most 64).
    #[arg(long, default_value_t = DEFAULT_HISTORY, value_parser = clap::value_parser!(i64).range(1..=64))]
    history: i64,
    #[command(flatten)]
    nats: NatsArgs,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let auth = args.nats.auth()?;
    let files = PolicyFiles::read(&args.policy).context("nothing was published")?;
    let (policy, compiled) = parse_policy(&files).context("nothing was published")?;
    let signatures = read_signatures(&args.policy).context("nothing was published")?;
    // Hosts with trusted keys refuse what is not signed enough; when this machine trusts
    // keys too, find that out here rather than on every host.
    let trust = g.trust()?;
    if let Some(verified) = check_signatures(&files, &policy, &signatures, &trust)
        .context("the hosts that trust these keys would refuse it; nothing was published")?
    {
        eprintln!("{verified}");
    } else if signatures.is_empty() {
        eprintln!(
            "note: {} is not signed: hosts with trusted keys will refuse it (`edgeblock sign`)",
            args.policy.display()
        );
    }
    let actor = g.actor();
    let published = Published::new(
        Bundle::new(files, signatures),
        format!("{}@{}", actor.operator, actor.host),
        None,
    );
    let revision = block_on(async {
        let client = fleet::connect(&args.to, &auth, "edgeblock publish").await?;
        let bucket = Bucket::open(&client, &args.to, &args.bucket, Some(args.history)).await?;
        Bucket::open(&client, &args.to, &status_bucket(&args.bucket), Some(1)).await?;
        bucket.put(&args.key, published.to_json()).await
    })?
    .context("nothing was published")?;
    println!(
        "{}: published as revision {revision} of {}/{}/{}: {}",
        args.policy.display(),
        args.to,
        args.bucket,
        args.key,
        summary(&compiled)
    );
    Ok(())
}
