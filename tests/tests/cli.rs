//! The `edgeblock` CLI's error paths: each exits non-zero with a message that names the
//! problem, and leaves the pinned maps exactly as they were.

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use edgeblock::lock::Lock;
use edgeblock_tests::{Bpffs, Netns, edgeblock_bin, require_root};

const GOOD: &str = r#"
protect = ["192.0.2.0/24"]

[[rule]]
name = "block-origin"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

[[rule]]
name = "exception"
action = "pass"
prefixes = ["203.0.113.5"]
"#;

struct Env {
    bpffs: Bpffs,
    dir: PathBuf,
}

impl Env {
    fn new() -> Self {
        require_root();
        let bpffs = Bpffs::new();
        let dir = bpffs.dir().join("files");
        std::fs::create_dir_all(&dir).expect("files dir");
        Self { bpffs, dir }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write test file");
        p
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(edgeblock_bin());
        self.global_args(&mut c);
        c
    }

    fn global_args(&self, c: &mut Command) {
        c.args(self.bpffs.global_args());
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run edgeblock")
    }

    fn ok(&self, args: &[&str]) -> String {
        edgeblock_tests::succeeded(&self.run(args), args)
    }

    /// Runs and expects failure whose combined output contains every `needle`.
    fn fails(&self, args: &[&str], needles: &[&str]) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "edgeblock {args:?} must fail, printed: {}",
            text(&out)
        );
        let all = text(&out);
        for n in needles {
            assert!(
                all.contains(n),
                "edgeblock {args:?}: output lacks {n:?}:\n{all}"
            );
        }
    }

    /// What the kernel holds: status (generation, hash, entries) and the per-rule table.
    fn snapshot(&self) -> (serde_json::Value, serde_json::Value) {
        let mut status: serde_json::Value =
            serde_json::from_str(&self.ok(&["status", "--json"])).expect("status json");
        // Memory accounting may move with unrelated allocations; the policy may not.
        status.as_object_mut().expect("object").remove("maps");
        status
            .as_object_mut()
            .expect("object")
            .remove("map_memory_bytes");
        let stats: serde_json::Value =
            serde_json::from_str(&self.ok(&["stats", "--json"])).expect("stats json");
        (status, stats["rules"].clone())
    }
}

use edgeblock_tests::{output_text as text, utf8 as path};

#[test]
fn inspecting_before_anything_is_loaded_says_what_to_do() {
    let env = Env::new();
    for verb in [
        &["status"][..],
        &["stats"],
        &["lookup", "192.0.2.1"],
        &["detach", "lo"],
    ] {
        env.fails(verb, &["not loaded", "edgeblock attach"]);
    }
}

#[test]
fn bad_arguments_are_rejected_by_the_parser() {
    let env = Env::new();
    env.fails(&["lookup", "not-an-address"], &["invalid"]);
    env.fails(&["attach"], &["IFACE"]);
    env.fails(
        &["apply", "x.toml", "--lock-timeout", "soon"],
        &["duration"],
    );
}

#[test]
fn invalid_policies_change_nothing() {
    let env = Env::new();
    let good = env.file("good.toml", GOOD);
    env.ok(&["apply", path(&good)]);
    let before = env.snapshot();

    let bad_cidr = env.file(
        "bad.toml",
        &format!(
            "{GOOD}\n[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"198.51.100.7/24\"]\n"
        ),
    );
    env.fails(
        &["apply", path(&bad_cidr)],
        &["bad.toml:", "198.51.100.0/24", "nothing was changed"],
    );
    env.fails(&["check", path(&bad_cidr)], &["bad.toml:", "host bits"]);

    let dup = env.file("dup.toml", &format!("{GOOD}\n[[rule]]\nname = \"again\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\n"));
    env.fails(
        &["apply", path(&dup)],
        &["dup.toml:", "203.0.113.0/24", "block-origin", "again"],
    );

    let unknown = env.file(
        "unknown.toml",
        "[[rule]]\nname = \"x\"\nactoin = \"drop\"\nprefixes = [\"198.51.100.0/24\"]\n",
    );
    env.fails(&["apply", path(&unknown)], &["unknown.toml:3", "actoin"]);

    let missing = env.file(
        "missing.toml",
        "[[rule]]\nname = \"x\"\naction = \"drop\"\ninclude = [\"nope.netset\"]\n",
    );
    env.fails(
        &["apply", path(&missing)],
        &["missing.toml:4", "nope.netset"],
    );

    env.fails(
        &["apply", path(&env.dir.join("absent.toml"))],
        &["absent.toml"],
    );

    let lockout = env.file("lockout.toml", "protect = [\"192.0.2.0/24\"]\n[[rule]]\nname = \"too-wide\"\naction = \"drop\"\nprefixes = [\"192.0.0.0/16\"]\n");
    env.fails(
        &["apply", path(&lockout)],
        &["too-wide", "192.0.2.0/24", "--force", "nothing was changed"],
    );
    env.fails(&["apply", path(&lockout), "--dry-run"], &["too-wide"]);

    assert_eq!(
        env.snapshot(),
        before,
        "a refused policy must leave the maps as they were"
    );

    env.fails(
        &["attach", "eb-no-such-if0"],
        &["eb-no-such-if0", "does not exist"],
    );
    env.fails(&["detach", "eb-no-such-if0"], &["not attached"]);
    assert_eq!(
        env.snapshot(),
        before,
        "failed attach/detach must leave the maps as they were"
    );

    // --force is the way through, and says what it overrides.
    let out = env.run(&["apply", path(&lockout), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("warning (--force)"), "{}", text(&out));
}

/// A first apply loads the program while it validates the policy (`Filter::preload`); a
/// refusal, whether by validation or by the lockout check, must leave nothing pinned.
#[test]
fn a_refused_first_apply_loads_nothing() {
    let env = Env::new();
    let pinned = || -> Vec<String> {
        let mut found = Vec::new();
        for dir in [
            env.bpffs.pin_root().to_path_buf(),
            env.bpffs.pin_root().join("maps"),
        ] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    // The kernel's own iterators (maps.debug, progs.debug) sit in every bpffs.
                    let own = e.path().extension().is_some_and(|x| x == "debug");
                    if e.path().is_file() && !own {
                        found.push(e.path().display().to_string());
                    }
                }
            }
        }
        found
    };
    let bad = env.file(
        "bad.toml",
        "[[rule]]\nname = \"x\"\naction = \"drop\"\nprefixes = [\"198.51.100.7/24\"]\n",
    );
    env.fails(
        &["apply", path(&bad)],
        &["bad.toml:4", "nothing was changed"],
    );
    assert_eq!(
        pinned(),
        Vec::<String>::new(),
        "a refused policy pins nothing"
    );
    let lockout = env.file(
        "lockout.toml",
        "protect = [\"192.0.2.0/24\"]\n[[rule]]\nname = \"wide\"\naction = \"drop\"\nprefixes = [\"192.0.0.0/16\"]\n",
    );
    env.fails(&["apply", path(&lockout)], &["wide", "nothing was changed"]);
    assert_eq!(
        pinned(),
        Vec::<String>::new(),
        "a lockout refusal pins nothing"
    );
    env.fails(&["status"], &["not loaded"]);

    let good = env.file("good.toml", GOOD);
    env.ok(&["apply", path(&good)]);
    assert!(
        pinned().iter().any(|p| p.ends_with("/prog")),
        "a good first apply pins the program: {:?}",
        pinned()
    );
    let lookup = env.ok(&["lookup", "203.0.113.9"]);
    assert!(lookup.contains("block-origin"), "{lookup}");
}

#[test]
fn a_rule_that_would_cut_off_this_host_is_refused() {
    let env = Env::new();
    // A namespace whose only address is 198.51.100.1: edgeblock runs inside it and must see
    // that address as its own.
    let ns = Netns::new("lock");
    ns.ip([
        "link", "add", "ebl0", "type", "veth", "peer", "name", "ebl1",
    ]);
    ns.ip(["addr", "add", "198.51.100.1/24", "dev", "ebl0"]);
    ns.ip(["link", "set", "ebl0", "up"]);
    let policy = env.file(
        "local.toml",
        "[[rule]]\nname = \"cuts-me-off\"\naction = \"drop\"\nprefixes = [\"198.51.100.0/24\"]\n",
    );
    let run_in_ns = |args: &[&str]| {
        let mut c = ns.command(edgeblock_bin());
        env.global_args(&mut c);
        c.args(args)
            .output()
            .expect("run edgeblock in the namespace")
    };
    let out = run_in_ns(&["apply", path(&policy)]);
    assert!(!out.status.success(), "must refuse: {}", text(&out));
    assert!(
        text(&out).contains("cuts-me-off") && text(&out).contains("198.51.100.1"),
        "{}",
        text(&out)
    );
    let out = run_in_ns(&["check", path(&policy)]);
    assert!(
        !out.status.success(),
        "check predicts the refusal: {}",
        text(&out)
    );

    let allowed = env.file("allowed.toml", "[[rule]]\nname = \"cuts-me-off\"\naction = \"drop\"\nallow_local = true\nprefixes = [\"198.51.100.0/24\"]\n");
    let out = run_in_ns(&["apply", path(&allowed)]);
    assert!(
        out.status.success(),
        "allow_local lets it through: {}",
        text(&out)
    );
    // A pass exception for the host's own address also resolves it.
    let carved = env.file("carved.toml", "[[rule]]\nname = \"cuts-me-off\"\naction = \"drop\"\nprefixes = [\"198.51.100.0/24\"]\n[[rule]]\nname = \"me\"\naction = \"pass\"\nprefixes = [\"198.51.100.1\"]\n");
    let out = run_in_ns(&["apply", path(&carved)]);
    assert!(
        out.status.success(),
        "an exception for the host's address resolves it: {}",
        text(&out)
    );
}

#[test]
fn a_second_invocation_waits_for_the_lock_then_gives_up_clearly() {
    let env = Env::new();
    let good = env.file("good.toml", GOOD);
    env.ok(&["apply", path(&good)]);
    let before = env.snapshot();
    let changed = env.file("changed.toml", &GOOD.replace("203.0.113.5", "203.0.113.6"));
    let held = Lock::acquire(env.bpffs.state_dir(), Duration::from_secs(1), |_| {}).expect("lock");
    env.fails(
        &["apply", path(&changed), "--lock-timeout", "300ms"],
        &[
            "waiting for another edgeblock",
            &format!("pid {}", std::process::id()),
            "try again",
        ],
    );
    assert_eq!(
        env.snapshot(),
        before,
        "a blocked apply must change nothing"
    );
    drop(held);
    env.ok(&["apply", path(&changed)]);
    assert_ne!(env.snapshot(), before);
}

#[test]
fn dry_run_and_reapply_report_the_difference() {
    let env = Env::new();
    let good = env.file("good.toml", GOOD);
    let out = env.ok(&["apply", path(&good), "--dry-run"]);
    assert!(out.contains("+3 -0 ~0"), "{out}");
    env.fails(&["status"], &["not loaded"]);
    env.ok(&["apply", path(&good)]);
    let changed = env.file(
        "changed.toml",
        &GOOD
            .replace("\"203.0.113.5\"", "\"203.0.113.6\", \"2001:db8:1::5\"")
            .replace("\"drop\"", "\"pass\""),
    );
    let before = env.snapshot();
    let out = env.ok(&["apply", path(&changed), "--dry-run"]);
    assert!(out.contains("+2 -1 ~2"), "{out}");
    assert!(out.contains("rule ~ block-origin"), "{out}");
    assert_eq!(env.snapshot(), before, "a dry run touches nothing");
    let out = env.ok(&["apply", path(&changed)]);
    assert!(out.contains("+2 -1 ~2"), "{out}");
    assert!(env.ok(&["apply", path(&changed)]).contains("nothing to do"));
    let look = env.ok(&["lookup", "203.0.113.6"]);
    assert!(
        look.contains("as destination: pass by rule exception (203.0.113.6/32)"),
        "{look}"
    );
}

#[test]
fn a_link_whose_interface_vanished_is_reported_and_replaced_on_attach() {
    let env = Env::new();
    let ns = Netns::new("stale");
    let make_veth = || {
        ns.ip([
            "link", "add", "ebs0", "type", "veth", "peer", "name", "ebs1",
        ]);
        ns.ip(["link", "set", "ebs0", "up"]);
        ns.ip(["link", "set", "ebs1", "up"]);
    };
    let run_in_ns = |args: &[&str]| {
        let mut c = ns.command(edgeblock_bin());
        env.global_args(&mut c);
        let out = c
            .args(args)
            .output()
            .expect("run edgeblock in the namespace");
        assert!(out.status.success(), "edgeblock {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let healthy = || {
        let status: serde_json::Value =
            serde_json::from_str(&run_in_ns(&["status", "--json"])).expect("status json");
        assert_eq!(status["interfaces"][0]["name"], "ebs0", "{status}");
        status["interfaces"][0]["healthy"]
            .as_bool()
            .expect("healthy flag")
    };
    make_veth();
    assert!(run_in_ns(&["attach", "ebs0"]).contains("attached to ebs0"));
    assert!(healthy(), "freshly attached");
    assert!(run_in_ns(&["attach", "ebs0"]).contains("already attached"));
    ns.ip(["link", "del", "ebs0"]);
    assert!(!healthy(), "the interface is gone");
    make_veth();
    assert!(
        !healthy(),
        "a new interface with the same name is not filtered by the old link"
    );
    assert!(run_in_ns(&["attach", "ebs0"]).contains("attached to ebs0 in native mode"));
    assert!(healthy(), "attach replaced the stale link");
    assert!(run_in_ns(&["status"]).contains("ebs0 (native mode)"));
}

#[test]
fn a_policy_larger_than_the_tables_is_refused_and_changes_nothing() {
    let env = Env::new();
    let good = env.file("good.toml", GOOD);
    // Tables sized at first load: room for 70,000 IPv4 ranges per copy. Four /32s in one
    // chunk take nine (up to three would be inline and take none), so 34,800 of them in fours
    // (which the record, half as large, would hold) need 78,300.
    let run = |args: &[&str]| {
        env.cmd()
            .env("EDGEBLOCK_V4_DST_RANGES", "70000")
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&["apply", path(&good)]);
    assert!(out.status.success(), "{}", text(&out));
    let before = env.snapshot();
    let list: String = (0..8_700u32)
        .map(|i| {
            let (a, b) = (1 + i / 250, i % 250);
            format!("{a}.{b}.7.1/32\n{a}.{b}.7.9/32\n{a}.{b}.7.17/32\n{a}.{b}.7.25/32\n")
        })
        .collect();
    env.file("big.netset", &list);
    let big = env.file(
        "big.toml",
        &format!(
            "{GOOD}\n[[rule]]\nname = \"big\"\naction = \"drop\"\ninclude = [\"big.netset\"]\n"
        ),
    );
    let out = run(&["apply", path(&big)]);
    assert!(!out.status.success(), "must not fit: {}", text(&out));
    assert!(
        text(&out).contains("EB_V4_RNG_DST") && text(&out).contains("at most 70000"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env.snapshot(),
        before,
        "a policy that does not fit changes nothing"
    );
}

#[test]
fn an_unsafe_state_dir_or_a_planted_lock_symlink_is_refused() {
    let env = Env::new();
    let good = env.file("good.toml", GOOD);
    let victim = env.file("victim", "precious\n");

    // A state directory owned by someone else (nobody could plant a symlink in it).
    let foreign = env.dir.join("foreign-state");
    std::fs::create_dir_all(&foreign).expect("state dir");
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown");
    let out = Command::new(edgeblock_bin())
        .arg("--pin-root")
        .arg(env.bpffs.pin_root())
        .arg("--state-dir")
        .arg(&foreign)
        .args(["apply", path(&good)])
        .output()
        .expect("run edgeblock");
    assert!(!out.status.success(), "must refuse: {}", text(&out));
    assert!(text(&out).contains("owned by uid 65534"), "{}", text(&out));

    // `lock` planted as a symlink to another file.
    std::os::unix::fs::symlink(&victim, env.bpffs.state_dir().join("lock")).expect("symlink");
    env.fails(&["apply", path(&good)], &["lock", "is a symbolic link"]);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n",
        "the symlink's target must be left alone"
    );
    std::fs::remove_file(env.bpffs.state_dir().join("lock")).expect("remove the symlink");
    env.ok(&["apply", path(&good)]);
}

/// `edgeblock ARGS` as nobody (uid 65534, no capabilities), with the test's pin root.
fn unprivileged(env: &Env, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(edgeblock_bin())
        .arg("--pin-root")
        .arg(env.bpffs.pin_root())
        .arg("--state-dir")
        .arg(env.bpffs.state_dir())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running setpriv (util-linux): {e}"))
}

#[test]
fn unprivileged_runs_check_and_are_told_what_the_rest_needs() {
    let env = Env::new();
    // Readable by nobody, outside the private bpffs dir.
    let dir = std::env::temp_dir().join(format!("edgeblock-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("policy dir");
    let good = dir.join("good.toml");
    std::fs::write(&good, GOOD).expect("policy");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    env.ok(&["apply", path(&good)]);
    let before = env.snapshot();

    for args in [
        &["check", "--offline", path(&good)][..],
        &["check", path(&good)],
    ] {
        let out = unprivileged(&env, args);
        assert!(
            out.status.success(),
            "{args:?} needs no privileges: {}",
            text(&out)
        );
        assert!(text(&out).contains("OK"), "{}", text(&out));
    }
    // Reading the pins; loading or changing them.
    let read: &[&str] = &[
        "needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN",
        "this process (uid 65534) lacks CAP_BPF, CAP_NET_ADMIN",
    ];
    let change: &[&str] = &[
        "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
        "lacks CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON",
    ];
    let cases = [
        (&["status"][..], read),
        (&["stats"], read),
        (&["lookup", "203.0.113.9"], read),
        (&["apply", "--dry-run", path(&good)], read),
        (&["apply", path(&good)], change),
        (&["attach", "lo"], change),
        (&["detach", "--all"], change),
    ];
    for (args, needles) in cases {
        let out = unprivileged(&env, args);
        assert!(!out.status.success(), "{args:?} must fail unprivileged");
        for needle in needles {
            assert!(
                text(&out).contains(needle),
                "{args:?}: lacks {needle:?}: {}",
                text(&out)
            );
        }
    }
    assert_eq!(
        env.snapshot(),
        before,
        "nothing unprivileged may change the filter"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rewrite the ABI record beside the pinned program, as an edgeblock of another version would
/// have left it; `None` removes it (an edgeblock from before the record).
fn pretend_abi(env: &Env, abi: Option<u32>) {
    let path = env
        .bpffs
        .pin_root()
        .join("maps")
        .join(filter_common::maps::ABI);
    match abi {
        None => {
            std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()))
        }
        Some(v) => {
            let data = aya::maps::MapData::from_pin(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let mut map = aya::maps::Array::<_, u32>::try_from(aya::maps::Map::Array(data))
                .unwrap_or_else(|e| panic!("{} is not an array: {e}", path.display()));
            map.set(0, v, 0)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }
}

#[test]
fn a_program_pinned_by_another_version_is_refused_and_left_alone() {
    let env = Env::new();
    let good = env.file("good.toml", GOOD);
    env.ok(&["apply", path(&good)]);
    let before = env.snapshot();
    pretend_abi(&env, Some(filter_common::ABI - 1));
    let older = format!("version {}", filter_common::ABI - 1);
    for args in [
        &["status"][..],
        &["stats"],
        &["apply", path(&good)],
        &["block", "203.0.113.77", "--reason", "test"],
    ] {
        env.fails(
            args,
            &[
                "loaded by another edgeblock version",
                &older,
                "nothing was changed",
            ],
        );
    }
    // With the record back, everything works again, and the refused commands changed nothing.
    pretend_abi(&env, Some(filter_common::ABI));
    assert_eq!(env.snapshot(), before, "a refused command changed the maps");
    pretend_abi(&env, None);
    env.fails(&["apply", path(&good)], &["older than recorded versions"]);
    // The way out the message gives.
    env.ok(&["detach", "--all", "--purge"]);
    env.ok(&["apply", path(&good)]);
    assert_eq!(
        env.snapshot().1,
        before.1,
        "the same rules after the reload"
    );
}
