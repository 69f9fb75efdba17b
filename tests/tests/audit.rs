//! The audit trail and signed policies, through the real binary in a throwaway namespace with a
//! private pin root, data dir and trusted-keys dir: every change leaves a record with the right
//! hashes and diff, `audit verify` finds edits, deletions and truncation, and a policy refused
//! for its signatures leaves the live maps exactly as they were.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use edgeblock_tests::{Bpffs, Netns, edgeblock_bin, output_text as text, require_root, utf8};

const GOOD: &str = r#"
require_reference = true

[[rule]]
name = "block-origin"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]
reference = "CASE-1"
reason = "court order 17"

[[rule]]
name = "exception"
action = "pass"
prefixes = ["203.0.113.5"]
"#;

struct Env {
    bpffs: Bpffs,
    ns: Netns,
    dir: PathBuf,
}

impl Env {
    fn new(role: &str) -> Self {
        require_root();
        let bpffs = Bpffs::new();
        let dir = bpffs.dir().join("files");
        std::fs::create_dir_all(&dir).expect("files dir");
        Self {
            ns: Netns::new(role),
            bpffs,
            dir,
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write test file");
        p
    }

    /// `edgeblock` in the namespace, with every directory private to this test.
    fn run(&self, args: &[&str]) -> Output {
        self.ns
            .command(edgeblock_bin())
            .args(self.bpffs.global_args())
            .args(["--operator", "alice-operator"])
            .args(args)
            .output()
            .expect("run edgeblock in the namespace")
    }

    fn ok(&self, args: &[&str]) -> String {
        edgeblock_tests::succeeded(&self.run(args), args)
    }

    fn fails(&self, args: &[&str], needles: &[&str]) -> String {
        let out = self.run(args);
        let all = text(&out);
        assert!(!out.status.success(), "edgeblock {args:?} must fail: {all}");
        for n in needles {
            assert!(all.contains(n), "edgeblock {args:?}: lacks {n:?}:\n{all}");
        }
        all
    }

    /// Every record, as `audit --json` prints them.
    fn records(&self) -> Vec<serde_json::Value> {
        self.ok(&["audit", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit --json line"))
            .collect()
    }

    /// The live policy hash, generation and entries (`status`), and `lookup` of `addrs`.
    fn live(&self, addrs: &[&str]) -> (serde_json::Value, Vec<String>) {
        let mut status: serde_json::Value =
            serde_json::from_str(&self.ok(&["status", "--json"])).expect("status json");
        let s = status.as_object_mut().expect("object");
        s.remove("maps");
        s.remove("map_memory_bytes");
        let lookups = addrs.iter().map(|a| self.ok(&["lookup", a])).collect();
        (status, lookups)
    }

    fn live_hash(&self) -> String {
        self.live(&[]).0["policy"]["hash"]
            .as_str()
            .expect("hash")
            .to_owned()
    }

    fn log(&self) -> PathBuf {
        self.bpffs.data_dir().join("audit.log")
    }

    /// `keygen` NAME under files/keys; trusted if `trusted`. Returns the private key.
    fn key(&self, name: &str, trusted: bool) -> PathBuf {
        let out = self.dir.join("keys").join(name);
        self.ok(&["keygen", "--out", utf8(&out)]);
        if trusted {
            std::fs::copy(
                out.with_extension("pub"),
                self.bpffs.trusted_dir().join(format!("{name}.pub")),
            )
            .expect("trust the key");
        }
        out.with_extension("key")
    }
}

fn rule<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    record["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule"] == name))
        .unwrap_or_else(|| panic!("record lacks rule {name}: {record}"))
}

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn every_change_is_recorded_and_verify_finds_tampering() {
    let env = Env::new("audit");
    let good = env.file("good.toml", GOOD);
    env.ok(&["apply", utf8(&good)]);
    let first_hash = env.live_hash();

    let changed = env.file(
        "changed.toml",
        &GOOD.replace("\"2001:db8:1::/64\"", "\"198.51.100.0/24\""),
    );
    env.ok(&["apply", utf8(&changed)]);
    let second_hash = env.live_hash();
    assert_ne!(first_hash, second_hash);
    let before = env.live(&["198.51.100.7", "2001:db8:1::7"]);

    // Refusals: invalid, missing reference (require_reference), lockout is covered by the
    // signature test's refusals below; each leaves the filter as it was.
    let bad = env.file(
        "bad.toml",
        &GOOD.replace("203.0.113.0/24", "203.0.113.0/33"),
    );
    env.fails(
        &["apply", utf8(&bad)],
        &["bad.toml:7", "nothing was changed"],
    );
    let unreferenced = env.file("noref.toml", &GOOD.replace("reference = \"CASE-1\"\n", ""));
    env.fails(
        &["apply", utf8(&unreferenced)],
        &["noref.toml:5", "has no reference", "require_reference"],
    );
    assert_eq!(env.live(&["198.51.100.7", "2001:db8:1::7"]), before);

    env.ns.ip([
        "link", "add", "eba0", "type", "veth", "peer", "name", "eba1",
    ]);
    env.ns.ip(["link", "set", "eba0", "up"]);
    env.ns.ip(["link", "set", "eba1", "up"]);
    env.ok(&["attach", "eba0"]);
    env.ok(&["detach", "eba0"]);

    let r = env.records();
    let actions: Vec<&str> = r
        .iter()
        .map(|r| r["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        ["apply", "apply", "refused", "refused", "attach", "detach"],
        "{r:#?}"
    );
    for (i, rec) in r.iter().enumerate() {
        assert_eq!(rec["seq"], i as u64 + 1);
        assert_eq!(rec["operator"], "alice-operator");
        assert!(rec["host"].as_str().is_some_and(|h| !h.is_empty()), "{rec}");
    }
    // First apply: nothing before, the live hash after, every prefix added with its grounds.
    assert_eq!(r[0]["policy_hash_before"], serde_json::Value::Null);
    assert_eq!(r[0]["policy_hash_after"], first_hash.as_str());
    let block = rule(&r[0], "block-origin");
    assert_eq!(block["change"], "added");
    assert_eq!(block["action"], "drop");
    assert_eq!(block["reference"], "CASE-1");
    assert_eq!(block["reason"], "court order 17");
    assert_eq!(block["added"]["count"], 2);
    assert_eq!(
        strings(&block["added"]["first"]),
        ["203.0.113.0/24", "2001:db8:1::/64"]
    );
    assert_eq!(rule(&r[0], "exception")["added"]["count"], 1);
    // Second: chained hashes and the exact per-rule diff.
    assert_eq!(r[1]["policy_hash_before"], first_hash.as_str());
    assert_eq!(r[1]["policy_hash_after"], second_hash.as_str());
    let block = rule(&r[1], "block-origin");
    assert_eq!(block["change"], "prefixes");
    assert_eq!(strings(&block["added"]["first"]), ["198.51.100.0/24"]);
    assert_eq!(strings(&block["removed"]["first"]), ["2001:db8:1::/64"]);
    assert_eq!(r[1]["rules"].as_array().map(Vec::len), Some(1), "{}", r[1]);
    // Refusals name the policy, what is in force, and why.
    assert_eq!(r[2]["policy_hash_before"], second_hash.as_str());
    assert!(
        r[2]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("bad.toml:7")),
        "{}",
        r[2]
    );
    assert!(
        r[3]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("has no reference")),
        "{}",
        r[3]
    );
    assert_eq!(r[4]["interface"], "eba0");
    assert_eq!(r[4]["policy_hash_after"], second_hash.as_str());
    assert_eq!(r[5]["interface"], "eba0");

    // The readable form and its filters.
    let human = env.ok(&["audit", "--rule", "block-origin"]);
    assert_eq!(human.matches("\n#").count() + 1, 2, "{human}");
    assert!(human.contains("ref CASE-1"), "{human}");
    assert!(human.contains("+ 198.51.100.0/24"), "{human}");
    assert_eq!(
        env.ok(&["audit", "--action", "refused"])
            .matches("refused")
            .count(),
        2
    );
    assert!(
        env.ok(&["audit", "--since", "2099-01-01T00:00:00Z"])
            .is_empty()
    );

    let verified = env.ok(&["audit", "verify"]);
    assert!(verified.contains("OK: 6 record(s)"), "{verified}");

    // Tampering, each undone before the next.
    let original = std::fs::read_to_string(env.log()).expect("log");
    let lines: Vec<&str> = original.lines().collect();
    let write =
        |lines: &[String]| std::fs::write(env.log(), lines.join("\n") + "\n").expect("write log");
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    edited[1] = edited[1].replace("198.51.100.0/24", "198.51.100.0/25");
    write(&edited);
    env.fails(&["audit", "verify"], &["BROKEN", "line 2", "altered"]);
    let mut deleted: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    deleted.remove(2);
    write(&deleted);
    env.fails(&["audit", "verify"], &["BROKEN", "line 3", "deleted"]);
    std::fs::write(env.log(), &original[..original.len() - 7]).expect("cut");
    env.fails(
        &["audit", "verify"],
        &["BROKEN", "line 6", "partial record"],
    );
    // A change is refused while the log cannot be appended to.
    env.fails(
        &["attach", "eba0"],
        &["audit log", "not a whole record", "nothing was changed"],
    );
    let whole: Vec<String> = lines[..4].iter().map(|l| (*l).to_owned()).collect();
    write(&whole);
    env.fails(
        &["audit", "verify"],
        &["BROKEN", "ends at record 4", "6 records"],
    );
    std::fs::write(env.log(), &original).expect("restore");
    assert!(env.ok(&["audit", "verify"]).contains("OK: 6 record(s)"));
}

#[test]
fn signed_policies_unsigned_untrusted_tampered_and_two_person() {
    let env = Env::new("signed");
    let alice = env.key("alice", true);
    let bob = env.key("bob", true);
    let mallory = env.key("mallory", false);
    std::fs::create_dir_all(env.dir.join("lists")).expect("lists");
    let list = env.file("lists/extra.netset", "198.51.100.0/24\n");
    let policy_text = GOOD.replace(
        "reason = \"court order 17\"",
        "reason = \"court order 17\"\ninclude = [\"lists/extra.netset\"]",
    );
    let good = env.file("good.toml", &policy_text);
    // Unsigned, before anything is loaded: refused, nothing loaded.
    env.fails(&["apply", utf8(&good)], &["unsigned", "edgeblock sign"]);
    env.fails(&["status"], &["not loaded"]);
    let sign = |policy: &Path, key: &Path| {
        env.ok(&["sign", utf8(policy), "--key", utf8(key)]);
    };
    sign(&good, &alice);
    let out = env.ok(&["apply", utf8(&good)]);
    assert!(out.contains("signed by alice"), "{out}");
    let probes = ["203.0.113.7", "198.51.100.7", "192.0.2.7"];
    let before = env.live(&probes);
    assert!(
        before.1[1].contains("drop by rule block-origin"),
        "{:?}",
        before.1
    );

    let unsigned = env.file(
        "unsigned.toml",
        &policy_text.replace("203.0.113.0/24", "192.0.2.0/24"),
    );
    env.fails(&["apply", utf8(&unsigned)], &["unsigned.toml: unsigned"]);
    sign(&unsigned, &mallory);
    env.fails(
        &["apply", utf8(&unsigned)],
        &["signed only by key(s) this host does not trust", "ed25519:"],
    );
    // One prefix changed after signing, in the policy, then in the included list.
    let tampered = env.file("tampered.toml", &policy_text);
    sign(&tampered, &alice);
    std::fs::write(
        &tampered,
        policy_text.replace("203.0.113.0/24", "192.0.2.0/24"),
    )
    .expect("tamper");
    env.fails(
        &["apply", utf8(&tampered)],
        &[
            "altered after it was signed by alice",
            "the policy file changed",
        ],
    );
    std::fs::write(&tampered, &policy_text).expect("restore");
    std::fs::write(&list, "192.0.2.0/24\n").expect("tamper list");
    env.fails(
        &["apply", utf8(&tampered)],
        &["altered", "included list \"lists/extra.netset\" changed"],
    );
    assert_eq!(
        env.live(&probes),
        before,
        "refused policies leave the filter as it was"
    );

    // Two-person rule.
    std::fs::write(&list, "198.51.100.0/24\n").expect("restore list");
    let two = env.file(
        "two.toml",
        &format!(
            "signatures_required = 2\n{}",
            policy_text.replace("203.0.113.0/24", "192.0.2.0/24")
        ),
    );
    sign(&two, &alice);
    env.fails(
        &["apply", utf8(&two)],
        &[
            "needs signatures from 2 distinct trusted keys",
            "has 1 (alice)",
        ],
    );
    sign(&two, &alice);
    env.fails(&["apply", utf8(&two)], &["has 1 (alice)"]);
    assert_eq!(env.live(&probes), before);
    sign(&two, &bob);
    let out = env.ok(&["apply", utf8(&two)]);
    assert!(out.contains("signed by alice, bob"), "{out}");
    assert!(env.live(&probes).1[2].contains("drop by rule block-origin"));

    let r = env.records();
    let actions: Vec<&str> = r
        .iter()
        .map(|r| r["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "refused", "apply", "refused", "refused", "refused", "refused", "refused", "refused",
            "apply"
        ],
        "{r:#?}"
    );
    assert_eq!(strings(&r[1]["signers"]), ["alice"]);
    assert_eq!(strings(&r[8]["signers"]), ["alice", "bob"]);
    assert!(
        r[4]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("altered")),
        "{}",
        r[4]
    );
    assert_eq!(r[4]["policy_hash_before"], r[1]["policy_hash_after"]);
    assert!(env.ok(&["audit", "verify"]).contains("OK: 9 record(s)"));
}
