use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::{load_policy, lockout_problems, resolve_targets, summary};

/// Validate a policy file: syntax, prefixes, duplicates, includes, and (unless --offline) that
/// it would not cut this host off and that its notice targets resolve. Touches nothing and
/// needs no privileges; exits 1 with file:line errors.
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
        // These read the host's addresses, routes and neighbours, which needs no privileges;
        // when they fail anyway, say how to validate without them.
        let host_checks = || {
            format!(
                "checking {} against this host (its addresses, gateways and notice targets) \
                 failed; `edgeblock check --offline` validates the policy without these checks",
                args.policy.display()
            )
        };
        resolve_targets(&compiled).with_context(host_checks)?;
        let problems = lockout_problems(&policy, &compiled).with_context(host_checks)?;
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
