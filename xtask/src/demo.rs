//! `cargo xtask demo`: edgeblock end to end in a throwaway client -> edge -> origin topology.
//!
//! Everything it makes (three namespaces, two veth pairs, a private bpffs in a temp dir, echo
//! servers) is owned by a `Drop` guard, so it is removed on success, on error, on a panic, and on
//! Ctrl-C (the signal only sets a flag; the demo stops at the next step and unwinds).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use edgeblock_tests::{
    Bpffs, EchoServer, Netns, Topology, addr, is_root, ping, remove_stale_namespaces, tcp_echo,
    tcp_echo_server,
};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::bootstrap;
use crate::cargo::{Profile, build_edgeblock, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy to apply, relative to the workspace root unless absolute.
    #[arg(long, default_value = "examples/policy.toml")]
    policy: PathBuf,
    /// Only build the topology and probe it, with no filter: checks the harness without the CLI.
    #[arg(long)]
    no_filter: bool,
}

/// The echo servers' port on every origin address.
const ECHO_PORT: u16 = 7;
const PING_COUNT: u32 = 3;
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Blocked,
}

/// The probed origins and what examples/policy.toml does to each.
const DESTINATIONS: [(IpAddr, Expect, &str); 7] = [
    (IpAddr::V4(addr::ORIGIN_V4), Expect::Allowed, "no rule"),
    (IpAddr::V6(addr::ORIGIN_V6), Expect::Allowed, "no rule"),
    (
        IpAddr::V4(addr::ORIGIN_BLOCKED_V4),
        Expect::Blocked,
        "emergency-origin",
    ),
    (
        IpAddr::V4(addr::ORIGIN_EXCEPTION_V4),
        Expect::Allowed,
        "origin-exceptions",
    ),
    (
        IpAddr::V6(addr::ORIGIN_BLOCKED_V6),
        Expect::Blocked,
        "emergency-origin",
    ),
    (
        IpAddr::V6(addr::ORIGIN_EXCEPTION_V6),
        Expect::Allowed,
        "origin-exceptions",
    ),
    (
        IpAddr::V4(addr::ORIGIN_HIJACKED_V4),
        Expect::Blocked,
        "hijacked-ranges",
    ),
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    // Only an atomic store: anything more is not async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C (and SIGTERM, SIGHUP) into a flag the demo checks between steps, so that it
/// unwinds through its guards instead of dying with the namespaces still in place. The child
/// processes get the terminal's SIGINT too, so a step in progress ends early by itself.
fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .with_context(|| format!("cannot install a {signal} handler"))?;
    }
    Ok(())
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: &Args) -> Result<()> {
    catch_interrupts()?;
    bootstrap::run(&bootstrap::Args::install()).context("bootstrap failed")?;
    if !is_root() {
        bail!(
            "the demo creates network namespaces, attaches XDP and mounts a bpffs, which needs \
             root: run `sudo -E env \"PATH=$PATH\" cargo xtask demo`"
        );
    }
    let policy = if args.policy.is_absolute() {
        args.policy.clone()
    } else {
        workspace_root().join(&args.policy)
    };
    let filter = if args.no_filter {
        None
    } else {
        let policy = policy
            .canonicalize()
            .with_context(|| format!("policy {} not found", args.policy.display()))?;
        println!("\n== build");
        let bin = build_edgeblock(Profile::Release)?;
        Some((bin, policy))
    };
    check_interrupt()?;
    for name in remove_stale_namespaces() {
        println!("removed namespace {name}, left by a run that was killed");
    }

    println!("\n== topology");
    // Declaration order is drop order reversed: servers, then the topology, then the bpffs.
    let bpffs = Bpffs::new();
    let topo = Topology::new();
    let servers: Vec<EchoServer> = DESTINATIONS
        .iter()
        .map(|&(ip, ..)| tcp_echo_server(&topo.origin, SocketAddr::new(ip, ECHO_PORT)))
        .collect();
    describe_topology(&topo, &bpffs);

    let result = match &filter {
        Some((bin, policy)) => {
            let edgeblock = Edgeblock {
                bin,
                ns: &topo.edge,
                bpffs: &bpffs,
            };
            with_filter(&topo, &edgeblock, policy)
        }
        None => without_filter(&topo),
    };

    println!("\n== cleanup");
    let names: Vec<String> = topo
        .namespaces()
        .iter()
        .map(|ns| ns.name().to_owned())
        .collect();
    let dir = bpffs.dir().to_owned();
    drop(servers);
    drop(topo);
    drop(bpffs);
    println!("deleted namespaces {}", names.join(", "));
    println!("unmounted and removed {}", dir.display());
    result
}

fn describe_topology(topo: &Topology, bpffs: &Bpffs) {
    println!(
        "client  {:<16} {} = {} + {}",
        topo.client.name(),
        topo.client_iface,
        addr::CLIENT_V4,
        addr::CLIENT_V6
    );
    println!(
        "edge    {:<16} {} = {} + {}  (XDP attaches here)",
        topo.edge.name(),
        topo.edge_ingress,
        addr::EDGE_CLIENT_V4,
        addr::EDGE_CLIENT_V6
    );
    println!(
        "        {:<16} {} = {} + {}",
        "",
        topo.edge_egress,
        addr::EDGE_ORIGIN_V4,
        addr::EDGE_ORIGIN_V6
    );
    let origins: Vec<String> = addr::ORIGIN_ALL.iter().map(IpAddr::to_string).collect();
    println!(
        "origin  {:<16} {} + lo = {}",
        topo.origin.name(),
        topo.origin_iface,
        origins.join(", ")
    );
    println!("TCP echo servers on port {ECHO_PORT} of each probed origin address");
    println!("private bpffs: {}", bpffs.pin_root().display());
}

fn without_filter(topo: &Topology) -> Result<()> {
    println!("\n== probes, no filter (--no-filter)");
    let rows = probe_all(topo, |_| Expect::Allowed)?;
    print_rows(&rows);
    check_rows(&rows)
}

fn with_filter(topo: &Topology, edgeblock: &Edgeblock<'_>, policy: &Path) -> Result<()> {
    println!("\n== edgeblock");
    println!("edgeblock = {}", edgeblock.bin.display());
    println!("[edge]    = ip netns exec {}", edgeblock.ns.name());
    let policy = policy.to_string_lossy();
    edgeblock.run(&["attach", &topo.edge_ingress])?;
    edgeblock.run(&["check", &policy])?;
    edgeblock.run(&["apply", &policy, "--dry-run"])?;
    edgeblock.run(&["apply", &policy])?;

    println!("\n== probes from the client, policy applied");
    let applied = probe_all(topo, |expect| expect)?;
    print_rows(&applied);

    println!("\n== edgeblock: counters, a lookup, status, detach");
    edgeblock.run(&["stats"])?;
    edgeblock.run(&["lookup", &addr::ORIGIN_BLOCKED_V4.to_string()])?;
    edgeblock.run(&["status"])?;
    edgeblock.run(&["detach", &topo.edge_ingress])?;

    println!("\n== probes from the client, filter detached: every origin answers again");
    let detached = probe_all(topo, |_| Expect::Allowed)?;
    print_rows(&detached);
    check_rows(&applied).context("with the policy applied")?;
    check_rows(&detached).context("after detach")
}

/// The CLI, run inside the edge namespace against the demo's private bpffs.
struct Edgeblock<'a> {
    bin: &'a Path,
    ns: &'a Netns,
    bpffs: &'a Bpffs,
}

impl Edgeblock<'_> {
    fn run(&self, args: &[&str]) -> Result<()> {
        check_interrupt()?;
        let mut cmd: Command = self.ns.command(self.bin);
        cmd.arg("--pin-root")
            .arg(self.bpffs.pin_root())
            .arg("--state-dir")
            .arg(self.bpffs.state_dir())
            .args(args)
            .stdin(Stdio::null());
        // Shown without the `ip netns exec` prefix and the binary's path, explained once above.
        println!(
            "\n[edge] $ edgeblock --pin-root {} --state-dir {} {}",
            self.bpffs.pin_root().display(),
            self.bpffs.state_dir().display(),
            args.join(" ")
        );
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        check_interrupt()?;
        if !status.success() {
            bail!(
                "`edgeblock {}` failed ({status}); its message is above",
                args.join(" ")
            );
        }
        Ok(())
    }
}

/// One line of the probe table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    dst: IpAddr,
    rule: &'static str,
    expect: Expect,
    ping: bool,
    /// `Ok(round trip)` or how it failed.
    tcp: Result<Duration, std::io::ErrorKind>,
}

impl Row {
    /// Allowed: ping answered and TCP echoed. Blocked (dropped): no reply and the TCP connect
    /// timed out; a reset would mean something other than a drop stopped it.
    fn as_expected(&self) -> bool {
        match self.expect {
            Expect::Allowed => self.ping && self.tcp.is_ok(),
            Expect::Blocked => !self.ping && self.tcp == Err(std::io::ErrorKind::TimedOut),
        }
    }
}

/// Pings and TCP-echoes every destination from the client, all at once (a dropped probe waits
/// for its whole timeout).
fn probe_all(topo: &Topology, expect: impl Fn(Expect) -> Expect) -> Result<Vec<Row>> {
    check_interrupt()?;
    let rows = std::thread::scope(|scope| {
        let probes: Vec<_> = DESTINATIONS
            .iter()
            .map(|&(dst, policy_expect, rule)| {
                let expect = expect(policy_expect);
                scope.spawn(move || Row {
                    dst,
                    rule,
                    expect,
                    ping: ping(&topo.client, dst, PING_COUNT, PING_TIMEOUT),
                    tcp: tcp_echo(&topo.client, SocketAddr::new(dst, ECHO_PORT), TCP_TIMEOUT)
                        .map_err(|e| e.kind()),
                })
            })
            .collect();
        probes
            .into_iter()
            .map(|p| {
                p.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    check_interrupt()?;
    Ok(rows)
}

fn format_rows(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<16} {:<18} {:<8} {:<9} {:<16} {}\n",
        "destination", "rule", "expected", "ping", "tcp", "result"
    );
    for row in rows {
        let expect = match row.expect {
            Expect::Allowed => "allowed",
            Expect::Blocked => "blocked",
        };
        let ping = if row.ping { "replies" } else { "no reply" };
        let tcp = match row.tcp {
            Ok(rtt) => format!("echo {:.1}ms", rtt.as_secs_f64() * 1000.0),
            Err(std::io::ErrorKind::TimedOut) => "timeout".to_owned(),
            Err(std::io::ErrorKind::ConnectionRefused) => "refused".to_owned(),
            Err(kind) => kind.to_string(),
        };
        let verdict = if row.as_expected() {
            "ok"
        } else {
            "UNEXPECTED"
        };
        out.push_str(&format!(
            "{:<16} {:<18} {expect:<8} {ping:<9} {tcp:<16} {verdict}\n",
            row.dst.to_string(),
            row.rule
        ));
    }
    out
}

fn print_rows(rows: &[Row]) {
    print!("{}", format_rows(rows));
}

fn check_rows(rows: &[Row]) -> Result<()> {
    let wrong: Vec<String> = rows
        .iter()
        .filter(|r| !r.as_expected())
        .map(|r| r.dst.to_string())
        .collect();
    if !wrong.is_empty() {
        bail!("unexpected probe results for {}", wrong.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    fn row(expect: Expect, ping: bool, tcp: Result<Duration, ErrorKind>) -> Row {
        Row {
            dst: IpAddr::V4(addr::ORIGIN_BLOCKED_V4),
            rule: "emergency-origin",
            expect,
            ping,
            tcp,
        }
    }

    #[test]
    fn verdicts() {
        let echoed = Ok(Duration::from_micros(300));
        assert!(row(Expect::Allowed, true, echoed).as_expected());
        assert!(!row(Expect::Allowed, false, echoed).as_expected());
        assert!(!row(Expect::Allowed, true, Err(ErrorKind::TimedOut)).as_expected());
        assert!(row(Expect::Blocked, false, Err(ErrorKind::TimedOut)).as_expected());
        assert!(!row(Expect::Blocked, false, echoed).as_expected());
        // A reset is not what a drop looks like.
        assert!(!row(Expect::Blocked, false, Err(ErrorKind::ConnectionRefused)).as_expected());
    }

    #[test]
    fn table_lines_up() {
        let text = format_rows(&[
            row(Expect::Blocked, false, Err(ErrorKind::TimedOut)),
            row(Expect::Allowed, false, Err(ErrorKind::TimedOut)),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("destination"));
        assert!(lines[1].starts_with("203.0.113.9 "));
        assert!(lines[1].ends_with(" ok"), "{}", lines[1]);
        assert!(lines[2].ends_with(" UNEXPECTED"), "{}", lines[2]);
        let col = lines[0].find("ping").expect("ping column");
        assert_eq!(&lines[1][col..col + 8], "no reply");
    }

    #[test]
    fn destinations_follow_the_example_policy() {
        // Every address the demo probes is one the topology serves.
        for (dst, ..) in DESTINATIONS {
            assert!(addr::ORIGIN_ALL.contains(&dst), "{dst}");
        }
        let policy = std::fs::read_to_string(workspace_root().join("examples/policy.toml"))
            .expect("examples/policy.toml");
        for (_, _, rule) in DESTINATIONS {
            assert!(
                rule == "no rule" || policy.contains(&format!("name = \"{rule}\"")),
                "examples/policy.toml has no rule {rule}"
            );
        }
    }
}
