//! What every writer of the maps does before it writes: merge the runtime layer onto the
//! policy, compile, check for lockout and resolve the notice targets, so that `edgeblock
//! apply`, `block`, `unblock` and the daemon refuse exactly the same things.

use std::{borrow::Cow, io, path::Path, time::Duration};

use filter_common::NoticeTarget;
use jiff::Timestamp;
use thiserror::Error;

use crate::{
    compile::{Compiled, compile},
    lockout::{HostAddrs, LockoutError, check},
    neigh::{NeighError, resolve},
    policy::Policy,
    runtime::{RuntimeBlock, RuntimeError, check_reserved, merge, merge_keeps_rules},
};

/// How long to wait for the kernel to resolve a notice target's next hop.
pub const NEIGH_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum EnforceError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("reading this host's addresses and gateways for the lockout check: {0}")]
    Host(io::Error),
    #[error("notice target {name:?}: {source}")]
    Notice { name: String, source: NeighError },
}

/// A policy with its runtime layer, compiled and checked against this host, ready for
/// [`crate::apply::apply`].
pub struct Prepared<'p> {
    /// The policy file's rules plus the runtime blocks; the policy itself, not a copy of its
    /// million prefixes, when there are no blocks and no rule has expired.
    pub merged: Cow<'p, Policy>,
    pub compiled: Compiled,
    /// `targets[i]` is `compiled.notices[i]`, resolved.
    pub targets: Vec<NoticeTarget>,
    /// Ways the merged policy would cut this host off; callers refuse unless forced.
    pub lockout: Vec<LockoutError>,
}

/// Merge `blocks` (read from `blocks_file`) onto `policy` at `now`, compile, check for
/// lockout on this host and resolve the notice targets. Touches no map.
pub fn prepare<'p>(
    policy: &'p Policy,
    blocks: &[RuntimeBlock],
    blocks_file: &Path,
    now: Timestamp,
) -> Result<Prepared<'p>, EnforceError> {
    prepare_compiled(policy, None, blocks, blocks_file, now)
}

/// [`prepare`] for a caller that has compiled `policy` already (`edgeblock apply` hashes it
/// before anything else): when the runtime layer changes nothing at `now`, that compilation
/// is the merged policy's and is used rather than made again.
pub fn prepare_compiled<'p>(
    policy: &'p Policy,
    compiled: Option<Compiled>,
    blocks: &[RuntimeBlock],
    blocks_file: &Path,
    now: Timestamp,
) -> Result<Prepared<'p>, EnforceError> {
    let (merged, compiled) = if merge_keeps_rules(policy, blocks, now) {
        check_reserved(policy)?;
        (
            Cow::Borrowed(policy),
            compiled.unwrap_or_else(|| compile(policy)),
        )
    } else {
        let merged = merge(policy, blocks, blocks_file, now)?;
        let compiled = compile(&merged);
        (Cow::Owned(merged), compiled)
    };
    let host = HostAddrs::discover().map_err(EnforceError::Host)?;
    let lockout = check(&compiled, &host, &merged.protect);
    let targets = resolve_targets(&compiled)?;
    Ok(Prepared {
        merged,
        compiled,
        targets,
        lockout,
    })
}

/// Resolve every notice target the policy uses (interface, MACs) before anything is touched.
pub fn resolve_targets(compiled: &Compiled) -> Result<Vec<NoticeTarget>, EnforceError> {
    compiled
        .notices
        .iter()
        .map(|n| {
            let r = resolve(&n.interface, n.next_hop, NEIGH_WAIT).map_err(|source| {
                EnforceError::Notice {
                    name: n.name.clone(),
                    source,
                }
            })?;
            Ok(NoticeTarget {
                ifindex: r.ifindex,
                dst_mac: r.dst_mac,
                src_mac: r.src_mac,
            })
        })
        .collect()
}

/// Seconds since the epoch, for `Config::applied_unix`.
pub fn unix(now: Timestamp) -> u64 {
    now.as_second().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    #[test]
    fn without_blocks_the_policy_is_used_as_is_and_reserved_names_are_still_refused() {
        let reserved = policy::for_test(
            "[[rule]]\nname = \"runtime-drop-dst\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\n",
        );
        match prepare(&reserved, &[], Path::new("b"), Timestamp::UNIX_EPOCH) {
            Err(EnforceError::Runtime(RuntimeError::ReservedName { name, .. })) => {
                assert_eq!(name, "runtime-drop-dst");
            }
            Err(e) => panic!("expected the reserved name to be refused, got {e}"),
            Ok(_) => panic!("a reserved rule name must be refused without blocks too"),
        }
        let policy = policy::for_test(
            "[[rule]]\nname = \"origin\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\n",
        );
        let prepared = prepare(&policy, &[], Path::new("b"), Timestamp::UNIX_EPOCH)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(prepared.merged, Cow::Borrowed(_)), "not a copy");
        assert_eq!(prepared.compiled.hash, compile(&policy).hash);
    }
}
