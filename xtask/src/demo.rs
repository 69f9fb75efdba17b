//! `cargo xtask demo`: edgeblock end to end in a throwaway client -> edge -> origin topology.
//!
//! Two acts. The first applies examples/policy.toml (drop and pass) and probes every origin
//! with ping and TCP, then detaches. The second adds a notice host beside the edge running
//! `edgeblock notice-server`, applies a policy made from examples/notice-policy.toml (redirect,
//! reject, drop and pass) and shows, per destination, what ping, a TCP connect and curl get.
//!
//! Everything it makes (four namespaces, three veth pairs, a private bpffs in a temp dir, echo
//! and HTTP servers, the notice server process) is owned by a `Drop` guard, so it is removed on
//! success, on error, on a panic, and on Ctrl-C (the signal only sets a flag; the demo stops at
//! the next step and unwinds).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use edgeblock_tests::{
    Bpffs, EDGEBLOCK_BIN_ENV, EchoServer, Netns, NoticeHost, Topology, accept_xdp_frames, addr,
    is_root, ping, remove_stale_namespaces, tcp_connect, tcp_echo, tcp_echo_server,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::bootstrap;
use crate::cargo::{Profile, build_edgeblock, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy to apply, relative to the workspace root unless absolute.
    #[arg(long, default_value = "examples/policy.toml")]
    policy: PathBuf,
    /// Template of the second act's policy, relative to the workspace root unless absolute.
    /// `@NOTICE_IFACE@` in it is replaced by the edge's interface towards the notice host.
    #[arg(long, default_value = "examples/notice-policy.toml")]
    notice_policy: PathBuf,
    /// Only build the topology and probe it, with no filter: checks the harness without the CLI.
    /// Skips the second act, which needs the CLI for the notice server.
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

use crate::interrupt::{catch as catch_interrupts, check as check_interrupt};

pub fn run(args: &Args) -> Result<()> {
    catch_interrupts()?;
    bootstrap::run(&bootstrap::Args::install()).context("bootstrap failed")?;
    if !is_root() {
        bail!(
            "the demo creates network namespaces, attaches XDP and mounts a bpffs, which needs \
             root: run `sudo -E env \"PATH=$PATH\" cargo xtask demo`"
        );
    }
    let in_workspace = |path: &Path| -> Result<PathBuf> {
        let full = if path.is_absolute() {
            path.to_owned()
        } else {
            workspace_root().join(path)
        };
        full.canonicalize()
            .with_context(|| format!("policy {} not found", path.display()))
    };
    let filter = if args.no_filter {
        None
    } else {
        let policy = in_workspace(&args.policy)?;
        let template = in_workspace(&args.notice_policy)?;
        println!("\n== build");
        let bin = build_edgeblock(Profile::Release)?;
        // The harness's `accept_xdp_frames` runs the CLI it finds through this variable.
        // SAFETY: nothing else reads or writes the environment concurrently: the demo has no
        // other thread yet (bootstrap and the build run their commands from this one).
        unsafe { std::env::set_var(EDGEBLOCK_BIN_ENV, &bin) };
        Some((bin, policy, template))
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

    // The second act's namespace, for the cleanup message (it is gone by then).
    let mut notice_ns = None;
    let result = match &filter {
        Some((bin, policy, template)) => {
            let edgeblock = Edgeblock {
                bin,
                ns: &topo.edge,
                bpffs: &bpffs,
            };
            with_filter(&topo, &edgeblock, policy)
                .and_then(|()| notice_act(&topo, &edgeblock, template, &mut notice_ns))
        }
        None => without_filter(&topo),
    };

    println!("\n== cleanup");
    let mut names: Vec<String> = topo
        .namespaces()
        .iter()
        .map(|ns| ns.name().to_owned())
        .collect();
    names.extend(notice_ns);
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
    // A reader of the sampled flows, during the probes; shown after them.
    let tail = edgeblock.spawn(&["tail", "--count", "6"])?;

    println!("\n== probes from the client, policy applied");
    let applied = probe_all(topo, |expect| expect)?;
    print_rows(&applied);

    println!("\n== edgeblock tail: a sample of the packets blocked during those probes");
    print!("{}", tail.collect(Duration::from_secs(5))?);

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
        let status = self
            .command(args)
            .stdin(Stdio::null())
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

    /// Start a command that runs beside the demo (`tail`); its output is read at the end.
    fn spawn(&self, args: &[&str]) -> Result<Background> {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        // `tail` announces itself on stderr once it holds the lease; give it that long.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Background { child })
    }

    /// The command, shown as the user would type it.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd: Command = self.ns.command(self.bin);
        cmd.arg("--pin-root")
            .arg(self.bpffs.pin_root())
            .arg("--state-dir")
            .arg(self.bpffs.state_dir())
            .arg("--data-dir")
            .arg(self.bpffs.data_dir())
            .arg("--trusted-dir")
            .arg(self.bpffs.trusted_dir())
            .args(args);
        // Shown without the `ip netns exec` prefix and the binary's path, explained once above.
        println!(
            "\n[edge] $ edgeblock --pin-root {} --state-dir {} {}",
            self.bpffs.pin_root().display(),
            self.bpffs.state_dir().display(),
            args.join(" ")
        );
        cmd
    }
}

/// A command started by [`Edgeblock::spawn`].
struct Background {
    child: Child,
}

impl Background {
    /// Its output, once it has exited by itself or, after `wait`, been sent SIGTERM.
    fn collect(mut self, wait: Duration) -> Result<String> {
        let deadline = Instant::now() + wait;
        while self.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.child.try_wait()?.is_none() {
            // Our own child, not yet reaped: the pid is still its own.
            kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        }
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out)?;
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the background edgeblock failed ({status})");
        }
        Ok(out)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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

// ---- The second act: redirect to a notice server, reject, drop and pass ----

/// Replaced, in the second act's policy template, by the edge's interface towards the notice
/// host: a name with the demo's pid in it, only known once the link exists.
const NOTICE_IFACE_PLACEHOLDER: &str = "@NOTICE_IFACE@";
/// The first line of the template's `court-order` notice_text: what curl must show.
const NOTICE_FIRST_LINE: &str = "This site is blocked by court order 2026/123.";
/// The template's `ddos-target`: an origin address the harness does not make, added by the
/// second act so that a dropped destination is one that answers without the filter.
const DDOS_TARGET_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// Port of the origins' web server and of the notice server.
const HTTP_PORT: u16 = 80;
/// Bounds every curl (`--max-time`) and TCP connect of the second act.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A refusal slower than this is not the immediate answer a reset should give.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);
/// How long the notice server may take to listen, and the filter to start redirecting.
const READY_WAIT: Duration = Duration::from_secs(10);

/// What the client can observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingSeen {
    Reply,
    /// ICMP "communication administratively prohibited" (ping says "Packet filtered").
    Prohibited,
    NoReply,
}

/// What curl should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CurlExpect {
    /// 451 with the court order's notice text.
    Notice,
    /// 200 from the origin's own web server.
    Origin,
    Refused,
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CurlSeen {
    /// An HTTP answer: the status and the first line of the notice text (or of the body, for
    /// anything but a notice).
    Page {
        status: u16,
        line: String,
    },
    Refused(Duration),
    TimedOut,
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpExpect {
    Connected,
    Refused,
    TimedOut,
}

/// One probed destination of the second act and what examples/notice-policy.toml does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    dst: SocketAddr,
    rule: &'static str,
    action: &'static str,
    ping: PingSeen,
    tcp: TcpExpect,
    curl: CurlExpect,
}

const fn target(
    ip: IpAddr,
    port: u16,
    rule: &'static str,
    action: &'static str,
    (ping, tcp, curl): Expected,
) -> Target {
    Target {
        dst: SocketAddr::new(ip, port),
        rule,
        action,
        ping,
        tcp,
        curl,
    }
}

/// What ping, a TCP connect and curl should get.
type Expected = (PingSeen, TcpExpect, CurlExpect);

const WORKS: Expected = (PingSeen::Reply, TcpExpect::Connected, CurlExpect::Origin);
/// Redirected: the notice host answers ping and TCP for the origin's address, and serves HTTP.
const NOTICE_PAGE: Expected = (PingSeen::Reply, TcpExpect::Connected, CurlExpect::Notice);
/// Redirected, a port the notice host does not serve (its kernel resets it), or HTTPS (the
/// filter resets it, `https = "reject"`): refused at once either way.
const NOTICE_REFUSED: Expected = (PingSeen::Reply, TcpExpect::Refused, CurlExpect::Refused);
const REJECTED: Expected = (
    PingSeen::Prohibited,
    TcpExpect::Refused,
    CurlExpect::Refused,
);
const DROPPED: Expected = (PingSeen::NoReply, TcpExpect::TimedOut, CurlExpect::TimedOut);

/// The second act's probes, in the order of the table.
#[rustfmt::skip] // A table: one line per probe reads better than rustfmt's one line per argument.
const NOTICE_TARGETS: [Target; 10] = {
    use addr::*;
    let (v4, v6) = (IpAddr::V4, IpAddr::V6);
    [
        target(v4(ORIGIN_V4),           HTTP_PORT, "(no rule)",         "-",        WORKS),
        target(v6(ORIGIN_V6),           HTTP_PORT, "(no rule)",         "-",        WORKS),
        target(v4(ORIGIN_BLOCKED_V4),   HTTP_PORT, "court-order",       "redirect", NOTICE_PAGE),
        target(v6(ORIGIN_BLOCKED_V6),   HTTP_PORT, "court-order",       "redirect", NOTICE_PAGE),
        target(v4(ORIGIN_BLOCKED_V4),   443,       "court-order",       "redirect", NOTICE_REFUSED),
        target(v4(ORIGIN_BLOCKED_V4),   22,        "court-order",       "redirect", NOTICE_REFUSED),
        target(v4(ORIGIN_EXCEPTION_V4), HTTP_PORT, "origin-exceptions", "pass",     WORKS),
        target(v6(ORIGIN_EXCEPTION_V6), HTTP_PORT, "origin-exceptions", "pass",     WORKS),
        target(v4(ORIGIN_HIJACKED_V4),  HTTP_PORT, "retired-service",   "reject",   REJECTED),
        target(v4(DDOS_TARGET_V4),      HTTP_PORT, "ddos-target",       "drop",     DROPPED),
    ]
};

/// The second act. Builds a notice host beside the edge, starts the notice server there,
/// applies the policy made from `template` and probes every [`NOTICE_TARGETS`] entry.
/// Everything it makes is dropped (and so removed) when it returns, however it returns.
fn notice_act(
    topo: &Topology,
    edgeblock: &Edgeblock<'_>,
    template: &Path,
    notice_ns: &mut Option<String>,
) -> Result<()> {
    check_interrupt()?;
    println!("\n== second act: a notice server, and redirect, reject, drop and pass");
    // Declaration order is drop order reversed: the servers go before the notice host.
    let notice = NoticeHost::beside(topo);
    *notice_ns = Some(notice.ns.name().to_owned());
    describe_notice_host(topo, &notice);
    println!("[client]  = ip netns exec {}", topo.client.name());
    println!("[origin]  = ip netns exec {}", topo.origin.name());
    println!("[notice]  = ip netns exec {}", notice.ns.name());

    // The ddos-target origin, so that the dropped destination is one that answers otherwise.
    let ddos = format!("{DDOS_TARGET_V4}/32");
    println!(
        "\n[origin] $ ip addr add {ddos} dev {}   # the ddos-target origin",
        topo.origin_iface
    );
    topo.origin
        .ip(["addr", "add", &ddos, "dev", &topo.origin_iface]);
    let web = OriginWeb::start(&topo.origin)?;
    println!(
        "an HTTP server in the origin on {} answers \"origin ADDRESS answers\" on every address",
        web.addr
    );
    // The edge is still detached after the first act: every origin must answer now, so that
    // what the policy does below is the filter's doing.
    for t in NOTICE_TARGETS.iter().filter(|t| t.dst.port() == HTTP_PORT) {
        check_interrupt()?;
        let seen = curl(&topo.client, t.dst);
        if seen != origin_page(t.dst.ip()) {
            bail!(
                "{} does not answer HTTP even without the filter: {seen:?}",
                t.dst
            );
        }
        if !ping(&topo.client, t.dst.ip(), 1, PING_TIMEOUT) {
            bail!(
                "{} does not answer ping even without the filter",
                t.dst.ip()
            );
        }
    }
    println!("with nothing attached, every probed origin answers ping and HTTP itself");

    let policy = write_policy(template, &notice.edge_iface, edgeblock.bpffs.dir())?;
    let policy_text = policy.to_string_lossy();
    let server = NoticeServer::start(edgeblock, &notice, &policy)?;

    // The rejects leave the edge with XDP_TX towards the client's veth (see above).
    let rx_pins = edgeblock
        .bpffs
        .dir()
        .join("bpffs")
        .join(format!("rx-{}", topo.client_iface));
    println!(
        "\n[client] $ edgeblock --pin-root {} --state-dir {} attach {}   # veth only, see above",
        rx_pins.display(),
        edgeblock.bpffs.state_dir().display(),
        topo.client_iface
    );
    accept_xdp_frames(&topo.client, &topo.client_iface, edgeblock.bpffs);
    println!("attached (no policy: passes everything)");

    edgeblock.run(&["check", &policy_text])?;
    edgeblock.run(&["apply", &policy_text])?;
    edgeblock.run(&["attach", &topo.edge_ingress])?;
    wait_for_notice(topo, &server)?;

    println!("\n== probes from the client, every action");
    let secs = PROBE_TIMEOUT.as_secs();
    println!("[client] $ ping -n -c 1 -W 1 DESTINATION");
    println!("[client]   TCP connect() to DESTINATION:PORT, {secs}s timeout");
    println!(
        "[client] $ curl -sS --max-time {secs} -H 'Accept: text/plain' -o - -w '{}' \
         http://DESTINATION:PORT/   (https:// for 443)",
        // curl's -w reads `\n` as a newline itself.
        CURL_WRITE_OUT.replace('\n', "\\n")
    );
    let rows = probe_notice_targets(topo)?;
    print!("{}", format_notice_rows(&rows));
    println!(
        "redirect: HTTP reaches the notice server, and so do ping and other ports, answered by\n\
         \x20         the notice host's kernel (nothing listens on :22: a reset); :443 is reset\n\
         \x20         by the filter itself (https = \"reject\", the default)"
    );

    println!("\n== the notice server's log");
    print!("{}", server.log());

    println!("\n== edgeblock: counters");
    edgeblock.run(&["stats"])?;
    // Stopped here rather than at the return, so that the message comes before the verdict.
    drop(server);
    drop(web);
    check_notice_rows(&rows).context("in the second act")
}

fn describe_notice_host(topo: &Topology, notice: &NoticeHost) {
    use addr::*;
    let (pool4, len4) = ORIGIN_POOL_V4;
    let (pool6, len6) = ORIGIN_POOL_V6;
    println!(
        "notice  {:<16} {} = {NOTICE_V4} + {NOTICE_V6}",
        notice.ns.name(),
        notice.iface
    );
    println!(
        "edge    {:<16} {} = {EDGE_NOTICE_V4} + {EDGE_NOTICE_V6}  (redirected frames leave here)",
        topo.edge.name(),
        notice.edge_iface
    );
    println!("the notice host, as docs/notice.md deploys it:");
    println!(
        "  ip route add local {pool4}/{len4} dev lo        # AnyIP: the origins' addresses are local"
    );
    println!("  ip -6 route add local {pool6}/{len6} dev lo");
    println!(
        "  default routes via {EDGE_NOTICE_V4} and {EDGE_NOTICE_V6} (answers go back through the edge)"
    );
    println!(
        "the edge: rp_filter = 0 (the answers come back on {} with the origins' addresses)",
        notice.edge_iface
    );
    println!("veth only (a real NIC needs none of these):");
    println!(
        "  gro on {}: a veth takes XDP_REDIRECTed frames only when its peer runs NAPI",
        notice.iface
    );
    println!(
        "  tx checksum offload off on {}: a veth leaves checksums to offload, which a redirect loses",
        topo.client_iface
    );
    println!(
        "  an XDP program on {}: a veth flushes XDP_TX frames to its peer at once only then",
        topo.client_iface
    );
}

/// Writes the policy for this run: `template` with its placeholder replaced by `iface`.
fn write_policy(template: &Path, iface: &str, dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(template)
        .with_context(|| format!("cannot read {}", template.display()))?;
    let text = fill_template(&text, iface).with_context(|| template.display().to_string())?;
    let path = dir.join("notice-policy.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "\npolicy: {} with {NOTICE_IFACE_PLACEHOLDER} = {iface}, written to {}",
        template.display(),
        path.display()
    );
    Ok(path)
}

fn fill_template(text: &str, iface: &str) -> Result<String> {
    if !text.contains(NOTICE_IFACE_PLACEHOLDER) {
        bail!("no {NOTICE_IFACE_PLACEHOLDER} placeholder for the notice target's interface");
    }
    Ok(text.replace(NOTICE_IFACE_PLACEHOLDER, iface))
}

/// `edgeblock notice-server` in the notice host's namespace; stopped by pid when dropped.
struct NoticeServer {
    child: Child,
    log: PathBuf,
}

impl NoticeServer {
    fn start(edgeblock: &Edgeblock<'_>, notice: &NoticeHost, policy: &Path) -> Result<Self> {
        check_interrupt()?;
        let log = edgeblock.bpffs.dir().join("notice-server.log");
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let listen = SocketAddr::from((Ipv6Addr::UNSPECIFIED, HTTP_PORT)).to_string();
        let policy_text = policy.to_string_lossy();
        let args = [
            "notice-server",
            "--listen",
            &listen,
            "--policy",
            &policy_text,
        ];
        let child = notice
            .ns
            .command(edgeblock.bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot run {}", edgeblock.bin.display()))?;
        let mut server = NoticeServer { child, log };
        println!(
            "\n[notice] $ edgeblock notice-server --listen '{listen}' --policy {policy_text} \
             2>{} &",
            server.log.display()
        );
        println!("pid {}", server.child.id());
        server.wait_listening()?;
        Ok(server)
    }

    /// Waits (bounded) for the server to say it listens; fails with its log if it exits.
    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            check_interrupt()?;
            let log = self.log();
            if log.contains("listening on") {
                print!("{log}");
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the notice server did not listen within {READY_WAIT:?}; its log:\n{log}");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the notice server stopped ({status}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NoticeServer {
    fn drop(&mut self) {
        // Already reaped (it stopped by itself): its pid may belong to another process now.
        if let Ok(Some(status)) = self.child.try_wait() {
            println!(
                "the notice server (pid {}) had stopped ({status})",
                self.child.id()
            );
            return;
        }
        // SIGTERM lets it stop cleanly; SIGKILL if it has not within a second.
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                println!("stopped the notice server (pid {})", self.child.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        println!("killed the notice server (pid {})", self.child.id());
    }
}

/// Waits (bounded) until the redirect works: curl to a redirected origin gets the notice.
fn wait_for_notice(topo: &Topology, server: &NoticeServer) -> Result<()> {
    let dst = SocketAddr::new(addr::ORIGIN_BLOCKED_V4.into(), HTTP_PORT);
    let deadline = Instant::now() + READY_WAIT;
    loop {
        check_interrupt()?;
        let seen = curl(&topo.client, dst);
        if seen == notice_page() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{dst} did not answer with the notice page within {READY_WAIT:?} (last: {seen:?}); \
                 the notice server's log:\n{}",
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small HTTP server on every address of the origin, so curl shows who answered.
struct OriginWeb {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OriginWeb {
    /// Listens on `[::]:80` in `ns` (IPv4 too, as v4-mapped addresses); returns once it does.
    fn start(ns: &Netns) -> Result<Self> {
        let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, HTTP_PORT));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn_in({
            let stop = Arc::clone(&stop);
            move || {
                let listener = TcpListener::bind(addr).and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                });
                match listener {
                    Ok(listener) => {
                        let _ = ready_tx.send(Ok(()));
                        serve_origin(&listener, &stop);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            }
        });
        let web = OriginWeb {
            addr,
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(web),
            Ok(Err(e)) => bail!("the origin's HTTP server cannot listen on {addr}: {e}"),
            Err(_) => bail!("the origin's HTTP server stopped before listening"),
        }
    }
}

impl Drop for OriginWeb {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_origin(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => answer_origin(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads one request (bounded in size and time) and answers it with 200.
fn answer_origin(mut stream: TcpStream) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(1))))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(1))));
    if setup.is_err() {
        return;
    }
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("{}\n", origin_line(local.ip().to_canonical()));
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

fn origin_line(ip: IpAddr) -> String {
    format!("origin {ip} answers")
}

fn origin_page(ip: IpAddr) -> CurlSeen {
    CurlSeen::Page {
        status: 200,
        line: origin_line(ip),
    }
}

fn notice_page() -> CurlSeen {
    CurlSeen::Page {
        status: 451,
        line: NOTICE_FIRST_LINE.to_owned(),
    }
}

/// What curl's `-w` prints after the body: the status (000 without an answer) and curl's own
/// time for the whole transfer, which leaves out the cost of starting it in the namespace.
const CURL_WRITE_OUT: &str = "\n%{http_code} %{time_total}";

/// `curl` from `ns` to `dst` (HTTPS on port 443), asking for the plain-text notice.
fn curl(ns: &Netns, dst: SocketAddr) -> CurlSeen {
    let scheme = if dst.port() == 443 { "https" } else { "http" };
    let url = format!("{scheme}://{dst}/");
    let max_time = PROBE_TIMEOUT.as_secs().to_string();
    let out = ns
        .command("curl")
        .args(["-sS", "--max-time", &max_time, "-H", "Accept: text/plain"])
        .args(["-o", "-", "-w", CURL_WRITE_OUT, &url])
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => return CurlSeen::Failed(format!("cannot run curl: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    // curl's exit codes: 7 could not connect, 28 timed out.
    match (out.status.code(), parse_curl(&stdout)) {
        (Some(0), Some((body, status, _))) => page(body, status),
        (Some(7), Some((_, _, took))) => CurlSeen::Refused(took),
        (Some(28), _) => CurlSeen::TimedOut,
        _ => CurlSeen::Failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Splits curl's output, `BODY\nSTATUS SECONDS` (see [`CURL_WRITE_OUT`]).
fn parse_curl(output: &str) -> Option<(&str, u16, Duration)> {
    let (body, tail) = output.rsplit_once('\n')?;
    let (status, seconds) = tail.trim().split_once(' ')?;
    let took = Duration::try_from_secs_f64(seconds.parse().ok()?).ok()?;
    Some((body, status.parse().ok()?, took))
}

/// An HTTP answer as the table shows it: a notice's line is the first of its statement (the
/// plain-text notice starts with a headline and a blank line), anything else's its first line.
fn page(body: &str, status: u16) -> CurlSeen {
    let line = match (status, body.split_once("\n\n")) {
        (200, _) | (_, None) => body.lines().next(),
        (_, Some((_headline, statement))) => statement.lines().next(),
    };
    CurlSeen::Page {
        status,
        line: line.unwrap_or("").to_owned(),
    }
}

/// `ping -c 1` from `ns`: a reply, an administrative prohibition, or nothing.
fn ping_once(ns: &Netns, dst: IpAddr) -> PingSeen {
    let out = ns.exec("ping", ["-n", "-c", "1", "-W", "1", &dst.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        PingSeen::Reply
    // iputils' words for ICMP type 3 code 13 and ICMPv6 type 1 code 1.
    } else if text.contains("Packet filtered") || text.contains("Administratively prohibited") {
        PingSeen::Prohibited
    } else {
        PingSeen::NoReply
    }
}

/// One line of the second act's table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NoticeRow {
    target: Target,
    ping: PingSeen,
    tcp: Result<Duration, std::io::ErrorKind>,
    curl: CurlSeen,
}

impl NoticeRow {
    fn as_expected(&self) -> bool {
        let t = &self.target;
        let refused_fast = |took: Duration| took < REFUSED_WITHIN;
        let tcp = matches!(
            (t.tcp, self.tcp),
            (TcpExpect::Connected, Ok(_))
                | (
                    TcpExpect::Refused,
                    Err(std::io::ErrorKind::ConnectionRefused)
                )
                | (TcpExpect::TimedOut, Err(std::io::ErrorKind::TimedOut))
        );
        let curl = match (t.curl, &self.curl) {
            (CurlExpect::Notice, seen) => *seen == notice_page(),
            (CurlExpect::Origin, seen) => *seen == origin_page(t.dst.ip()),
            (CurlExpect::Refused, CurlSeen::Refused(took)) => refused_fast(*took),
            (CurlExpect::TimedOut, CurlSeen::TimedOut) => true,
            _ => false,
        };
        self.ping == t.ping && tcp && curl
    }
}

/// Probes every target from the client, all at once (a dropped probe waits its whole timeout).
fn probe_notice_targets(topo: &Topology) -> Result<Vec<NoticeRow>> {
    check_interrupt()?;
    let rows = std::thread::scope(|scope| {
        let probes: Vec<_> = NOTICE_TARGETS
            .iter()
            .map(|&target| {
                scope.spawn(move || NoticeRow {
                    target,
                    ping: ping_once(&topo.client, target.dst.ip()),
                    tcp: tcp_connect(&topo.client, target.dst, PROBE_TIMEOUT).map_err(|e| e.kind()),
                    curl: curl(&topo.client, target.dst),
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

fn format_notice_rows(rows: &[NoticeRow]) -> String {
    let mut out = format!(
        "{:<20} {:<17} {:<8} {:<16} {:<18} {:<52} {}\n",
        "destination", "rule", "action", "ping", "tcp connect", "curl", "result"
    );
    for row in rows {
        let ping = match row.ping {
            PingSeen::Reply => "reply",
            PingSeen::Prohibited => "admin prohibited",
            PingSeen::NoReply => "no reply",
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let tcp = match row.tcp {
            Ok(took) => format!("connected {:.2}ms", ms(took)),
            Err(std::io::ErrorKind::ConnectionRefused) => "refused".to_owned(),
            Err(std::io::ErrorKind::TimedOut) => "timed out".to_owned(),
            Err(kind) => kind.to_string(),
        };
        let curl = match &row.curl {
            CurlSeen::Page { status, line } => format!("{status} \"{line}\""),
            CurlSeen::Refused(took) => format!("connection refused in {:.1} ms", ms(*took)),
            CurlSeen::TimedOut => format!("timed out ({}s)", PROBE_TIMEOUT.as_secs()),
            CurlSeen::Failed(why) => why.clone(),
        };
        let verdict = if row.as_expected() {
            "ok"
        } else {
            "UNEXPECTED"
        };
        out.push_str(&format!(
            "{:<20} {:<17} {:<8} {ping:<16} {tcp:<18} {curl:<52} {verdict}\n",
            row.target.dst.to_string(),
            row.target.rule,
            row.target.action,
        ));
    }
    out
}

fn check_notice_rows(rows: &[NoticeRow]) -> Result<()> {
    let wrong: Vec<String> = rows
        .iter()
        .filter(|r| !r.as_expected())
        .map(|r| r.target.dst.to_string())
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
    #[test]
    fn notice_template_fits_the_second_act() {
        let path = workspace_root().join("examples/notice-policy.toml");
        let text = std::fs::read_to_string(&path).expect("examples/notice-policy.toml");
        let filled = fill_template(&text, "eb1-2en").expect("has the placeholder");
        assert!(!filled.contains(NOTICE_IFACE_PLACEHOLDER));
        assert!(filled.contains("interface = \"eb1-2en\""));
        assert!(
            text.contains(&format!("\n{NOTICE_FIRST_LINE}\n")),
            "the court-order notice_text starts with {NOTICE_FIRST_LINE:?}"
        );
        for t in NOTICE_TARGETS.iter().filter(|t| t.rule != "(no rule)") {
            let rule = format!("name = \"{}\"\naction = \"{}\"", t.rule, t.action);
            assert!(text.contains(&rule), "the template has no {rule:?}");
        }
        assert!(text.contains(&format!("\"{DDOS_TARGET_V4}\"")));
        assert!(fill_template("no placeholder", "x").is_err());
    }

    #[test]
    fn curl_output_is_parsed() {
        let notice = "Access to 203.0.113.9 has been blocked.\n\nThis site is blocked by court \
                      order 2026/123.\n\nMore.\n\nStatus:     451\n\n451 0.001234";
        let (body, status, took) = parse_curl(notice).expect("parsed");
        assert_eq!((status, took), (451, Duration::from_micros(1234)));
        assert_eq!(page(body, status), notice_page());
        let (body, status, _) = parse_curl("origin 203.0.113.5 answers\n\n200 0.0005").unwrap();
        assert_eq!(
            page(body, status),
            origin_page(addr::ORIGIN_EXCEPTION_V4.into())
        );
        let (_, status, took) = parse_curl("\n000 0.000309").expect("refused");
        assert_eq!((status, took), (0, Duration::from_micros(309)));
        for bad in ["no status", "body\nxyz 1", "body\n200", "body\n200 -1"] {
            assert_eq!(parse_curl(bad), None, "{bad:?}");
        }
    }

    fn notice_row(
        i: usize,
        ping: PingSeen,
        tcp: Result<Duration, ErrorKind>,
        curl: CurlSeen,
    ) -> NoticeRow {
        NoticeRow {
            target: NOTICE_TARGETS[i],
            ping,
            tcp,
            curl,
        }
    }

    #[test]
    fn notice_verdicts() {
        let fast = Duration::from_millis(5);
        let refused = || CurlSeen::Refused(Duration::from_millis(8));
        // 2: redirected HTTP; 4: its HTTPS; 8: rejected; 9: dropped.
        assert!(notice_row(2, PingSeen::Reply, Ok(fast), notice_page()).as_expected());
        let other_text = CurlSeen::Page {
            status: 451,
            line: "something else".to_owned(),
        };
        assert!(!notice_row(2, PingSeen::Reply, Ok(fast), other_text).as_expected());
        assert!(
            !notice_row(
                2,
                PingSeen::Reply,
                Ok(fast),
                origin_page(NOTICE_TARGETS[2].dst.ip())
            )
            .as_expected(),
            "the origin itself answered: no redirect"
        );
        assert!(
            notice_row(
                4,
                PingSeen::Reply,
                Err(ErrorKind::ConnectionRefused),
                refused()
            )
            .as_expected()
        );
        assert!(
            notice_row(
                8,
                PingSeen::Prohibited,
                Err(ErrorKind::ConnectionRefused),
                refused()
            )
            .as_expected()
        );
        let slow = CurlSeen::Refused(REFUSED_WITHIN);
        assert!(
            !notice_row(
                8,
                PingSeen::Prohibited,
                Err(ErrorKind::ConnectionRefused),
                slow
            )
            .as_expected(),
            "a refusal must be immediate"
        );
        assert!(
            !notice_row(
                8,
                PingSeen::NoReply,
                Err(ErrorKind::ConnectionRefused),
                refused()
            )
            .as_expected()
        );
        assert!(
            notice_row(
                9,
                PingSeen::NoReply,
                Err(ErrorKind::TimedOut),
                CurlSeen::TimedOut
            )
            .as_expected()
        );
        assert!(
            !notice_row(
                9,
                PingSeen::NoReply,
                Err(ErrorKind::ConnectionRefused),
                refused()
            )
            .as_expected(),
            "a reset is not what a drop looks like"
        );
    }

    #[test]
    fn notice_table_lines_up() {
        let text = format_notice_rows(&[
            notice_row(
                3,
                PingSeen::Reply,
                Ok(Duration::from_micros(400)),
                notice_page(),
            ),
            notice_row(
                9,
                PingSeen::Reply,
                Err(ErrorKind::TimedOut),
                CurlSeen::TimedOut,
            ),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("[2001:db8:1::9]:80 "), "{}", lines[1]);
        assert!(lines[1].ends_with(" ok"), "{}", lines[1]);
        assert!(lines[2].ends_with(" UNEXPECTED"), "{}", lines[2]);
        for column in ["ping", "tcp connect", "curl", "result"] {
            let col = lines[0].find(column).expect(column);
            assert_eq!(&lines[1][col - 1..col], " ", "{column}: {}", lines[1]);
            assert_ne!(&lines[1][col..=col], " ", "{column}: {}", lines[1]);
        }
    }
}
