use std::net::IpAddr;

use edgeblock::{compile::action_name, maps::decode_name};
use filter_common::{RuleEntry, direction};

use super::Global;

/// Which rule and action the live maps give an address, as destination and as source, and
/// the prefix that gives it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// IPv4 or IPv6 address.
    addr: IpAddr,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let filter = g.open("lookup")?;
    let m = &filter.maps;
    let (dst, src) = match args.addr {
        IpAddr::V4(_) => (
            m.longest_match(&m.v4, direction::DST, args.addr)?
                .map(|(p, e)| (p.to_string(), e)),
            m.longest_match(&m.v4, direction::SRC, args.addr)?
                .map(|(p, e)| (p.to_string(), e)),
        ),
        IpAddr::V6(_) => (
            m.longest_match(&m.v6, direction::DST, args.addr)?
                .map(|(p, e)| (p.to_string(), e)),
            m.longest_match(&m.v6, direction::SRC, args.addr)?
                .map(|(p, e)| (p.to_string(), e)),
        ),
    };
    let metas = m.rule_metas()?;
    let describe = |hit: &Option<(String, RuleEntry)>| match hit {
        None => "no rule".to_owned(),
        Some((prefix, e)) => format!(
            "{}{} by rule {} ({prefix})",
            // The longest prefix of all is a shadow rule's: it only counts; the longest
            // enforced prefix (if any) decides.
            if e.flags & filter_common::rule_flags::SHADOW != 0 {
                "would "
            } else {
                ""
            },
            action_name(e.action),
            metas
                .get(&e.rule_id)
                .map_or_else(|| format!("#{}", e.rule_id), |m| decode_name(&m.name)),
        ),
    };
    println!("{} as destination: {}", args.addr, describe(&dst));
    println!("{} as source:      {}", args.addr, describe(&src));
    Ok(())
}
