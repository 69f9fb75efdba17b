use std::net::IpAddr;

use edgeblock::{
    compile::action_name,
    maps::{LpmPrefix, Table, decode_name},
};
use filter_common::{RuleEntry, direction};
use ipnet::{Ipv4Net, Ipv6Net};

use super::Global;

/// Which rule and action the live maps give an address, as destination and as source, and
/// what the program decides for a packet whose other address matches nothing.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// IPv4 or IPv6 address.
    addr: IpAddr,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let filter = g.open("lookup")?;
    let m = &filter.maps;
    let (dst, src) = match args.addr {
        IpAddr::V4(a) => {
            let named = |hit: Option<(Ipv4Net, RuleEntry)>| hit.map(|(p, e)| (p.to_string(), e));
            (
                named(m.v4.longest_match(direction::DST, a)?),
                named(m.v4.longest_match(direction::SRC, a)?),
            )
        }
        IpAddr::V6(a) => (
            find::<Ipv6Net>(&m.dst_v6, a.octets())?,
            find::<Ipv6Net>(&m.src_v6, a.octets())?,
        ),
    };
    let metas = m.rule_metas()?;
    let describe = |hit: &Option<(String, RuleEntry)>| match hit {
        None => "no rule".to_owned(),
        Some((prefix, e)) => format!(
            "{} by rule {} ({prefix})",
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

/// The longest prefix the live table holds for `addr`, named.
fn find<P: LpmPrefix>(
    table: &Table<P>,
    addr: P::Bytes,
) -> anyhow::Result<Option<(String, RuleEntry)>> {
    Ok(table.longest_match(addr)?.map(|(p, e)| (p.to_string(), e)))
}
