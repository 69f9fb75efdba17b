use anyhow::bail;
use edgeblock::{loader::purge, privileges::Need};

use super::Global;

/// Detach the filter from an interface (the policy stays loaded for the other interfaces).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to stop filtering.
    #[arg(required_unless_present = "all")]
    iface: Option<String>,
    /// Detach from every interface.
    #[arg(long, conflicts_with = "iface")]
    all: bool,
    /// With --all: also unload the program and remove the maps (the policy is forgotten).
    #[arg(long, requires = "all")]
    purge: bool,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let _lock = g.lock("detach")?;
    let pins = g.pins();
    if args.purge {
        purge(&pins).map_err(|e| super::privileged("detach --purge", Need::Change, e.into()))?;
        println!(
            "detached everywhere and removed the program and maps under {}",
            pins.root().display()
        );
        return Ok(());
    }
    let mut filter = g.open("detach")?;
    let ifaces: Vec<String> = match args.iface {
        Some(i) => vec![i],
        None => filter.links()?.into_iter().map(|l| l.iface).collect(),
    };
    if ifaces.is_empty() {
        bail!("edgeblock is not attached to any interface");
    }
    for iface in ifaces {
        let mode = filter.detach(&iface)?;
        println!("detached from {iface} ({} mode)", mode.as_str());
    }
    Ok(())
}
