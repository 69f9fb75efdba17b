//! Network namespaces, the client/edge/origin topology, and the probes that send traffic through it.
//!
//! ```text
//!  client ns                 edge ns (XDP attaches on edge_ingress)        origin ns
//!  client_iface ======== edge_ingress        edge_egress ============ origin_iface (+ lo)
//!  192.0.2.2/24          192.0.2.1/24        198.51.100.1/24          198.51.100.10/24
//!  2001:db8:c::2/64      2001:db8:c::1/64    2001:db8:100::1/64       2001:db8:100::a/64
//! ```
//!
//! The origin also answers on 198.51.100.70 (on its veth) and, on its loopback, on 203.0.113.5,
//! 203.0.113.9, 2001:db8:1::5 and 2001:db8:1::9: the edge routes 203.0.113.0/24 via
//! 198.51.100.10 and 2001:db8:1::/64 via 2001:db8:100::a. See [`addr`].
//!
//! The origin pools 203.0.113.0/24 and 2001:db8:1::/64 sit behind a transit link on purpose:
//! a policy that blocks a whole pool (examples/policy.toml does) then covers none of the edge's
//! own addresses, so edgeblock's lockout check lets it apply without `--force`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use crate::next_id;

/// Where `ip netns add` puts the namespace handles.
const NETNS_RUN_DIR: &str = "/run/netns";
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const IFNAME_MAX: usize = 15;
/// How long [`Topology::new`] waits for addresses and neighbours to become usable.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The addresses of [`Topology`]. All from the documentation ranges (RFC 5737, RFC 3849).
pub mod addr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The client's veth.
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    /// The client's veth.
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
    /// The edge's client-side veth (where XDP attaches); the client's default gateway.
    pub const EDGE_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// The edge's client-side veth; the client's default gateway.
    pub const EDGE_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
    /// The edge's origin-side veth; the origin's default gateway.
    pub const EDGE_ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// The edge's origin-side veth; the origin's default gateway.
    pub const EDGE_ORIGIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
    /// The origin's veth; also the next hop for 203.0.113.0/24. No example rule covers it.
    pub const ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// The origin's veth; also the next hop for 2001:db8:1::/64. No example rule covers it.
    pub const ORIGIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0xa);
    /// The origin pool routed via [`ORIGIN_V4`].
    pub const ORIGIN_POOL_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(203, 0, 113, 0), 24);
    /// The edge's side of the link to a [`crate::NoticeHost`] (a /26 carved from the top of
    /// the client range, which the client link's /24 does not use).
    pub const EDGE_NOTICE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 129);
    /// The notice host.
    pub const NOTICE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 130);
    /// The edge's side of the link to a [`crate::NoticeHost`].
    pub const EDGE_NOTICE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 1);
    /// The notice host.
    pub const NOTICE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 2);
    /// The origin pool routed via [`ORIGIN_V6`].
    pub const ORIGIN_POOL_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 64);
    /// On the origin's veth (/32); inside the example policy's hijacked 198.51.100.64/26.
    pub const ORIGIN_HIJACKED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 70);
    /// On the origin's loopback; the example policy's pass exception inside a blocked prefix.
    pub const ORIGIN_EXCEPTION_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    /// On the origin's loopback; blocked by the example policy.
    pub const ORIGIN_BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    /// On the origin's loopback; the example policy's IPv6 pass exception.
    pub const ORIGIN_EXCEPTION_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);
    /// On the origin's loopback; blocked by the example policy.
    pub const ORIGIN_BLOCKED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9);

    /// Every address the origin answers on, all reachable from the client through the edge.
    pub const ORIGIN_ALL: [IpAddr; 7] = [
        IpAddr::V4(ORIGIN_V4),
        IpAddr::V4(ORIGIN_HIJACKED_V4),
        IpAddr::V4(ORIGIN_EXCEPTION_V4),
        IpAddr::V4(ORIGIN_BLOCKED_V4),
        IpAddr::V6(ORIGIN_V6),
        IpAddr::V6(ORIGIN_EXCEPTION_V6),
        IpAddr::V6(ORIGIN_BLOCKED_V6),
    ];
}

/// Describes a command for error messages: `ip -n eb1-0-edge link show`.
fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion, capturing its output; panics if it cannot be started.
fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{}`: {e} (is iproute2 installed? `cargo xtask bootstrap` installs the test tools)",
            describe(cmd)
        )
    })
}

/// Runs `cmd` and returns its stdout; panics with its stderr if it fails.
fn run_checked(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created for a test, deleted when dropped.
///
/// Named `eb<pid>-<n>-<role>` so that [`remove_stale_namespaces`] can tell the leftovers of a
/// killed run from the namespaces of a live one.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `eb<pid>-<n>-<role>`.
    pub fn new(role: &str) -> Self {
        Self::create(format!("eb{}-{}-{role}", std::process::id(), next_id()))
    }

    fn create(name: String) -> Self {
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        Netns { name }
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle, `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// A `Command` that runs `program` inside the namespace (`ip netns exec <name> program`).
    ///
    /// `ip netns exec` also gives the command a fresh /sys, so a program that needs a bpffs must
    /// get one mounted elsewhere (see [`crate::Bpffs`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `cmd args...` inside the namespace and returns its output, whatever its exit status.
    pub fn exec<I, S>(&self, cmd: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(self.command(cmd).args(args))
    }

    /// Runs `ip -n <name> args...` and returns its stdout; panics if it fails.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        // /proc/sys/net resolves to the namespace of the thread that opens it.
        self.run_in(move || {
            std::fs::write(&path, value.as_bytes()).unwrap_or_else(|e| {
                panic!(
                    "cannot set {} = {value} in {}: {e}",
                    path.display(),
                    self.name
                )
            });
        });
    }

    fn open(&self) -> File {
        File::open(self.path()).unwrap_or_else(|e| {
            panic!(
                "cannot open the namespace handle {}: {e}",
                self.path().display()
            )
        })
    }

    /// Runs `f` on a fresh thread that first enters the namespace, and returns its result.
    ///
    /// Sockets that `f` creates live in the namespace. A panic in `f` is resumed here.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let handle = self.open();
        thread::scope(|scope| {
            let thread = thread::Builder::new()
                .name(format!("in {}", self.name))
                .spawn_scoped(scope, || {
                    enter(&handle, &self.name);
                    f()
                })
                .unwrap_or_else(|e| panic!("cannot spawn a thread: {e}"));
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Netns::run_in`], but returns at once with the thread's handle.
    pub fn spawn_in<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let handle = self.open();
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("in {name}"))
            .spawn(move || {
                enter(&handle, &name);
                f()
            })
            .unwrap_or_else(|e| panic!("cannot spawn a thread: {e}"))
    }
}

/// Shows the name, as `ip netns` knows it.
impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Moves the calling thread (only) into the network namespace behind `handle`.
fn enter(handle: &File, name: &str) {
    setns(handle, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into network namespace {name} failed: {e} (needs root)"));
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "edgeblock_tests: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!(
                "edgeblock_tests: cannot run `ip netns del {}`: {e}",
                self.name
            ),
        }
    }
}

/// The pid in a harness namespace name `eb<pid>-<n>-<role>`, or `None` for any other name.
fn harness_pid(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix("eb")?.splitn(3, '-');
    let pid = parts.next()?;
    let n = parts.next()?;
    let role = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if digits(pid) && digits(n) && word(role) {
        pid.parse().ok()
    } else {
        None
    }
}

/// Deletes the namespaces that this harness created in processes that no longer run (a test run
/// killed with SIGKILL cannot run its `Drop` guards), and returns their names.
///
/// Namespaces of live processes, and any namespace not named by this harness, are left alone.
pub fn remove_stale_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = harness_pid(&name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let ok = Command::new("ip")
            .args(["netns", "del", &name])
            .output()
            .is_ok_and(|out| out.status.success());
        if ok {
            removed.push(name);
        }
    }
    removed
}

/// Three namespaces, client -> edge -> origin, joined by two veth pairs, forwarding on the edge.
///
/// Dropping it deletes the veth pairs and the namespaces. Drop probe servers (echo, UDP
/// receivers) first, since a socket keeps its namespace alive: as locals, declare them after the
/// topology (locals drop in reverse order); as struct fields, before it (fields drop in order).
#[derive(Debug)]
pub struct Topology {
    /// Sends the probes.
    pub client: Netns,
    /// Forwards between client and origin; the filter runs here.
    pub edge: Netns,
    /// Answers on every address in [`addr::ORIGIN_ALL`].
    pub origin: Netns,
    /// The client's veth.
    pub client_iface: String,
    /// The edge's client-side veth, where the XDP program attaches.
    pub edge_ingress: String,
    /// The edge's origin-side veth.
    pub edge_egress: String,
    /// The origin's veth.
    pub origin_iface: String,
}

/// `eb<pid>-<n><role>`, checked against the kernel's interface name limit.
fn iface_name(pid: u32, n: u32, role: &str) -> String {
    let name = format!("eb{pid}-{n}{role}");
    assert!(
        name.len() <= IFNAME_MAX,
        "interface name {name} is longer than {IFNAME_MAX} bytes"
    );
    name
}

impl Topology {
    /// Builds the topology and waits until the client reaches every origin address.
    pub fn new() -> Self {
        let pid = std::process::id();
        let n = next_id();
        let ns = |role: &str| Netns::create(format!("eb{pid}-{n}-{role}"));
        // Locals first: if anything below panics, the namespaces made so far are still removed.
        let client = ns("client");
        let edge = ns("edge");
        let origin = ns("origin");
        let topo = Topology {
            client,
            edge,
            origin,
            client_iface: iface_name(pid, n, "c"),
            edge_ingress: iface_name(pid, n, "ei"),
            edge_egress: iface_name(pid, n, "eo"),
            origin_iface: iface_name(pid, n, "o"),
        };
        topo.configure();
        topo.wait_ready();
        topo
    }

    fn configure(&self) {
        use addr::*;
        let (client, edge, origin) = (&self.client, &self.edge, &self.origin);
        for ns in self.namespaces() {
            // Set before the veths exist so they inherit it: no duplicate address detection, so
            // addresses (link-local ones included) are usable at once.
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            ns.ip(["link", "set", "lo", "up"]);
        }
        let (c, ei, eo, o) = (
            self.client_iface.as_str(),
            self.edge_ingress.as_str(),
            self.edge_egress.as_str(),
            self.origin_iface.as_str(),
        );
        // Each pair is created inside the namespaces, so it never shows up in the host's.
        let veth = |ns: &Netns, name: &str, peer_ns: &Netns, peer: &str| {
            let spec = format!("link add {name} type veth peer name {peer} netns {peer_ns}");
            ns.ip(spec.split(' '));
        };
        veth(client, c, edge, ei);
        veth(edge, eo, origin, o);

        let (pool4, pool4_len) = ORIGIN_POOL_V4;
        let (pool6, pool6_len) = ORIGIN_POOL_V6;
        let addresses: [(&Netns, &str, String); 13] = [
            (client, c, format!("{CLIENT_V4}/24")),
            (client, c, format!("{CLIENT_V6}/64")),
            (edge, ei, format!("{EDGE_CLIENT_V4}/24")),
            (edge, ei, format!("{EDGE_CLIENT_V6}/64")),
            (edge, eo, format!("{EDGE_ORIGIN_V4}/24")),
            (edge, eo, format!("{EDGE_ORIGIN_V6}/64")),
            (origin, o, format!("{ORIGIN_V4}/24")),
            (origin, o, format!("{ORIGIN_V6}/64")),
            (origin, o, format!("{ORIGIN_HIJACKED_V4}/32")),
            (origin, "lo", format!("{ORIGIN_EXCEPTION_V4}/32")),
            (origin, "lo", format!("{ORIGIN_BLOCKED_V4}/32")),
            (origin, "lo", format!("{ORIGIN_EXCEPTION_V6}/128")),
            (origin, "lo", format!("{ORIGIN_BLOCKED_V6}/128")),
        ];
        for (ns, iface, cidr) in &addresses {
            // `nodad` for the addresses we add; the sysctl above covers the link-local ones.
            let nodad = cidr.contains(':').then_some("nodad");
            ns.ip(["addr", "add", cidr, "dev", iface].into_iter().chain(nodad));
        }

        for (ns, iface) in [(client, c), (edge, ei), (edge, eo), (origin, o)] {
            ns.ip(["link", "set", iface, "up"]);
        }
        edge.sysctl("net.ipv4.ip_forward", "1");
        edge.sysctl("net.ipv6.conf.all.forwarding", "1");

        let routes: [(&Netns, String, IpAddr); 6] = [
            (client, "default".to_owned(), EDGE_CLIENT_V4.into()),
            (client, "default".to_owned(), EDGE_CLIENT_V6.into()),
            (edge, format!("{pool4}/{pool4_len}"), ORIGIN_V4.into()),
            (edge, format!("{pool6}/{pool6_len}"), ORIGIN_V6.into()),
            (origin, "default".to_owned(), EDGE_ORIGIN_V4.into()),
            (origin, "default".to_owned(), EDGE_ORIGIN_V6.into()),
        ];
        for (ns, dst, via) in &routes {
            let family = if via.is_ipv4() { "-4" } else { "-6" };
            ns.ip([family, "route", "add", dst, "via", &via.to_string()]);
        }
    }

    /// Waits until no address is tentative and the client gets an echo reply from every origin
    /// address (which also fills the neighbour caches along the way).
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for ns in self.namespaces() {
            while !ns.ip(["-6", "addr", "show", "tentative"]).trim().is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "IPv6 addresses in {} still tentative after {READY_TIMEOUT:?}:\n{}",
                    ns.name(),
                    self.dump()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        for dst in addr::ORIGIN_ALL {
            while !ping(&self.client, dst, 1, Duration::from_secs(1)) {
                assert!(
                    Instant::now() < deadline,
                    "the client cannot reach {dst} through the edge after {READY_TIMEOUT:?}:\n{}",
                    self.dump()
                );
            }
        }
    }

    /// The three namespaces, client first.
    pub fn namespaces(&self) -> [&Netns; 3] {
        [&self.client, &self.edge, &self.origin]
    }

    /// Addresses, routes and neighbours of every namespace, for failure messages.
    pub fn dump(&self) -> String {
        let mut text = String::new();
        for ns in self.namespaces() {
            text.push_str(&format!("--- {}\n", ns.name()));
            for args in [
                &["-br", "addr"][..],
                &["-4", "route"],
                &["-6", "route"],
                &["neigh"],
            ] {
                let out = output(Command::new("ip").args(["-n", ns.name()]).args(args));
                text.push_str(&String::from_utf8_lossy(&out.stdout));
            }
        }
        text
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// A notice server host beside the edge: a fourth namespace on its own veth link to the edge,
/// the way a redirect target is deployed (L2-adjacent to the edge). It accepts traffic for the
/// origin pools as if it were theirs (AnyIP local routes) and answers the client directly,
/// through the edge, with the origins' addresses.
///
/// Dropping it deletes the link and the namespace.
#[derive(Debug)]
pub struct NoticeHost {
    pub ns: Netns,
    /// The edge's side of the link: the redirect target's interface.
    pub edge_iface: String,
    /// The notice host's side.
    pub iface: String,
    edge: String,
}

impl NoticeHost {
    /// Builds the notice host beside `topo`'s edge.
    pub fn beside(topo: &Topology) -> Self {
        use addr::*;
        let pid = std::process::id();
        let n = next_id();
        let host = NoticeHost {
            ns: Netns::create(format!("eb{pid}-{n}-notice")),
            edge_iface: iface_name(pid, n, "en"),
            iface: iface_name(pid, n, "n"),
            edge: topo.edge.name().to_owned(),
        };
        let (ns, edge) = (&host.ns, &topo.edge);
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.ip(["link", "set", "lo", "up"]);
        let spec = format!(
            "link add {} type veth peer name {} netns {}",
            host.edge_iface, host.iface, ns
        );
        edge.ip(spec.split(' '));
        edge.ip([
            "addr",
            "add",
            &format!("{EDGE_NOTICE_V4}/26"),
            "dev",
            &host.edge_iface,
        ]);
        edge.ip([
            "addr",
            "add",
            &format!("{EDGE_NOTICE_V6}/64"),
            "dev",
            &host.edge_iface,
            "nodad",
        ]);
        ns.ip([
            "addr",
            "add",
            &format!("{NOTICE_V4}/26"),
            "dev",
            &host.iface,
        ]);
        ns.ip([
            "addr",
            "add",
            &format!("{NOTICE_V6}/64"),
            "dev",
            &host.iface,
            "nodad",
        ]);
        edge.ip(["link", "set", &host.edge_iface, "up"]);
        ns.ip(["link", "set", &host.iface, "up"]);
        // A veth hands XDP_REDIRECTed frames to its peer only when the peer runs NAPI, which
        // GRO (or an XDP program) turns on.
        let gro = ns.exec("ethtool", ["-K", &host.iface, "gro", "on"]);
        assert!(
            gro.status.success(),
            "ethtool -K {} gro on failed (is ethtool installed? `cargo xtask bootstrap`): {}",
            host.iface,
            String::from_utf8_lossy(&gro.stderr)
        );
        // A veth leaves TCP/UDP checksums for "hardware" to fill in (CHECKSUM_PARTIAL); that
        // promise is lost when XDP redirects the frame to another device, and the notice host
        // would drop it as corrupt. Frames from a real wire are complete: make the client's
        // frames so too.
        let tx = topo
            .client
            .exec("ethtool", ["-K", &topo.client_iface, "tx", "off"]);
        assert!(
            tx.status.success(),
            "ethtool -K {} tx off failed: {}",
            topo.client_iface,
            String::from_utf8_lossy(&tx.stderr)
        );
        // The replies come back to the edge on this link with the origins' addresses, which
        // the edge routes elsewhere: strict reverse-path filtering would drop them.
        for key in ["all", "default", host.edge_iface.as_str()] {
            edge.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
        }
        let (pool4, len4) = ORIGIN_POOL_V4;
        let (pool6, len6) = ORIGIN_POOL_V6;
        ns.ip([
            "-4",
            "route",
            "add",
            "local",
            &format!("{pool4}/{len4}"),
            "dev",
            "lo",
        ]);
        ns.ip([
            "-6",
            "route",
            "add",
            "local",
            &format!("{pool6}/{len6}"),
            "dev",
            "lo",
        ]);
        ns.ip([
            "-4",
            "route",
            "add",
            "default",
            "via",
            &EDGE_NOTICE_V4.to_string(),
        ]);
        ns.ip([
            "-6",
            "route",
            "add",
            "default",
            "via",
            &EDGE_NOTICE_V6.to_string(),
        ]);
        host
    }
}

/// Makes `iface` in `ns` accept frames that its veth peer sends with XDP_TX or XDP_REDIRECT
/// at once, by running an XDP program on it: `edgeblock` itself, with its own pins under
/// `bpffs` and no policy (so it passes everything). On a veth, such frames are only flushed to
/// the peer right away when the peer has an XDP program (GRO alone queues them until other
/// traffic arrives); a real NIC simply transmits them.
pub fn accept_xdp_frames(ns: &Netns, iface: &str, bpffs: &crate::Bpffs) {
    let out = ns
        .command(crate::edgeblock_bin())
        .arg("--pin-root")
        .arg(bpffs.dir().join("bpffs").join(format!("rx-{iface}")))
        .arg("--state-dir")
        .arg(bpffs.state_dir())
        .arg("--data-dir")
        .arg(bpffs.data_dir())
        .arg("--trusted-dir")
        .arg(bpffs.trusted_dir())
        .args(["attach", iface])
        .output()
        .unwrap_or_else(|e| panic!("cannot run edgeblock: {e}"));
    assert!(
        out.status.success(),
        "edgeblock attach {iface} (an XDP program to receive XDP_TX frames) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for NoticeHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.edge, "link", "del", self.edge_iface.as_str()])
            .output();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting one end deletes the pair. Do it explicitly: a socket still open in a
        // namespace keeps that namespace, and its interfaces, alive after `ip netns del`.
        for iface in [&self.edge_ingress, &self.edge_egress] {
            let _ = Command::new("ip")
                .args(["-n", self.edge.name(), "link", "del", iface.as_str()])
                .output();
        }
    }
}

/// Sends `count` echo requests from `ns` to `addr` (one every 200 ms) and returns whether all of
/// them were answered within `timeout` (rounded up to whole seconds, at least one).
///
/// Uses the `ping` binary (iputils-ping); panics if it is missing rather than report a miss.
pub fn ping(ns: &Netns, addr: IpAddr, count: u32, timeout: Duration) -> bool {
    let deadline = timeout.as_secs_f64().ceil().max(1.0);
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let out = ns.exec(
        "ping",
        [
            family,
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-w",
            &format!("{deadline:.0}"),
            &addr.to_string(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("exec of \"ping\" failed"),
        "the ping binary is missing: install iputils-ping (`cargo xtask bootstrap` does)"
    );
    out.status.success()
}

/// Connects from `ns` to `addr` over TCP and returns how long the handshake took.
///
/// A dropped SYN shows as `ErrorKind::TimedOut`, a reset as `ErrorKind::ConnectionRefused`.
pub fn tcp_connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    ns.run_in(move || {
        let start = Instant::now();
        TcpStream::connect_timeout(&addr, timeout)?;
        Ok(start.elapsed())
    })
}

/// What [`tcp_echo`] sends.
const ECHO_PROBE: &[u8] = b"edgeblock echo probe\n";

/// Connects from `ns` to an [`EchoServer`] at `addr`, round-trips a few bytes, and returns how
/// long connect + round trip took; all of it bounded by `timeout`.
pub fn tcp_echo(ns: &Netns, addr: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    ns.run_in(move || {
        let start = Instant::now();
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left))?;
        stream.set_write_timeout(Some(left))?;
        stream.write_all(ECHO_PROBE)?;
        let mut back = [0; ECHO_PROBE.len()];
        stream.read_exact(&mut back).map_err(|e| match e.kind() {
            // A read timeout shows as EAGAIN.
            io::ErrorKind::WouldBlock => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connected to {addr}, but no echo within {timeout:?}"),
            ),
            _ => e,
        })?;
        if back != ECHO_PROBE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{addr} echoed something else"),
            ));
        }
        Ok(start.elapsed())
    })
}

/// A TCP echo server on a thread inside a namespace; stops when dropped.
///
/// It serves one connection at a time, each for at most [`EchoServer::MAX_CONN_TIME`] and
/// [`EchoServer::MAX_CONN_BYTES`], so a stuck client cannot keep it (or a test) alive.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Longest time one connection is served.
    pub const MAX_CONN_TIME: Duration = Duration::from_secs(5);
    /// Most bytes echoed on one connection.
    pub const MAX_CONN_BYTES: usize = 1 << 20;

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Starts an [`EchoServer`] listening on `addr` inside `ns`; returns once it is listening.
pub fn tcp_echo_server(ns: &Netns, addr: SocketAddr) -> EchoServer {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = ns.spawn_in({
        let stop = Arc::clone(&stop);
        move || {
            let listener = TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            serve_echo(&listener, &stop);
        }
    });
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("echo server cannot listen on {addr} in {}: {e}", ns.name()),
        Err(_) => panic!("echo server thread in {} died before listening", ns.name()),
    }
    EchoServer {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn serve_echo(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => echo_connection(stream, stop),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                eprintln!("edgeblock_tests: echo server accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn echo_connection(mut stream: TcpStream, stop: &AtomicBool) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_millis(100))))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(1))));
    if setup.is_err() {
        return;
    }
    let start = Instant::now();
    let mut echoed = 0;
    let mut buf = [0; 4096];
    while !stop.load(Ordering::Relaxed)
        && start.elapsed() < EchoServer::MAX_CONN_TIME
        && echoed < EchoServer::MAX_CONN_BYTES
    {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
                echoed += n;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Continuous loss measurement: a sender in one namespace sends `count` sequence-numbered UDP
/// datagrams, one every `interval`, to a receiver bound in another; [`UdpProbe::finish`] says
/// which never arrived. Use it to watch what a policy change does to traffic in flight.
#[derive(Debug)]
pub struct UdpProbe {
    count: u32,
    sent: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<Vec<bool>>>,
    grace: Duration,
}

/// What a [`UdpProbe`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpReport {
    /// Datagrams sent (less than asked for only if the probe was stopped early).
    pub sent: u32,
    /// Distinct datagrams received.
    pub received: u32,
    /// Sequence numbers (0-based) sent but not received, ascending.
    pub missing: Vec<u32>,
}

impl UdpReport {
    fn from_seen(sent: u32, seen: &[bool]) -> Self {
        let missing: Vec<u32> = (0..sent)
            .filter(|&seq| !seen.get(seq as usize).copied().unwrap_or(false))
            .collect();
        UdpReport {
            sent,
            received: seen.iter().filter(|&&s| s).count() as u32,
            missing,
        }
    }

    /// The missing sequence numbers as inclusive runs `(first, last)`: one run per loss window.
    pub fn loss_runs(&self) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &seq in &self.missing {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == seq => *last = seq,
                _ => runs.push((seq, seq)),
            }
        }
        runs
    }
}

/// Marks our datagrams, so stray traffic to the receiver's port is not counted.
const UDP_MAGIC: [u8; 4] = *b"EBUP";
const UDP_DATAGRAM_LEN: usize = 12;

fn encode_datagram(nonce: u32, seq: u32) -> [u8; UDP_DATAGRAM_LEN] {
    let mut buf = [0; UDP_DATAGRAM_LEN];
    buf[..4].copy_from_slice(&UDP_MAGIC);
    buf[4..8].copy_from_slice(&nonce.to_be_bytes());
    buf[8..].copy_from_slice(&seq.to_be_bytes());
    buf
}

fn decode_datagram(nonce: u32, buf: &[u8]) -> Option<u32> {
    let [m0, m1, m2, m3, n0, n1, n2, n3, s0, s1, s2, s3]: [u8; UDP_DATAGRAM_LEN] =
        buf.try_into().ok()?;
    ([m0, m1, m2, m3] == UDP_MAGIC && u32::from_be_bytes([n0, n1, n2, n3]) == nonce)
        .then_some(u32::from_be_bytes([s0, s1, s2, s3]))
}

impl UdpProbe {
    /// Binds a receiver to `dst` in `receiver_ns`, then starts sending from `sender_ns`.
    /// Returns at once; the sender stops by itself after `count` datagrams.
    pub fn start(
        sender_ns: &Netns,
        receiver_ns: &Netns,
        dst: SocketAddr,
        count: u32,
        interval: Duration,
    ) -> Self {
        let nonce = std::process::id().rotate_left(16) ^ next_id();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU32::new(0));

        let (ready_tx, ready_rx) = mpsc::channel();
        let receiver = receiver_ns.spawn_in({
            let stop = Arc::clone(&stop);
            move || {
                let socket = UdpSocket::bind(dst).and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(10)))?;
                    Ok(s)
                });
                let socket = match socket {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Vec::new();
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut seen = vec![false; count as usize];
                let mut buf = [0; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(len) = socket.recv(&mut buf)
                        && let Some(seq) = decode_datagram(nonce, &buf[..len])
                        && let Some(slot) = seen.get_mut(seq as usize)
                    {
                        *slot = true;
                    }
                }
                seen
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!(
                "UDP probe receiver cannot bind {dst} in {}: {e}",
                receiver_ns.name()
            ),
            Err(_) => panic!(
                "UDP probe receiver thread in {} died before binding",
                receiver_ns.name()
            ),
        }

        let sender = sender_ns.spawn_in({
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            move || {
                let local: SocketAddr = if dst.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local)
                    .unwrap_or_else(|e| panic!("UDP probe sender cannot bind {local}: {e}"));
                let start = Instant::now();
                for seq in 0..count {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // Paced from the start time, so a slow send does not stretch the run.
                    let due = start + interval * seq;
                    thread::sleep(due.saturating_duration_since(Instant::now()));
                    // Unconnected: an ICMP error for one datagram must not fail the next send.
                    let _ = socket.send_to(&encode_datagram(nonce, seq), dst);
                    sent.store(seq + 1, Ordering::Relaxed);
                }
            }
        });

        UdpProbe {
            count,
            sent,
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
            grace: (interval * 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
        }
    }

    /// Datagrams sent so far.
    pub fn sent_so_far(&self) -> u32 {
        self.sent.load(Ordering::Relaxed)
    }

    /// How many datagrams the probe was asked to send.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Waits for the sender to finish, gives the last datagrams a moment to arrive, stops the
    /// receiver and reports.
    pub fn finish(mut self) -> UdpReport {
        if let Some(sender) = self.sender.take()
            && let Err(panic) = sender.join()
        {
            std::panic::resume_unwind(panic);
        }
        thread::sleep(self.grace);
        self.stop.store(true, Ordering::Relaxed);
        let seen = match self.receiver.take().map(JoinHandle::join) {
            Some(Ok(seen)) => seen,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Vec::new(),
        };
        UdpReport::from_seen(self.sent.load(Ordering::Relaxed), &seen)
    }
}

impl Drop for UdpProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_names_are_recognised() {
        assert_eq!(harness_pid("eb1234-0-edge"), Some(1234));
        assert_eq!(harness_pid("eb7-12-client"), Some(7));
        for other in [
            "eb1234-0-",
            "eb-0-edge",
            "ebx-0-edge",
            "eb12-x-edge",
            "eb12-0-ed/ge",
            "eb12",
            "edge",
            "foo1234-0-edge",
        ] {
            assert_eq!(harness_pid(other), None, "{other}");
        }
    }

    #[test]
    fn netns_names_round_trip_through_harness_pid() {
        let name = format!("eb{}-{}-{}", std::process::id(), next_id(), "client");
        assert_eq!(harness_pid(&name), Some(std::process::id()));
    }

    #[test]
    fn interface_names_fit_ifnamsiz_for_any_pid() {
        // /proc/sys/kernel/pid_max is at most 2^22.
        for role in ["c", "ei", "eo", "o"] {
            assert!(iface_name(4_194_304, 999, role).len() <= IFNAME_MAX);
        }
    }

    #[test]
    #[should_panic(expected = "longer than 15 bytes")]
    fn overlong_interface_names_are_refused() {
        iface_name(4_194_304, 99_999, "ei");
    }

    #[test]
    fn datagrams_round_trip() {
        let buf = encode_datagram(0xdead_beef, 42);
        assert_eq!(decode_datagram(0xdead_beef, &buf), Some(42));
        assert_eq!(decode_datagram(0xdead_bee0, &buf), None, "other probe");
        assert_eq!(decode_datagram(0xdead_beef, &buf[..11]), None, "short");
        let mut bad = buf;
        bad[0] = b'X';
        assert_eq!(decode_datagram(0xdead_beef, &bad), None, "no magic");
    }

    #[test]
    fn report_lists_missing_and_runs() {
        let seen = [true, false, false, true, false, true, true, false];
        let report = UdpReport::from_seen(8, &seen);
        assert_eq!(report.received, 4);
        assert_eq!(report.missing, vec![1, 2, 4, 7]);
        assert_eq!(report.loss_runs(), vec![(1, 2), (4, 4), (7, 7)]);
    }

    #[test]
    fn report_counts_only_what_was_sent() {
        // Stopped early: 3 of 5 sent, all received.
        let report = UdpReport::from_seen(3, &[true, true, true, false, false]);
        assert_eq!(report.missing, Vec::<u32>::new());
        assert_eq!(report.loss_runs(), vec![]);
    }

    #[test]
    fn describe_shows_the_command_line() {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", "x", "link"]);
        assert_eq!(describe(&cmd), "ip -n x link");
    }
}
