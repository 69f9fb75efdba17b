//! The harness itself, with no filter: the topology forwards ping and TCP from the client to the
//! origin, the probes see that, and every guard cleans up after itself.
//!
//! Needs root (network namespaces, veth pairs, a bpffs mount); run through `cargo xtask test`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use edgeblock_tests::{
    Bpffs, Topology, UdpProbe, addr, is_bpffs, ping, require_root, tcp_connect, tcp_echo,
    tcp_echo_server,
};

const ECHO_PORT: u16 = 7;
const TIMEOUT: Duration = Duration::from_secs(3);

fn ip_netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip netns list`: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn client_reaches_origin_through_edge_without_filter() {
    require_root();
    let names: Vec<String>;
    let ifaces: Vec<String>;
    {
        let topo = Topology::new();
        names = topo
            .namespaces()
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect();
        ifaces = [
            &topo.client_iface,
            &topo.edge_ingress,
            &topo.edge_egress,
            &topo.origin_iface,
        ]
        .map(String::clone)
        .to_vec();
        assert!(
            topo.edge
                .ip(["link", "show", "dev", &topo.edge_ingress])
                .contains("state UP"),
            "the edge's ingress veth is not up"
        );

        let targets: [IpAddr; 3] = [
            addr::ORIGIN_V4.into(),
            addr::ORIGIN_BLOCKED_V4.into(),
            addr::ORIGIN_BLOCKED_V6.into(),
        ];
        let _servers: Vec<_> = targets
            .iter()
            .map(|&ip| tcp_echo_server(&topo.origin, SocketAddr::new(ip, ECHO_PORT)))
            .collect();
        for ip in targets {
            let dst = SocketAddr::new(ip, ECHO_PORT);
            assert!(
                ping(&topo.client, ip, 3, TIMEOUT),
                "ping {ip} from the client failed:\n{}",
                topo.dump()
            );
            tcp_connect(&topo.client, dst, TIMEOUT)
                .unwrap_or_else(|e| panic!("TCP connect to {dst} failed: {e}\n{}", topo.dump()));
            tcp_echo(&topo.client, dst, TIMEOUT)
                .unwrap_or_else(|e| panic!("TCP echo via {dst} failed: {e}\n{}", topo.dump()));
        }
        // Nothing listens on this port: the origin answers with a reset, not silence.
        let closed = SocketAddr::new(addr::ORIGIN_V4.into(), ECHO_PORT + 1);
        let refused = tcp_connect(&topo.client, closed, TIMEOUT)
            .expect_err("connect to a closed port succeeded");
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        // The echo servers drop here, before the topology: their sockets hold the namespace.
    }
    let listed = ip_netns_list();
    for name in &names {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "namespace {name} still exists after drop"
        );
        assert!(
            !listed.contains(name.as_str()),
            "`ip netns list` still shows {name}"
        );
    }
    let host_links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .expect("ip -br link");
    let host_links = String::from_utf8_lossy(&host_links.stdout);
    for iface in &ifaces {
        assert!(
            !host_links.contains(iface.as_str()),
            "{iface} leaked into the host namespace"
        );
    }
}

#[test]
fn udp_probe_sees_no_loss_without_filter() {
    require_root();
    let topo = Topology::new();
    for ip in [
        IpAddr::from(addr::ORIGIN_BLOCKED_V4),
        addr::ORIGIN_BLOCKED_V6.into(),
    ] {
        let dst = SocketAddr::new(ip, 9000);
        let probe = UdpProbe::start(
            &topo.client,
            &topo.origin,
            dst,
            100,
            Duration::from_millis(2),
        );
        let report = probe.finish();
        assert_eq!(report.sent, 100);
        assert_eq!(
            report.received,
            100,
            "lost {:?} on the way to {dst}",
            report.loss_runs()
        );
        assert!(report.missing.is_empty());
    }
}

#[test]
fn udp_probe_reports_what_it_cannot_deliver() {
    require_root();
    let topo = Topology::new();
    // The edge has no route for this: every datagram is lost, and the report says so.
    topo.edge.ip([
        "-4",
        "route",
        "add",
        "blackhole",
        &format!("{}/32", addr::ORIGIN_BLOCKED_V4),
    ]);
    let dst = SocketAddr::new(addr::ORIGIN_BLOCKED_V4.into(), 9000);
    let report = UdpProbe::start(
        &topo.client,
        &topo.origin,
        dst,
        20,
        Duration::from_millis(2),
    )
    .finish();
    assert_eq!(report.sent, 20);
    assert_eq!(report.received, 0);
    assert_eq!(report.loss_runs(), vec![(0, 19)]);
}

#[test]
fn bpffs_is_private_and_removed_on_drop() {
    require_root();
    let dir;
    {
        let fs = Bpffs::new();
        dir = fs.dir().to_owned();
        assert!(
            is_bpffs(fs.pin_root()),
            "{} is not a bpffs",
            fs.pin_root().display()
        );
        assert!(fs.state_dir().is_dir());
        assert!(!is_bpffs(fs.state_dir()));
        // Visible from inside a namespace, unlike /sys/fs/bpf under `ip netns exec`.
        let ns = edgeblock_tests::Netns::new("bpffs");
        let out = ns.exec("stat", ["-f", "-c", "%T", &fs.pin_root().to_string_lossy()]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bpf_fs");
    }
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}
