use anyhow::Context as _;
use edgeblock::{
    audit::{Action, Entry},
    compile::hash_hex,
    loader::{AttachMode, Attached},
};

use super::Global;

/// Load (if needed) and attach the XDP program to an interface; the link is pinned, so the
/// filter stays after this command exits.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to filter.
    iface: String,
    /// Attach mode: auto tries native (driver) mode first, then generic.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    mode: AttachMode,
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let mut log = g.audit_log("attach")?;
    let _lock = g.lock("attach")?;
    let mut filter = g.load_or_open("attach")?;
    match filter.attach(&args.iface, args.mode)? {
        Attached::New(mode) => {
            println!(
                "attached to {} in {} mode (program id {})",
                args.iface,
                mode.as_str(),
                filter.program_id()?
            );
            let config = filter.maps.config()?;
            let hash = (config.generation > 0).then(|| hash_hex(&config.policy_hash));
            let mut e = Entry::new(&g.actor(), Action::Attach);
            e.interface = Some(args.iface.clone());
            e.policy_hash_before = hash.clone();
            e.policy_hash_after = hash;
            e.detail = Some(format!("{} mode", mode.as_str()));
            log.append(e).with_context(|| {
                format!(
                    "attached to {}, but recording it in the audit log failed",
                    args.iface
                )
            })?;
        }
        Attached::Replaced { mode, old } => {
            println!(
                "{} ran program id {old}, not the pinned one; switched it to program id {} in \
                 {} mode, without a gap",
                args.iface,
                filter.program_id()?,
                mode.as_str()
            );
        }
        Attached::Already(mode) => {
            println!(
                "already attached to {} in {} mode; nothing changed",
                args.iface,
                mode.as_str()
            );
        }
    }
    let generation = filter.maps.config()?.generation;
    if generation == 0 {
        println!("note: no policy applied yet; everything passes until `edgeblock apply POLICY`");
    }
    Ok(())
}
