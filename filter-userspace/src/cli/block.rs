//! `block`, `unblock` and `list`: the runtime layer on top of the policy file.
//!
//! They work with or without `edgeblock run`: under the lock they rewrite the blocks file,
//! merge it onto the last applied policy (recorded in the data directory) and apply the
//! result through the same gapless path as `edgeblock apply`. A running daemon sees the file
//! change and takes the new layer as its own.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use edgeblock::{
    apply::apply,
    audit::{self, Action, Entry},
    compile::hash_hex,
    enforce::{prepare, unix},
    policy::{self, Policy},
    runtime::{BlockAction, BlockDirection, BlockStore, RuntimeBlock},
    snapshot,
};
use ipnet::IpNet;
use jiff::Timestamp;
use serde::Serialize;

use super::{Global, now, parse_duration};

/// Block a prefix now, on top of the policy file, until `unblock` or --ttl. Persisted under
/// --data-dir, so it survives restarts and reboots; checked for lockout like a policy rule.
#[derive(Debug, clap::Args)]
pub struct BlockArgs {
    /// Prefix or address, e.g. 203.0.113.0/24, 198.51.100.7, 2001:db8::/48.
    #[arg(value_parser = parse_prefix)]
    prefix: IpNet,
    /// Lift the block by itself after this long (e.g. 30m, 2h, 7d); without it the block stays
    /// until `edgeblock unblock`.
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// What to do with matching packets.
    #[arg(long, value_enum, default_value_t = BlockAction::Drop)]
    action: BlockAction,
    /// Match the packet's destination (dst) or source (src) address.
    #[arg(long, value_enum, default_value_t = BlockDirection::Dst)]
    direction: BlockDirection,
    /// Why: shown by `edgeblock list` and in the logs (a ticket, an incident). Who is blocking
    /// is the global --operator (default: $SUDO_USER, else $USER).
    #[arg(long)]
    reason: String,
}

/// Remove a runtime block (prefixes of the policy file are changed in the file).
#[derive(Debug, clap::Args)]
pub struct UnblockArgs {
    #[arg(value_parser = parse_prefix)]
    prefix: IpNet,
    /// Only the block on this direction (default: both).
    #[arg(long, value_enum)]
    direction: Option<BlockDirection>,
}

/// The runtime blocks in force: prefix, direction, action, expiry, who, when and why.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn parse_prefix(s: &str) -> Result<IpNet, String> {
    policy::parse_prefix(s).map_err(|e| format!("{s:?}: {e}"))
}

pub fn block(g: &Global, args: BlockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.reason.trim().is_empty(),
        "--reason must say why (a ticket, an incident): it is what `edgeblock list` shows"
    );
    let now = now();
    let expires = args
        .ttl
        .map(|ttl| {
            jiff::SignedDuration::try_from(ttl)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
                .with_context(|| format!("--ttl {ttl:?} is too long"))
        })
        .transpose()?;
    let new = RuntimeBlock {
        prefix: args.prefix,
        direction: args.direction,
        action: args.action,
        reason: args.reason,
        who: g.actor().operator,
        added: now,
        expires,
    };
    let _lock = g.lock("block")?;
    let store = BlockStore::new(&g.data_dir);
    let mut blocks = current(&store, now)?;
    let replaced = match blocks
        .iter_mut()
        .find(|b| b.prefix == new.prefix && b.direction == new.direction)
    {
        Some(old) => {
            *old = new.clone();
            true
        }
        None => {
            blocks.push(new.clone());
            false
        }
    };
    let mut entry = Entry::new(&g.actor(), Action::Block);
    entry.detail = Some(describe(&new));
    relayer(g, &store, blocks, now, entry)?;
    println!(
        "{} {}",
        if replaced { "updated:" } else { "blocked:" },
        describe(&new)
    );
    Ok(())
}

/// `drop dst 203.0.113.7/32 (ticket 42), until ...`, for the audit log and the terminal.
fn describe(b: &RuntimeBlock) -> String {
    format!(
        "{} {} {} ({:?}){}",
        b.action,
        b.direction,
        b.prefix,
        b.reason,
        b.expires
            .map(|e| format!(", until {e}"))
            .unwrap_or_default()
    )
}

pub fn unblock(g: &Global, args: UnblockArgs) -> anyhow::Result<()> {
    let now = now();
    let _lock = g.lock("unblock")?;
    let store = BlockStore::new(&g.data_dir);
    let mut blocks = current(&store, now)?;
    let before = blocks.len();
    blocks.retain(|b| b.prefix != args.prefix || args.direction.is_some_and(|d| d != b.direction));
    let removed = before - blocks.len();
    if removed == 0 {
        bail!(
            "{} is not a runtime block (see `edgeblock list`); prefixes of the policy file are \
             removed by editing the file",
            args.prefix
        );
    }
    let mut entry = Entry::new(&g.actor(), Action::Unblock);
    entry.detail = Some(format!("{} ({removed} block(s))", args.prefix));
    relayer(g, &store, blocks, now, entry)?;
    println!(
        "unblocked: {} ({removed} block(s), by {})",
        args.prefix,
        g.actor().operator
    );
    Ok(())
}

#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    block: &'a RuntimeBlock,
    rule: String,
}

pub fn list(g: &Global, args: ListArgs) -> anyhow::Result<()> {
    let store = BlockStore::new(&g.data_dir);
    let now = now();
    let blocks: Vec<RuntimeBlock> = store
        .load()
        .context("reading the runtime blocks")?
        .into_iter()
        .filter(|b| !b.expired(now))
        .collect();
    if args.json {
        let listed: Vec<Listed> = blocks
            .iter()
            .map(|b| Listed {
                block: b,
                rule: edgeblock::runtime::rule_name(b.action, b.direction),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if blocks.is_empty() {
        println!("no runtime blocks");
        return Ok(());
    }
    println!(
        "{:<24} {:<4} {:<7} {:<21} {:<12} {:<21} REASON",
        "PREFIX", "DIR", "ACTION", "EXPIRES", "WHO", "ADDED"
    );
    for b in &blocks {
        println!(
            "{:<24} {:<4} {:<7} {:<21} {:<12} {:<21} {}",
            b.prefix.to_string(),
            b.direction.to_string(),
            b.action.to_string(),
            b.expires.map_or_else(|| "never".into(), seconds),
            b.who,
            seconds(b.added),
            b.reason
        );
    }
    Ok(())
}

fn seconds(t: Timestamp) -> String {
    t.round(jiff::Unit::Second)
        .map_or_else(|_| t.to_string(), |t| t.to_string())
}

/// The blocks in the file that have not expired.
fn current(store: &BlockStore, now: Timestamp) -> anyhow::Result<Vec<RuntimeBlock>> {
    let mut blocks = store.load().with_context(|| {
        format!(
            "reading the runtime blocks; fix or remove the bad line of {}",
            store.path().display()
        )
    })?;
    blocks.retain(|b| !b.expired(now));
    Ok(blocks)
}

/// Apply the last applied policy with `blocks` on top, then record `blocks`. Nothing changes
/// when the merged policy fails the lockout check. Called under the lock.
///
/// `entry` describes the change for the audit log: it is recorded with the hashes and the
/// prefix diff once the maps hold the change, or as refused when the lockout check stops it.
fn relayer(
    g: &Global,
    store: &BlockStore,
    blocks: Vec<RuntimeBlock>,
    now: Timestamp,
    mut entry: Entry,
) -> anyhow::Result<()> {
    // A change that could not be recorded is not made: the log is opened first.
    let mut log = g.audit_log("block")?;
    let policy = match snapshot::load(&g.data_dir, now) {
        Some(Ok(p)) => p,
        Some(Err(errors)) => bail!(
            "{errors}\nthe last applied policy no longer validates; apply a policy with \
             `edgeblock apply` (or start `edgeblock run`) first; nothing was changed"
        ),
        None => empty_policy(&g.data_dir),
    };
    let prepared = prepare(&policy, &blocks, store.path(), now).context("nothing was changed")?;
    if !prepared.lockout.is_empty() {
        for p in &prepared.lockout {
            eprintln!("{p}");
        }
        let problems = prepared.lockout.len();
        let what = entry.detail.take().unwrap_or_default();
        let verb = entry.action.as_str();
        entry.action = Action::Refused;
        entry.detail = Some(format!(
            "{verb} {what}: {problems} lockout problem(s): {}",
            prepared
                .lockout
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ));
        log.append(entry)
            .context("recording the refusal in the audit log")?;
        bail!(
            "refusing: {problems} lockout problem(s); runtime blocks get the same protection as \
             policy rules; nothing was changed"
        );
    }
    let mut filter = g.load_or_open("block")?;
    let before = filter
        .maps
        .config()
        .context("reading the live policy hash")?;
    let plan = apply(
        &mut filter.maps,
        &prepared.compiled,
        &prepared.targets,
        unix(now),
    )
    .context(
        "applying failed part-way; nothing was recorded, and the next apply converges to the \
         recorded state",
    )?;
    store.save(&blocks).context(
        "the maps hold the change but recording it failed, so the next apply will undo it; \
         check --data-dir",
    )?;
    entry.policy_hash_before = (before.generation > 0).then(|| hash_hex(&before.policy_hash));
    entry.policy_hash_after = Some(hash_hex(&prepared.compiled.hash));
    entry.rules = audit::rule_changes(&plan, &prepared.merged);
    log.append(entry)
        .context("the change is in force, but recording it in the audit log failed")?;
    if filter.links()?.is_empty() {
        println!("note: not attached to any interface yet; run `edgeblock attach IFACE`");
    }
    Ok(())
}

/// What the runtime layer goes on top of before any policy was applied: no rules, defaults.
fn empty_policy(data_dir: &Path) -> Policy {
    Policy {
        path: data_dir.join(snapshot::SNAPSHOT_FILE),
        malformed: Default::default(),
        protect: Vec::new(),
        rules: Vec::new(),
        notices: Vec::new(),
        reject_rate: policy::DEFAULT_REJECT_RATE,
        reject_burst: policy::DEFAULT_REJECT_BURST,
        mode: policy::Mode::Enforce,
        require_reference: false,
        signatures_required: 0,
        notes: Vec::new(),
    }
}
