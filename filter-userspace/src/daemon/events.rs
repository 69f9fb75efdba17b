//! Every change the daemon makes or refuses, as one value: [`super::Daemon::record`] logs it
//! (one line per event), counts it in the metrics and is the single place where a change
//! happens, so that an audit trail can hook in there.

use std::{fmt, path::PathBuf};

use crate::runtime::RuntimeBlock;

/// What made the daemon act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Start,
    /// The policy file or one of its includes changed.
    File,
    /// SIGHUP.
    Hangup,
    /// The runtime blocks file changed (`edgeblock block` / `unblock`).
    Blocks,
    /// A rule or runtime block reached its expiry.
    Expiry,
    /// The pinned program was replaced and had to be adopted.
    Repair,
    /// A new revision of the fleet key (`edgeblock publish`).
    Fleet,
    /// A revision of the fleet key that republishes an earlier one (`edgeblock rollback`).
    Rollback,
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::File => "file",
            Self::Hangup => "sighup",
            Self::Blocks => "runtime-blocks",
            Self::Expiry => "expiry",
            Self::Repair => "repair",
            Self::Fleet => "fleet",
            Self::Rollback => "rollback",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change, made or refused.
#[derive(Clone, Debug)]
pub enum Event {
    Started {
        policy: PathBuf,
        interfaces: Vec<String>,
        /// The program and maps were already pinned: filtering never stopped.
        adopted: bool,
    },
    /// The maps now hold the policy with its runtime layer.
    Applied {
        trigger: Trigger,
        policy: PathBuf,
        generation: u64,
        hash: String,
        rules: usize,
        prefixes_added: usize,
        prefixes_removed: usize,
        prefixes_changed: usize,
        rules_added: Vec<String>,
        rules_removed: Vec<String>,
        /// Nothing differed: the maps already held it.
        unchanged: bool,
        /// The hash in force before, if any.
        hash_before: Option<String>,
        /// Per rule, the prefixes gained and lost, with the rule's reference and reason.
        changes: Vec<crate::audit::RuleChange>,
        /// Trusted keys that signed the policy file.
        signers: Vec<String>,
    },
    /// A policy version (or runtime layer) was not applied; the previous one stays.
    Refused {
        trigger: Trigger,
        policy: PathBuf,
        /// One problem per line, each with file:line where there is one.
        errors: String,
    },
    Blocked {
        block: RuntimeBlock,
    },
    Unblocked {
        block: RuntimeBlock,
    },
    /// A policy rule reached its `expires` and left the maps.
    RuleExpired {
        rule: String,
        location: String,
        expires: jiff::Timestamp,
    },
    /// A runtime block reached its expiry and left the maps.
    BlockExpired {
        block: RuntimeBlock,
    },
    /// Someone removed what edgeblock had pinned or attached, and the daemon put it back.
    Repaired {
        what: String,
    },
    RepairFailed {
        what: String,
        error: String,
    },
    Stopping {
        /// `--detach-on-exit`: the filter was removed from the interfaces.
        detached: Vec<String>,
    },
}

impl Event {
    /// Log the event: one line, with its fields structured for `--log-format json`.
    pub fn log(&self) {
        match self {
            Self::Started {
                policy,
                interfaces,
                adopted,
            } => tracing::info!(
                event = "started",
                policy = %policy.display(),
                interfaces = ?interfaces,
                adopted,
                "{}",
                if *adopted {
                    "adopted the pinned filter; it never stopped"
                } else {
                    "loaded the filter"
                }
            ),
            Self::Applied {
                trigger,
                policy,
                generation,
                hash,
                rules,
                prefixes_added,
                prefixes_removed,
                prefixes_changed,
                rules_added,
                rules_removed,
                unchanged,
                ..
            } => tracing::info!(
                event = "applied",
                trigger = trigger.as_str(),
                policy = %policy.display(),
                generation,
                hash = %hash,
                rules,
                prefixes_added,
                prefixes_removed,
                prefixes_changed,
                rules_added = ?rules_added,
                rules_removed = ?rules_removed,
                unchanged,
                "{}",
                if *unchanged {
                    "policy already in force"
                } else {
                    "policy applied"
                }
            ),
            Self::Refused {
                trigger,
                policy,
                errors,
            } => tracing::error!(
                event = "refused",
                trigger = trigger.as_str(),
                policy = %policy.display(),
                errors = %errors,
                "policy not applied; the last good one stays in force"
            ),
            Self::Blocked { block } => tracing::info!(
                event = "blocked",
                prefix = %block.prefix,
                direction = %block.direction,
                action = %block.action,
                who = %block.who,
                reason = %block.reason,
                expires = ?block.expires.map(|e| e.to_string()),
                "runtime block added"
            ),
            Self::Unblocked { block } => tracing::info!(
                event = "unblocked",
                prefix = %block.prefix,
                direction = %block.direction,
                action = %block.action,
                "runtime block removed"
            ),
            Self::RuleExpired {
                rule,
                location,
                expires,
            } => tracing::info!(
                event = "expired",
                rule = %rule,
                location = %location,
                expires = %expires,
                "rule expired"
            ),
            Self::BlockExpired { block } => tracing::info!(
                event = "expired",
                prefix = %block.prefix,
                direction = %block.direction,
                action = %block.action,
                expires = ?block.expires.map(|e| e.to_string()),
                "runtime block expired"
            ),
            Self::Repaired { what } => tracing::warn!(
                event = "repaired",
                what = %what,
                "someone removed edgeblock's state; restored"
            ),
            Self::RepairFailed { what, error } => tracing::error!(
                event = "repair_failed",
                what = %what,
                error = %error,
                "cannot restore edgeblock's state; retrying"
            ),
            Self::Stopping { detached } => tracing::info!(
                event = "stopping",
                detached = ?detached,
                "{}",
                if detached.is_empty() {
                    "stopping; the filter stays in place (fail-static)"
                } else {
                    "stopping; detached the filter (--detach-on-exit)"
                }
            ),
        }
    }
}
