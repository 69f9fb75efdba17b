//! End to end with every action on real traffic: client -> edge (edgeblock, native XDP) ->
//! origin, plus a notice host beside the edge running `edgeblock notice-server`.
//! A redirected origin answers with the notice page (HTTP, IPv4 and IPv6); its HTTPS and other
//! ports fail fast; a rejected origin refuses at once (TCP reset, ICMP "packet filtered"); a
//! dropped origin times out; the rest works.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use edgeblock_tests::{
    Bpffs, NoticeHost, Topology, accept_xdp_frames, addr::*, edgeblock_bin, ping, require_root,
    tcp_connect, tcp_echo, tcp_echo_server,
};

const NOTICE_TEXT: &str = "This origin is blocked by court order 2026-17.";

/// Kills the notice server (by pid) when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(topo: &Topology, args: &[&str]) -> Output {
    topo.client
        .command("curl")
        .args(["-sS", "--max-time", "3", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl in the client namespace")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn redirect_reject_and_drop_on_real_traffic() {
    require_root();
    let topo = Topology::new();
    let notice = NoticeHost::beside(&topo);
    let bpffs = Bpffs::new();
    let _echo: Vec<_> = [ORIGIN_V4, ORIGIN_HIJACKED_V4, ORIGIN_EXCEPTION_V4]
        .into_iter()
        .map(|a| tcp_echo_server(&topo.origin, SocketAddr::new(a.into(), 8080)))
        .collect();

    let policy = bpffs.dir().join("actions.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
protect = ["192.0.2.0/24", "2001:db8:c::/64"]

[notice.local]
interface = "{edge_iface}"
next_hop = "{NOTICE_V4}"

[[rule]]
name = "court-order"
action = "redirect"
notice = "local"
notice_text = "{NOTICE_TEXT}"
notice_url = "https://example.net/statement"
prefixes = ["{ORIGIN_BLOCKED_V4}", "{ORIGIN_BLOCKED_V6}"]

[[rule]]
name = "refused"
action = "reject"
prefixes = ["{ORIGIN_HIJACKED_V4}"]

[[rule]]
name = "dropped"
action = "drop"
prefixes = ["{ORIGIN_EXCEPTION_V4}"]
"#,
            edge_iface = notice.edge_iface
        ),
    )
    .expect("write the policy");
    let policy = policy.to_str().expect("utf-8 path");

    let _server = Server(
        notice
            .ns
            .command(edgeblock_bin())
            .args([
                "notice-server",
                "--listen",
                "0.0.0.0:80",
                "--listen",
                "[::]:80",
                "--policy",
                policy,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the notice server"),
    );

    let edgeblock = |args: &[&str]| {
        let out = topo
            .edge
            .command(edgeblock_bin())
            .arg("--pin-root")
            .arg(bpffs.pin_root())
            .arg("--state-dir")
            .arg(bpffs.state_dir())
            .arg("--data-dir")
            .arg(bpffs.data_dir())
            .arg("--trusted-dir")
            .arg(bpffs.trusted_dir())
            .args(args)
            .output()
            .expect("run edgeblock in the edge namespace");
        assert!(out.status.success(), "edgeblock {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The reject answers leave the edge with XDP_TX towards the client's veth.
    accept_xdp_frames(&topo.client, &topo.client_iface, &bpffs);
    edgeblock(&["apply", policy]);
    assert!(edgeblock(&["attach", &topo.edge_ingress]).contains("native mode"));
    wait_for_http(&topo, ORIGIN_BLOCKED_V4.into());

    // Redirected: the notice page, over IPv4 and IPv6, in HTML and in plain text.
    for url in [
        format!("http://{ORIGIN_BLOCKED_V4}/"),
        format!("http://[{ORIGIN_BLOCKED_V6}]/x"),
    ] {
        let out = curl(&topo, &["-H", "Host: blocked.example", &url]);
        let body = text(&out);
        assert!(body.ends_with("\n451"), "{url}: status 451\n{body}");
        assert!(body.contains(NOTICE_TEXT), "{url}: the rule's text\n{body}");
        assert!(
            body.contains("blocked.example"),
            "{url}: the host name\n{body}"
        );
        assert!(
            body.contains("https://example.net/statement"),
            "{url}: the link\n{body}"
        );
    }
    let plain = text(&curl(
        &topo,
        &[
            "-H",
            "Accept: text/plain",
            &format!("http://{ORIGIN_BLOCKED_V4}/"),
        ],
    ));
    assert!(
        plain.contains(NOTICE_TEXT) && !plain.contains("<html"),
        "{plain}"
    );

    // Redirected, other ports and HTTPS: refused at once (the notice host has no listener
    // there; HTTPS is reset by the XDP program, https = "reject" being the default).
    for port in [443, 8080] {
        let t = Instant::now();
        let r = tcp_connect(
            &topo.client,
            SocketAddr::new(ORIGIN_BLOCKED_V4.into(), port),
            Duration::from_secs(3),
        );
        let err = r.expect_err("must not connect");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "port {port}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "port {port}: refused fast, took {:?}",
            t.elapsed()
        );
    }

    // Rejected: TCP refused well under a second; ping answered with "packet filtered".
    let t = Instant::now();
    let err = tcp_connect(
        &topo.client,
        SocketAddr::new(ORIGIN_HIJACKED_V4.into(), 8080),
        Duration::from_secs(3),
    )
    .expect_err("a rejected origin refuses");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refused fast, took {:?}",
        t.elapsed()
    );
    // curl's own wording for a reset varies by version; its exit code 7 does not.
    let t = Instant::now();
    let curl_refused = curl(&topo, &[&format!("http://{ORIGIN_HIJACKED_V4}:8080/")]);
    assert_eq!(
        curl_refused.status.code(),
        Some(7),
        "curl: could not connect\n{}",
        text(&curl_refused)
    );
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "curl gave up fast, took {:?}",
        t.elapsed()
    );
    let p = topo.client.exec(
        "ping",
        ["-n", "-c", "1", "-W", "1", &ORIGIN_HIJACKED_V4.to_string()],
    );
    assert!(
        text(&p).contains("Packet filtered"),
        "ICMP admin prohibited:\n{}",
        text(&p)
    );

    // Dropped: a timeout.
    let t = Instant::now();
    let err = tcp_connect(
        &topo.client,
        SocketAddr::new(ORIGIN_EXCEPTION_V4.into(), 8080),
        Duration::from_secs(1),
    )
    .expect_err("a dropped origin does not answer");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(t.elapsed() >= Duration::from_millis(900));

    // Everything else works.
    tcp_echo(
        &topo.client,
        SocketAddr::new(ORIGIN_V4.into(), 8080),
        Duration::from_secs(2),
    )
    .expect("an allowed origin answers");
    assert!(ping(
        &topo.client,
        ORIGIN_V6.into(),
        1,
        Duration::from_secs(2)
    ));

    let stats: serde_json::Value =
        serde_json::from_str(&edgeblock(&["stats", "--json"])).expect("stats json");
    for (rule, _) in [("court-order", ()), ("refused", ()), ("dropped", ())] {
        let r = stats["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["rule"] == rule)
            .cloned();
        assert!(
            r.is_some_and(|r| r["packets"].as_u64() > Some(0)),
            "rule {rule} counted: {stats}"
        );
    }
    assert!(
        stats["totals"]["redirect"]["packets"].as_u64() > Some(0),
        "{stats}"
    );
    assert!(
        stats["totals"]["reject"]["packets"].as_u64() > Some(0),
        "{stats}"
    );
}

/// The notice server needs a moment to bind; ask until it answers (bounded).
fn wait_for_http(topo: &Topology, addr: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = curl(topo, &[&format!("http://{addr}/")]);
        if text(&out).ends_with("451") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the notice page never answered:\n{}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
