use std::path::PathBuf;

use anyhow::Context as _;
use edgeblock::{
    apply::{Live, Plan},
    audit::{self, Action, Entry, Log},
    compile::hash_hex,
    enforce::{prepare_compiled, unix},
    loader::Filter,
    runtime::BlockStore,
    signing::{self, PolicyFiles},
    snapshot,
};

use super::{Global, now, parse_policy, summary};

/// Compile a policy, diff it against the live maps and apply the difference without a gap.
/// Prints +added -removed ~changed. A policy that fails validation changes nothing. When
/// --trusted-dir holds keys, the policy must carry valid signatures (`edgeblock sign`).
/// Every apply and every refusal is recorded in the audit log (`edgeblock audit`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file (TOML).
    policy: PathBuf,
    /// Print the difference and touch nothing (and record nothing).
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

/// Records refusals: each one appends a `refused` record and hands the error back.
struct Recorder<'a> {
    g: &'a Global,
    log: Option<Log>,
    policy: String,
}

impl Recorder<'_> {
    fn entry(&self, action: Action) -> Entry {
        let mut e = Entry::new(&self.g.actor(), action);
        e.policy = Some(self.policy.clone());
        e
    }

    /// Record that the policy (whose hash is `hash`, if it compiled) was refused because of
    /// `err`, and return `err`.
    fn refused(&mut self, hash: Option<[u8; 32]>, err: anyhow::Error) -> anyhow::Error {
        let Some(log) = self.log.as_mut() else {
            return err;
        };
        let mut e = Entry::new(&self.g.actor(), Action::Refused);
        e.policy = Some(self.policy.clone());
        e.policy_hash_before = live_hash(self.g);
        e.policy_hash_after = hash.map(|h| hash_hex(&h));
        e.detail = Some(format!("{err:#}"));
        match log.append(e) {
            Ok(_) => err,
            Err(audit_err) => err.context(format!(
                "(and recording the refusal in the audit log failed: {audit_err})"
            )),
        }
    }
}

/// The hash of the policy in force, if anything is loaded.
fn live_hash(g: &Global) -> Option<String> {
    let pins = g.pins();
    if !pins.exists() {
        return None;
    }
    let config = Filter::open(&pins).ok()?.maps.config().ok()?;
    (config.generation > 0).then(|| hash_hex(&config.policy_hash))
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    // A change that could not be recorded is not made: the log is opened first. A dry run
    // changes nothing and records nothing.
    let mut rec = Recorder {
        g,
        log: if args.dry_run {
            None
        } else {
            Some(g.audit_log("apply")?)
        },
        policy: args.policy.display().to_string(),
    };
    let trust = g.trust()?;
    // A first apply on this host loads the program while the policy is read and validated:
    // creating the maps (the kernel zeroes 236 MiB) and verifying the program take about as
    // long as validating a million prefixes. Nothing is pinned before the policy has passed;
    // a refused policy leaves nothing loaded.
    let preload = if args.dry_run { None } else { g.preload() };
    // Everything that can fail on the file fails here, before the lock and the kernel. The
    // files are read once: the bytes validated are the bytes whose signatures are checked.
    let files = PolicyFiles::read(&args.policy)
        .context("nothing was changed")
        .map_err(|e| rec.refused(None, e))?;
    let (policy, compiled) = parse_policy(&files).map_err(|e| rec.refused(None, e))?;
    let hash = Some(compiled.hash);
    let verified = signing::check(&files, &policy, &trust)
        .context("nothing was changed")
        .map_err(|e| rec.refused(hash, e))?;
    // The snapshot `block` and `unblock` build on is written while the policy is applied, and
    // put in place once it is.
    let pending = (!args.dry_run).then(|| snapshot::Pending::start(&g.data_dir, &policy));
    let _lock = if args.dry_run {
        None
    } else {
        Some(g.lock("apply")?)
    };
    // The runtime blocks (`edgeblock block`) stay on top of whatever policy is applied; the
    // lockout check and the notice targets are those of the merged policy.
    let store = BlockStore::new(&g.data_dir);
    let blocks = store
        .load()
        .context("reading the runtime blocks")
        .map_err(|e| super::privileged("apply", edgeblock::privileges::Need::Read, e))?;
    let now_ts = now();
    let prepared = prepare_compiled(&policy, Some(compiled), &blocks, store.path(), now_ts)
        .with_context(|| format!("{}: nothing was changed", args.policy.display()))
        .map_err(|e| rec.refused(hash, e))?;
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
            let err = anyhow::anyhow!(
                "{}: refusing to apply: {} lockout problem(s); nothing was changed",
                args.policy.display(),
                problems.len()
            );
            return Err(rec.refused(hash, err));
        }
    }
    let (compiled, targets) = (&prepared.compiled, &prepared.targets);
    let pins = g.pins();
    // A dry run before anything is loaded diffs against nothing; otherwise it reads the kernel.
    // Without privileges the pins may be there but out of sight: opening them says so.
    let unseen = || edgeblock::privileges::lacking(edgeblock::privileges::Need::Read).is_some();
    // While a first apply's program is still being loaded, its plan is made against the empty
    // maps it will have; it is kept only if the maps turn out to be empty.
    let early = match &preload {
        Some(_) => Some(Plan::new(compiled, &Live::empty(), targets, unix(now_ts))?),
        None => None,
    };
    let mut filter = if args.dry_run && !pins.exists() && !unseen() {
        None
    } else if args.dry_run {
        Some(g.open("apply --dry-run")?)
    } else {
        Some(g.install("apply", preload)?)
    };
    let live = match &filter {
        Some(f) => Live::read(&f.maps).context("reading the live maps")?,
        None => Live::empty(),
    };
    let plan = match early {
        Some(plan) if live.is_pristine() => plan,
        _ => Plan::new(compiled, &live, targets, unix(now_ts))?,
    };
    let (added, removed, changed) = plan.counts();
    println!("{}: {}", args.policy.display(), summary(compiled));
    if let Some(v) = &verified {
        println!("{}: {v}", args.policy.display());
    }
    if prepared.merged.rules.len() > policy.rules.len() {
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
    // The host's large-change threshold depends on what the change blocks, so it is checked
    // against the plan.
    if let Some(v) = &verified
        && let Some((required, why)) = trust.required_for_change(plan.newly_blocked())
    {
        v.require(required, &why)
            .map_err(|e| rec.refused(hash, anyhow::Error::new(e).context("nothing was changed")))?;
    }
    if let Some(f) = &filter {
        plan.check_capacity(&f.maps)
            .with_context(|| {
                format!(
                    "{}: the policy does not fit the loaded program's tables; nothing was changed",
                    args.policy.display()
                )
            })
            .map_err(|e| rec.refused(hash, e))?;
    }
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(());
    }
    let pending = pending.expect("started when not a dry run");
    if plan.is_noop(&live) {
        pending.finish().context("recording the applied policy")?;
        println!(
            "already in force (generation {}); nothing to do",
            live.config.generation
        );
        return Ok(());
    }
    let mut entry = rec.entry(Action::Apply);
    entry.policy_hash_before =
        (live.config.generation > 0).then(|| hash_hex(&live.config.policy_hash));
    entry.policy_hash_after = Some(hash_hex(&compiled.hash));
    entry.signers = verified.map(|v| v.signers).unwrap_or_default();
    entry.rules = audit::rule_changes(&plan, &prepared.merged);
    if args.force && !problems.is_empty() {
        entry.detail = Some(format!(
            "--force overrode {} lockout problem(s): {}",
            problems.len(),
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let filter = filter.as_mut().expect("opened above when not a dry run");
    let log = rec.log.as_mut().expect("opened above when not a dry run");
    if let Err(e) = plan.execute(&mut filter.maps) {
        // Part of the new policy may be in force: that is a change, and it is recorded.
        entry.detail = Some(format!("failed part-way: {e}"));
        entry.policy_hash_after = live_hash(g);
        let recorded = log.append(entry);
        let err = anyhow::Error::new(e).context(
            "applying the policy failed part-way; the filter holds a mix of old and new entries, \
             and applying again converges to the new policy",
        );
        return Err(match recorded {
            Ok(_) => err,
            Err(a) => err.context(format!("(recording it in the audit log failed too: {a})")),
        });
    }
    println!("applied: generation {}", plan.config.generation);
    let record = log.append(entry).with_context(|| {
        format!(
            "the policy was applied (generation {}) and is in force, but recording it in the \
             audit log failed",
            plan.config.generation
        )
    })?;
    println!("audit: record {} in {}", record.seq, log.path().display());
    pending.finish().context(
        "the policy is applied, but recording it for `edgeblock block` failed; check --data-dir",
    )?;
    if filter.links()?.is_empty() {
        println!("note: not attached to any interface yet; run `edgeblock attach IFACE`");
    }
    Ok(())
}
