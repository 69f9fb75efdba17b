//! The privileged test harness shared by the integration tests in `tests/tests/*.rs` and by
//! `cargo xtask demo`.
//!
//! Everything here creates its own throwaway objects and removes them on `Drop`, also when a test
//! panics: network namespaces named `eb<pid>-<n>-<role>` ([`Netns`]), veth pairs that are created
//! directly inside those namespaces (so they never appear in the host's namespace, and nothing
//! here touches an interface it did not create), and a private bpffs mounted in a temp dir
//! ([`Bpffs`]). Traffic only flows between those namespaces, and every probe is bounded in count
//! and time.
//!
//! The harness panics with a message instead of returning errors: its callers are tests, and the
//! demo, which relies on unwinding to run the same `Drop` guards.

pub mod fleet;
pub mod netns;
pub mod packet;

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

pub use netns::{
    EchoServer, Netns, NoticeHost, Topology, UdpProbe, UdpReport, accept_xdp_frames, addr, ping,
    remove_stale_namespaces, tcp_connect, tcp_echo, tcp_echo_server,
};

/// Environment variable naming the `edgeblock` binary for tests that drive the CLI.
pub const EDGEBLOCK_BIN_ENV: &str = "EDGEBLOCK_BIN";

/// A number unique within this process, for naming namespaces, interfaces and temp dirs.
fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A path as the `&str` a command line takes; test paths are always UTF-8.
/// The stdout of an `edgeblock {args}` that must have succeeded; the panic shows its output.
pub fn succeeded(out: &std::process::Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "edgeblock {args:?} failed: {}",
        output_text(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Panics with a message saying what to do unless this process runs as root.
///
/// Call it first in every privileged test, so that a run without root fails loudly instead of
/// passing or failing on some unrelated `ip` error.
pub fn require_root() {
    assert!(
        is_root(),
        "these tests need root: CAP_NET_ADMIN and CAP_BPF on kernel >= 5.x (network namespaces, \
         veth pairs, XDP attach, bpffs mounts); run `cargo xtask test` as root"
    );
}

/// The `edgeblock` CLI binary for tests that drive it.
///
/// `$EDGEBLOCK_BIN` when set (`cargo xtask test` builds the binary and sets it), else the binary
/// that `cargo build -p filter-userspace --bin edgeblock` leaves in the same profile directory as
/// the running test executable (`<target>/<profile>/deps/<test>` -> `<target>/<profile>/edgeblock`).
/// Cargo only tells a package's own tests where its binaries are, and the CLI lives in another
/// package, hence the search.
pub fn edgeblock_bin() -> PathBuf {
    if let Some(path) = std::env::var_os(EDGEBLOCK_BIN_ENV) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running test executable: {e}"));
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile_dir| profile_dir.join("edgeblock"));
    match candidate {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "the edgeblock binary was not found next to {}: run the tests through \
             `cargo xtask test`, or build it with `cargo build -p filter-userspace --bin \
             edgeblock` first, or set {EDGEBLOCK_BIN_ENV}",
            exe.display()
        ),
    }
}

/// A temp dir holding a private bpffs (`pin_root()`), a state dir (`state_dir()`), a data dir
/// (`data_dir()`) and a trusted-keys dir (`trusted_dir()`).
///
/// `edgeblock` run inside a namespace cannot see /sys/fs/bpf (`ip netns exec` mounts a fresh
/// /sys), so tests and the demo hand it this pin root instead; it also keeps their pins apart
/// from anything on the host. Dropping the guard unmounts the bpffs, which releases every map,
/// program and link pinned there, and removes the dir.
pub struct Bpffs {
    dir: PathBuf,
    pin_root: PathBuf,
    state_dir: PathBuf,
    data_dir: PathBuf,
    trusted_dir: PathBuf,
}

impl Bpffs {
    /// Creates `$TMPDIR/edgeblock-<pid>-<n>` (mode 0700) and mounts a bpffs on its `bpffs` subdir.
    pub fn new() -> Self {
        let base = std::env::temp_dir();
        let dir = loop {
            let dir = base.join(format!("edgeblock-{}-{}", std::process::id(), next_id()));
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create a temp dir {}: {e}", dir.display()),
            }
        };
        // Construct the guard before mounting so that a failure below still removes the dir.
        let guard = Bpffs {
            pin_root: dir.join("bpffs"),
            state_dir: dir.join("state"),
            data_dir: dir.join("data"),
            trusted_dir: dir.join("trusted"),
            dir,
        };
        for sub in [
            &guard.pin_root,
            &guard.state_dir,
            &guard.data_dir,
            &guard.trusted_dir,
        ] {
            std::fs::create_dir(sub)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", sub.display()));
        }
        nix::mount::mount(
            Some("bpf"),
            &guard.pin_root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| {
            panic!(
                "cannot mount a bpffs on {} ({e}): this needs root (CAP_SYS_ADMIN)",
                guard.pin_root.display()
            )
        });
        guard
    }

    /// The private bpffs: pass it as `edgeblock --pin-root`.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// A writable dir for the lock file: pass it as `edgeblock --state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// A private data dir (the audit log): pass it as `edgeblock --data-dir`, so that tests
    /// never write to the host's /var/lib/edgeblock.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// An empty trusted-keys dir: pass it as `edgeblock --trusted-dir`, so that keys trusted by
    /// the host do not change what the tests see.
    pub fn trusted_dir(&self) -> &Path {
        &self.trusted_dir
    }

    /// `--pin-root`, `--state-dir`, `--data-dir` and `--trusted-dir` for an `edgeblock` that
    /// must touch nothing of the host's.
    pub fn global_args(&self) -> [&std::ffi::OsStr; 8] {
        [
            "--pin-root".as_ref(),
            self.pin_root.as_os_str(),
            "--state-dir".as_ref(),
            self.state_dir.as_os_str(),
            "--data-dir".as_ref(),
            self.data_dir.as_os_str(),
            "--trusted-dir".as_ref(),
            self.trusted_dir.as_os_str(),
        ]
    }

    /// `edgeblock` in `ns`, with [`Bpffs::global_args`].
    pub fn edgeblock(&self, ns: &netns::Netns) -> std::process::Command {
        let mut c = ns.command(edgeblock_bin());
        c.args(self.global_args());
        c
    }

    /// The temp dir holding them all.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if is_bpffs(&self.pin_root) {
            // MNT_DETACH: a process still holding a pinned object open (a crashed edgeblock, say)
            // must not keep the temp dir around.
            if let Err(e) = nix::mount::umount2(&self.pin_root, MntFlags::MNT_DETACH) {
                eprintln!(
                    "edgeblock_tests: cannot unmount {}: {e}",
                    self.pin_root.display()
                );
                return;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("edgeblock_tests: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Whether `path` is the root of a mounted bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let a = next_id();
        let b = next_id();
        assert_ne!(a, b);
    }

    #[test]
    fn tmp_is_not_bpffs() {
        assert!(!is_bpffs(&std::env::temp_dir()));
        assert!(!is_bpffs(Path::new("/nonexistent/edgeblock")));
    }
}
