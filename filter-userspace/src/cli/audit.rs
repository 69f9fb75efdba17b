use anyhow::{Context as _, bail};
use edgeblock::audit::{self, Action, Record};
use jiff::{Span, Timestamp, tz::TimeZone};

use super::Global;

/// The audit log: every apply, attach, detach and refused change, who made it and why. With
/// `verify`: check that no record was edited, removed or cut off.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Only records at or after this time: an RFC 3339 timestamp, or a span back from now
    /// such as 24h or 7d.
    #[arg(long, value_parser = parse_since)]
    since: Option<Timestamp>,
    /// Only records that changed this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Only records of this kind.
    #[arg(long, value_enum)]
    action: Option<Action>,
    /// One JSON object per line, as stored.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Check the hash chain and the tip file; exit 1 naming the line where the log breaks.
    Verify,
}

fn parse_since(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let span: Span = s.parse().map_err(|_| {
        format!("{s:?} is neither a timestamp (2026-06-01T00:00:00Z) nor a span (24h, 7d)")
    })?;
    Timestamp::now()
        .to_zoned(TimeZone::UTC)
        .checked_sub(span)
        .map(|z| z.timestamp())
        .map_err(|e| format!("{s:?}: {e}"))
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    if let Some(Cmd::Verify) = args.cmd {
        return verify(g);
    }
    let records = audit::read(&g.data_dir)
        .with_context(|| format!("reading the audit log under {}", g.data_dir.display()))?;
    let shown = records.iter().filter(|r| {
        args.since.is_none_or(|t| r.entry.time >= t)
            && args.action.is_none_or(|a| r.entry.action == a)
            && args
                .rule
                .as_ref()
                .is_none_or(|name| r.entry.rules.iter().any(|c| &c.rule == name))
    });
    for r in shown {
        if args.json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            print!("{}", human(r));
        }
    }
    Ok(())
}

fn verify(g: &Global) -> anyhow::Result<()> {
    let report = audit::verify(&g.data_dir)
        .with_context(|| format!("reading the audit log under {}", g.data_dir.display()))?;
    let log = g.data_dir.join(audit::LOG_FILE);
    if let Some(b) = report.broken {
        bail!(
            "{}: BROKEN: {b}; the {} record(s) before it are intact",
            log.display(),
            report.records
        );
    }
    println!(
        "{}: OK: {} record(s), chain intact, last hash {}",
        log.display(),
        report.records,
        report.tip
    );
    if report.no_tip {
        println!(
            "note: no {} beside the log, so records removed from its end cannot be detected",
            audit::TIP_FILE
        );
    }
    if report.tip_lags {
        println!(
            "note: {} is one record behind (an append was interrupted); the next change repairs it",
            audit::TIP_FILE
        );
    }
    Ok(())
}

fn short(hash: &Option<String>) -> &str {
    hash.as_deref().map_or("-", |h| &h[..h.len().min(12)])
}

/// One record for people: a header line, then one line per changed rule.
fn human(r: &Record) -> String {
    let e = &r.entry;
    let mut out = format!(
        "#{} {} {:<8} {}@{}",
        r.seq,
        e.time.round(jiff::Unit::Second).unwrap_or(e.time),
        e.action.as_str(),
        e.operator,
        e.host
    );
    if let Some(i) = &e.interface {
        out.push_str(&format!(" iface {i}"));
    }
    if let Some(p) = &e.policy {
        out.push_str(&format!(" policy {p}"));
    }
    if e.policy_hash_before.is_some() || e.policy_hash_after.is_some() {
        out.push_str(&format!(
            " hash {} -> {}",
            short(&e.policy_hash_before),
            short(&e.policy_hash_after)
        ));
    }
    out.push('\n');
    if !e.signers.is_empty() {
        out.push_str(&format!("    signed by {}\n", e.signers.join(", ")));
    }
    if let Some(d) = &e.detail {
        out.push_str(&format!("    {d}\n"));
    }
    for c in &e.rules {
        out.push_str(&format!(
            "    rule {} ({}, {}): +{} -{}",
            c.rule, c.action, c.change, c.added.count, c.removed.count
        ));
        if let Some(reference) = &c.reference {
            out.push_str(&format!(" ref {reference}"));
        }
        if let Some(reason) = &c.reason {
            out.push_str(&format!(" reason {reason:?}"));
        }
        out.push('\n');
        for (sign, list) in [('+', &c.added), ('-', &c.removed)] {
            if list.is_empty() {
                continue;
            }
            let more = list.count - list.first.len();
            out.push_str(&format!("      {sign} {}", list.first.join(" ")));
            if more > 0 {
                out.push_str(&format!(" ... and {more} more"));
            }
            out.push('\n');
        }
    }
    out
}
