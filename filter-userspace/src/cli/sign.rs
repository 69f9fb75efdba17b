use std::path::PathBuf;

use anyhow::Context as _;
use edgeblock::signing::{self, Bundle, PolicyFiles};

/// Sign a policy: appends an Ed25519 signature over the policy file and every list it
/// includes to POLICY.sig. Run it once per signer for policies that need several signatures.
/// Any later change to the policy or an included list invalidates the signature.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML); it must be valid.
    policy: PathBuf,
    /// The private key (from `edgeblock keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Also write a self-contained bundle (policy, includes and every signature, JSON) for
    /// publishing to a fleet.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let files = PolicyFiles::read(&args.policy)?;
    // Signing an invalid policy would only move the error to every host.
    super::parse_policy(&files).context("fix the policy before signing it")?;
    let key = signing::sign(&files, &args.key)
        .with_context(|| format!("signing with {}", args.key.display()))?;
    let sig = signing::sig_path(&args.policy);
    let count = signing::read_signatures(&args.policy)?.len();
    println!(
        "signed {} with {key}; {} now holds {count} signature(s)",
        args.policy.display(),
        sig.display()
    );
    if let Some(out) = &args.bundle {
        let bundle = Bundle::from_files(&args.policy)?;
        let json = serde_json::to_string_pretty(&bundle)?;
        std::fs::write(out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
        println!("wrote bundle {}", out.display());
    }
    Ok(())
}
