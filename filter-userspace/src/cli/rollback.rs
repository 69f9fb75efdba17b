use anyhow::{Context as _, bail};
use edgeblock::{
    audit::{Action, Entry},
    compile::hash_hex,
    fleet::{self, Bucket, Published, Server, Source},
};

use super::{
    Global,
    fleet::{NatsArgs, block_on, bucket_name, key_name},
    parse_policy, summary,
};

/// Put an earlier revision of a fleet key back in force: its policy is validated again and
/// republished as a new revision (so every host applies it the ordinary way), marked as a
/// rollback, and recorded in the audit log.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The revision to go back to (`edgeblock fleet status` shows the revisions hosts run).
    #[arg(long, value_name = "REV")]
    to: u64,
    /// The NATS server, nats://HOST:PORT or tls://HOST:PORT.
    #[arg(long, visible_alias = "to-server", value_name = "URL")]
    server: Server,
    #[arg(long, value_parser = bucket_name)]
    bucket: String,
    #[arg(long, value_parser = key_name)]
    key: String,
    #[command(flatten)]
    nats: NatsArgs,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let auth = args.nats.auth()?;
    let source = Source {
        server: args.server.clone(),
        bucket: args.bucket.clone(),
        key: args.key.clone(),
    };
    let location = fleet::revision_location(&source, args.to);
    // A change that could not be recorded is not made.
    let mut log = g.audit_log("rollback")?;
    let actor = g.actor();
    let new = block_on(async {
        let client = fleet::connect(&args.server, &auth, "edgeblock rollback").await?;
        let bucket = Bucket::open(&client, &args.server, &args.bucket, None).await?;
        let Some(entry) = bucket.revision(&args.key, args.to).await? else {
            let kept: Vec<String> = bucket
                .history(&args.key)
                .await?
                .iter()
                .map(|e| e.revision.to_string())
                .collect();
            bail!(
                "{location}: no such revision of key {:?} in the bucket (it holds: {}); nothing \
                 was published",
                args.key,
                if kept.is_empty() {
                    "none".into()
                } else {
                    kept.join(", ")
                }
            );
        };
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            bail!("{location}: that revision deleted the key; nothing was published");
        }
        let old = Published::from_json(&entry.value, &location)?;
        let (_, compiled) = parse_policy(&old.files(&location))
            .context("that revision is not valid (any more); nothing was published")?;
        let published = Published::new(
            old.bundle,
            format!("{}@{}", actor.operator, actor.host),
            Some(args.to),
        );
        let new = bucket.put(&args.key, published.to_json()).await?;
        anyhow::Ok((new, compiled))
    })??;
    let (new, compiled) = new;
    let record = Entry {
        policy: Some(source.to_string()),
        policy_hash_after: Some(hash_hex(&compiled.hash)),
        detail: Some(format!(
            "edgeblock rollback: revision {} republished as revision {new}",
            args.to
        )),
        ..Entry::new(&actor, Action::Rollback)
    };
    if let Err(e) = log.append(record) {
        eprintln!(
            "error: the rollback is published but could not be recorded in the audit log: {e}"
        );
    }
    println!(
        "{source}: revision {} republished as revision {new}: {}",
        args.to,
        summary(&compiled)
    );
    Ok(())
}
