use edgeblock::{
    compile::action_name,
    maps::{CounterJson, GlobalStats, decode_name},
};
use serde::Serialize;

use super::Global;

/// Per-rule and per-action packets and bytes, plus the no-match, non-IP and malformed counts.
///
/// A shadow rule's packets are those it would have handled ("would drop"): the enforced
/// rules decided them. Its counter starts again when the rule changes mode.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct RuleStats {
    rule: String,
    direction: &'static str,
    action: &'static str,
    /// "enforce" or "shadow".
    mode: &'static str,
    prefixes: u64,
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct Stats {
    rules: Vec<RuleStats>,
    totals: GlobalStats,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let filter = g.open("stats")?;
    let mut rules = Vec::new();
    for (id, meta) in filter.maps.rule_metas()? {
        let c = filter.maps.rule_counter(id)?;
        rules.push(RuleStats {
            rule: decode_name(&meta.name),
            direction: if meta.direction == filter_common::direction::SRC {
                "src"
            } else {
                "dst"
            },
            action: action_name(meta.action),
            mode: if meta.mode == filter_common::mode::SHADOW {
                "shadow"
            } else {
                "enforce"
            },
            prefixes: meta.prefixes,
            packets: c.packets,
            bytes: c.bytes,
        });
    }
    let stats = Stats {
        rules,
        totals: filter.maps.global_stats()?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!(
        "{:<32} {:<4} {:<16} {:>9} {:>14} {:>16}",
        "RULE", "DIR", "ACTION", "PREFIXES", "PACKETS", "BYTES"
    );
    for r in &stats.rules {
        let action = if r.mode == "shadow" {
            format!("would {}", r.action)
        } else {
            r.action.to_owned()
        };
        println!(
            "{:<32} {:<4} {:<16} {:>9} {:>14} {:>16}",
            r.rule, r.direction, action, r.prefixes, r.packets, r.bytes
        );
    }
    println!();
    let t = &stats.totals;
    let rows: [(&str, CounterJson); 16] = [
        ("pass (rule)", t.pass),
        ("drop (rule)", t.drop),
        ("redirect (rule)", t.redirect),
        ("reject (rule)", t.reject),
        ("no match (passed)", t.no_match),
        ("non-IP (passed)", t.non_ip),
        ("malformed", t.malformed),
        ("malformed dropped", t.malformed_dropped),
        ("reject unanswered", t.reject_unanswered),
        ("redirect failed", t.redirect_failed),
        ("would pass (shadow)", t.shadow_pass),
        ("would drop (shadow)", t.shadow_drop),
        ("would redirect (shadow)", t.shadow_redirect),
        ("would reject (shadow)", t.shadow_reject),
        ("sampled (tail)", t.sampled),
        ("samples lost", t.sample_lost),
    ];
    for (name, c) in rows {
        println!("{name:<24} {:>14} packets {:>16} bytes", c.packets, c.bytes);
    }
    Ok(())
}
