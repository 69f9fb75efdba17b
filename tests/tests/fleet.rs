//! The fleet on real packets: a NATS server with JetStream in a hub namespace and three edge
//! hosts in their own namespaces, each running `edgeblock run --policy-source` and filtering
//! pings from the hub (the harness: tests/src/fleet.rs).

use std::time::{Duration, Instant};

use edgeblock_tests::{
    edgeblock_bin,
    fleet::{BLOCK_A, BLOCK_B, BUCKET, CONVERGE, Fleet, KEY, LOCKOUT, SRC_A, SRC_B, raw_request},
    output_text,
};
use serde_json::Value;

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
    let mut fleet = Fleet::new(edgeblock_bin());
    let first = fleet.start_on(BLOCK_A);
    fleet.assert_filtering(SRC_A, SRC_B, "first revision");

    let times = fleet.convergence(3);
    let last = fleet.status()[0]["revision"]
        .as_u64()
        .expect("a revision in the status");
    assert_eq!(last, first + 3, "three new revisions");
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
    let mut fleet = Fleet::new(edgeblock_bin());
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
    let mut fleet = Fleet::new(edgeblock_bin());
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
    let mut fleet = Fleet::new(edgeblock_bin());
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

#[test]
fn a_host_with_trusted_keys_refuses_unsigned_revisions() {
    let mut fleet = Fleet::new(edgeblock_bin());
    let key = fleet.dir.join("alice");
    let out = fleet.cli(&["keygen", "--out", key.to_str().expect("utf-8")]);
    assert!(out.status.success(), "keygen: {}", output_text(&out));
    let signed = fleet.write_policy("signed.toml", BLOCK_B);
    let out = fleet.cli(&[
        "sign",
        signed.to_str().expect("utf-8"),
        "--key",
        key.with_extension("key").to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "sign: {}", output_text(&out));
    // Only the third host trusts the key.
    let trusted = fleet.hosts[2].bpffs.trusted_dir().join("alice.pub");
    std::fs::copy(key.with_extension("pub"), &trusted).expect("trust the key on host 3");

    let first = fleet.publish_file_ok(&signed);
    for i in 0..fleet.hosts.len() {
        fleet.start_host(i);
    }
    fleet.await_current(first);
    fleet.assert_filtering(SRC_B, SRC_A, "signed revision");

    // Unsigned: the hosts without keys apply it, the one with a trusted key refuses it and
    // keeps the signed revision.
    let unsigned = fleet.publish_ok("a.toml", BLOCK_A);
    let rows = fleet.await_hosts("the unsigned revision", CONVERGE, |r| {
        if r["host"] == "edge-3" {
            r["state"] == "failing"
        } else {
            r["revision"].as_u64() == Some(unsigned)
        }
    });
    let host3 = rows.iter().find(|r| r["host"] == "edge-3").expect("edge-3");
    assert_eq!(host3["revision"].as_u64(), Some(first), "{host3}");
    let error = host3["rejected"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("unsigned"), "{error}");
    assert!(!fleet.reachable(2, SRC_B), "host 3 left the signed policy");
    assert!(
        fleet.reachable(2, SRC_A),
        "host 3 applied the unsigned policy"
    );
    assert!(
        !fleet.reachable(0, SRC_A),
        "host 1 did not apply the unsigned policy"
    );
}
