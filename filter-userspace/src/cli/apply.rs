use std::path::PathBuf;

use anyhow::{Context as _, bail};
use edgeblock::apply::{Live, Plan};

use super::{Global, load_policy, lockout_problems, resolve_targets, summary};

/// Compile a policy, diff it against the live maps and apply the difference without a gap.
/// Prints +added -removed ~changed. A policy that fails validation changes nothing.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML).
    policy: PathBuf,
    /// Print the difference and touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Apply even if a rule would cut off this host's addresses, its gateway or a protected
    /// prefix.
    #[arg(long)]
    force: bool,
    /// Print every changed prefix (default: the first 20 per table and kind).
    #[arg(long, short)]
    verbose: bool,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    // Everything that can fail on the file fails here, before the lock and the kernel.
    let (policy, compiled) = load_policy(&args.policy)?;
    let problems = lockout_problems(&policy, &compiled)?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!(
                "{}{p}",
                if args.force {
                    "warning (--force): "
                } else {
                    ""
                }
            );
        }
        if !args.force {
            bail!(
                "{}: refusing to apply: {} lockout problem(s); nothing was changed",
                args.policy.display(),
                problems.len()
            );
        }
    }
    let targets = resolve_targets(&compiled).with_context(|| {
        format!(
            "{}: cannot resolve a notice target; nothing was changed",
            args.policy.display()
        )
    })?;
    let _lock = if args.dry_run {
        None
    } else {
        Some(g.lock("apply")?)
    };
    let pins = g.pins();
    // A dry run before anything is loaded diffs against nothing; otherwise it reads the kernel.
    // Without privileges the pins may be there but out of sight: opening them says so.
    let unseen = || edgeblock::privileges::lacking(edgeblock::privileges::Need::Read).is_some();
    let mut filter = if args.dry_run && !pins.exists() && !unseen() {
        None
    } else if args.dry_run {
        Some(g.open("apply --dry-run")?)
    } else {
        Some(g.load_or_open("apply")?)
    };
    let live = match &filter {
        Some(f) => Live::read(&f.maps).context("reading the live maps")?,
        None => Live::empty(),
    };
    let now = jiff::Timestamp::now().as_second().max(0) as u64;
    let plan = Plan::new(&compiled, &live, &targets, now)?;
    let (added, removed, changed) = plan.counts();
    println!("{}: {}", args.policy.display(), summary(&compiled));
    let mut details = String::new();
    plan.write_details(&mut details, if args.verbose { usize::MAX } else { 20 })?;
    print!("{details}");
    println!(
        "+{added} -{removed} ~{changed} prefixes; rules +{} -{} ~{}",
        plan.rules_added.len(),
        plan.rules_removed.len(),
        plan.rules_changed.len()
    );
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    if plan.is_noop(&live) {
        println!(
            "already in force (generation {}); nothing to do",
            live.config.generation
        );
        return Ok(());
    }
    let filter = filter.as_mut().expect("opened above when not a dry run");
    plan.execute(&mut filter.maps).context(
        "applying the policy failed part-way; the filter holds a mix of old and new entries, \
         and applying again converges to the new policy",
    )?;
    println!("applied: generation {}", plan.config.generation);
    if filter.links()?.is_empty() {
        println!("note: not attached to any interface yet; run `edgeblock attach IFACE`");
    }
    Ok(())
}
