//! The fleet on real packets: a NATS server with JetStream in a hub namespace, and three edge
//! hosts, each in its own namespace on its own veth link to the hub, each running `edgeblock
//! run --policy-source` on that link. The hub sends the probes: pings from 192.0.2.1 ("a")
//! and 192.0.2.2 ("b"), which a policy blocks by source.
//!
//! ```text
//!  hub ns (nats-server -js on 0.0.0.0:4222, lo: 192.0.2.1, 192.0.2.2)
//!   hub_N  198.18.N.1/24 ======== edge_N 198.18.N.2/24   host N ns (XDP on edge_N)
//! ```
//!
//! The server requires a token: the daemons get it from $EDGEBLOCK_NATS_TOKEN, the CLI from a
//! credentials file.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use edgeblock_tests::{Bpffs, Netns, edgeblock_bin, output_text, require_root};
use serde_json::Value;

const TOKEN: &str = "fleet-test-token";
const PORT: u16 = 4222;
const BUCKET: &str = "fleet";
const KEY: &str = "edge";
const HOSTS: u8 = 3;
/// A probe source each policy below blocks or lets through.
const SRC_A: &str = "192.0.2.1";
const SRC_B: &str = "192.0.2.2";
/// How long the fleet gets to converge in these tests (the goal is under a second).
const CONVERGE: Duration = Duration::from_secs(10);

const BLOCK_A: &str = r#"
[[rule]]
name = "block-a"
direction = "src"
action = "drop"
prefixes = ["192.0.2.1/32"]
"#;

const BLOCK_B: &str = r#"
[[rule]]
name = "block-b"
direction = "src"
action = "drop"
include = ["lists/b.netset"]
"#;

/// Passes `check --offline`, but covers every host's own address: each host must refuse it.
const LOCKOUT: &str = r#"
[[rule]]
name = "everything"
action = "drop"
prefixes = ["198.18.0.0/15"]
"#;

/// `nats-server` with JetStream in the hub namespace; killed (by pid) when dropped.
struct Nats {
    child: Child,
}

impl Nats {
    fn start(hub: &Netns, store: &Path, log: &Path) -> Self {
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("nats-server is not installed: `cargo xtask bootstrap` installs it (apt)")
            });
        let child = hub
            .command(program)
            .args([
                "-js",
                "-a",
                "0.0.0.0",
                "-p",
                &PORT.to_string(),
                "--auth",
                TOKEN,
            ])
            .arg("-sd")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).expect("create the nats log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let nats = Self { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hub.run_in(|| raw_request(None).is_ok()) {
            assert!(
                Instant::now() < deadline,
                "nats-server did not answer in 10 s:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nats
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Speak the NATS text protocol to 127.0.0.1:PORT (in the calling thread's namespace):
/// connect with the token and, if given, publish `(subject, payload)`; Ok once the server
/// answered PONG. A KV put is a publish to `$KV.<bucket>.<key>`.
fn raw_request(publish: Option<(&str, &[u8])>) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("INFO") {
        return Err(std::io::Error::other(format!(
            "unexpected greeting {line:?}"
        )));
    }
    let mut out =
        format!("CONNECT {{\"verbose\":false,\"auth_token\":\"{TOKEN}\"}}\r\n").into_bytes();
    if let Some((subject, payload)) = publish {
        out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"PING\r\n");
    stream.write_all(&out)?;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        match line.trim() {
            "PONG" => return Ok(()),
            l if l.starts_with("-ERR") => return Err(std::io::Error::other(l.to_owned())),
            "" => return Err(std::io::Error::other("connection closed")),
            _ => {}
        }
    }
}

/// One edge host: its namespace, link to the hub, private bpffs/data dir and daemon. Fields
/// drop in order: the daemon first, the namespace last.
struct Host {
    daemon: Option<Child>,
    bpffs: Bpffs,
    ns: Netns,
    name: String,
    iface: String,
    /// 198.18.N.2
    addr: String,
    logs: u32,
}

impl Host {
    fn log_path(&self) -> PathBuf {
        self.bpffs.dir().join(format!("daemon-{}.log", self.logs))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&mut self, hub_addr: &str) {
        self.logs += 1;
        let log = fs::File::create(self.log_path()).expect("create the daemon log");
        let child = self
            .ns
            .command(edgeblock_bin())
            .args(self.bpffs.global_args())
            .args(["run", "--policy-source"])
            .arg(format!("nats://{hub_addr}:{PORT}/{BUCKET}/{KEY}"))
            .args(["--iface", &self.iface, "--host-name", &self.name])
            .args(["--report-interval", "1s", "--repair-interval", "1s"])
            .env("EDGEBLOCK_NATS_TOKEN", TOKEN)
            .env_remove("EDGEBLOCK_NATS_CREDS")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start edgeblock run");
        self.daemon = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The hub, its NATS server and the hosts.
struct Fleet {
    hosts: Vec<Host>,
    nats: Option<Nats>,
    hub: Netns,
    dir: PathBuf,
    creds: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.hosts.clear();
        self.nats.take();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn iface(pid: u32, n: u32, role: &str) -> String {
    let name = format!("eb{pid}-{n}{role}");
    assert!(name.len() <= 15, "interface name {name} is too long");
    name
}

impl Fleet {
    fn new() -> Self {
        require_root();
        let hub = Netns::new("hub");
        let dir = std::env::temp_dir().join(format!("edgeblock-fleet-{}", hub.name()));
        fs::create_dir_all(dir.join("js")).expect("create the test dir");
        let creds = dir.join("nats.toml");
        fs::write(&creds, format!("token = \"{TOKEN}\"\n")).expect("write the credentials");
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).expect("chmod");
        hub.ip(["link", "set", "lo", "up"]);
        for src in [SRC_A, SRC_B] {
            hub.ip(["addr", "add", &format!("{src}/32"), "dev", "lo"]);
        }
        let mut fleet = Self {
            hosts: Vec::new(),
            nats: None,
            hub,
            dir,
            creds,
        };
        let pid = std::process::id();
        let id: u32 = fleet
            .hub
            .name()
            .split('-')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("the namespace name carries its id");
        for n in 1..=HOSTS {
            let ns = Netns::new(&format!("host{n}"));
            let (hub_if, edge_if) = (
                iface(pid, id, &format!("h{n}")),
                iface(pid, id, &format!("e{n}")),
            );
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
            ns.ip(["link", "set", "lo", "up"]);
            let spec = format!(
                "link add {hub_if} type veth peer name {edge_if} netns {}",
                ns.name()
            );
            fleet.hub.ip(spec.split(' '));
            fleet
                .hub
                .ip(["addr", "add", &format!("198.18.{n}.1/24"), "dev", &hub_if]);
            fleet.hub.ip(["link", "set", &hub_if, "up"]);
            ns.ip(["addr", "add", &format!("198.18.{n}.2/24"), "dev", &edge_if]);
            ns.ip(["link", "set", &edge_if, "up"]);
            ns.ip([
                "route",
                "add",
                "192.0.2.0/24",
                "via",
                &format!("198.18.{n}.1"),
            ]);
            fleet.hosts.push(Host {
                daemon: None,
                bpffs: Bpffs::new(),
                ns,
                name: format!("edge-{n}"),
                iface: edge_if,
                addr: format!("198.18.{n}.2"),
                logs: 0,
            });
        }
        fleet.start_nats();
        fleet
    }

    fn start_nats(&mut self) {
        let log = self.dir.join("nats.log");
        self.nats = Some(Nats::start(&self.hub, &self.dir.join("js"), &log));
    }

    fn stop_nats(&mut self) {
        if let Some(n) = self.nats.take() {
            n.stop();
        }
    }

    fn hub_addr(n: usize) -> String {
        format!("198.18.{}.1", n + 1)
    }

    fn start_host(&mut self, i: usize) {
        self.hosts[i].start(&Self::hub_addr(i));
    }

    /// `edgeblock ARGS` in the hub namespace, with the credentials file.
    fn cli(&self, args: &[&str]) -> Output {
        self.hub
            .command(edgeblock_bin())
            .args(["--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--trusted-dir"])
            .arg(self.dir.join("trusted"))
            .args(args)
            .env("EDGEBLOCK_NATS_CREDS", &self.creds)
            .output()
            .expect("run edgeblock in the hub namespace")
    }

    fn server() -> String {
        format!("nats://127.0.0.1:{PORT}")
    }

    /// Write `text` as a policy file (with the include BLOCK_B needs) and publish it.
    fn publish(&self, name: &str, text: &str) -> Output {
        let dir = self.dir.join("policies");
        fs::create_dir_all(dir.join("lists")).expect("create the policy dir");
        fs::write(dir.join("lists").join("b.netset"), format!("{SRC_B}/32\n")).expect("write");
        let path = dir.join(name);
        fs::write(&path, text).expect("write the policy");
        let server = Self::server();
        self.cli(&[
            "publish",
            path.to_str().expect("utf-8 path"),
            "--to",
            &server,
            "--bucket",
            BUCKET,
            "--key",
            KEY,
        ])
    }

    /// Publish and return the revision.
    fn publish_ok(&self, name: &str, text: &str) -> u64 {
        let out = self.publish(name, text);
        assert!(
            out.status.success(),
            "publish {name} failed: {}",
            output_text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .split("revision ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("publish printed no revision: {stdout}"))
    }

    /// `fleet status --json`, one object per host.
    fn status(&self) -> Vec<Value> {
        let server = Self::server();
        let out = self.cli(&[
            "fleet", "status", "--from", &server, "--bucket", BUCKET, "--json",
        ]);
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for h in &self.hosts {
            text.push_str(&format!("--- {} ---\n{}\n", h.name, h.log()));
        }
        text
    }

    /// Wait until every host reports `pred`; the status rows.
    fn await_hosts(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let rows = self.status();
            let ok = self.hosts.iter().all(|h| {
                rows.iter()
                    .any(|r| r["host"].as_str() == Some(h.name.as_str()) && pred(r))
            });
            if ok {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not every host got there in {within:?}; fleet status:\n{rows:#?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until every host runs `revision`; how long after `since` the last one applied it.
    fn await_revision(&self, revision: u64, since: jiff::Timestamp) -> Duration {
        let rows = self.await_hosts(&format!("revision {revision}"), CONVERGE, |r| {
            r["revision"].as_u64() == Some(revision) && r["state"] == "current"
        });
        let last = rows
            .iter()
            .filter_map(|r| r["applied_at"].as_str())
            .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
            .max()
            .expect("applied_at in the status");
        Duration::try_from(last.duration_since(since)).unwrap_or_default()
    }

    /// Publish `policy` as the first revision, start every host's daemon and wait until they
    /// all run it; the revision.
    fn start_on(&mut self, policy: &str) -> u64 {
        let first = self.publish_ok("a.toml", policy);
        for i in 0..self.hosts.len() {
            self.start_host(i);
        }
        self.await_current(first);
        first
    }

    /// Wait until every host runs `revision`, however long ago it was published.
    fn await_current(&self, revision: u64) {
        self.await_revision(revision, jiff::Timestamp::UNIX_EPOCH);
    }

    /// Whether host `i` answers a ping from `src` (one probe, bounded).
    fn reachable(&self, i: usize, src: &str) -> bool {
        let out = self.hub.exec(
            "ping",
            ["-c", "1", "-W", "0.5", "-I", src, &self.hosts[i].addr],
        );
        out.status.success()
    }

    /// Every host blocks `blocked` and lets `open` through (waits a little: the status is
    /// reported after the maps are written, so this is a check, not a race).
    fn assert_filtering(&self, blocked: &str, open: &str, what: &str) {
        for (i, h) in self.hosts.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while !self.reachable(i, open) {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {} blocks {open}\n{}",
                    h.name,
                    h.log()
                );
            }
            assert!(
                !self.reachable(i, blocked),
                "{what}: {} lets {blocked} through\n{}",
                h.name,
                h.log()
            );
        }
    }
}

fn hash_of(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["hash"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn rev_of(rows: &[Value], host: &str) -> Option<u64> {
    rows.iter()
        .find(|r| r["host"] == host)
        .and_then(|r| r["revision"].as_u64())
}

#[test]
fn three_hosts_converge_on_a_new_revision() {
    let mut fleet = Fleet::new();
    let first = fleet.start_on(BLOCK_A);
    fleet.assert_filtering(SRC_A, SRC_B, "first revision");

    let mut times = Vec::new();
    let mut last = first;
    for round in 0..3 {
        let (name, text) = if round % 2 == 0 {
            ("b.toml", BLOCK_B)
        } else {
            ("a.toml", BLOCK_A)
        };
        let before = jiff::Timestamp::now();
        let rev = fleet.publish_ok(name, text);
        times.push(fleet.await_revision(rev, before));
        last = rev;
    }
    fleet.assert_filtering(SRC_B, SRC_A, "after three rounds");
    let worst = times.iter().max().copied().unwrap_or_default();
    println!(
        "fleet convergence: {} hosts applied each new revision within {:?} of publish (rounds: {:?})",
        fleet.hosts.len(),
        worst,
        times
    );
    assert!(
        worst < Duration::from_secs(5),
        "convergence took {worst:?}; the goal is under 1 s on loopback"
    );
    // Each host records what it applied, and says which revision.
    let audit = fleet.hosts[0]
        .ns
        .command(edgeblock_bin())
        .args(fleet.hosts[0].bpffs.global_args())
        .args(["audit"])
        .output()
        .expect("edgeblock audit");
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains(&format!("edgeblock run (fleet, revision {last})")),
        "the audit log names the revision:\n{text}"
    );
}

#[test]
fn invalid_revisions_are_refused_by_publish_and_by_every_host() {
    let mut fleet = Fleet::new();
    let good = fleet.start_on(BLOCK_A);

    // publish refuses an invalid policy, naming file and line; nothing is put.
    let bad = "[[rule]]\nname = \"bad\"\naction = \"drop\"\nprefixes = [\"300.1.2.3/32\"]\n";
    let out = fleet.publish("bad.toml", bad);
    assert!(!out.status.success(), "publish accepted an invalid policy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4") && err.contains("nothing was published"),
        "{err}"
    );
    // No credentials: refused by the server.
    let out = fleet
        .hub
        .command(edgeblock_bin())
        .args([
            "publish",
            "/dev/null",
            "--to",
            &Fleet::server(),
            "--bucket",
            BUCKET,
            "--key",
            KEY,
        ])
        .env_remove("EDGEBLOCK_NATS_CREDS")
        .env_remove("EDGEBLOCK_NATS_TOKEN")
        .output()
        .expect("run publish");
    assert!(
        !out.status.success(),
        "publish without credentials succeeded"
    );
    let rows = fleet.status();
    assert!(
        rows.iter()
            .all(|r| r["revision"].as_u64() == Some(good) && r["state"] == "current"),
        "{rows:#?}"
    );

    // The same policy forced into the bucket by a raw put: every host refuses it.
    let value = serde_json::json!({
        "format": "edgeblock-fleet-1",
        "published_by": "raw put",
        "published_at": "2026-01-01T00:00:00Z",
        "bundle": {
            "format": "edgeblock-policy-bundle-1",
            "name": "forced.toml",
            "policy": bad,
            "includes": {},
            "signatures": [],
        },
    })
    .to_string();
    let subject = format!("$KV.{BUCKET}.{KEY}");
    fleet
        .hub
        .run_in(|| raw_request(Some((&subject, value.as_bytes()))))
        .expect("raw put into the bucket");
    let rows = fleet.await_hosts("refusing the forced revision", CONVERGE, |r| {
        r["state"] == "failing"
    });
    for r in &rows {
        assert_eq!(
            r["revision"].as_u64(),
            Some(good),
            "a host left its last good revision: {r}"
        );
        let error = r["rejected"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("forced.toml:4"),
            "the error names file and line: {error}"
        );
    }
    fleet.assert_filtering(SRC_A, SRC_B, "after the forced revision");
    let server = Fleet::server();
    let table = fleet.cli(&["fleet", "status", "--from", &server, "--bucket", BUCKET]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("failing") && table.contains("refused revision"),
        "fleet status shows the refusal:\n{table}"
    );

    // A revision valid everywhere offline but cutting each host off: each host refuses it on
    // its own lockout check.
    let lockout = fleet.publish_ok("lockout.toml", LOCKOUT);
    let rows = fleet.await_hosts("refusing the lockout revision", CONVERGE, |r| {
        r["rejected"]["revision"].as_u64() == Some(lockout)
    });
    for r in &rows {
        assert_eq!(r["revision"].as_u64(), Some(good), "{r}");
        let error = r["rejected"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("lockout"), "{error}");
    }
    fleet.assert_filtering(SRC_A, SRC_B, "after the lockout revision");

    // A good revision clears the failure.
    let fixed = fleet.publish_ok("b.toml", BLOCK_B);
    fleet.await_current(fixed);
    fleet.assert_filtering(SRC_B, SRC_A, "after the fix");
}

#[test]
fn hosts_filter_from_the_cache_while_nats_is_down_and_catch_up() {
    let mut fleet = Fleet::new();
    fleet.start_on(BLOCK_A);

    fleet.stop_nats();
    // Give the daemons a report interval to notice.
    std::thread::sleep(Duration::from_millis(1500));
    fleet.assert_filtering(SRC_A, SRC_B, "NATS down");
    for h in &mut fleet.hosts {
        assert!(
            h.running(),
            "{} exited when NATS went away:\n{}",
            h.name,
            h.log()
        );
    }

    // Host 0 restarts with nothing pinned: it must load its cached revision and filter.
    fleet.hosts[0].kill();
    let h = &fleet.hosts[0];
    let out =
        h.ns.command(edgeblock_bin())
            .args(h.bpffs.global_args())
            .args(["detach", "--all", "--purge"])
            .output()
            .expect("edgeblock detach");
    assert!(
        out.status.success(),
        "detach --all --purge: {}",
        output_text(&out)
    );
    assert!(
        fleet.reachable(0, SRC_A),
        "with the pins gone, nothing filters host 0"
    );
    fleet.start_host(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while fleet.reachable(0, SRC_A) {
        assert!(
            fleet.hosts[0].running(),
            "host 0 did not start from its cache:\n{}",
            fleet.hosts[0].log()
        );
        assert!(
            Instant::now() < deadline,
            "host 0 does not filter after restarting without NATS:\n{}",
            fleet.hosts[0].log()
        );
    }
    assert!(
        fleet.reachable(0, SRC_B),
        "host 0 blocks what the cached policy lets through"
    );
    assert!(
        fleet.hosts[0].log().contains("cached revision"),
        "host 0 did not say it runs from the cache:\n{}",
        fleet.hosts[0].log()
    );

    // NATS back: every host reconnects and applies the newest revision.
    fleet.start_nats();
    let before = jiff::Timestamp::now();
    let newest = fleet.publish_ok("b.toml", BLOCK_B);
    let took = fleet.await_revision(newest, before);
    println!(
        "after NATS came back, the hosts applied revision {newest} within {took:?} of publish"
    );
    fleet.assert_filtering(SRC_B, SRC_A, "NATS back");
    let rows = fleet.status();
    assert!(rows.iter().all(|r| r["from_cache"] == false), "{rows:#?}");
}

#[test]
fn rollback_brings_every_host_back_to_the_earlier_revision() {
    let mut fleet = Fleet::new();
    let first = fleet.start_on(BLOCK_A);
    let first_hashes = hash_of(&fleet.status());
    let second = fleet.publish_ok("b.toml", BLOCK_B);
    fleet.await_current(second);
    fleet.assert_filtering(SRC_B, SRC_A, "second revision");

    let server = Fleet::server();
    let first_s = first.to_string();
    let out = fleet.cli(&[
        "rollback", "--to", &first_s, "--server", &server, "--bucket", BUCKET, "--key", KEY,
    ]);
    assert!(
        out.status.success(),
        "rollback failed: {}",
        output_text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let third: u64 = stdout
        .split("republished as revision ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("rollback printed no revision: {stdout}"));
    assert!(third > second, "{stdout}");
    fleet.await_current(third);
    fleet.assert_filtering(SRC_A, SRC_B, "rolled back");
    let rows = fleet.status();
    assert_eq!(
        hash_of(&rows),
        first_hashes,
        "the hosts run the first revision's policy again"
    );
    assert!(
        rows.iter()
            .all(|r| rev_of(&rows, r["host"].as_str().unwrap_or_default()) == Some(third))
    );

    // The operator's audit log and every host's record the rollback.
    let audit = fleet.cli(&["audit"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains("rollback"),
        "the operator's audit log:\n{text}"
    );
    for h in &fleet.hosts {
        let out =
            h.ns.command(edgeblock_bin())
                .args(h.bpffs.global_args())
                .args(["audit", "--json"])
                .output()
                .expect("edgeblock audit");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l.contains("\"action\":\"rollback\"")
                && l.contains(&format!("revision {third}"))),
            "{} did not record the rollback:\n{text}",
            h.name
        );
    }
    // A revision the bucket does not hold is refused, nothing published.
    let out = fleet.cli(&[
        "rollback", "--to", "999", "--server", &server, "--bucket", BUCKET, "--key", KEY,
    ]);
    assert!(
        !out.status.success(),
        "rollback to a missing revision succeeded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such revision"),
        "{}",
        output_text(&out)
    );
}
