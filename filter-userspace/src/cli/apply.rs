use std::path::PathBuf;

use anyhow::{Context as _, bail};
use edgeblock::{
    apply::{Live, Plan},
    enforce::{prepare, unix},
    loader::Filter,
    runtime::BlockStore,
    snapshot,
};

use super::{Global, now, read_policy, summary};

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
    let policy = read_policy(&args.policy)?;
    let _lock = if args.dry_run { None } else { Some(g.lock()?) };
    // The runtime blocks (`edgeblock block`) stay on top of whatever policy is applied.
    let store = BlockStore::new(&g.data_dir);
    let blocks = store.load().context("reading the runtime blocks")?;
    let now_ts = now();
    let prepared = prepare(&policy, &blocks, store.path(), now_ts)
        .with_context(|| format!("{}: nothing was changed", args.policy.display()))?;
    let problems = &prepared.lockout;
    if !problems.is_empty() {
        for p in problems {
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
    let (compiled, targets) = (&prepared.compiled, &prepared.targets);
    let pins = g.pins();
    // A dry run before anything is loaded diffs against nothing; otherwise it reads the kernel.
    let mut filter = if args.dry_run && !pins.exists() {
        None
    } else if args.dry_run {
        Some(Filter::open(&pins)?)
    } else {
        Some(
            Filter::load_or_open(&pins)
                .with_context(|| format!("loading edgeblock under {}", pins.root().display()))?,
        )
    };
    let live = match &filter {
        Some(f) => Live::read(&f.maps).context("reading the live maps")?,
        None => Live::empty(),
    };
    let plan = Plan::new(compiled, &live, targets, unix(now_ts))?;
    let (added, removed, changed) = plan.counts();
    println!("{}: {}", args.policy.display(), summary(compiled));
    let runtime = prepared.merged.rules.len() - policy.rules.len();
    if runtime > 0 {
        println!("plus the runtime blocks of {}", store.path().display());
    }
    let mut details = String::new();
    plan.write_details(&mut details, if args.verbose { usize::MAX } else { 20 })?;
    print!("{details}");
    println!(
        "+{added} -{removed} ~{changed} prefixes; rules +{} -{} ~{}",
        plan.rules_added.len(),
        plan.rules_removed.len(),
        plan.rules_changed.len()
    );
    if let Some(f) = &filter {
        plan.check_capacity(&f.maps).with_context(|| {
            format!(
                "{}: the policy does not fit the loaded program's tables; nothing was changed",
                args.policy.display()
            )
        })?;
    }
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    if plan.is_noop(&live) {
        snapshot::save(&g.data_dir, &policy).context("recording the applied policy")?;
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
    snapshot::save(&g.data_dir, &policy).context(
        "the policy is applied, but recording it for `edgeblock block` failed; check --data-dir",
    )?;
    if filter.links()?.is_empty() {
        println!("note: not attached to any interface yet; run `edgeblock attach IFACE`");
    }
    Ok(())
}
