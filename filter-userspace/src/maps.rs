//! Typed handles on the pinned maps, and the conversion between `ipnet` prefixes and LPM keys.
//!
//! This, `dxr` and `filter-ebpf/src/lookup.rs` are the only places that know how prefixes are
//! stored (IPv4: range tables for the program plus a hash map record; IPv6: LPM tries);
//! everything else speaks `Ipv4Net`/`Ipv6Net`.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{
        Array, DevMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
        xdp::XdpMapError,
    },
};
use filter_common::{
    Config, Counter, MAX_NOTICE_TARGETS, MAX_RULES, NoticeTarget, RULE_NAME_LEN, RuleEntry,
    RuleMeta, maps as names, stat,
};
use ipnet::{Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::pins::Pins;

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("opening pinned map {name} at {path}: {source}")]
    Open {
        name: &'static str,
        path: String,
        source: MapError,
    },
    #[error("map {name}: {source}")]
    Op {
        name: &'static str,
        source: MapError,
    },
    #[error("map {name}: {source}")]
    Xdp {
        name: &'static str,
        source: XdpMapError,
    },
    #[error("map {name}: {source}")]
    Io {
        name: &'static str,
        source: std::io::Error,
    },
}

fn op(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op { name, source }
}

/// A prefix type stored in an LPM trie keyed by its address bytes in network order.
pub trait LpmPrefix: Copy + Ord + std::fmt::Display {
    type Bytes: Pod + Copy;
    const MAX_LEN: u8;
    fn to_key(&self) -> Key<Self::Bytes>;
    fn from_key(key: &Key<Self::Bytes>) -> Option<Self>;
    fn bits(&self) -> u8;
    fn contains_bytes(&self, addr: Self::Bytes) -> bool;
}

impl LpmPrefix for Ipv4Net {
    type Bytes = [u8; 4];
    const MAX_LEN: u8 = 32;
    fn to_key(&self) -> Key<[u8; 4]> {
        Key::new(u32::from(self.prefix_len()), self.network().octets())
    }
    fn from_key(key: &Key<[u8; 4]>) -> Option<Self> {
        Ipv4Net::new(
            Ipv4Addr::from(key.data()),
            u8::try_from(key.prefix_len()).ok()?,
        )
        .ok()
    }
    fn bits(&self) -> u8 {
        self.prefix_len()
    }
    fn contains_bytes(&self, addr: [u8; 4]) -> bool {
        self.contains(&Ipv4Addr::from(addr))
    }
}

impl LpmPrefix for Ipv6Net {
    type Bytes = [u8; 16];
    const MAX_LEN: u8 = 128;
    fn to_key(&self) -> Key<[u8; 16]> {
        Key::new(u32::from(self.prefix_len()), self.network().octets())
    }
    fn from_key(key: &Key<[u8; 16]>) -> Option<Self> {
        Ipv6Net::new(
            Ipv6Addr::from(key.data()),
            u8::try_from(key.prefix_len()).ok()?,
        )
        .ok()
    }
    fn bits(&self) -> u8 {
        self.prefix_len()
    }
    fn contains_bytes(&self, addr: [u8; 16]) -> bool {
        self.contains(&Ipv6Addr::from(addr))
    }
}

/// One IPv6 address table (direction): the LPM trie the program searches.
pub struct Table<P: LpmPrefix> {
    pub name: &'static str,
    map: LpmTrie<MapData, P::Bytes, RuleEntry>,
}

impl<P: LpmPrefix> Table<P> {
    fn open(pins: &Pins, name: &'static str) -> Result<Self, MapsError> {
        let map = LpmTrie::try_from(open_map(pins, name)?).map_err(op(name))?;
        Ok(Self { name, map })
    }

    fn map_data(&self) -> &MapData {
        use aya::maps::IterableMap as _;
        self.map.map()
    }

    /// Every entry, read from the kernel.
    pub fn entries(&self) -> Result<BTreeMap<P, RuleEntry>, MapsError> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (key, value) = item.map_err(op(self.name))?;
            if let Some(p) = P::from_key(&key) {
                out.insert(p, value);
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> Result<usize, MapsError> {
        let mut n = 0;
        for key in self.map.keys() {
            key.map_err(op(self.name))?;
            n += 1;
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> Result<bool, MapsError> {
        Ok(self.map.keys().next().is_none())
    }

    /// The kernel's own longest-prefix answer, with the prefix that gave it (found by a scan:
    /// an LPM lookup returns the value only).
    pub fn longest_match(&self, addr: P::Bytes) -> Result<Option<(P, RuleEntry)>, MapsError> {
        let entry = match self.map.get(&Key::new(u32::from(P::MAX_LEN), addr), 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(op(self.name)(e)),
        };
        let prefix = self
            .entries()?
            .into_iter()
            .filter(|(p, e)| p.contains_bytes(addr) && *e == entry)
            .map(|(p, _)| p)
            .max_by_key(LpmPrefix::bits);
        Ok(prefix.map(|p| (p, entry)))
    }

    /// Insert or update every item.
    pub fn insert_all(&mut self, items: &[(P, RuleEntry)]) -> Result<(), MapsError> {
        for (p, e) in items {
            self.map.insert(&p.to_key(), e, 0).map_err(op(self.name))?;
        }
        Ok(())
    }

    /// Remove every prefix (absent ones are fine).
    pub fn remove_all(&mut self, prefixes: &[P]) -> Result<(), MapsError> {
        for p in prefixes {
            match self.map.remove(&p.to_key()) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(op(self.name)(e)),
            }
        }
        Ok(())
    }

    pub fn capacity(&self) -> Result<u32, MapsError> {
        Ok(self.map_data().info().map_err(op(self.name))?.max_entries())
    }

    /// Kernel memory charged to the map (`memlock` in fdinfo).
    pub fn memlock(&self) -> Result<u64, MapsError> {
        memlock(self.map_data()).map_err(|source| MapsError::Io {
            name: self.name,
            source,
        })
    }
}

/// An array map created with BPF_F_MMAPABLE, mapped into this process: the IPv4 range
/// tables, written with plain stores instead of a syscall per element.
pub struct MmapArray {
    pub name: &'static str,
    // Keeps the map open for as long as the mapping lives.
    _data: MapData,
    ptr: std::ptr::NonNull<u64>,
    len: usize,
    bytes: usize,
}

impl MmapArray {
    fn open(pins: &Pins, name: &'static str) -> Result<Self, MapsError> {
        let path = pins.map(name);
        let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
            name,
            path: path.display().to_string(),
            source,
        })?;
        let info = data.info().map_err(op(name))?;
        let io = |source| MapsError::Io { name, source };
        if info.value_size() != 8 {
            return Err(io(std::io::Error::other(format!(
                "value size {} where 8 was expected",
                info.value_size()
            ))));
        }
        let len = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * 8).div_ceil(page) * page;
        // SAFETY: a shared read-write mapping of a BPF_F_MMAPABLE array of `len` 8-byte
        // values (the kernel rounds the array's memory up to whole pages); the fd is valid.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io(std::io::Error::last_os_error()));
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u64>())
            .ok_or_else(|| io(std::io::Error::other("mmap returned NULL")))?;
        Ok(Self {
            name,
            _data: data,
            ptr,
            len,
            bytes,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u64] {
        // SAFETY: the mapping holds `len` u64 values for as long as self lives. The program
        // may read them concurrently; u64 stores and loads are single accesses.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u64] {
        // SAFETY: as above; `&mut self` keeps this process from aliasing it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Kernel memory charged to the map.
    pub fn memlock(&self) -> Result<u64, MapsError> {
        memlock(&self._data).map_err(|source| MapsError::Io {
            name: self.name,
            source,
        })
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// The IPv4 range tables the program searches, both copies.
pub struct V4Ranges {
    pub direct: MmapArray,
    pub dst: MmapArray,
    pub src: MmapArray,
    pub record_dst: MmapArray,
    pub record_src: MmapArray,
    pub results: Array<MapData, RuleEntry>,
    pub active: Array<MapData, u32>,
}

impl V4Ranges {
    fn open(pins: &Pins) -> Result<Self, MapsError> {
        Ok(Self {
            direct: MmapArray::open(pins, names::V4_DIRECT)?,
            dst: MmapArray::open(pins, names::V4_RANGES_DST)?,
            src: MmapArray::open(pins, names::V4_RANGES_SRC)?,
            record_dst: MmapArray::open(pins, names::V4_RECORD_DST)?,
            record_src: MmapArray::open(pins, names::V4_RECORD_SRC)?,
            results: Array::try_from(open_map(pins, names::V4_RESULTS)?)
                .map_err(op(names::V4_RESULTS))?,
            active: Array::try_from(open_map(pins, names::V4_ACTIVE)?)
                .map_err(op(names::V4_ACTIVE))?,
        })
    }

    /// The copy the program uses now.
    pub fn active(&self) -> Result<u32, MapsError> {
        Ok(self.active.get(&0, 0).map_err(op(names::V4_ACTIVE))? & 1)
    }

    /// Ranges one copy of a direction's table can hold.
    pub fn capacity(&self, direction: u8) -> usize {
        let map = if direction == filter_common::direction::SRC {
            &self.src
        } else {
            &self.dst
        };
        map.len() / 2
    }

    fn record_map(&self, direction: u8) -> &MmapArray {
        if direction == filter_common::direction::SRC {
            &self.record_src
        } else {
            &self.record_dst
        }
    }

    /// Prefixes one copy of a direction's record can hold.
    pub fn record_capacity(&self, direction: u8) -> usize {
        self.record_map(direction).len() / 2 - 1
    }

    /// The prefixes and entries the active copy was built from.
    pub fn record(&self, direction: u8) -> Result<BTreeMap<Ipv4Net, RuleEntry>, MapsError> {
        let copy = self.active()?;
        let mut entries: BTreeMap<u32, RuleEntry> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for r in self.record_slice(copy, direction) {
            let (net, len, id) = ((*r >> 32) as u32, (*r >> 24) as u8, (*r & 0xff_ffff) as u32);
            let entry = match entries.get(&id) {
                Some(e) => *e,
                None => {
                    let e = self
                        .results
                        .get(&(copy * MAX_RULES + id), 0)
                        .map_err(op(names::V4_RESULTS))?;
                    entries.insert(id, e);
                    e
                }
            };
            if let Ok(p) = Ipv4Net::new(Ipv4Addr::from(net), len) {
                out.insert(p, entry);
            }
        }
        Ok(out)
    }

    /// Prefixes in the active copy's record.
    pub fn record_len(&self, direction: u8) -> Result<usize, MapsError> {
        Ok(self.record_slice(self.active()?, direction).len())
    }

    /// The record of one copy: its prefixes, without the count slot.
    fn record_slice(&self, copy: u32, direction: u8) -> &[u64] {
        let all = self.record_map(direction).as_slice();
        let half = all.len() / 2;
        let base = copy as usize * half;
        let n = (all[base] as usize).min(half - 1);
        &all[base + 1..base + 1 + n]
    }

    /// Write one copy's record (the count last: the copy is not in use, and a reader of a
    /// half-written one sees fewer prefixes, never garbage).
    pub fn write_record(&mut self, copy: u32, direction: u8, records: &[u64]) {
        let map = if direction == filter_common::direction::SRC {
            &mut self.record_src
        } else {
            &mut self.record_dst
        };
        let all = map.as_mut_slice();
        let base = copy as usize * (all.len() / 2);
        all[base] = 0;
        all[base + 1..base + 1 + records.len()].copy_from_slice(records);
        all[base] = records.len() as u64;
    }

    /// The longest prefix in the active record holding `addr`, with its entry.
    pub fn longest_match(
        &self,
        direction: u8,
        addr: Ipv4Addr,
    ) -> Result<Option<(Ipv4Net, RuleEntry)>, MapsError> {
        Ok(self
            .record(direction)?
            .into_iter()
            .filter(|(p, _)| p.contains(&addr))
            .max_by_key(|(p, _)| p.prefix_len()))
    }
}

/// All pinned maps of one edgeblock instance.
pub struct Maps {
    pub dst_v6: Table<Ipv6Net>,
    pub src_v6: Table<Ipv6Net>,
    pub rule_stats: PerCpuArray<MapData, Counter>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub config: Array<MapData, Config>,
    pub rules: Array<MapData, RuleMeta>,
    pub notice: Array<MapData, NoticeTarget>,
    pub notice_dev: DevMap<MapData>,
    pub v4: V4Ranges,
}

fn open_map(pins: &Pins, name: &'static str) -> Result<Map, MapsError> {
    let path = pins.map(name);
    let err = |source| MapsError::Open {
        name,
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    Map::from_map_data(data).map_err(err)
}

fn memlock(map: &MapData) -> std::io::Result<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Summed per-CPU counters.
fn sum(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

/// Global counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GlobalStats {
    pub pass: CounterJson,
    pub drop: CounterJson,
    pub redirect: CounterJson,
    pub reject: CounterJson,
    pub no_match: CounterJson,
    pub non_ip: CounterJson,
    pub malformed: CounterJson,
    pub malformed_dropped: CounterJson,
    pub reject_unanswered: CounterJson,
    pub redirect_failed: CounterJson,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterJson {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Counter> for CounterJson {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

impl Maps {
    pub fn open(pins: &Pins) -> Result<Self, MapsError> {
        Ok(Self {
            dst_v6: Table::open(pins, names::DST_V6)?,
            src_v6: Table::open(pins, names::SRC_V6)?,
            rule_stats: PerCpuArray::try_from(open_map(pins, names::RULE_STATS)?)
                .map_err(op(names::RULE_STATS))?,
            stats: PerCpuArray::try_from(open_map(pins, names::STATS)?)
                .map_err(op(names::STATS))?,
            config: Array::try_from(open_map(pins, names::CONFIG)?).map_err(op(names::CONFIG))?,
            rules: Array::try_from(open_map(pins, names::RULES)?).map_err(op(names::RULES))?,
            notice: Array::try_from(open_map(pins, names::NOTICE)?).map_err(op(names::NOTICE))?,
            notice_dev: DevMap::try_from(open_map(pins, names::NOTICE_DEV)?)
                .map_err(op(names::NOTICE_DEV))?,
            v4: V4Ranges::open(pins)?,
        })
    }

    /// Every notice target slot (unused ones have ifindex 0).
    pub fn notice_targets(&self) -> Result<Vec<NoticeTarget>, MapsError> {
        (0..MAX_NOTICE_TARGETS)
            .map(|i| self.notice.get(&i, 0).map_err(op(names::NOTICE)))
            .collect()
    }

    /// Point slot `index` at a target: the devmap first, then the MACs the program reads
    /// (whose non-zero ifindex is what makes the slot usable).
    pub fn set_notice_target(&mut self, index: u32, t: &NoticeTarget) -> Result<(), MapsError> {
        if t.ifindex != 0 {
            self.notice_dev
                .set(index, t.ifindex, None, 0)
                .map_err(|source| MapsError::Xdp {
                    name: names::NOTICE_DEV,
                    source,
                })?;
        }
        self.notice.set(index, t, 0).map_err(op(names::NOTICE))
    }

    pub fn config(&self) -> Result<Config, MapsError> {
        self.config.get(&0, 0).map_err(op(names::CONFIG))
    }

    pub fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        self.config.set(0, config, 0).map_err(op(names::CONFIG))
    }

    /// Allocated rule ids and their metadata.
    pub fn rule_metas(&self) -> Result<BTreeMap<u32, RuleMeta>, MapsError> {
        let mut out = BTreeMap::new();
        for id in 0..MAX_RULES {
            let meta = self.rules.get(&id, 0).map_err(op(names::RULES))?;
            if meta.in_use != 0 {
                out.insert(id, meta);
            }
        }
        Ok(out)
    }

    pub fn set_rule_meta(&mut self, id: u32, meta: &RuleMeta) -> Result<(), MapsError> {
        self.rules.set(id, meta, 0).map_err(op(names::RULES))
    }

    pub fn rule_counter(&self, id: u32) -> Result<Counter, MapsError> {
        Ok(sum(&self
            .rule_stats
            .get(&id, 0)
            .map_err(op(names::RULE_STATS))?))
    }

    pub fn reset_rule_counter(&mut self, id: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| MapsError::Io {
            name: names::RULE_STATS,
            source,
        })?;
        let zero = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|source| {
            MapsError::Io {
                name: names::RULE_STATS,
                source,
            }
        })?;
        self.rule_stats
            .set(id, zero, 0)
            .map_err(op(names::RULE_STATS))
    }

    pub fn global_stats(&self) -> Result<GlobalStats, MapsError> {
        let get = |i: u32| -> Result<CounterJson, MapsError> {
            Ok(sum(&self.stats.get(&i, 0).map_err(op(names::STATS))?).into())
        };
        use filter_common::action;
        Ok(GlobalStats {
            pass: get(u32::from(action::PASS))?,
            drop: get(u32::from(action::DROP))?,
            redirect: get(u32::from(action::REDIRECT))?,
            reject: get(u32::from(action::REJECT))?,
            no_match: get(stat::NO_MATCH)?,
            non_ip: get(stat::NON_IP)?,
            malformed: get(stat::MALFORMED)?,
            malformed_dropped: get(stat::MALFORMED_DROPPED)?,
            reject_unanswered: get(stat::REJECT_UNANSWERED)?,
            redirect_failed: get(stat::REDIRECT_FAILED)?,
        })
    }

    /// Memory charged to every map, by name.
    pub fn memory(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        use aya::maps::IterableMap as _;
        let io = |name| move |source| MapsError::Io { name, source };
        Ok(vec![
            (self.dst_v6.name, self.dst_v6.memlock()?),
            (self.src_v6.name, self.src_v6.memlock()?),
            (
                names::RULE_STATS,
                memlock(self.rule_stats.map()).map_err(io(names::RULE_STATS))?,
            ),
            (
                names::STATS,
                memlock(self.stats.map()).map_err(io(names::STATS))?,
            ),
            (
                names::CONFIG,
                memlock(self.config.map()).map_err(io(names::CONFIG))?,
            ),
            (
                names::RULES,
                memlock(self.rules.map()).map_err(io(names::RULES))?,
            ),
            (names::V4_DIRECT, self.v4.direct.memlock()?),
            (names::V4_RANGES_DST, self.v4.dst.memlock()?),
            (names::V4_RANGES_SRC, self.v4.src.memlock()?),
            (names::V4_RECORD_DST, self.v4.record_dst.memlock()?),
            (names::V4_RECORD_SRC, self.v4.record_src.memlock()?),
        ])
    }
}

/// A rule name as stored in `RuleMeta::name` (NUL-padded, cut at `RULE_NAME_LEN`).
pub fn encode_name(name: &str) -> [u8; RULE_NAME_LEN] {
    let mut out = [0u8; RULE_NAME_LEN];
    let n = name.len().min(RULE_NAME_LEN);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

pub fn decode_name(name: &[u8; RULE_NAME_LEN]) -> String {
    let end = name.iter().position(|&b| b == 0).unwrap_or(RULE_NAME_LEN);
    String::from_utf8_lossy(&name[..end]).into_owned()
}
