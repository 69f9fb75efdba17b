use std::path::PathBuf;

use anyhow::Context as _;

/// Make an Ed25519 key pair for signing policies: OUT.key (private, mode 0600; keep it off the
/// edge hosts) and OUT.pub (copy it into each host's --trusted-dir).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path and base name of the pair, e.g. keys/alice -> keys/alice.key and keys/alice.pub.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let fingerprint = match edgeblock::signing::generate_key(&args.out) {
        Err(e @ edgeblock::signing::SignatureError::KeyExists { .. }) => Err(anyhow::Error::new(e)
            .context("choose another --out, or remove the old pair if it is really unused")),
        other => other.context("writing the key pair"),
    }?;
    let d = args.out.display();
    println!("wrote {d}.key (private, 0600) and {d}.pub; key {fingerprint}");
    println!("trust it on a host: copy {d}.pub into /etc/edgeblock/trusted.d/ (--trusted-dir)");
    Ok(())
}
