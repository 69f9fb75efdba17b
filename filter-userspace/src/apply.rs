//! Apply a compiled policy to the live maps: read what is there, plan the difference, then
//! write it in an order that never opens a gap.
//!
//! Order of writes: rule metadata for new ids (their counters zeroed first), then every insert
//! and update, then every delete, then the metadata of ids no longer used, then the config.
//! A prefix present in both the old and the new policy is therefore never absent, not even
//! for one packet, and an interrupted apply leaves a state the next apply converges from
//! (the plan is always computed against what the kernel holds, not against a state file).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use filter_common::{Config, MAX_RULES, RuleEntry, RuleMeta};
use ipnet::{Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::{
    compile::{Compiled, action_name},
    maps::{LpmPrefix, Maps, MapsError, Table, decode_name, encode_name},
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("the policy has {rules} rules but only {max} rule ids exist")]
    TooManyRules { rules: usize, max: u32 },
    #[error("table {table} would need {needed} entries but holds at most {capacity}")]
    Capacity {
        table: &'static str,
        needed: usize,
        capacity: u32,
    },
}

/// What the kernel holds now.
pub struct Live {
    pub config: Config,
    pub metas: BTreeMap<u32, RuleMeta>,
    pub dst_v4: BTreeMap<Ipv4Net, RuleEntry>,
    pub src_v4: BTreeMap<Ipv4Net, RuleEntry>,
    pub dst_v6: BTreeMap<Ipv6Net, RuleEntry>,
    pub src_v6: BTreeMap<Ipv6Net, RuleEntry>,
}

impl Live {
    pub fn read(maps: &Maps) -> Result<Self, MapsError> {
        Ok(Self {
            config: maps.config()?,
            metas: maps.rule_metas()?,
            dst_v4: maps.dst_v4.entries()?,
            src_v4: maps.src_v4.entries()?,
            dst_v6: maps.dst_v6.entries()?,
            src_v6: maps.src_v6.entries()?,
        })
    }

    /// Nothing loaded yet (a dry run before the first apply).
    pub fn empty() -> Self {
        Self {
            config: Config::default(),
            metas: BTreeMap::new(),
            dst_v4: BTreeMap::new(),
            src_v4: BTreeMap::new(),
            dst_v6: BTreeMap::new(),
            src_v6: BTreeMap::new(),
        }
    }

    fn referenced_ids(&self) -> BTreeSet<u32> {
        let mut ids: BTreeSet<u32> = self.metas.keys().copied().collect();
        ids.extend(self.dst_v4.values().map(|e| e.rule_id));
        ids.extend(self.src_v4.values().map(|e| e.rule_id));
        ids.extend(self.dst_v6.values().map(|e| e.rule_id));
        ids.extend(self.src_v6.values().map(|e| e.rule_id));
        ids
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

impl<P: LpmPrefix> TableDiff<P> {
    fn new(
        name: &'static str,
        live: &BTreeMap<P, RuleEntry>,
        desired: &BTreeMap<P, RuleEntry>,
    ) -> Self {
        let mut d = Self {
            name,
            add: vec![],
            change: vec![],
            remove: vec![],
            desired_len: desired.len(),
        };
        for (p, new) in desired {
            match live.get(p) {
                None => d.add.push((*p, *new)),
                Some(old) if old != new => d.change.push((*p, *old, *new)),
                Some(_) => {}
            }
        }
        for (p, old) in live {
            if !desired.contains_key(p) {
                d.remove.push((*p, *old));
            }
        }
        d
    }

    fn check_capacity(&self, table: &Table<P>) -> Result<(), ApplyError> {
        let capacity = table.capacity()?;
        if self.desired_len > capacity as usize {
            return Err(ApplyError::Capacity {
                table: self.name,
                needed: self.desired_len,
                capacity,
            });
        }
        Ok(())
    }

    fn write(&self, table: &mut Table<P>) -> Result<(), MapsError> {
        for (p, e) in &self.add {
            table.insert(p, *e)?;
        }
        for (p, _, e) in &self.change {
            table.insert(p, *e)?;
        }
        Ok(())
    }

    fn delete(&self, table: &mut Table<P>) -> Result<(), MapsError> {
        for (p, _) in &self.remove {
            table.remove(p)?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.change.is_empty() && self.remove.is_empty()
    }
}

/// Everything `execute` will write, computed without touching the kernel.
pub struct Plan {
    /// (id, metadata) for every rule of the new policy.
    pub metas: Vec<(u32, RuleMeta)>,
    /// Ids allocated by this plan: counters are zeroed before use.
    pub new_ids: Vec<u32>,
    /// Ids whose rule is gone.
    pub freed: Vec<u32>,
    pub rules_added: Vec<String>,
    pub rules_removed: Vec<String>,
    pub rules_changed: Vec<String>,
    pub dst_v4: TableDiff<Ipv4Net>,
    pub src_v4: TableDiff<Ipv4Net>,
    pub dst_v6: TableDiff<Ipv6Net>,
    pub src_v6: TableDiff<Ipv6Net>,
    pub config: Config,
    /// Name of each rule id, old and new, for printing.
    names: BTreeMap<u32, String>,
}

impl Plan {
    pub fn new(compiled: &Compiled, live: &Live, now_unix: u64) -> Result<Self, ApplyError> {
        let by_name: BTreeMap<String, u32> = live
            .metas
            .iter()
            .map(|(id, m)| (decode_name(&m.name), *id))
            .collect();
        let mut taken = live.referenced_ids();
        let mut next_free = 0u32;
        let mut ids = Vec::with_capacity(compiled.rules.len());
        let mut new_ids = Vec::new();
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

        fn desired<P: LpmPrefix>(
            table: &BTreeMap<P, usize>,
            ids: &[u32],
            compiled: &Compiled,
        ) -> BTreeMap<P, RuleEntry> {
            table
                .iter()
                .map(|(p, &i)| (*p, RuleEntry::new(ids[i], compiled.rules[i].action)))
                .collect()
        }
        let t = &compiled.tables;
        use filter_common::maps as n;
        let dst_v4 = TableDiff::new(n::DST_V4, &live.dst_v4, &desired(&t.dst_v4, &ids, compiled));
        let src_v4 = TableDiff::new(n::SRC_V4, &live.src_v4, &desired(&t.src_v4, &ids, compiled));
        let dst_v6 = TableDiff::new(n::DST_V6, &live.dst_v6, &desired(&t.dst_v6, &ids, compiled));
        let src_v6 = TableDiff::new(n::SRC_V6, &live.src_v6, &desired(&t.src_v6, &ids, compiled));

        let mut config = live.config;
        config.malformed_action = compiled.malformed;
        config.policy_hash = compiled.hash;
        config.applied_unix = now_unix;
        config.generation = live.config.generation + 1;

        Ok(Self {
            metas,
            new_ids,
            freed,
            rules_added,
            rules_removed,
            rules_changed,
            dst_v4,
            src_v4,
            dst_v6,
            src_v6,
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
    }

    fn check_capacity(&self, maps: &Maps) -> Result<(), ApplyError> {
        self.dst_v4.check_capacity(&maps.dst_v4)?;
        self.src_v4.check_capacity(&maps.src_v4)?;
        self.dst_v6.check_capacity(&maps.dst_v6)?;
        self.src_v6.check_capacity(&maps.src_v6)
    }

    /// Write the plan, in the gap-free order described at the top of this module.
    pub fn execute(&self, maps: &mut Maps) -> Result<(), ApplyError> {
        self.check_capacity(maps)?;
        for id in &self.new_ids {
            maps.reset_rule_counter(*id)?;
        }
        for (id, meta) in &self.metas {
            maps.set_rule_meta(*id, meta)?;
        }
        self.dst_v4.write(&mut maps.dst_v4)?;
        self.src_v4.write(&mut maps.src_v4)?;
        self.dst_v6.write(&mut maps.dst_v6)?;
        self.src_v6.write(&mut maps.src_v6)?;
        self.dst_v4.delete(&mut maps.dst_v4)?;
        self.src_v4.delete(&mut maps.src_v4)?;
        self.dst_v6.delete(&mut maps.dst_v6)?;
        self.src_v6.delete(&mut maps.src_v6)?;
        for id in &self.freed {
            maps.set_rule_meta(*id, &RuleMeta::default())?;
        }
        maps.set_config(&self.config)?;
        Ok(())
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(&id).map_or("?", String::as_str)
    }

    /// The prefix-level diff, at most `limit` lines per table and kind.
    pub fn write_details(&self, out: &mut impl fmt::Write, limit: usize) -> fmt::Result {
        fn table<P: LpmPrefix>(
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

/// Read the live state, plan against it and write the plan: `apply` without the printing.
pub fn apply(maps: &mut Maps, compiled: &Compiled, now_unix: u64) -> Result<Plan, ApplyError> {
    let live = Live::read(maps)?;
    let plan = Plan::new(compiled, &live, now_unix)?;
    if !plan.is_noop(&live) {
        plan.execute(maps)?;
    }
    Ok(plan)
}
