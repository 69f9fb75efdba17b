//! The fleet harness (tests/tests/fleet.rs and `cargo xtask bench --only fleet`): a NATS server with JetStream in a hub namespace, and three edge
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

use crate::{Bpffs, Netns, output_text, require_root};
use serde_json::Value;

pub const TOKEN: &str = "fleet-test-token";
pub const PORT: u16 = 4222;
pub const BUCKET: &str = "fleet";
pub const KEY: &str = "edge";
pub const HOSTS: u8 = 3;
/// A probe source each policy below blocks or lets through.
pub const SRC_A: &str = "192.0.2.1";
pub const SRC_B: &str = "192.0.2.2";
/// How long the fleet gets to converge in these tests (the goal is under a second).
pub const CONVERGE: Duration = Duration::from_secs(10);

pub const BLOCK_A: &str = r#"
[[rule]]
name = "block-a"
direction = "src"
action = "drop"
prefixes = ["192.0.2.1/32"]
"#;

pub const BLOCK_B: &str = r#"
[[rule]]
name = "block-b"
direction = "src"
action = "drop"
include = ["lists/b.netset"]
"#;

/// Passes `check --offline`, but covers every host's own address: each host must refuse it.
pub const LOCKOUT: &str = r#"
[[rule]]
name = "everything"
action = "drop"
prefixes = ["198.18.0.0/15"]
"#;

/// `nats-server` with JetStream in the hub namespace; killed (by pid) when dropped.
pub struct Nats {
    child: Child,
}

impl Nats {
    pub fn start(hub: &Netns, store: &Path, log: &Path) -> Self {
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

    pub fn stop(mut self) {
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
pub fn raw_request(publish: Option<(&str, &[u8])>) -> std::io::Result<()> {
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
pub struct Host {
    pub daemon: Option<Child>,
    pub bpffs: Bpffs,
    pub ns: Netns,
    pub name: String,
    pub iface: String,
    /// 198.18.N.2
    pub addr: String,
    pub logs: u32,
}

impl Host {
    pub fn log_path(&self) -> PathBuf {
        self.bpffs.dir().join(format!("daemon-{}.log", self.logs))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn start(&mut self, bin: &Path, hub_addr: &str) {
        self.logs += 1;
        let log = fs::File::create(self.log_path()).expect("create the daemon log");
        let child = self
            .ns
            .command(bin)
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

    pub fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&mut self) -> bool {
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
pub struct Fleet {
    /// The `edgeblock` binary.
    pub bin: PathBuf,
    pub hosts: Vec<Host>,
    pub nats: Option<Nats>,
    pub hub: Netns,
    pub dir: PathBuf,
    pub creds: PathBuf,
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
    /// The hub with NATS running, and the hosts (no daemon started yet), driving `bin`.
    pub fn new(bin: PathBuf) -> Self {
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
            bin,
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

    pub fn start_nats(&mut self) {
        let log = self.dir.join("nats.log");
        self.nats = Some(Nats::start(&self.hub, &self.dir.join("js"), &log));
    }

    pub fn stop_nats(&mut self) {
        if let Some(n) = self.nats.take() {
            n.stop();
        }
    }

    pub fn hub_addr(n: usize) -> String {
        format!("198.18.{}.1", n + 1)
    }

    pub fn start_host(&mut self, i: usize) {
        let bin = self.bin.clone();
        self.hosts[i].start(&bin, &Self::hub_addr(i));
    }

    /// `edgeblock ARGS` in the hub namespace, with the credentials file.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.hub
            .command(&self.bin)
            .args(["--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--trusted-dir"])
            .arg(self.dir.join("trusted"))
            .args(args)
            .env("EDGEBLOCK_NATS_CREDS", &self.creds)
            .output()
            .expect("run edgeblock in the hub namespace")
    }

    pub fn server() -> String {
        format!("nats://127.0.0.1:{PORT}")
    }

    /// Write `text` as the policy file `name` (with the list BLOCK_B includes beside it).
    pub fn write_policy(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.dir.join("policies");
        fs::create_dir_all(dir.join("lists")).expect("create the policy dir");
        fs::write(dir.join("lists").join("b.netset"), format!("{SRC_B}/32\n")).expect("write");
        let path = dir.join(name);
        fs::write(&path, text).expect("write the policy");
        path
    }

    /// Write `text` as a policy file and publish it.
    pub fn publish(&self, name: &str, text: &str) -> Output {
        let path = self.write_policy(name, text);
        self.publish_file(&path)
    }

    /// `edgeblock publish PATH` to the key.
    pub fn publish_file(&self, path: &Path) -> Output {
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
    pub fn publish_ok(&self, name: &str, text: &str) -> u64 {
        let path = self.write_policy(name, text);
        self.publish_file_ok(&path)
    }

    /// Publish a policy file and return the revision.
    pub fn publish_file_ok(&self, path: &Path) -> u64 {
        let out = self.publish_file(path);
        assert!(
            out.status.success(),
            "publish {} failed: {}",
            path.display(),
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
    pub fn status(&self) -> Vec<Value> {
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

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for h in &self.hosts {
            text.push_str(&format!("--- {} ---\n{}\n", h.name, h.log()));
        }
        text
    }

    /// Wait until every host reports `pred`; the status rows.
    pub fn await_hosts(
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
    pub fn await_revision(&self, revision: u64, since: jiff::Timestamp) -> Duration {
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
    pub fn start_on(&mut self, policy: &str) -> u64 {
        let first = self.publish_ok("a.toml", policy);
        for i in 0..self.hosts.len() {
            self.start_host(i);
        }
        self.await_current(first);
        first
    }

    /// Wait until every host runs `revision`, however long ago it was published.
    pub fn await_current(&self, revision: u64) {
        self.await_revision(revision, jiff::Timestamp::UNIX_EPOCH);
    }

    /// Publish `rounds` new revisions, alternating two policies, each once every host runs
    /// the previous one; per round, the time from just before `publish` until the last host
    /// applied it (from the hosts' own `applied_at`).
    pub fn convergence(&self, rounds: usize) -> Vec<Duration> {
        (0..rounds)
            .map(|round| {
                let (name, text) = if round % 2 == 0 {
                    ("b.toml", BLOCK_B)
                } else {
                    ("a.toml", BLOCK_A)
                };
                let before = jiff::Timestamp::now();
                let rev = self.publish_ok(name, text);
                self.await_revision(rev, before)
            })
            .collect()
    }

    /// Whether host `i` answers a ping from `src` (one probe, bounded).
    pub fn reachable(&self, i: usize, src: &str) -> bool {
        let out = self.hub.exec(
            "ping",
            ["-c", "1", "-W", "0.5", "-I", src, &self.hosts[i].addr],
        );
        out.status.success()
    }

    /// Every host blocks `blocked` and lets `open` through (waits a little: the status is
    /// reported after the maps are written, so this is a check, not a race).
    pub fn assert_filtering(&self, blocked: &str, open: &str, what: &str) {
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
