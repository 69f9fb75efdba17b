//! Policy -> the contents of the kernel maps, and the reference matcher over those contents.
//!
//! # API
//!
//! - [`compile`]`(&Policy) -> `[`Compiled`]: rule metadata ([`CompiledRule`], index = rule id),
//!   the four address tables ([`Tables`], prefix -> rule id) and the policy [`Compiled::hash`].
//! - [`Tables::lookup`]`(direction, addr) -> Option<(IpNet, usize)>`: longest-prefix match in one
//!   direction's table, written to be obviously right rather than fast (one exact lookup per
//!   prefix length, longest first); it is the core the reference matcher and the kernel tests
//!   compare against. [`Tables::overlapping`] finds entries that contain or are contained in a
//!   prefix.
//! - [`Compiled::resolve`]`(direction, addr)` is one direction's answer, and
//!   [`Compiled::verdict`]`(dst, src) -> `[`Verdict`] combines both with the precedence the XDP
//!   program implements (see [`Compiled::verdict`] and `docs/policy.md`).
//! - [`hash_hex`] renders a hash for `status` output.
//! - `redirect` rules carry [`CompiledRule::flags`] (`HTTPS_REJECT`) and
//!   [`CompiledRule::target`], an index into [`Compiled::notices`]: the notice targets some
//!   loaded rule uses, in file order. [`Compiled::reject_rate`] and [`Compiled::reject_burst`]
//!   are the per-CPU token bucket of `reject` replies.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_common::rule_flags;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};

use crate::policy::{Action, Direction, HttpsMode, Location, Mode, Policy};

/// A rule as the kernel's rule table and counters see it. Its index in [`Compiled::rules`] is
/// its rule id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub name: String,
    /// [`filter_common::action`] value.
    pub action: u8,
    /// [`filter_common::direction`] value.
    pub direction: u8,
    /// [`filter_common::rule_flags`] bits: `HTTPS_REJECT` for a `redirect` rule with
    /// `https = "reject"`, `SHADOW` for a shadow rule.
    pub flags: u8,
    /// [`filter_common::mode`] value.
    pub mode: u8,
    /// For a `redirect` rule, its notice target's index in [`Compiled::notices`]; else 0.
    pub target: u16,
    /// Prefixes this rule put in the tables.
    pub prefixes: u64,
    pub allow_local: bool,
    pub location: Location,
}

impl CompiledRule {
    /// True for an enforced rule with any action other than pass: what lockout protection
    /// cares about. A shadow rule never blocks anything.
    pub fn blocks(&self) -> bool {
        self.action != filter_common::action::PASS && !self.is_shadow()
    }

    /// A shadow rule: it only counts what it would do.
    pub fn is_shadow(&self) -> bool {
        self.mode == filter_common::mode::SHADOW
    }
}

/// The four address tables, prefix -> index into [`Compiled::rules`]. Sorted maps so that
/// iteration (hashing, map loading, diffs) is in one canonical order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub dst_v4: BTreeMap<Ipv4Net, usize>,
    pub src_v4: BTreeMap<Ipv4Net, usize>,
    pub dst_v6: BTreeMap<Ipv6Net, usize>,
    pub src_v6: BTreeMap<Ipv6Net, usize>,
}

/// The v4/v6 differences the table operations need, so each operation is written once.
trait Prefix: Ord + Copy + Into<IpNet> {
    type Addr: Copy;
    const MAX_LEN: u8;
    /// The prefix of length `len` containing `addr`; `None` only if `len > MAX_LEN`.
    fn covering(addr: Self::Addr, len: u8) -> Option<Self>;
    /// The last address in the prefix.
    fn last(self) -> Self::Addr;
    fn network_addr(self) -> Self::Addr;
    fn len(self) -> u8;
    fn contains_prefix(self, other: Self) -> bool;
    /// Feed the address octets and the length to a hash.
    fn hash_into(self, h: &mut Sha256);
}

macro_rules! impl_prefix {
    ($net:ty, $addr:ty, $max:expr) => {
        impl Prefix for $net {
            type Addr = $addr;
            const MAX_LEN: u8 = $max;
            fn covering(addr: $addr, len: u8) -> Option<Self> {
                <$net>::new(addr, len).ok().map(|n| n.trunc())
            }
            fn last(self) -> $addr {
                self.broadcast()
            }
            fn network_addr(self) -> $addr {
                self.network()
            }
            fn len(self) -> u8 {
                self.prefix_len()
            }
            fn contains_prefix(self, other: Self) -> bool {
                self.contains(&other)
            }
            fn hash_into(self, h: &mut Sha256) {
                h.update(self.addr().octets());
                h.update([self.prefix_len()]);
            }
        }
    };
}
impl_prefix!(Ipv4Net, Ipv4Addr, 32);
impl_prefix!(Ipv6Net, Ipv6Addr, 128);

fn longest_match<P: Prefix>(
    table: &BTreeMap<P, usize>,
    addr: P::Addr,
    keep: impl Fn(usize) -> bool,
) -> Option<(IpNet, usize)> {
    (0..=P::MAX_LEN)
        .rev()
        .filter_map(|len| P::covering(addr, len))
        .find_map(|net| {
            table
                .get(&net)
                .filter(|&&rule| keep(rule))
                .map(|&rule| (net.into(), rule))
        })
}

fn hash_table<P: Prefix>(
    h: &mut Sha256,
    family: u8,
    direction: Direction,
    table: &BTreeMap<P, usize>,
) {
    h.update([family, direction.as_u8()]);
    h.update((table.len() as u64).to_le_bytes());
    for (&net, &rule) in table {
        net.hash_into(h);
        h.update((rule as u64).to_le_bytes());
    }
}

fn overlapping_in<P: Prefix>(table: &BTreeMap<P, usize>, net: P) -> Vec<(IpNet, usize)> {
    // Entries that contain `net` (including `net` itself): one exact lookup per shorter length.
    let mut found: Vec<(IpNet, usize)> = (0..=net.len())
        .filter_map(|len| P::covering(net.network_addr(), len))
        .filter_map(|p| table.get(&p).map(|&rule| (p.into(), rule)))
        .collect();
    // Entries strictly inside `net`: keys order by (address, length), so they all sit between
    // `net` and (last address of `net`)/MAX_LEN. The `contains` filter keeps the answer right
    // whatever else that range holds.
    if let Some(end) = P::covering(net.last(), P::MAX_LEN) {
        found.extend(
            table
                .range(net..=end)
                .filter(|&(p, _)| *p != net && net.contains_prefix(*p))
                .map(|(&p, &rule)| (p.into(), rule)),
        );
    }
    found
}

impl Tables {
    /// Longest-prefix match for `addr` in `direction`'s table of its family: the matching
    /// prefix and its rule index.
    pub fn lookup(&self, direction: Direction, addr: IpAddr) -> Option<(IpNet, usize)> {
        self.lookup_where(direction, addr, |_| true)
    }

    /// [`Tables::lookup`] among the entries whose rule index `keep` accepts.
    pub fn lookup_where(
        &self,
        direction: Direction,
        addr: IpAddr,
        keep: impl Fn(usize) -> bool,
    ) -> Option<(IpNet, usize)> {
        match (direction, addr) {
            (Direction::Dst, IpAddr::V4(a)) => longest_match(&self.dst_v4, a, keep),
            (Direction::Src, IpAddr::V4(a)) => longest_match(&self.src_v4, a, keep),
            (Direction::Dst, IpAddr::V6(a)) => longest_match(&self.dst_v6, a, keep),
            (Direction::Src, IpAddr::V6(a)) => longest_match(&self.src_v6, a, keep),
        }
    }

    /// Every entry of `direction`'s table that contains `net` or is contained in it, shortest
    /// containing prefix first, then the contained ones in table order.
    pub fn overlapping(&self, direction: Direction, net: IpNet) -> Vec<(IpNet, usize)> {
        match (direction, net) {
            (Direction::Dst, IpNet::V4(n)) => overlapping_in(&self.dst_v4, n),
            (Direction::Src, IpNet::V4(n)) => overlapping_in(&self.src_v4, n),
            (Direction::Dst, IpNet::V6(n)) => overlapping_in(&self.dst_v6, n),
            (Direction::Src, IpNet::V6(n)) => overlapping_in(&self.src_v6, n),
        }
    }

    /// The tables of `(direction, prefix, rule)` entries in policy order: the first rule
    /// keeps a contested prefix (validation makes that case an error, so this only decides
    /// what a hand-built policy gets). Also returns how many prefixes each rule put in
    /// (indexed by rule, `rules` long).
    ///
    /// Sorted once and built from sorted runs: inserting a million prefixes one by one costs
    /// a cache miss or more each, several times the sort.
    pub fn build(
        rules: usize,
        entries: impl IntoIterator<Item = (Direction, IpNet, usize)>,
    ) -> (Self, Vec<u64>) {
        fn table<P: Ord + Copy>(mut v: Vec<(P, usize)>, added: &mut [u64]) -> BTreeMap<P, usize> {
            // By prefix, then rule: the first of equal prefixes is the earliest rule's.
            v.sort_unstable();
            v.dedup_by_key(|e| e.0);
            for &(_, rule) in &v {
                added[rule] += 1;
            }
            // From sorted, distinct keys the map is built in one pass, without searching.
            v.into_iter().collect()
        }
        let (mut dst_v4, mut src_v4, mut dst_v6, mut src_v6) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (direction, net, rule) in entries {
            match (direction, net.trunc()) {
                (Direction::Dst, IpNet::V4(n)) => dst_v4.push((n, rule)),
                (Direction::Src, IpNet::V4(n)) => src_v4.push((n, rule)),
                (Direction::Dst, IpNet::V6(n)) => dst_v6.push((n, rule)),
                (Direction::Src, IpNet::V6(n)) => src_v6.push((n, rule)),
            }
        }
        let mut added = vec![0; rules];
        let tables = Tables {
            dst_v4: table(dst_v4, &mut added),
            src_v4: table(src_v4, &mut added),
            dst_v6: table(dst_v6, &mut added),
            src_v6: table(src_v6, &mut added),
        };
        (tables, added)
    }

    /// Every entry of `direction`'s tables, IPv4 first, each in sorted order.
    pub fn iter(&self, direction: Direction) -> impl Iterator<Item = (IpNet, usize)> + '_ {
        let (v4, v6) = match direction {
            Direction::Dst => (&self.dst_v4, &self.dst_v6),
            Direction::Src => (&self.src_v4, &self.src_v6),
        };
        v4.iter()
            .map(|(&n, &r)| (IpNet::V4(n), r))
            .chain(v6.iter().map(|(&n, &r)| (IpNet::V6(n), r)))
    }

    /// Entries in all four tables.
    pub fn len(&self) -> usize {
        self.dst_v4.len() + self.src_v4.len() + self.dst_v6.len() + self.src_v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A notice target some loaded `redirect` rule uses: where the XDP program sends its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledNotice {
    pub name: String,
    /// Egress interface; its ifindex and MAC are resolved at apply time.
    pub interface: String,
    /// The neighbour whose MAC becomes the frames' destination.
    pub next_hop: IpAddr,
}

/// Everything `apply` writes to the kernel, computed without touching it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// [`filter_common::malformed`] value.
    pub malformed: u8,
    pub rules: Vec<CompiledRule>,
    pub tables: Tables,
    /// Targets of the loaded `redirect` rules, in file order; [`CompiledRule::target`] indexes
    /// it. Targets no loaded rule uses are left out.
    pub notices: Vec<CompiledNotice>,
    /// `reject` replies per second per CPU.
    pub reject_rate: u32,
    /// `reject` token-bucket size per CPU.
    pub reject_burst: u32,
    /// See [`Compiled::compute_hash`].
    pub hash: [u8; 32],
}

/// The outcome for one packet, as the XDP program would decide it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// [`filter_common::action`] value; `PASS` when nothing matched.
    pub action: u8,
    /// The deciding rule's index; `None` means no match (counted as `stat::NO_MATCH`).
    pub rule: Option<usize>,
    /// Which of the packet's addresses the deciding rule matched.
    pub direction: Option<Direction>,
    /// The table entry that matched.
    pub prefix: Option<IpNet>,
}

impl Verdict {
    /// Nothing matched: the packet passes and counts as no-match.
    pub const NO_MATCH: Self = Self {
        action: filter_common::action::PASS,
        rule: None,
        direction: None,
        prefix: None,
    };
}

impl Compiled {
    fn is_shadow(&self, rule: usize) -> bool {
        self.rules.get(rule).is_some_and(CompiledRule::is_shadow)
    }

    /// One direction's answer: the longest-prefix match for `addr` among that direction's
    /// enforced rules. [`Verdict::NO_MATCH`] if nothing matches.
    pub fn resolve(&self, direction: Direction, addr: IpAddr) -> Verdict {
        self.verdict_of(
            direction,
            self.tables
                .lookup_where(direction, addr, |r| !self.is_shadow(r)),
        )
    }

    /// One direction's answer if the shadow rules were enforced too: the longest-prefix match
    /// among all its rules.
    pub fn resolve_all(&self, direction: Direction, addr: IpAddr) -> Verdict {
        self.verdict_of(direction, self.tables.lookup(direction, addr))
    }

    fn verdict_of(&self, direction: Direction, found: Option<(IpNet, usize)>) -> Verdict {
        let Some((prefix, rule)) = found else {
            return Verdict::NO_MATCH;
        };
        Verdict {
            // A table value always indexes `rules` in a `Compiled` built by `compile`; a
            // hand-built one that breaks that gets a pass rather than a panic.
            action: self
                .rules
                .get(rule)
                .map_or(filter_common::action::PASS, |r| r.action),
            rule: Some(rule),
            direction: Some(direction),
            prefix: Some(prefix),
        }
    }

    /// What happens to a packet from `src` to `dst`.
    ///
    /// Each direction resolves its own longest-prefix match first, so a `pass` /32 inside a
    /// `drop` /16 of the same direction is an exception that works. Then, in order: a
    /// destination block, a source block, a destination pass, a source pass, no match. A block
    /// from either direction wins (destination first); a pass exception only overrides blocks
    /// in its own direction.
    pub fn verdict(&self, dst: IpAddr, src: IpAddr) -> Verdict {
        precedence(
            self.resolve(Direction::Dst, dst),
            self.resolve(Direction::Src, src),
        )
    }

    /// The shadow hit of a packet from `src` to `dst`, if it has one: the verdict of the
    /// policy with its shadow rules enforced too (each direction's longest prefix among all
    /// rules, then the same precedence as [`Compiled::verdict`]), when the deciding rule is a
    /// shadow rule. It never changes [`Compiled::verdict`].
    pub fn shadow(&self, dst: IpAddr, src: IpAddr) -> Option<Verdict> {
        let would = precedence(
            self.resolve_all(Direction::Dst, dst),
            self.resolve_all(Direction::Src, src),
        );
        would
            .rule
            .is_some_and(|r| self.is_shadow(r))
            .then_some(would)
    }

    /// SHA-256 over a canonical serialisation of what the kernel will hold: the malformed
    /// setting and the reject limits, each rule in id order (name, action, direction, flags, mode,
    /// target), each notice target in index order (name, interface, next hop), then every table
    /// entry in sorted order (dst v4, src v4, dst v6, src v6). The `hash` field itself is not
    /// read. Comments, expiry dates, `allow_local`, `protect`, the notice text, URL and status
    /// (the notice server's business, not the kernel's), file names and line numbers are left
    /// out on purpose: they do not change what the filter does, so `status` can compare a
    /// file's hash with the loaded one and say "in sync" even after a comment was edited. Every
    /// field is length-prefixed or fixed-size so no two different policies serialise alike.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let bytes = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        h.update(b"edgeblock-policy-v3\0");
        h.update([self.malformed]);
        h.update(self.reject_rate.to_le_bytes());
        h.update(self.reject_burst.to_le_bytes());
        h.update((self.rules.len() as u64).to_le_bytes());
        for rule in &self.rules {
            bytes(&mut h, rule.name.as_bytes());
            h.update([rule.action, rule.direction, rule.flags, rule.mode]);
            h.update(rule.target.to_le_bytes());
        }
        h.update((self.notices.len() as u64).to_le_bytes());
        for notice in &self.notices {
            bytes(&mut h, notice.name.as_bytes());
            bytes(&mut h, notice.interface.as_bytes());
            match notice.next_hop {
                IpAddr::V4(a) => {
                    h.update([4]);
                    h.update(a.octets());
                }
                IpAddr::V6(a) => {
                    h.update([6]);
                    h.update(a.octets());
                }
            }
        }
        hash_table(&mut h, 4, Direction::Dst, &self.tables.dst_v4);
        hash_table(&mut h, 4, Direction::Src, &self.tables.src_v4);
        hash_table(&mut h, 6, Direction::Dst, &self.tables.dst_v6);
        hash_table(&mut h, 6, Direction::Src, &self.tables.src_v6);
        h.finalize().into()
    }
}

/// A destination block, a source block, a destination pass, a source pass, no match.
fn precedence(by_dst: Verdict, by_src: Verdict) -> Verdict {
    let blocks = |v: &Verdict| v.rule.is_some() && v.action != filter_common::action::PASS;
    [by_dst, by_src]
        .into_iter()
        .find(blocks)
        .or_else(|| [by_dst, by_src].into_iter().find(|v| v.rule.is_some()))
        .unwrap_or(Verdict::NO_MATCH)
}

/// Turn a validated policy into map contents. Rule ids are the rules' positions in the policy;
/// notice indexes are the used targets' positions among the used targets, in file order.
pub fn compile(policy: &Policy) -> Compiled {
    let notices: Vec<CompiledNotice> = policy
        .notices
        .iter()
        .filter(|target| {
            policy
                .rules
                .iter()
                .any(|r| r.notice.as_ref().is_some_and(|n| n.target == target.name))
        })
        .map(|target| CompiledNotice {
            name: target.name.clone(),
            interface: target.interface.clone(),
            next_hop: target.next_hop,
        })
        .collect();
    let (tables, added) = Tables::build(
        policy.rules.len(),
        policy.rules.iter().enumerate().flat_map(|(index, rule)| {
            rule.prefixes
                .iter()
                .map(move |entry| (rule.direction, entry.net, index))
        }),
    );
    let rules: Vec<CompiledRule> = policy
        .rules
        .iter()
        .zip(added)
        .map(|(rule, added)| {
            let (flags, target) = match (&rule.notice, rule.action) {
                (Some(notice), Action::Redirect) => {
                    let flags = match notice.https {
                        HttpsMode::Reject => rule_flags::HTTPS_REJECT,
                        HttpsMode::Notice => 0,
                    };
                    // At most one used target per rule, and validation caps the rules at
                    // MAX_RULES, far below u16::MAX; a hand-built policy naming a target it
                    // does not define gets index 0 rather than a panic.
                    let target = notices
                        .iter()
                        .position(|n| n.name == notice.target)
                        .and_then(|i| u16::try_from(i).ok())
                        .unwrap_or(0);
                    (flags, target)
                }
                _ => (0, 0),
            };
            let flags = match rule.mode {
                Mode::Shadow => flags | rule_flags::SHADOW,
                Mode::Enforce => flags,
            };
            CompiledRule {
                name: rule.name.clone(),
                action: rule.action.as_u8(),
                direction: rule.direction.as_u8(),
                flags,
                mode: rule.mode.as_u8(),
                target,
                prefixes: added,
                allow_local: rule.allow_local,
                location: rule.location.clone(),
            }
        })
        .collect();
    let mut compiled = Compiled {
        malformed: policy.malformed.as_u8(),
        rules,
        tables,
        notices,
        reject_rate: policy.reject_rate,
        reject_burst: policy.reject_burst,
        hash: [0; 32],
    };
    compiled.hash = compiled.compute_hash();
    compiled
}

/// Lowercase hex, for `status` and logs.
pub fn hash_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The policy-file spelling of a [`filter_common::action`] value, for messages.
pub fn action_name(action: u8) -> &'static str {
    match action {
        filter_common::action::PASS => "pass",
        filter_common::action::DROP => "drop",
        filter_common::action::REDIRECT => "redirect",
        filter_common::action::REJECT => "reject",
        _ => "unknown action",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use filter_common::action::{DROP, PASS};

    use super::*;
    use crate::policy::parse;

    fn now() -> jiff::Timestamp {
        "2026-06-01T00:00:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("test timestamp: {e}"))
    }

    fn policy(text: &str) -> Policy {
        parse(text, Path::new("policy.toml"), now(), |p| {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no include {} in this test", p.display()),
            ))
        })
        .unwrap_or_else(|e| panic!("policy should parse:\n{e}\n--- policy:\n{text}"))
    }

    fn compiled(text: &str) -> Compiled {
        compile(&policy(text))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("test address {s}: {e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("test prefix {s}: {e}"))
    }

    /// A dst and a src rule of each action, so every verdict combination can be built from
    /// addresses alone. Rule indexes: 0 dst-drop, 1 dst-pass, 2 src-drop, 3 src-pass.
    const MIXED: &str = r#"
[[rule]]
name = "dst-drop"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]

[[rule]]
name = "dst-pass"
action = "pass"
prefixes = ["203.0.113.5", "2001:db8:1::5", "198.51.100.0/24"]

[[rule]]
name = "src-drop"
direction = "src"
action = "drop"
prefixes = ["192.0.2.0/24", "2001:db8:bad::/48"]

[[rule]]
name = "src-pass"
direction = "src"
action = "pass"
prefixes = ["192.0.2.9", "233.252.0.0/24"]
"#;

    fn verdict<'c>(
        c: &'c Compiled,
        dst: &str,
        src: &str,
    ) -> (u8, Option<&'c str>, Option<Direction>) {
        let v = c.verdict(ip(dst), ip(src));
        (
            v.action,
            v.rule.map(|i| c.rules[i].name.as_str()),
            v.direction,
        )
    }

    #[test]
    fn tables_hold_each_prefix_with_its_rule_index() {
        let c = compiled(MIXED);
        let names: Vec<&str> = c.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["dst-drop", "dst-pass", "src-drop", "src-pass"]);
        let v4 = |t: &BTreeMap<Ipv4Net, usize>| -> Vec<(String, usize)> {
            t.iter().map(|(n, &r)| (n.to_string(), r)).collect()
        };
        let v6 = |t: &BTreeMap<Ipv6Net, usize>| -> Vec<(String, usize)> {
            t.iter().map(|(n, &r)| (n.to_string(), r)).collect()
        };
        let s = |a: &str, r: usize| (a.to_string(), r);
        assert_eq!(
            v4(&c.tables.dst_v4),
            [
                s("198.51.100.0/24", 1),
                s("203.0.113.0/24", 0),
                s("203.0.113.5/32", 1)
            ]
        );
        assert_eq!(
            v6(&c.tables.dst_v6),
            [s("2001:db8:1::/64", 0), s("2001:db8:1::5/128", 1)]
        );
        assert_eq!(
            v4(&c.tables.src_v4),
            [
                s("192.0.2.0/24", 2),
                s("192.0.2.9/32", 3),
                s("233.252.0.0/24", 3)
            ]
        );
        assert_eq!(v6(&c.tables.src_v6), [s("2001:db8:bad::/48", 2)]);
        assert_eq!(c.tables.len(), 9);
        assert!(!c.tables.is_empty());

        let r = &c.rules[2];
        assert_eq!(r.action, DROP);
        assert_eq!(r.direction, filter_common::direction::SRC);
        assert_eq!(r.prefixes, 2);
        assert_eq!(r.location.to_string(), "policy.toml:13");
        assert_eq!(c.rules[1].prefixes, 3);
        assert_eq!(c.malformed, filter_common::malformed::DROP);
    }

    #[test]
    fn empty_policy_compiles_to_empty_tables() {
        let c = compiled("malformed = \"pass\"\n");
        assert!(c.tables.is_empty());
        assert!(c.rules.is_empty());
        assert_eq!(c.malformed, filter_common::malformed::PASS);
        assert_eq!(
            c.verdict(ip("192.0.2.1"), ip("192.0.2.2")),
            Verdict::NO_MATCH
        );
    }

    #[test]
    fn hash_is_stable() {
        let a = compiled(MIXED);
        // Comments, expiry, allow_local and layout do not change what the kernel holds.
        let decorated = MIXED
            .replace(
                "name = \"dst-drop\"",
                "name = \"dst-drop\"\ncomment = \"x\"\nallow_local = true\nexpires = \"2099-01-01T00:00:00Z\"",
            )
            .replace("\n\n", "\n\n# moved\n\n");
        let b = compiled(&decorated);
        assert_eq!(a.hash, b.hash);
        assert_eq!(hash_hex(&a.hash), hash_hex(&compiled(MIXED).hash));
        let hex = hash_hex(&a.hash);
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{hex}"
        );
        // Prefix order within a rule does not matter either: the tables are sorted.
        let reordered = MIXED.replace(
            "[\"203.0.113.0/24\", \"2001:db8:1::/64\"]",
            "[\"2001:db8:1::/64\", \"203.0.113.0/24\"]",
        );
        assert_eq!(a.hash, compiled(&reordered).hash);
    }

    #[test]
    fn hash_changes_with_any_kernel_visible_change() {
        let base = compiled(MIXED).hash;
        let variants = [
            format!("malformed = \"pass\"\n{MIXED}"),
            MIXED.replace("name = \"dst-drop\"", "name = \"dst-drop2\""),
            MIXED.replace(
                "name = \"dst-pass\"\naction = \"pass\"",
                "name = \"dst-pass\"\naction = \"drop\"",
            ),
            MIXED.replace("\"233.252.0.0/24\"", "\"233.252.0.0/25\""),
            MIXED.replace(
                "\"233.252.0.0/24\"",
                "\"233.252.0.0/24\", \"198.18.0.0/15\"",
            ),
            MIXED.replace(", \"233.252.0.0/24\"", ""),
            // Same prefixes, other direction.
            MIXED.replace(
                "name = \"src-pass\"\ndirection = \"src\"",
                "name = \"src-pass\"",
            ),
        ];
        for (i, text) in variants.iter().enumerate() {
            assert_ne!(
                compiled(text).hash,
                base,
                "variant {i} should change the hash:\n{text}"
            );
        }
        // Swapping two rules changes their ids, so it changes the hash.
        let swapped = r#"
[[rule]]
name = "b"
action = "drop"
prefixes = ["198.51.100.0/24"]
[[rule]]
name = "a"
action = "drop"
prefixes = ["203.0.113.0/24"]
"#;
        let original = r#"
[[rule]]
name = "a"
action = "drop"
prefixes = ["203.0.113.0/24"]
[[rule]]
name = "b"
action = "drop"
prefixes = ["198.51.100.0/24"]
"#;
        assert_ne!(compiled(swapped).hash, compiled(original).hash);
    }

    #[test]
    fn longest_prefix_wins_v4() {
        let c = compiled(MIXED);
        let t = &c.tables;
        assert_eq!(
            t.lookup(Direction::Dst, ip("203.0.113.5")),
            Some((net("203.0.113.5/32"), 1))
        );
        assert_eq!(
            t.lookup(Direction::Dst, ip("203.0.113.4")),
            Some((net("203.0.113.0/24"), 0))
        );
        assert_eq!(
            t.lookup(Direction::Dst, ip("203.0.113.255")),
            Some((net("203.0.113.0/24"), 0))
        );
        assert_eq!(t.lookup(Direction::Dst, ip("203.0.114.0")), None);
        // Tables are per direction.
        assert_eq!(t.lookup(Direction::Src, ip("203.0.113.4")), None);
        assert_eq!(
            t.lookup(Direction::Src, ip("192.0.2.9")),
            Some((net("192.0.2.9/32"), 3))
        );
    }

    #[test]
    fn longest_prefix_wins_v6() {
        let c = compiled(MIXED);
        let t = &c.tables;
        assert_eq!(
            t.lookup(Direction::Dst, ip("2001:db8:1::5")),
            Some((net("2001:db8:1::5/128"), 1))
        );
        assert_eq!(
            t.lookup(Direction::Dst, ip("2001:db8:1::6")),
            Some((net("2001:db8:1::/64"), 0))
        );
        assert_eq!(
            t.lookup(Direction::Dst, ip("2001:db8:1:0:ffff:ffff:ffff:ffff")),
            Some((net("2001:db8:1::/64"), 0))
        );
        assert_eq!(t.lookup(Direction::Dst, ip("2001:db8:1:1::")), None);
        // An IPv4 address never matches the IPv6 tables, even as ::ffff:a.b.c.d.
        assert_eq!(t.lookup(Direction::Dst, ip("::ffff:203.0.113.4")), None);
    }

    #[test]
    fn default_routes_and_host_routes_are_matched() {
        let c = compiled(
            "[[rule]]\nname = \"all\"\naction = \"drop\"\nprefixes = [\"0.0.0.0/0\", \"::/0\"]\n\
             [[rule]]\nname = \"one\"\naction = \"pass\"\nprefixes = [\"255.255.255.255\", \"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\"]\n",
        );
        let t = &c.tables;
        assert_eq!(
            t.lookup(Direction::Dst, ip("0.0.0.0")),
            Some((net("0.0.0.0/0"), 0))
        );
        assert_eq!(
            t.lookup(Direction::Dst, ip("255.255.255.255")),
            Some((net("255.255.255.255/32"), 1))
        );
        assert_eq!(t.lookup(Direction::Dst, ip("::")), Some((net("::/0"), 0)));
        assert_eq!(
            t.lookup(
                Direction::Dst,
                ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
            ),
            Some((net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 1))
        );
    }

    #[test]
    fn shadow_rules_never_change_the_verdict() {
        let c = compiled(
            r#"
[[rule]]
name = "wide"
action = "drop"
prefixes = ["10.0.0.0/16"]

[[rule]]
name = "shadow-inside"
action = "pass"
mode = "shadow"
prefixes = ["10.0.1.0/24"]

[[rule]]
name = "shadow-wide"
action = "drop"
mode = "shadow"
prefixes = ["172.16.0.0/12"]

[[rule]]
name = "inside-shadow"
action = "pass"
prefixes = ["172.16.1.0/24"]
"#,
        );
        let any = ip("192.0.2.1");
        let rule = |name: &str| c.rules.iter().position(|r| r.name == name);
        // The shadow pass does not carve a hole in the enforced /16; it counts.
        let v = c.verdict(ip("10.0.1.1"), any);
        assert_eq!((v.action, v.rule), (DROP, rule("wide")));
        let s = c.shadow(ip("10.0.1.1"), any).expect("a shadow hit");
        assert_eq!((s.action, s.rule), (PASS, rule("shadow-inside")));
        // The shadow drop adds no drop.
        assert_eq!(c.verdict(ip("172.16.9.9"), any), Verdict::NO_MATCH);
        let s = c.shadow(ip("172.16.9.9"), any).expect("a shadow hit");
        assert_eq!((s.action, s.rule), (DROP, rule("shadow-wide")));
        // The longer enforced prefix inside the shadow one would still decide: no hit.
        let v = c.verdict(ip("172.16.1.1"), any);
        assert_eq!((v.action, v.rule), (PASS, rule("inside-shadow")));
        assert_eq!(c.shadow(ip("172.16.1.1"), any), None);
        assert_eq!(c.shadow(ip("10.0.2.1"), any), None);
        // Shadow rules never block for lockout purposes, and their flag reaches the kernel.
        let shadow = &c.rules[rule("shadow-wide").expect("rule")];
        assert!(!shadow.blocks() && shadow.is_shadow());
        assert_eq!(shadow.flags & rule_flags::SHADOW, rule_flags::SHADOW);
    }

    #[test]
    fn the_mode_is_part_of_the_hash() {
        let text = "[[rule]]\nname = \"a\"\naction = \"drop\"\nprefixes = [\"10.0.0.0/8\"]\n";
        assert_ne!(
            compiled(text).hash,
            compiled(&format!("mode = \"shadow\"\n{text}")).hash
        );
    }

    #[test]
    fn verdict_precedence() {
        let c = compiled(MIXED);
        let (dst_drop, dst_pass, src_drop, src_pass) = (
            Some("dst-drop"),
            Some("dst-pass"),
            Some("src-drop"),
            Some("src-pass"),
        );
        let (dst, src) = (Some(Direction::Dst), Some(Direction::Src));
        // (dst address, src address, expected)
        let cases = [
            // Nothing matches either way.
            ("198.18.0.1", "198.18.0.2", (PASS, None, None)),
            // dst drop, src none / src pass / src drop: the dst block decides.
            ("203.0.113.4", "198.18.0.2", (DROP, dst_drop, dst)),
            ("203.0.113.4", "233.252.0.1", (DROP, dst_drop, dst)),
            ("203.0.113.4", "192.0.2.1", (DROP, dst_drop, dst)),
            // dst pass exception inside the dst drop, src none: the exception decides.
            ("203.0.113.5", "198.18.0.2", (PASS, dst_pass, dst)),
            // dst pass + src drop: a pass only overrides its own direction.
            ("203.0.113.5", "192.0.2.1", (DROP, src_drop, src)),
            ("198.51.100.1", "192.0.2.1", (DROP, src_drop, src)),
            // dst none + src drop.
            ("198.18.0.1", "192.0.2.1", (DROP, src_drop, src)),
            // dst none + src pass exception inside the src drop.
            ("198.18.0.1", "192.0.2.9", (PASS, src_pass, src)),
            // dst pass + src pass: the dst pass is credited.
            ("198.51.100.1", "233.252.0.1", (PASS, dst_pass, dst)),
            ("203.0.113.5", "192.0.2.9", (PASS, dst_pass, dst)),
            // dst none + src pass.
            ("198.18.0.1", "233.252.0.1", (PASS, src_pass, src)),
            // IPv6.
            ("2001:db8:1::6", "2001:db8:c::2", (DROP, dst_drop, dst)),
            ("2001:db8:1::5", "2001:db8:c::2", (PASS, dst_pass, dst)),
            ("2001:db8:1::5", "2001:db8:bad::1", (DROP, src_drop, src)),
            ("2001:db8:2::1", "2001:db8:c::2", (PASS, None, None)),
        ];
        for (d, s, expected) in cases {
            assert_eq!(verdict(&c, d, s), expected, "dst {d}, src {s}");
        }
    }

    #[test]
    fn verdict_reports_the_matched_prefix() {
        let c = compiled(MIXED);
        let v = c.verdict(ip("203.0.113.77"), ip("198.18.0.1"));
        assert_eq!(v.prefix, Some(net("203.0.113.0/24")));
        assert_eq!(v.rule, Some(0));
    }

    #[test]
    fn overlapping_finds_containing_and_contained_entries() {
        let c = compiled(
            "[[rule]]\nname = \"a\"\naction = \"drop\"\nprefixes = [\"198.51.0.0/16\", \"198.51.100.128/25\", \"198.51.100.7\", \"198.51.101.0/24\", \"2001:db8::/32\", \"2001:db8:1::/48\"]\n",
        );
        let found = |p: &str| -> Vec<String> {
            c.tables
                .overlapping(Direction::Dst, net(p))
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect()
        };
        assert_eq!(
            found("198.51.100.0/24"),
            ["198.51.0.0/16", "198.51.100.7/32", "198.51.100.128/25"]
        );
        assert_eq!(
            found("198.51.100.128/25"),
            ["198.51.0.0/16", "198.51.100.128/25"]
        );
        assert_eq!(found("198.52.0.0/16"), Vec::<String>::new());
        assert_eq!(
            found("2001:db8:1::/64"),
            ["2001:db8::/32", "2001:db8:1::/48"]
        );
        assert_eq!(found("2001:db8::/31"), ["2001:db8::/32", "2001:db8:1::/48"]);
        assert!(
            c.tables
                .overlapping(Direction::Src, net("0.0.0.0/0"))
                .is_empty()
        );
    }

    #[test]
    fn build_keeps_the_first_rule_and_counts_what_each_rule_put_in() {
        let (t, added) = Tables::build(
            3,
            [
                (Direction::Dst, net("192.0.2.0/24"), 0),
                (Direction::Dst, net("192.0.2.0/24"), 1),
                (Direction::Src, net("192.0.2.0/24"), 1),
                (Direction::Dst, net("192.0.2.0/25"), 2),
                (Direction::Dst, net("192.0.2.0/24"), 2),
            ],
        );
        assert_eq!(
            t.lookup(Direction::Dst, ip("192.0.2.200")),
            Some((net("192.0.2.0/24"), 0))
        );
        let all: Vec<(IpNet, usize)> = t.iter(Direction::Src).collect();
        assert_eq!(all, [(net("192.0.2.0/24"), 1)]);
        assert_eq!(added, [1, 1, 1]);
    }

    #[test]
    fn action_names() {
        assert_eq!(action_name(PASS), "pass");
        assert_eq!(action_name(DROP), "drop");
        assert_eq!(action_name(filter_common::action::REDIRECT), "redirect");
        assert_eq!(action_name(filter_common::action::REJECT), "reject");
        assert_eq!(action_name(200), "unknown action");
    }

    /// Redirect and reject rules, an unused target between two used ones, so the indexes show
    /// that only used targets count.
    const NOTICES: &str = r#"
reject_rate = 250
reject_burst = 30

[notice.first]
interface = "eth1"
next_hop = "198.51.100.250"

[notice.unused]
interface = "eth9"
next_hop = "198.51.100.251"

[notice.second]
interface = "eth2"
next_hop = "2001:db8:100::250"

[[rule]]
name = "plain-drop"
action = "drop"
prefixes = ["192.0.2.0/24"]

[[rule]]
name = "court-order"
action = "redirect"
notice = "second"
notice_text = "Blocked."
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "with-https"
action = "redirect"
notice = "first"
https = "notice"
prefixes = ["2001:db8:1::/64"]

[[rule]]
name = "abuse"
action = "reject"
prefixes = ["198.51.100.0/25"]

[[rule]]
name = "hole"
action = "pass"
prefixes = ["203.0.113.5"]
"#;

    #[test]
    fn redirect_and_reject_compile() {
        let c = compiled(NOTICES);
        assert_eq!((c.reject_rate, c.reject_burst), (250, 30));
        assert_eq!(
            c.notices,
            [
                CompiledNotice {
                    name: "first".into(),
                    interface: "eth1".into(),
                    next_hop: ip("198.51.100.250"),
                },
                CompiledNotice {
                    name: "second".into(),
                    interface: "eth2".into(),
                    next_hop: ip("2001:db8:100::250"),
                },
            ]
        );
        let rules: Vec<(&str, u8, u8, u16)> = c
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r.action, r.flags, r.target))
            .collect();
        assert_eq!(
            rules,
            [
                ("plain-drop", DROP, 0, 0),
                (
                    "court-order",
                    filter_common::action::REDIRECT,
                    rule_flags::HTTPS_REJECT,
                    1
                ),
                ("with-https", filter_common::action::REDIRECT, 0, 0),
                ("abuse", filter_common::action::REJECT, 0, 0),
                ("hole", PASS, 0, 0),
            ]
        );
        assert!(c.rules.iter().take(4).all(CompiledRule::blocks));
        assert!(!c.rules[4].blocks());
        assert_eq!(rule_flags::HTTPS_REJECT, 1, "kernel ABI");
    }

    #[test]
    fn defaults_without_notices() {
        let c = compiled(MIXED);
        assert!(c.notices.is_empty());
        assert_eq!(
            (c.reject_rate, c.reject_burst),
            (
                crate::policy::DEFAULT_REJECT_RATE,
                crate::policy::DEFAULT_REJECT_BURST
            )
        );
        assert!(c.rules.iter().all(|r| r.flags == 0 && r.target == 0));
    }

    /// Redirect and reject block like drop: they win over a pass in the other direction, and a
    /// pass exception in their own direction wins over them.
    #[test]
    fn redirect_and_reject_are_blocks_for_precedence() {
        let c = compiled(
            r#"
[notice.n]
interface = "eth1"
next_hop = "192.0.2.250"

[[rule]]
name = "redir"
action = "redirect"
notice = "n"
prefixes = ["203.0.113.0/24"]

[[rule]]
name = "exception"
action = "pass"
prefixes = ["203.0.113.5"]

[[rule]]
name = "src-pass"
direction = "src"
action = "pass"
prefixes = ["192.0.2.0/24"]

[[rule]]
name = "src-reject"
direction = "src"
action = "reject"
prefixes = ["198.18.0.0/15"]
"#,
        );
        let (redirect, reject) = (
            filter_common::action::REDIRECT,
            filter_common::action::REJECT,
        );
        let (dst, src) = (Some(Direction::Dst), Some(Direction::Src));
        let cases = [
            ("203.0.113.9", "192.0.2.1", (redirect, Some("redir"), dst)),
            ("203.0.113.5", "192.0.2.1", (PASS, Some("exception"), dst)),
            (
                "203.0.113.5",
                "198.18.0.1",
                (reject, Some("src-reject"), src),
            ),
            ("203.0.113.9", "198.18.0.1", (redirect, Some("redir"), dst)),
            (
                "233.252.0.1",
                "198.18.0.1",
                (reject, Some("src-reject"), src),
            ),
        ];
        for (d, s, expected) in cases {
            assert_eq!(verdict(&c, d, s), expected, "dst {d}, src {s}");
        }
    }

    #[test]
    fn hash_covers_notices_flags_targets_and_reject_limits() {
        let base = compiled(NOTICES);
        assert_eq!(base.hash, base.compute_hash());
        let changed = |text: &str| compiled(text).hash != base.hash;
        let variants = [
            (
                "reject_rate",
                NOTICES.replace("reject_rate = 250", "reject_rate = 251"),
            ),
            (
                "reject_burst",
                NOTICES.replace("reject_burst = 30", "reject_burst = 31"),
            ),
            (
                "default reject_rate",
                NOTICES.replace("reject_rate = 250\n", ""),
            ),
            (
                "https mode (flags)",
                NOTICES.replace("https = \"notice\"", "https = \"reject\""),
            ),
            (
                "rule's target (index)",
                NOTICES.replace("notice = \"second\"", "notice = \"first\""),
            ),
            (
                "notice interface",
                NOTICES.replace("interface = \"eth1\"", "interface = \"eth3\""),
            ),
            (
                "notice next hop",
                NOTICES.replace("\"198.51.100.250\"", "\"198.51.100.252\""),
            ),
            (
                "notice name",
                NOTICES
                    .replace("[notice.first]", "[notice.primary]")
                    .replace("notice = \"first\"", "notice = \"primary\""),
            ),
            (
                "reject becomes drop",
                NOTICES.replace("action = \"reject\"", "action = \"drop\""),
            ),
        ];
        for (what, text) in &variants {
            assert!(changed(text), "{what} should change the hash");
        }
        // What only the notice server reads, and targets no rule uses, do not.
        let same = [
            NOTICES.replace("notice_text = \"Blocked.\"", "notice_text = \"Other.\""),
            NOTICES.replace(
                "notice_text = \"Blocked.\"",
                "notice_url = \"https://example.net/\"\nnotice_status = 403",
            ),
            NOTICES.replace("interface = \"eth9\"", "interface = \"eth8\""),
        ];
        for text in &same {
            assert!(!changed(text), "should not change the hash:\n{text}");
        }
    }

    /// A target's index follows the used targets only: dropping the last user of one shifts
    /// the ones after it.
    #[test]
    fn target_indexes_follow_used_targets() {
        let text = NOTICES.replace("notice = \"first\"\n", "notice = \"second\"\n");
        let c = compiled(&text);
        let names: Vec<&str> = c.notices.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["second"]);
        assert!(
            c.rules
                .iter()
                .filter(|r| r.action == filter_common::action::REDIRECT)
                .all(|r| r.target == 0)
        );
    }

    /// The demo's expectations of examples/policy.toml.
    #[test]
    fn example_policy_verdicts() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml");
        let p = crate::policy::load(&path, now())
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let c = compile(&p);
        let client4 = "192.0.2.2";
        let client6 = "2001:db8:c::2";
        let cases = [
            ("203.0.113.1", client4, DROP, Some("emergency-origin")),
            ("203.0.113.5", client4, PASS, Some("origin-exceptions")),
            ("2001:db8:1::1", client6, DROP, Some("emergency-origin")),
            ("2001:db8:1::5", client6, PASS, Some("origin-exceptions")),
            ("198.51.100.65", client4, DROP, Some("hijacked-ranges")),
            ("198.51.100.70", client4, DROP, Some("hijacked-ranges")),
            ("198.51.100.127", client4, DROP, Some("hijacked-ranges")),
            ("233.252.0.200", client4, DROP, Some("hijacked-ranges")),
            ("198.51.100.10", client4, PASS, None),
            (
                "198.51.100.10",
                "198.51.100.200",
                DROP,
                Some("abusive-source"),
            ),
            (client4, "198.51.100.200", DROP, Some("abusive-source")),
            (client4, "198.51.100.10", PASS, None),
        ];
        for (dst, src, action, rule) in cases {
            let (a, r, _) = verdict(&c, dst, src);
            assert_eq!((a, r), (action, rule), "dst {dst}, src {src}");
        }
    }
}
