use std::path::PathBuf;

use anyhow::bail;

use super::{load_policy, lockout_problems, resolve_targets, summary};

/// Validate a policy file: syntax, prefixes, duplicates, includes, and (unless --offline) that
/// it would not cut this host off and that its notice targets resolve. Touches nothing; exits 1 with file:line errors.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML).
    policy: PathBuf,
    /// Skip the checks against this host (addresses, gateways, notice targets): for
    /// validating elsewhere.
    #[arg(long)]
    offline: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (policy, compiled) = load_policy(&args.policy)?;
    if !args.offline {
        resolve_targets(&compiled)?;
        let problems = lockout_problems(&policy, &compiled)?;
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("{p}");
            }
            bail!(
                "{}: {} lockout problem(s); `apply` would refuse this policy without --force",
                args.policy.display(),
                problems.len()
            );
        }
    }
    println!("{}: OK: {}", args.policy.display(), summary(&compiled));
    Ok(())
}
