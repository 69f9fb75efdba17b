//! Apply a compiled policy to the live maps: read what is there, plan the difference, then
//! write it in an order that never opens a gap.
//!
//! Order of writes: rule metadata for new ids (their counters zeroed first) and notice
//! targets, then every IPv6 insert and update, then the IPv4 range tables and their record,
//! written whole into the copy the program does not use and switched in by one update, then
//! every IPv6 delete, then the metadata of ids no longer used, then the config (whose policy
//! hash marks the apply complete). A prefix present in both the old and the new policy is
//! therefore never absent, not even for one packet, and an interrupted apply leaves a state
//! the next apply converges from (the plan is always computed against what the kernel holds,
//! not against a state file).
//!
//! A table is built anew only when its change is large: otherwise the live table, read back
//! from the copy in use, is patched (`dxr::patch`: the chunks the changed prefixes touch are
//! cut again, the others copied), and the result is still written whole into the other copy.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use filter_common::{
    Config, MAX_NOTICE_TARGETS, MAX_RULES, NoticeTarget, RuleEntry, RuleMeta, active, direction,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::{
    compile::{Compiled, action_name},
    dxr::{self, Dxr, Packed, Span},
    maps::{Family, Maps, MapsError, Ranges, V4, V6, decode_name, encode_name},
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("the policy has {rules} rules but only {max} rule ids exist")]
    TooManyRules { rules: usize, max: u32 },
    #[error("{resolved} notice targets resolved for {needed} in the policy (at most {max})")]
    NoticeTargets {
        resolved: usize,
        needed: usize,
        max: u32,
    },
    #[error("table {table} would need {needed} entries but holds at most {capacity}")]
    Capacity {
        table: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error(
        "table {table} would hold {ranges} ranges in one chunk, more than the program's bounded \
         search reaches ({max}); split the prefixes over more of the address space"
    )]
    ChunkTooDense {
        table: &'static str,
        ranges: usize,
        max: usize,
    },
}

/// What the kernel holds now.
pub struct Live {
    pub config: Config,
    pub metas: BTreeMap<u32, RuleMeta>,
    /// Every notice target slot.
    pub notices: Vec<NoticeTarget>,
    /// Each table's prefixes in ascending order, each once: sorted arrays, as a million-entry
    /// tree took longer to build and walk than the rest of a small change.
    pub dst_v4: Vec<(Ipv4Net, RuleEntry)>,
    pub src_v4: Vec<(Ipv4Net, RuleEntry)>,
    pub dst_v6: Vec<(Ipv6Net, RuleEntry)>,
    pub src_v6: Vec<(Ipv6Net, RuleEntry)>,
    /// The range tables built from those prefixes, as the program searches them (`None`:
    /// a table without prefixes, or not read): a small change patches them.
    pub tables: Tables,
}

/// A range table per direction and family.
#[derive(Default)]
pub struct Tables {
    pub v4_dst: Option<Packed>,
    pub v4_src: Option<Packed>,
    pub v6_dst: Option<Packed>,
    pub v6_src: Option<Packed>,
}

impl Tables {
    fn read(maps: &Maps) -> Result<Self, MapsError> {
        let act = maps.active_word()?;
        let copy = act & active::COPY;
        let v4 = |bit: u32, dir| {
            let indexed = act & active::v4_indexed(dir) != 0;
            (act & bit != 0)
                .then(|| maps.v4.read(copy, dir, indexed))
                .flatten()
        };
        let v6 = |bit: u32, dir| {
            (act & bit != 0)
                .then(|| maps.v6.read(copy, dir, false))
                .flatten()
        };
        Ok(Self {
            v4_dst: v4(active::V4_DST, direction::DST),
            v4_src: v4(active::V4_SRC, direction::SRC),
            v6_dst: v6(active::V6_DST, direction::DST),
            v6_src: v6(active::V6_SRC, direction::SRC),
        })
    }
}

impl Live {
    pub fn read(maps: &Maps) -> Result<Self, MapsError> {
        Ok(Self {
            config: maps.config()?,
            metas: maps.rule_metas()?,
            notices: maps.notice_targets()?,
            dst_v4: maps.record(&maps.v4, direction::DST)?,
            src_v4: maps.record(&maps.v4, direction::SRC)?,
            dst_v6: maps.record(&maps.v6, direction::DST)?,
            src_v6: maps.record(&maps.v6, direction::SRC)?,
            tables: Tables::read(maps)?,
        })
    }

    /// Nothing loaded yet (a dry run before the first apply).
    pub fn empty() -> Self {
        Self {
            config: Config::default(),
            metas: BTreeMap::new(),
            notices: vec![NoticeTarget::default(); MAX_NOTICE_TARGETS as usize],
            dst_v4: Vec::new(),
            src_v4: Vec::new(),
            dst_v6: Vec::new(),
            src_v6: Vec::new(),
            tables: Tables::default(),
        }
    }

    /// Nothing ever applied: what a freshly loaded program's maps hold, and what a plan made
    /// against [`Live::empty`] assumes.
    pub fn is_pristine(&self) -> bool {
        self.config.generation == 0
            && self.metas.is_empty()
            && self.dst_v4.is_empty()
            && self.src_v4.is_empty()
            && self.dst_v6.is_empty()
            && self.src_v6.is_empty()
            && [
                &self.tables.v4_dst,
                &self.tables.v4_src,
                &self.tables.v6_dst,
                &self.tables.v6_src,
            ]
            .iter()
            .all(|t| t.is_none())
    }

    fn referenced_ids(&self) -> BTreeSet<u32> {
        // A flag per id, not a set insert per prefix: the tables hold millions.
        let mut seen = vec![false; MAX_RULES as usize];
        let mut mark = |id: u32| {
            if let Some(s) = seen.get_mut(id as usize) {
                *s = true;
            }
        };
        self.metas.keys().for_each(|&id| mark(id));
        for (_, e) in self.dst_v4.iter().chain(&self.src_v4) {
            mark(e.rule_id);
        }
        for (_, e) in self.dst_v6.iter().chain(&self.src_v6) {
            mark(e.rule_id);
        }
        (0..MAX_RULES).filter(|&id| seen[id as usize]).collect()
    }
}

/// The difference for one table.
pub struct TableDiff<P> {
    pub name: &'static str,
    pub add: Vec<(P, RuleEntry)>,
    /// (prefix, old, new)
    pub change: Vec<(P, RuleEntry, RuleEntry)>,
    pub remove: Vec<(P, RuleEntry)>,
    pub desired_len: usize,
}

impl<P: Copy + Ord> TableDiff<P> {
    fn new(name: &'static str, live: &[(P, RuleEntry)], desired: &[(P, RuleEntry)]) -> Self {
        let mut d = Self {
            name,
            add: vec![],
            change: vec![],
            remove: vec![],
            desired_len: desired.len(),
        };
        // A merge of the two sorted arrays: linear, where a lookup per prefix into a
        // million-entry table costs a cache miss each.
        let (mut l, mut w) = (live.iter().peekable(), desired.iter().peekable());
        loop {
            match (l.peek(), w.peek()) {
                (None, None) => break,
                (Some((lp, old)), Some((wp, new))) if lp == wp => {
                    if old != new {
                        d.change.push((*wp, *old, *new));
                    }
                    l.next();
                    w.next();
                }
                (Some((lp, old)), Some((wp, _))) if lp < wp => {
                    d.remove.push((*lp, *old));
                    l.next();
                }
                (Some((lp, old)), None) => {
                    d.remove.push((*lp, *old));
                    l.next();
                }
                (_, Some((wp, new))) => {
                    d.add.push((*wp, *new));
                    w.next();
                }
            }
        }
        d
    }

    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.change.is_empty() && self.remove.is_empty()
    }
}

/// One direction's range table and record, ready to write.
pub struct Built<F: Family> {
    pub table: Packed,
    pub record: Vec<F::Record>,
}

impl<F: Family> Built<F> {
    /// The table of `desired`: `live` (the table of the live prefixes) patched where `diff`
    /// changes it, or built whole when there is no live table or the change is large
    /// (`dxr::patch`). `wide` lists `desired`'s prefixes that hold whole chunks. A table
    /// without prefixes is not built: it stays out of `EB_ACTIVE`, so the program never reads
    /// it, and `Ranges::write` skips it.
    fn new(
        desired: &[(F::Net, RuleEntry)],
        wide: &[F::Net],
        live: Option<&Packed>,
        diff: &TableDiff<F::Net>,
    ) -> Self {
        let record = desired
            .iter()
            .map(|(p, e)| F::record(p, e.rule_id))
            .collect();
        let table = if desired.is_empty() {
            Packed::default()
        } else {
            let changed = (diff.add.iter().map(|a| a.0))
                .chain(diff.change.iter().map(|c| c.0))
                .chain(diff.remove.iter().map(|r| r.0));
            live.and_then(|live| dxr::patch(live, desired, wide, reference, changed))
                .unwrap_or_else(|| Dxr::of(desired.iter().map(|(p, e)| (*p, reference(e)))).pack())
        };
        Self { table, record }
    }

    fn check(&self, ranges: &Ranges<F>, direction: u8) -> Result<(), ApplyError> {
        let max = 1usize << F::SEARCH_STEPS;
        if self.table.longest > max {
            return Err(ApplyError::ChunkTooDense {
                table: if direction == direction::SRC {
                    F::RANGES_SRC
                } else {
                    F::RANGES_DST
                },
                ranges: self.table.longest,
                max,
            });
        }
        for (table, needed, capacity) in [
            (
                if direction == direction::SRC {
                    F::RANGES_SRC
                } else {
                    F::RANGES_DST
                },
                self.table.len(),
                ranges.capacity(direction),
            ),
            (
                if direction == direction::SRC {
                    F::RECORD_SRC
                } else {
                    F::RECORD_DST
                },
                self.record.len(),
                ranges.record_capacity(direction),
            ),
        ] {
            if needed > capacity {
                return Err(ApplyError::Capacity {
                    table,
                    needed,
                    capacity: capacity as u32,
                });
            }
        }
        Ok(())
    }
}

/// What one rule gains and loses in a plan ([`Plan::prefix_moves`]).
#[derive(Clone, Debug, Default)]
pub struct PrefixMoves {
    /// The action of the rule's entries ("drop", ...).
    pub action: &'static str,
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

/// A prefix of either family, for counting the addresses a plan blocks.
trait Prefix {
    const MAX_LEN: u8;
    fn len(&self) -> u8;
}

impl Prefix for Ipv4Net {
    const MAX_LEN: u8 = 32;
    fn len(&self) -> u8 {
        self.prefix_len()
    }
}

impl Prefix for Ipv6Net {
    const MAX_LEN: u8 = 128;
    fn len(&self) -> u8 {
        self.prefix_len()
    }
}

/// Everything `execute` will write, computed without touching the kernel.
pub struct Plan {
    /// (id, metadata) for every rule of the new policy.
    pub metas: Vec<(u32, RuleMeta)>,
    /// Ids allocated by this plan: counters are zeroed before use.
    pub new_ids: Vec<u32>,
    /// Ids whose rule changes mode (shadow, enforce): counters zeroed too.
    pub recounted: Vec<u32>,
    /// Ids whose rule is gone.
    pub freed: Vec<u32>,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<String>,
    pub dst_v4: TableDiff<Ipv4Net>,
    pub src_v4: TableDiff<Ipv4Net>,
    pub dst_v6: TableDiff<Ipv6Net>,
    pub src_v6: TableDiff<Ipv6Net>,
    /// Every notice target slot as it must be (resolved targets first, then unused slots).
    pub notices: Vec<NoticeTarget>,
    /// The range tables the program will search, built from the whole new policy, with the
    /// records of the prefixes they come from.
    pub v4_dst: Built<V4>,
    pub v4_src: Built<V4>,
    pub v6_dst: Built<V6>,
    pub v6_src: Built<V6>,
    /// The entry of every rule id in the new policy (the ranges name rules by id).
    pub results: Vec<(u32, RuleEntry)>,
    pub config: Config,
    /// Name of each rule id, old and new, for printing.
    names: BTreeMap<u32, String>,
}

impl Plan {
    /// `targets[i]` is `compiled.notices[i]` resolved to an interface and MACs
    /// (`neigh::resolve`); the caller resolves them before planning.
    pub fn new(
        compiled: &Compiled,
        live: &Live,
        targets: &[NoticeTarget],
        now_unix: u64,
    ) -> Result<Self, ApplyError> {
        if targets.len() != compiled.notices.len() || targets.len() > MAX_NOTICE_TARGETS as usize {
            return Err(ApplyError::NoticeTargets {
                resolved: targets.len(),
                needed: compiled.notices.len(),
                max: MAX_NOTICE_TARGETS,
            });
        }
        let mut notices = targets.to_vec();
        notices.resize(MAX_NOTICE_TARGETS as usize, NoticeTarget::default());
        let by_name: BTreeMap<String, u32> = live
            .metas
            .iter()
            .map(|(id, m)| (decode_name(&m.name), *id))
            .collect();
        let mut taken = live.referenced_ids();
        let mut next_free = 0u32;
        let mut ids = Vec::with_capacity(compiled.rules.len());
        let mut new_ids = Vec::new();
        let mut recounted = Vec::new();
        let mut metas = Vec::new();
        let (mut rules_added, mut rules_changed) = (Vec::new(), Vec::new());
        let mut names: BTreeMap<u32, String> = live
            .metas
            .iter()
            .map(|(id, m)| (*id, decode_name(&m.name)))
            .collect();
        for rule in &compiled.rules {
            let id = match by_name.get(&rule.name) {
                Some(&id) => {
                    let old = &live.metas[&id];
                    if old.action != rule.action || old.direction != rule.direction {
                        rules_changed.push(rule.name.clone());
                    }
                    // A shadow rule's counter holds what it would have done; once enforced,
                    // what it did (and the other way round): not one sum.
                    if old.mode != rule.mode {
                        rules_changed.push(rule.name.clone());
                        recounted.push(id);
                    }
                    id
                }
                None => {
                    while taken.contains(&next_free) {
                        next_free += 1;
                    }
                    if next_free >= MAX_RULES {
                        return Err(ApplyError::TooManyRules {
                            rules: compiled.rules.len(),
                            max: MAX_RULES,
                        });
                    }
                    taken.insert(next_free);
                    new_ids.push(next_free);
                    rules_added.push(rule.name.clone());
                    next_free
                }
            };
            ids.push(id);
            names.insert(id, rule.name.clone());
            metas.push((
                id,
                RuleMeta {
                    name: encode_name(&rule.name),
                    in_use: 1,
                    action: rule.action,
                    direction: rule.direction,
                    mode: rule.mode,
                    prefixes: rule.prefixes,
                    ..RuleMeta::default()
                },
            ));
        }
        let kept: BTreeSet<u32> = ids.iter().copied().collect();
        let freed: Vec<u32> = live
            .metas
            .keys()
            .copied()
            .filter(|id| !kept.contains(id))
            .collect();
        let rules_removed = freed
            .iter()
            .map(|id| decode_name(&live.metas[id].name))
            .collect();

        /// A direction's prefixes with their entries, and those that hold whole chunks.
        fn desired<P: Span>(
            table: &BTreeMap<P, usize>,
            ids: &[u32],
            compiled: &Compiled,
        ) -> (Vec<(P, RuleEntry)>, Vec<P>) {
            let mut wide = Vec::new();
            let entries = table
                .iter()
                .inspect(|(p, _)| {
                    if p.bits() <= P::DIRECT_BITS {
                        wide.push(**p);
                    }
                })
                .map(|(p, &i)| (*p, entry(ids[i], &compiled.rules[i])))
                .collect();
            (entries, wide)
        }
        let t = &compiled.tables;
        let (want_dst_v4, wide_dst_v4) = desired(&t.dst_v4, &ids, compiled);
        let (want_src_v4, wide_src_v4) = desired(&t.src_v4, &ids, compiled);
        let (want_dst_v6, wide_dst_v6) = desired(&t.dst_v6, &ids, compiled);
        let (want_src_v6, wide_src_v6) = desired(&t.src_v6, &ids, compiled);
        let dst_v4 = TableDiff::new("dst v4", &live.dst_v4, &want_dst_v4);
        let src_v4 = TableDiff::new("src v4", &live.src_v4, &want_src_v4);
        let dst_v6 = TableDiff::new("dst v6", &live.dst_v6, &want_dst_v6);
        let src_v6 = TableDiff::new("src v6", &live.src_v6, &want_src_v6);
        let lt = &live.tables;
        let v4_dst = Built::new(&want_dst_v4, &wide_dst_v4, lt.v4_dst.as_ref(), &dst_v4);
        let v4_src = Built::new(&want_src_v4, &wide_src_v4, lt.v4_src.as_ref(), &src_v4);
        let v6_dst = Built::new(&want_dst_v6, &wide_dst_v6, lt.v6_dst.as_ref(), &dst_v6);
        let v6_src = Built::new(&want_src_v6, &wide_src_v6, lt.v6_src.as_ref(), &src_v6);
        let results = ids
            .iter()
            .zip(&compiled.rules)
            .map(|(&id, r)| (id, entry(id, r)))
            .collect();

        let mut config = live.config;
        config.malformed_action = compiled.malformed;
        config.policy_hash = compiled.hash;
        config.applied_unix = now_unix;
        config.generation = live.config.generation + 1;
        let cost = 1_000_000_000 / u64::from(compiled.reject_rate.max(1));
        config.reject_cost_ns = cost;
        config.reject_capacity_ns = cost * u64::from(compiled.reject_burst.max(1));

        Ok(Self {
            metas,
            new_ids,
            recounted,
            freed,
            rules_added,
            rules_removed,
            rules_changed,
            dst_v4,
            src_v4,
            dst_v6,
            src_v6,
            notices,
            v4_dst,
            v4_src,
            v6_dst,
            v6_src,
            results,
            config,
            names,
        })
    }

    /// (added, removed, changed) prefixes over all tables.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        macro_rules! add {
            ($($t:ident),*) => {$(
                c.0 += self.$t.add.len();
                c.1 += self.$t.remove.len();
                c.2 += self.$t.change.len();
            )*};
        }
        add!(dst_v4, src_v4, dst_v6, src_v6);
        c
    }

    /// Per rule name, the prefixes it gains and loses (a prefix moved between rules is lost by
    /// one and gained by the other), for the audit trail.
    pub fn prefix_moves(&self) -> BTreeMap<String, PrefixMoves> {
        // By rule id first, named at the end: a million prefixes of one rule make one String.
        fn table<P: Copy + Into<IpNet>>(out: &mut BTreeMap<u32, PrefixMoves>, d: &TableDiff<P>) {
            fn entry<'a>(
                out: &'a mut BTreeMap<u32, PrefixMoves>,
                e: &RuleEntry,
            ) -> &'a mut PrefixMoves {
                out.entry(e.rule_id).or_insert_with(|| PrefixMoves {
                    action: action_name(e.action),
                    ..PrefixMoves::default()
                })
            }
            for (p, e) in &d.add {
                entry(out, e).added.push((*p).into());
            }
            for (p, old, new) in &d.change {
                if old.rule_id != new.rule_id {
                    entry(out, old).removed.push((*p).into());
                    entry(out, new).added.push((*p).into());
                }
            }
            for (p, e) in &d.remove {
                entry(out, e).removed.push((*p).into());
            }
        }
        let mut by_id = BTreeMap::new();
        table(&mut by_id, &self.dst_v4);
        table(&mut by_id, &self.src_v4);
        table(&mut by_id, &self.dst_v6);
        table(&mut by_id, &self.src_v6);
        let mut out: BTreeMap<String, PrefixMoves> = BTreeMap::new();
        for (id, moves) in by_id {
            let named = out.entry(self.name(id).to_owned()).or_insert(PrefixMoves {
                action: moves.action,
                ..PrefixMoves::default()
            });
            named.added.extend(moves.added);
            named.removed.extend(moves.removed);
        }
        out
    }

    /// How many addresses this plan starts blocking that were not blocked (drop, reject or
    /// redirect) before: IPv4 addresses plus IPv6 /64 networks (a longer IPv6 prefix counts as
    /// one), saturating. For the host's large-change signature threshold.
    pub fn newly_blocked(&self) -> u64 {
        fn size<P: Prefix>(p: &P) -> u64 {
            let unit = if P::MAX_LEN == 128 { 64 } else { P::MAX_LEN };
            1u64.checked_shl(u32::from(unit.saturating_sub(p.len())))
                .unwrap_or(u64::MAX)
        }
        fn table<P: Prefix>(d: &TableDiff<P>) -> u64 {
            let blocks = |e: &RuleEntry| e.action != filter_common::action::PASS;
            let added = d
                .add
                .iter()
                .filter(|(_, e)| blocks(e))
                .map(|(p, _)| size(p));
            let changed = d
                .change
                .iter()
                .filter(|(_, o, e)| blocks(e) && !blocks(o))
                .map(|(p, _, _)| size(p));
            added.chain(changed).fold(0u64, u64::saturating_add)
        }
        [
            table(&self.dst_v4),
            table(&self.src_v4),
            table(&self.dst_v6),
            table(&self.src_v6),
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }

    /// Whether applying would change anything the program looks at.
    pub fn is_noop(&self, live: &Live) -> bool {
        self.dst_v4.is_empty()
            && self.src_v4.is_empty()
            && self.dst_v6.is_empty()
            && self.src_v6.is_empty()
            && self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.rules_changed.is_empty()
            && live.config.policy_hash == self.config.policy_hash
            && live.config.malformed_action == self.config.malformed_action
            && live.config.reject_cost_ns == self.config.reject_cost_ns
            && live.config.reject_capacity_ns == self.config.reject_capacity_ns
            && live.notices == self.notices
    }

    /// Whether every table the plan writes fits the loaded program's maps; `execute` checks
    /// it again before writing anything.
    pub fn check_capacity(&self, maps: &Maps) -> Result<(), ApplyError> {
        self.v4_dst.check(&maps.v4, direction::DST)?;
        self.v4_src.check(&maps.v4, direction::SRC)?;
        self.v6_dst.check(&maps.v6, direction::DST)?;
        self.v6_src.check(&maps.v6, direction::SRC)
    }

    /// Write the plan, in the gap-free order described at the top of this module.
    pub fn execute(&self, maps: &mut Maps) -> Result<(), ApplyError> {
        self.check_capacity(maps)?;
        for id in self.new_ids.iter().chain(&self.recounted) {
            maps.reset_rule_counter(*id)?;
        }
        for (id, meta) in &self.metas {
            maps.set_rule_meta(*id, meta)?;
        }
        // Targets before the entries that point at them; slots falling out of use after the
        // entries that pointed at them are gone.
        let live_notices = maps.notice_targets()?;
        for (i, (want, have)) in self.notices.iter().zip(&live_notices).enumerate() {
            if want.ifindex != 0 && want != have {
                maps.set_notice_target(i as u32, want)?;
            }
        }
        // The reject limits before any reject entry can use them.
        if self.config.reject_cost_ns != maps.config()?.reject_cost_ns {
            let mut c = maps.config()?;
            c.reject_cost_ns = self.config.reject_cost_ns;
            c.reject_capacity_ns = self.config.reject_capacity_ns;
            maps.set_config(&c)?;
        }
        self.write_tables(maps)?;
        for id in &self.freed {
            maps.set_rule_meta(*id, &RuleMeta::default())?;
        }
        for (i, (want, have)) in self.notices.iter().zip(&live_notices).enumerate() {
            if want.ifindex == 0 && have.ifindex != 0 {
                maps.set_notice_target(i as u32, want)?;
            }
        }
        maps.set_config(&self.config)?;
        Ok(())
    }

    /// Write the range tables of both families into the copy the program does not use, then
    /// switch it over: one map update, so each packet sees the old policy or the new one, whole.
    fn write_tables(&self, maps: &mut Maps) -> Result<(), ApplyError> {
        use filter_common::maps as n;
        let copy = 1 - maps.active()?;
        for (id, entry) in &self.results {
            maps.results
                .set(copy * MAX_RULES + id, entry, 0)
                .map_err(|source| MapsError::Op {
                    name: n::RESULTS,
                    source,
                })?;
        }
        // Which IPv4 tables the program finds through their index.
        let mut active = copy;
        for (built, dir) in [
            (&self.v4_dst, direction::DST),
            (&self.v4_src, direction::SRC),
        ] {
            if maps.v4.write(copy, dir, &built.table, &built.record) {
                active |= active::v4_indexed(dir);
            }
        }
        for (built, dir) in [
            (&self.v6_dst, direction::DST),
            (&self.v6_src, direction::SRC),
        ] {
            maps.v6.write(copy, dir, &built.table, &built.record);
        }
        // The program skips the lookups of a table without prefixes.
        for (empty, bit) in [
            (self.v4_dst.record.is_empty(), active::V4_DST),
            (self.v4_src.record.is_empty(), active::V4_SRC),
            (self.v6_dst.record.is_empty(), active::V6_DST),
            (self.v6_src.record.is_empty(), active::V6_SRC),
        ] {
            if !empty {
                active |= bit;
            }
        }
        maps.active
            .set(0, active, 0)
            .map_err(|source| MapsError::Op {
                name: n::ACTIVE,
                source,
            })?;
        Ok(())
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(&id).map_or("?", String::as_str)
    }

    /// The prefix-level diff, at most `limit` lines per table and kind.
    pub fn write_details(&self, out: &mut impl fmt::Write, limit: usize) -> fmt::Result {
        fn table<P: Copy + Ord + fmt::Display>(
            plan: &Plan,
            out: &mut impl fmt::Write,
            d: &TableDiff<P>,
            limit: usize,
        ) -> fmt::Result {
            for (p, e) in d.add.iter().take(limit) {
                writeln!(
                    out,
                    "  + {p} {} ({})",
                    action_name(e.action),
                    plan.name(e.rule_id)
                )?;
            }
            for (p, o, e) in d.change.iter().take(limit) {
                writeln!(
                    out,
                    "  ~ {p} {} ({}) -> {} ({})",
                    action_name(o.action),
                    plan.name(o.rule_id),
                    action_name(e.action),
                    plan.name(e.rule_id)
                )?;
            }
            for (p, e) in d.remove.iter().take(limit) {
                writeln!(
                    out,
                    "  - {p} {} ({})",
                    action_name(e.action),
                    plan.name(e.rule_id)
                )?;
            }
            let hidden = d.add.len().saturating_sub(limit)
                + d.change.len().saturating_sub(limit)
                + d.remove.len().saturating_sub(limit);
            if hidden > 0 {
                writeln!(out, "  ... and {hidden} more in {}", d.name)?;
            }
            Ok(())
        }
        for r in &self.rules_added {
            writeln!(out, "  rule + {r}")?;
        }
        for r in &self.rules_changed {
            writeln!(out, "  rule ~ {r}")?;
        }
        for r in &self.rules_removed {
            writeln!(out, "  rule - {r}")?;
        }
        table(self, out, &self.dst_v4, limit)?;
        table(self, out, &self.src_v4, limit)?;
        table(self, out, &self.dst_v6, limit)?;
        table(self, out, &self.src_v6, limit)
    }
}

/// What a range result holds for an entry (`filter_common::dxr::reference`): an enforced
/// rule in the low half, a shadow rule in the high half, each with whether it blocks.
fn reference(e: &RuleEntry) -> u32 {
    let shadow = e.flags & filter_common::rule_flags::SHADOW != 0;
    filter_common::dxr::reference(e.rule_id, e.action, shadow)
}

/// The table value of a rule with id `id`.
fn entry(id: u32, rule: &crate::compile::CompiledRule) -> RuleEntry {
    RuleEntry {
        rule_id: id,
        action: rule.action,
        flags: rule.flags,
        target: rule.target,
    }
}

/// Read the live state, plan against it and write the plan: `apply` without the printing.
pub fn apply(
    maps: &mut Maps,
    compiled: &Compiled,
    targets: &[NoticeTarget],
    now_unix: u64,
) -> Result<Plan, ApplyError> {
    let live = Live::read(maps)?;
    let plan = Plan::new(compiled, &live, targets, now_unix)?;
    if !plan.is_noop(&live) {
        plan.execute(maps)?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use filter_common::action;

    use super::*;
    use crate::{compile::compile, policy};

    fn compiled(text: &str) -> Compiled {
        compile(&policy::for_test(text))
    }

    /// The live state a plan would leave, as if it had been executed.
    fn after(plan: &Plan, before: &Live) -> Live {
        fn table<P: Copy + Ord + fmt::Display>(
            live: &[(P, RuleEntry)],
            d: &TableDiff<P>,
        ) -> Vec<(P, RuleEntry)> {
            let mut t: BTreeMap<P, RuleEntry> = live.iter().copied().collect();
            t.extend(d.add.iter().copied());
            t.extend(d.change.iter().map(|(p, _, e)| (*p, *e)));
            for (p, _) in &d.remove {
                t.remove(p);
            }
            t.into_iter().collect()
        }
        let mut metas = before.metas.clone();
        for id in &plan.freed {
            metas.remove(id);
        }
        metas.extend(plan.metas.iter().copied());
        Live {
            config: plan.config,
            metas,
            notices: plan.notices.clone(),
            dst_v4: table(&before.dst_v4, &plan.dst_v4),
            src_v4: table(&before.src_v4, &plan.src_v4),
            dst_v6: table(&before.dst_v6, &plan.dst_v6),
            src_v6: table(&before.src_v6, &plan.src_v6),
            tables: Tables {
                v4_dst: written(&plan.v4_dst),
                v4_src: written(&plan.v4_src),
                v6_dst: written(&plan.v6_dst),
                v6_src: written(&plan.v6_src),
            },
        }
    }

    /// The table a plan leaves live, if it holds prefixes.
    fn written<F: Family>(built: &Built<F>) -> Option<Packed> {
        (!built.record.is_empty()).then(|| built.table.clone())
    }

    const A: &str = r#"
[[rule]]
name = "block"
action = "drop"
prefixes = ["203.0.113.0/24", "2001:db8:1::/64"]
[[rule]]
name = "exception"
action = "pass"
prefixes = ["203.0.113.5"]
[[rule]]
name = "from"
direction = "src"
action = "drop"
prefixes = ["198.51.100.0/24"]
"#;

    #[test]
    fn first_apply_adds_everything_with_fresh_ids() {
        let plan = Plan::new(&compiled(A), &Live::empty(), &[], 7).expect("plan");
        assert_eq!(plan.counts(), (4, 0, 0));
        assert_eq!(plan.rules_added, ["block", "exception", "from"]);
        assert_eq!(plan.new_ids, [0, 1, 2]);
        assert_eq!(plan.config.generation, 1);
        assert_eq!(plan.config.applied_unix, 7);
        let e = plan
            .dst_v4
            .add
            .iter()
            .find(|(p, _)| p.to_string() == "203.0.113.5/32");
        assert_eq!(e.map(|(_, e)| *e), Some(RuleEntry::new(1, action::PASS)));
        assert_eq!(plan.src_v4.add.len(), 1);
        assert_eq!(plan.dst_v6.add.len(), 1);
    }

    #[test]
    fn reapplying_the_same_policy_is_a_noop() {
        let c = compiled(A);
        let live = after(
            &Plan::new(&c, &Live::empty(), &[], 1).expect("plan"),
            &Live::empty(),
        );
        let again = Plan::new(&c, &live, &[], 2).expect("plan");
        assert_eq!(again.counts(), (0, 0, 0));
        assert!(again.is_noop(&live));
        assert!(again.new_ids.is_empty() && again.freed.is_empty());
    }

    #[test]
    fn ids_follow_rule_names_and_freed_ids_are_not_reused_while_referenced() {
        let live = after(
            &Plan::new(&compiled(A), &Live::empty(), &[], 1).expect("plan"),
            &Live::empty(),
        );
        // "exception" goes, "new" arrives, "block" moves to the end and changes action.
        let b = r#"
[[rule]]
name = "from"
direction = "src"
action = "drop"
prefixes = ["198.51.100.0/24"]
[[rule]]
name = "new"
action = "drop"
prefixes = ["233.252.0.0/24"]
[[rule]]
name = "block"
action = "pass"
prefixes = ["203.0.113.0/24"]
"#;
        let plan = Plan::new(&compiled(b), &live, &[], 2).expect("plan");
        let ids: BTreeMap<String, u32> = plan
            .metas
            .iter()
            .map(|(id, m)| (decode_name(&m.name), *id))
            .collect();
        assert_eq!(ids["from"], 2, "kept rules keep their ids");
        assert_eq!(ids["block"], 0, "kept rules keep their ids");
        assert_eq!(
            ids["new"], 3,
            "id 1 still has entries in the live tables until deleted"
        );
        assert_eq!(plan.freed, [1]);
        assert_eq!(plan.rules_removed, ["exception"]);
        assert_eq!(plan.rules_changed, ["block"]);
        assert_eq!(plan.rules_added, ["new"]);
        // +233.252.0.0/24, -203.0.113.5/32, -2001:db8:1::/64, ~203.0.113.0/24 (drop -> pass)
        assert_eq!(plan.counts(), (1, 2, 1));
        let end = after(&plan, &live);
        assert_eq!(
            Plan::new(&compiled(b), &end, &[], 3)
                .expect("plan")
                .counts(),
            (0, 0, 0)
        );
    }

    #[test]
    fn an_interrupted_apply_converges() {
        // Half of a plan written (inserts done, deletes not, config not), then apply again.
        let live = after(
            &Plan::new(&compiled(A), &Live::empty(), &[], 1).expect("plan"),
            &Live::empty(),
        );
        let b = compiled(
            "[[rule]]\nname = \"other\"\naction = \"drop\"\nprefixes = [\"233.252.0.0/24\"]\n",
        );
        let plan = Plan::new(&b, &live, &[], 2).expect("plan");
        let mut half = after(&plan, &live);
        half.dst_v4.extend(plan.dst_v4.remove.iter().copied());
        half.src_v4.extend(plan.src_v4.remove.iter().copied());
        half.dst_v6.extend(plan.dst_v6.remove.iter().copied());
        half.metas = live.metas.clone();
        half.metas.extend(plan.metas.iter().copied());
        half.config = live.config;
        let retry = Plan::new(&b, &half, &[], 3).expect("plan");
        assert_eq!(
            retry.counts(),
            (0, 4, 0),
            "the retry deletes what the first run left"
        );
        let end = after(&retry, &half);
        assert_eq!(end.dst_v4.len(), 1);
        assert!(end.src_v4.is_empty() && end.dst_v6.is_empty());
        assert_eq!(end.metas.len(), 1);
        assert_eq!(
            Plan::new(&b, &end, &[], 4).expect("plan").counts(),
            (0, 0, 0)
        );
    }

    #[test]
    fn too_many_rules_is_an_error_before_anything_is_written() {
        let mut live = Live::empty();
        for id in 0..MAX_RULES {
            let meta = RuleMeta {
                name: encode_name(&format!("r{id}")),
                in_use: 1,
                ..RuleMeta::default()
            };
            live.metas.insert(id, meta);
        }
        let err = Plan::new(&compiled(A), &live, &[], 1)
            .err()
            .expect("no id left");
        assert!(matches!(err, ApplyError::TooManyRules { .. }), "{err}");
    }

    #[test]
    fn details_name_rules_and_actions() {
        let plan = Plan::new(&compiled(A), &Live::empty(), &[], 1).expect("plan");
        let mut out = String::new();
        plan.write_details(&mut out, 1).expect("format");
        assert!(out.contains("  rule + block"), "{out}");
        assert!(out.contains("+ 203.0.113.0/24 drop (block)"), "{out}");
        assert!(out.contains("... and 1 more in dst v4"), "{out}");
    }
}
