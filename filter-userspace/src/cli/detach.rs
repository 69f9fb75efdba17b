use anyhow::{Context as _, bail};
use edgeblock::{
    audit::{Action, Entry},
    compile::hash_hex,
    loader::{Filter, purge},
    privileges::Need,
};

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
    let mut log = g.audit_log("detach")?;
    let _lock = g.lock("detach")?;
    let pins = g.pins();
    let record = |log: &mut edgeblock::audit::Log,
                  iface: Option<&str>,
                  before: Option<String>,
                  after: Option<String>,
                  detail: String| {
        let mut e = Entry::new(&g.actor(), Action::Detach);
        e.interface = iface.map(str::to_owned);
        e.policy_hash_before = before;
        e.policy_hash_after = after;
        e.detail = Some(detail);
        log.append(e)
            .context("detached, but recording it in the audit log failed")
    };
    let live_hash = |filter: &Filter| -> anyhow::Result<Option<String>> {
        let config = filter.maps.config()?;
        Ok((config.generation > 0).then(|| hash_hex(&config.policy_hash)))
    };
    if args.purge {
        let before = match pins.exists() {
            true => Filter::open(&pins)
                .ok()
                .and_then(|f| live_hash(&f).ok().flatten()),
            false => None,
        };
        purge(&pins).map_err(|e| super::privileged("detach --purge", Need::Change, e.into()))?;
        println!(
            "detached everywhere and removed the program and maps under {}",
            pins.root().display()
        );
        record(
            &mut log,
            None,
            before,
            None,
            "purge: detached everywhere, program and maps removed".into(),
        )?;
        return Ok(());
    }
    let mut filter = g.open("detach")?;
    let hash = live_hash(&filter)?;
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
        record(
            &mut log,
            Some(&iface),
            hash.clone(),
            hash.clone(),
            format!("{} mode", mode.as_str()),
        )?;
    }
    Ok(())
}
