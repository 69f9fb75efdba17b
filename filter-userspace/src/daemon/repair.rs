//! Putting back what someone else removed: pins deleted with `rm` or a purge, an interface
//! detached with `edgeblock detach` or `ip link set dev IFACE xdp off`. The daemon holds
//! descriptors on the program and every map, so the kernel objects outlive their pins and can
//! be pinned again; a detached interface is attached again. Checked every repair interval
//! (one second by default): a readdir and a few bpf syscalls.

use aya::programs::links::{FdLink, PinnedLink};

use super::{Daemon, Event, Trigger, lock};
use crate::loader::{Filter, link_is_live};

/// Each interface and whether the filter runs there: its link is pinned, the kernel still
/// runs it on that interface, and it runs this daemon's program.
pub fn interface_health(filter: &Filter, interfaces: &[String]) -> Vec<(String, bool)> {
    let program_id = filter.program_id().ok();
    let links = filter.links().unwrap_or_default();
    interfaces
        .iter()
        .map(|iface| {
            let up = links.iter().find(|l| &l.iface == iface).is_some_and(|l| {
                link_is_live(l)
                    && PinnedLink::from_pin(&l.path)
                        .ok()
                        .and_then(|p| FdLink::from(p).info().ok())
                        .is_some_and(|info| Some(info.program_id()) == program_id)
            });
            (iface.clone(), up)
        })
        .collect()
}

fn pins_intact(d: &Daemon) -> bool {
    d.filter.pins_complete() && d.filter.pinned_program_is_ours().unwrap_or(false)
}

pub fn run(d: &mut Daemon) {
    let healthy = interface_health(&d.filter, &d.config.interfaces);
    if pins_intact(d) && healthy.iter().all(|(_, up)| *up) {
        return;
    }
    let _lock = match lock(&d.config) {
        Ok(l) => l,
        // Someone is changing state right now; look again at the next tick.
        Err(_) => return,
    };
    let pins = d.filter.pins().clone();
    if pins.exists() && !d.filter.pinned_program_is_ours().unwrap_or(true) {
        // Purged and loaded again by someone else: adopt the new program and fill its maps.
        match Filter::open(&pins) {
            Ok(f) => {
                d.filter = f;
                d.record(Event::Repaired {
                    what: format!(
                        "adopted the program now pinned at {}",
                        pins.prog().display()
                    ),
                });
                drop(_lock);
                let policy = d.policy.clone();
                let signers = d.signers.clone();
                let _ = d.enforce(Trigger::Repair, policy, signers);
                return;
            }
            Err(e) => {
                d.record(Event::RepairFailed {
                    what: "adopting the newly pinned program".into(),
                    error: e.to_string(),
                });
                return;
            }
        }
    }
    match d.filter.restore_pins() {
        Ok(restored) => {
            for path in restored {
                d.record(Event::Repaired {
                    what: format!("pinned {} again", path.display()),
                });
            }
        }
        Err(e) => d.record(Event::RepairFailed {
            what: "restoring the pins".into(),
            error: e.to_string(),
        }),
    }
    for (iface, up) in interface_health(&d.filter, &d.config.interfaces) {
        if up {
            d.broken.remove(&iface);
            continue;
        }
        match d.filter.attach(&iface, d.config.mode) {
            Ok(_) => {
                d.broken.remove(&iface);
                d.record(Event::Repaired {
                    what: format!("attached to {iface} again"),
                });
            }
            Err(e) => {
                if d.broken.insert(iface.clone()) {
                    d.record(Event::RepairFailed {
                        what: format!("attaching to {iface}"),
                        error: e.to_string(),
                    });
                }
            }
        }
    }
}
