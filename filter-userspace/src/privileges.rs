//! Which of the capabilities edgeblock's BPF work needs this process has, so that a failure
//! caused by running unprivileged says what is missing instead of passing on the kernel's
//! `EPERM` (or, without `CAP_NET_ADMIN`, a confusing "invalid value size" from the device map).
//!
//! What each command needs (docs/security.md, "Privileges"): opening the pins (`status`,
//! `stats`, `lookup`) needs `CAP_BPF` and `CAP_NET_ADMIN`; loading the program (the first
//! `apply` or `attach`) also `CAP_PERFMON`; `CAP_SYS_ADMIN` stands in for `CAP_BPF` and
//! `CAP_PERFMON`, and is needed to mount bpffs. `check` and `notice-server` need none.

use std::{fmt, io};

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What a command does with BPF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Open the pinned program and maps.
    Read,
    /// Also load the program and change the maps and links.
    Change,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "root, or the capabilities CAP_BPF and CAP_NET_ADMIN",
            Self::Change => {
                "root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (and \
                 CAP_SYS_ADMIN to mount bpffs at /sys/fs/bpf or to pin a running program again)"
            }
        })
    }
}

/// A set of effective capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(pub u64);

impl Caps {
    /// This process's effective set, from `/proc/self/status`.
    pub fn current() -> io::Result<Self> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Self::from_status(&status).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/self/status has no CapEff line",
            )
        })
    }

    /// The `CapEff:` line of a `/proc/PID/status` text.
    pub fn from_status(status: &str) -> Option<Self> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(Self)
    }

    pub fn has(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }

    /// The capabilities `need` calls for that this set lacks, by name.
    pub fn missing(self, need: Need) -> Vec<&'static str> {
        let admin = self.has(CAP_SYS_ADMIN);
        let mut missing = Vec::new();
        if !self.has(CAP_BPF) && !admin {
            missing.push("CAP_BPF");
        }
        if !self.has(CAP_NET_ADMIN) {
            missing.push("CAP_NET_ADMIN");
        }
        if need == Need::Change && !self.has(CAP_PERFMON) && !admin {
            missing.push("CAP_PERFMON");
        }
        missing
    }
}

/// Why a command probably failed for lack of privileges: `None` when this process has what
/// `need` calls for (then the failure has another cause, and its own message says which).
pub fn lacking(need: Need) -> Option<String> {
    let caps = Caps::current().ok()?;
    let missing = caps.missing(need);
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "it needs {need}; this process (uid {}) lacks {}: run it as root (sudo)",
        nix::unistd::geteuid(),
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tedgeblock\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let caps = Caps::from_status(status).expect("CapEff");
        assert!(caps.has(CAP_BPF) && caps.has(CAP_NET_ADMIN));
        assert!(caps.missing(Need::Change).is_empty());
        assert_eq!(Caps::from_status("Name:\tx\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(Caps(0).missing(Need::Read), ["CAP_BPF", "CAP_NET_ADMIN"]);
        assert_eq!(
            Caps(0).missing(Need::Change),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
        let bpf_only = Caps(1 << CAP_BPF | 1 << CAP_PERFMON);
        assert_eq!(bpf_only.missing(Need::Change), ["CAP_NET_ADMIN"]);
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not for CAP_NET_ADMIN.
        let admin = Caps(1 << CAP_SYS_ADMIN);
        assert_eq!(admin.missing(Need::Change), ["CAP_NET_ADMIN"]);
        let enough = Caps(1 << CAP_BPF | 1 << CAP_NET_ADMIN);
        assert!(enough.missing(Need::Read).is_empty());
    }
}
