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
    maps::{Array, DevMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, xdp::XdpMapError},
};
use filter_common::{
    Chunk, Config, Counter, MAX_NOTICE_TARGETS, MAX_RULES, NoticeTarget, RULE_NAME_LEN, Range6,
    Region, RuleEntry, RuleMeta, maps as names, stat,
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

/// An array map created with BPF_F_MMAPABLE, mapped into this process: the range tables and
/// their records, written with plain stores instead of a syscall per element.
pub struct MmapArray<T: Pod> {
    pub name: &'static str,
    // Keeps the map open for as long as the mapping lives.
    data: MapData,
    ptr: std::ptr::NonNull<T>,
    len: usize,
    bytes: usize,
}

impl<T: Pod> MmapArray<T> {
    fn open(pins: &Pins, name: &'static str) -> Result<Self, MapsError> {
        let path = pins.map(name);
        let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
            name,
            path: path.display().to_string(),
            source,
        })?;
        let info = data.info().map_err(op(name))?;
        let io = |source| MapsError::Io { name, source };
        // An array's elements are value_size rounded up to 8 bytes apart; every type mapped
        // here is a multiple of 8 already.
        if info.value_size() as usize != size_of::<T>() || !size_of::<T>().is_multiple_of(8) {
            return Err(io(std::io::Error::other(format!(
                "value size {} where {} was expected",
                info.value_size(),
                size_of::<T>()
            ))));
        }
        let len = info.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a shared read-write mapping of a BPF_F_MMAPABLE array of `len` values of
        // `T` (the kernel rounds the array's memory up to whole pages); the fd is valid.
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
        let ptr = std::ptr::NonNull::new(ptr.cast::<T>())
            .ok_or_else(|| io(std::io::Error::other("mmap returned NULL")))?;
        Ok(Self {
            name,
            data,
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

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping holds `len` values for as long as self lives; Pod values are
        // valid for any bytes the program or another process may have written.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above; `&mut self` keeps this process from aliasing it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Kernel memory charged to the map.
    pub fn memlock(&self) -> Result<u64, MapsError> {
        memlock(&self.data).map_err(|source| MapsError::Io {
            name: self.name,
            source,
        })
    }
}

impl<T: Pod> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// An address family's range table and record encodings.
pub trait Family {
    type Net: crate::dxr::Span + std::fmt::Display;
    /// A direct-table entry as the program's map holds it.
    type Direct: Pod;
    /// A range as the program's map holds it.
    type Range: Pod;
    /// A record entry (`network`, `len`, `rule id`) as userspace stores it.
    type Record: Pod;
    const RANGES_DST: &'static str;
    const RANGES_SRC: &'static str;
    const DIRECT: &'static str;
    /// The palette map of the inline chunks, for a family that has them.
    const PALETTE: Option<&'static str>;
    /// The index map of a family whose direct tables store only some chunks (`dxr::index`).
    const INDEX: Option<&'static str>;
    /// The line map of a family whose chunks of a few ranges may be read as one line
    /// (`dxr::line`).
    const LINES: Option<&'static str>;
    const RECORD_DST: &'static str;
    const RECORD_SRC: &'static str;
    /// Entries of one direct table.
    const CHUNKS: usize;
    /// Halvings the program's search makes: no chunk may hold more than 2^this ranges.
    const SEARCH_STEPS: u32;
    fn encode(table: &crate::dxr::Packed) -> Vec<Self::Range>;
    /// A direct entry as the map holds it, a slice's first index moved by `base` (the copy's
    /// start in the range map).
    fn direct(chunk: &Chunk, base: u64) -> Self::Direct;
    /// The chunk a direct entry holds, a slice's first index relative to the copy again.
    fn undirect(d: &Self::Direct, base: u64) -> Chunk;
    /// A range's first address and result.
    fn unrange(r: &Self::Range) -> (u128, u32);
    fn record(net: &Self::Net, rule_id: u32) -> Self::Record;
    fn unrecord(r: &Self::Record) -> Option<(Self::Net, u32)>;
    fn contains(net: &Self::Net, addr: std::net::IpAddr) -> bool;
    fn bits(net: &Self::Net) -> u8;
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Net = Ipv4Net;
    type Direct = Chunk;
    type Range = u64;
    type Record = u64;
    const RANGES_DST: &'static str = names::V4_RANGES_DST;
    const RANGES_SRC: &'static str = names::V4_RANGES_SRC;
    const DIRECT: &'static str = names::V4_DIRECT;
    const PALETTE: Option<&'static str> = Some(names::V4_PALETTE);
    const INDEX: Option<&'static str> = Some(names::V4_INDEX);
    const LINES: Option<&'static str> = None;
    const RECORD_DST: &'static str = names::V4_RECORD_DST;
    const RECORD_SRC: &'static str = names::V4_RECORD_SRC;
    const CHUNKS: usize = filter_common::dxr::V4_CHUNKS as usize;
    const SEARCH_STEPS: u32 = filter_common::dxr::SEARCH_STEPS;
    fn encode(table: &crate::dxr::Packed) -> Vec<u64> {
        table.encode_v4()
    }
    fn direct(chunk: &Chunk, base: u64) -> Chunk {
        if chunk.kind() == Chunk::SLICE {
            Chunk {
                hi: chunk.hi + base,
                ..*chunk
            }
        } else {
            *chunk
        }
    }
    fn undirect(d: &Chunk, base: u64) -> Chunk {
        if d.kind() == Chunk::SLICE {
            Chunk {
                hi: d.hi.wrapping_sub(base),
                ..*d
            }
        } else {
            *d
        }
    }
    fn unrange(r: &u64) -> (u128, u32) {
        (u128::from((r >> 32) as u32), *r as u32)
    }
    fn record(net: &Ipv4Net, rule_id: u32) -> u64 {
        filter_common::dxr::record(u32::from(net.network()), net.prefix_len(), rule_id)
    }
    fn unrecord(r: &u64) -> Option<(Ipv4Net, u32)> {
        let net = Ipv4Net::new(Ipv4Addr::from((r >> 32) as u32), (r >> 24) as u8).ok()?;
        Some((net, (r & 0xff_ffff) as u32))
    }
    fn contains(net: &Ipv4Net, addr: std::net::IpAddr) -> bool {
        matches!(addr, std::net::IpAddr::V4(a) if net.contains(&a))
    }
    fn bits(net: &Ipv4Net) -> u8 {
        net.prefix_len()
    }
}

impl Family for V6 {
    type Net = Ipv6Net;
    type Direct = u64;
    type Range = Range6;
    type Record = Range6;
    const RANGES_DST: &'static str = names::V6_RANGES_DST;
    const RANGES_SRC: &'static str = names::V6_RANGES_SRC;
    const DIRECT: &'static str = names::V6_DIRECT;
    const PALETTE: Option<&'static str> = Some(names::V6_PALETTE);
    const INDEX: Option<&'static str> = None;
    const LINES: Option<&'static str> = Some(names::V6_LINES);
    const RECORD_DST: &'static str = names::V6_RECORD_DST;
    const RECORD_SRC: &'static str = names::V6_RECORD_SRC;
    const CHUNKS: usize = filter_common::dxr::V6_CHUNKS as usize;
    const SEARCH_STEPS: u32 = filter_common::dxr::V6_SEARCH_STEPS;
    fn encode(table: &crate::dxr::Packed) -> Vec<Range6> {
        table.encode_v6()
    }
    /// A leaf, a slice, or an inline chunk or line, whose `Chunk::hi` is its entry
    /// (`dxr::v6_inline`, `dxr::v6_line`).
    fn direct(chunk: &Chunk, base: u64) -> u64 {
        match chunk.kind() {
            Chunk::LEAF => filter_common::dxr::leaf(chunk.hi as u32),
            Chunk::INLINE | Chunk::LINE => chunk.hi,
            _ => filter_common::dxr::slice((chunk.hi + base) as u32, (chunk.lo >> 32) as u32),
        }
    }
    fn undirect(d: &u64, base: u64) -> Chunk {
        if d & filter_common::dxr::LEAF != 0 {
            Chunk::leaf(*d as u32)
        } else if d & filter_common::dxr::V6_INLINE != 0 {
            Chunk {
                lo: Chunk::INLINE,
                hi: *d,
            }
        } else if d & filter_common::dxr::V6_LINE != 0 {
            Chunk {
                lo: Chunk::LINE,
                hi: *d,
            }
        } else {
            Chunk::slice(u64::from(*d as u32).wrapping_sub(base), (d >> 32) as u32)
        }
    }
    fn unrange(r: &Range6) -> (u128, u32) {
        (
            (u128::from(r.start_hi) << 64) | u128::from(r.start_lo),
            r.value as u32,
        )
    }
    fn record(net: &Ipv6Net, rule_id: u32) -> Range6 {
        let a = u128::from(net.network());
        Range6 {
            start_hi: (a >> 64) as u64,
            start_lo: a as u64,
            value: (u64::from(net.prefix_len()) << 24) | u64::from(rule_id & 0xff_ffff),
        }
    }
    fn unrecord(r: &Range6) -> Option<(Ipv6Net, u32)> {
        let a = (u128::from(r.start_hi) << 64) | u128::from(r.start_lo);
        let net = Ipv6Net::new(Ipv6Addr::from(a), (r.value >> 24) as u8).ok()?;
        Some((net, (r.value & 0xff_ffff) as u32))
    }
    fn contains(net: &Ipv6Net, addr: std::net::IpAddr) -> bool {
        matches!(addr, std::net::IpAddr::V6(a) if net.contains(&a))
    }
    fn bits(net: &Ipv6Net) -> u8 {
        net.prefix_len()
    }
}

/// One family's range tables, both directions and both copies, with their records.
pub struct Ranges<F: Family> {
    pub direct: MmapArray<F::Direct>,
    /// u64 values: an mmapable array's elements are 8 bytes apart.
    pub palette: Option<MmapArray<u64>>,
    pub index: Option<MmapArray<Region>>,
    /// `dxr::V6_LINES` lines per table, for a family that has them.
    pub lines: Option<MmapArray<[u64; filter_common::dxr::LINE_RANGES]>>,
    /// `write` indexes a table when at most this many of its chunks are stored
    /// (`dxr::INDEXED_MAX`; 0: never). Changing it changes only how later writes lay tables
    /// out, never what they match: the tests apply policies both ways.
    pub index_max: usize,
    pub dst: MmapArray<F::Range>,
    pub src: MmapArray<F::Range>,
    pub record_dst: MmapArray<F::Record>,
    pub record_src: MmapArray<F::Record>,
}

impl<F: Family> Ranges<F> {
    fn open(pins: &Pins) -> Result<Self, MapsError> {
        Ok(Self {
            direct: MmapArray::open(pins, F::DIRECT)?,
            palette: F::PALETTE
                .map(|name| MmapArray::open(pins, name))
                .transpose()?,
            index: F::INDEX
                .map(|name| MmapArray::open(pins, name))
                .transpose()?,
            lines: F::LINES
                .map(|name| MmapArray::open(pins, name))
                .transpose()?,
            index_max: filter_common::dxr::INDEXED_MAX as usize,
            dst: MmapArray::open(pins, F::RANGES_DST)?,
            src: MmapArray::open(pins, F::RANGES_SRC)?,
            record_dst: MmapArray::open(pins, F::RECORD_DST)?,
            record_src: MmapArray::open(pins, F::RECORD_SRC)?,
        })
    }

    fn ranges(&mut self, direction: u8) -> &mut MmapArray<F::Range> {
        if direction == filter_common::direction::SRC {
            &mut self.src
        } else {
            &mut self.dst
        }
    }

    fn record_map(&self, direction: u8) -> &MmapArray<F::Record> {
        if direction == filter_common::direction::SRC {
            &self.record_src
        } else {
            &self.record_dst
        }
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

    /// Prefixes one copy of a direction's record can hold (slot 0 is the count).
    pub fn record_capacity(&self, direction: u8) -> usize {
        self.record_map(direction).len() / 2 - 1
    }

    /// One copy's record, without the count slot.
    fn record_slice(&self, copy: u32, direction: u8) -> &[F::Record] {
        let all = self.record_map(direction).as_slice();
        let half = all.len() / 2;
        let base = copy as usize * half;
        let n = count_of::<F>(&all[base]).min(half - 1);
        &all[base + 1..base + 1 + n]
    }

    /// Write one direction of the copy the program does not use: the record first (its count
    /// last), then, unless it is empty, the ranges and the palette, then the direct table
    /// pointing at them: every chunk, or for a family with an index and a table where at most
    /// `index_max` chunks are more than their region's leaf, those chunks and the index.
    /// Returns whether the table is indexed (`EB_ACTIVE` must say so).
    pub fn write(
        &mut self,
        copy: u32,
        direction: u8,
        table: &crate::dxr::Packed,
        record: &[F::Record],
    ) -> bool {
        let all = if direction == filter_common::direction::SRC {
            self.record_src.as_mut_slice()
        } else {
            self.record_dst.as_mut_slice()
        };
        let base = copy as usize * (all.len() / 2);
        all[base] = with_count::<F>(0);
        all[base + 1..base + 1 + record.len()].copy_from_slice(record);
        all[base] = with_count::<F>(record.len());
        if record.is_empty() {
            // `apply` leaves a table without prefixes out of `EB_ACTIVE`, and the program then
            // never reads it: writing its table of leaves (8 or 16 MiB) would only slow every
            // apply down.
            return false;
        }
        let cap = self.capacity(direction);
        let base = copy as usize * cap;
        let encoded = F::encode(table);
        self.ranges(direction).as_mut_slice()[base..base + encoded.len()].copy_from_slice(&encoded);
        let table_index = (copy * 2 + u32::from(direction)) as usize;
        if let Some(palette) = &mut self.palette {
            let width = filter_common::dxr::PALETTE as usize;
            let slots = &mut palette.as_mut_slice()[table_index * width..][..width];
            slots.fill(0);
            for (slot, &result) in slots.iter_mut().zip(&table.palette) {
                *slot = u64::from(result);
            }
        }
        let at = table_index * F::CHUNKS;
        let slots = &mut self.direct.as_mut_slice()[at..at + F::CHUNKS];
        // A slice's first index is relative to the copy: the program indexes the whole map.
        let mut put = |chunks: &[Chunk]| {
            for (slot, chunk) in slots.iter_mut().zip(chunks) {
                *slot = F::direct(chunk, base as u64);
            }
        };
        // Only a table with few chunks that are more than a leaf can be indexed.
        let max = self.index_max;
        let sparse = || {
            let more = table.direct.iter().filter(|c| c.kind() != Chunk::LEAF);
            max > 0 && more.count() <= max
        };
        match &mut self.index {
            Some(index) if sparse() => {
                let (regions, stored) = crate::dxr::index(&table.direct);
                if stored.len() > max {
                    put(&table.direct);
                    return false;
                }
                put(&stored);
                let n = regions.len();
                index.as_mut_slice()[table_index * n..][..n].copy_from_slice(&regions);
                true
            }
            _ => {
                put(&table.direct);
                if let Some(lines) = &mut self.lines {
                    Self::lines(table, slots, lines, table_index, base as u64);
                }
                false
            }
        }
    }

    /// Turn the slices of `table` that can be lines (`dxr::line`) into lines, in address order
    /// while the table's `dxr::V6_LINES` last: their entries in `slots` (the table's direct
    /// entries as `write` put them) and their lines in the table's part of `lines`. Their
    /// ranges stay where `write` put them, unread.
    fn lines(
        table: &crate::dxr::Packed,
        slots: &mut [F::Direct],
        lines: &mut MmapArray<[u64; filter_common::dxr::LINE_RANGES]>,
        table_index: usize,
        base: u64,
    ) {
        let per = filter_common::dxr::V6_LINES as usize;
        let lines = &mut lines.as_mut_slice()[table_index * per..][..per];
        let mut n = 0;
        for (slot, chunk) in slots.iter_mut().zip(&table.direct) {
            if n == per {
                break;
            }
            if chunk.kind() != Chunk::SLICE {
                continue;
            }
            let (first, count) = (chunk.hi as usize, (chunk.lo >> 32) as usize);
            let range = first..first + count;
            let Some((line, indexes)) = crate::dxr::line(
                &table.starts[range.clone()],
                &table.results[range],
                &table.palette,
            ) else {
                continue;
            };
            lines[n] = line;
            let entry = filter_common::dxr::v6_line(n as u32, indexes);
            *slot = F::direct(
                &Chunk {
                    lo: Chunk::LINE,
                    hi: entry,
                },
                base,
            );
            n += 1;
        }
    }

    /// One direction's table in copy `copy`, as `write` left it (`indexed`: what it
    /// returned): what `apply` patches when a change is small (`dxr::patch`). Its ranges are
    /// gathered chunk by chunk, so the result is a table of its own whatever the layout of the
    /// map. `None` when a slice or the index points outside the map (not a table `write` made).
    pub fn read(&self, copy: u32, direction: u8, indexed: bool) -> Option<crate::dxr::Packed> {
        let base = copy as u64 * self.capacity(direction) as u64;
        let table_index = (copy * 2 + u32::from(direction)) as usize;
        let all = if direction == filter_common::direction::SRC {
            self.src.as_slice()
        } else {
            self.dst.as_slice()
        };
        let at = table_index * F::CHUNKS;
        let slots = &self.direct.as_slice()[at..at + F::CHUNKS];
        let chunks = match &self.index {
            Some(index) if indexed => {
                let n = F::CHUNKS >> filter_common::dxr::REGION_BITS;
                let regions = index.as_slice().get(table_index * n..)?.get(..n)?;
                crate::dxr::unindex(regions, |i| slots.get(i).map(|d| F::undirect(d, base)))?
            }
            _ => slots.iter().map(|d| F::undirect(d, base)).collect(),
        };
        // The palette's results, then zeros: a second zero is a slot never filled.
        let mut palette: Vec<u32> = Vec::new();
        if let Some(slots) = &self.palette {
            let width = filter_common::dxr::PALETTE as usize;
            for &r in &slots.as_slice()[table_index * width..][..width] {
                if palette.contains(&(r as u32)) {
                    break;
                }
                palette.push(r as u32);
            }
        }
        let chunk_bits =
            <F::Net as crate::dxr::Span>::BITS - <F::Net as crate::dxr::Span>::DIRECT_BITS;
        let (mut starts, mut results) = (Vec::new(), Vec::new());
        let mut direct = Vec::with_capacity(F::CHUNKS);
        for (c, chunk) in chunks.into_iter().enumerate() {
            if chunk.kind() == Chunk::LINE {
                let per = filter_common::dxr::V6_LINES as usize;
                let at = table_index * per + filter_common::dxr::v6_line_index(chunk.hi) as usize;
                let line = self.lines.as_ref()?.as_slice().get(at)?;
                let first = (c as u128) << chunk_bits;
                let (s, r) = crate::dxr::unline(first, line, chunk.hi as u32, &palette)?;
                direct.push(Chunk::slice(starts.len() as u64, s.len() as u32));
                starts.extend(s);
                results.extend(r);
                continue;
            }
            if chunk.kind() != Chunk::SLICE {
                direct.push(chunk);
                continue;
            }
            let first = chunk.hi.wrapping_add(base) as usize;
            let count = (chunk.lo >> 32) as usize;
            direct.push(Chunk::slice(starts.len() as u64, count as u32));
            for r in all.get(first..first.checked_add(count)?)? {
                let (start, result) = F::unrange(r);
                starts.push(start);
                results.push(result);
            }
        }
        Some(crate::dxr::Packed::from_parts(
            chunk_bits, direct, palette, starts, results,
        ))
    }

    fn memory(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        let mut all = vec![
            (self.direct.name, self.direct.memlock()?),
            (self.dst.name, self.dst.memlock()?),
            (self.src.name, self.src.memlock()?),
            (self.record_dst.name, self.record_dst.memlock()?),
            (self.record_src.name, self.record_src.memlock()?),
        ];
        if let Some(palette) = &self.palette {
            all.push((palette.name, palette.memlock()?));
        }
        if let Some(index) = &self.index {
            all.push((index.name, index.memlock()?));
        }
        if let Some(lines) = &self.lines {
            all.push((lines.name, lines.memlock()?));
        }
        Ok(all)
    }
}

/// The count in a record's slot 0: the first 8 bytes of the entry.
fn count_of<F: Family>(slot: &F::Record) -> usize {
    // SAFETY: every record type is Pod and at least 8 bytes long (checked when mapped).
    let first = unsafe { std::ptr::from_ref(slot).cast::<u64>().read_unaligned() };
    first as usize
}

fn with_count<F: Family>(n: usize) -> F::Record {
    // SAFETY: Pod: all-zero is a valid value.
    let mut r: F::Record = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the first 8 bytes hold the count.
    unsafe {
        std::ptr::from_mut(&mut r)
            .cast::<u64>()
            .write_unaligned(n as u64)
    };
    r
}

/// All pinned maps of one edgeblock instance.
pub struct Maps {
    pub v4: Ranges<V4>,
    pub v6: Ranges<V6>,
    /// Per copy, the entry of every rule id (both families).
    pub results: Array<MapData, RuleEntry>,
    /// Entry 0: the copy the program uses.
    pub active: Array<MapData, u32>,
    pub rule_stats: PerCpuArray<MapData, Counter>,
    pub stats: PerCpuArray<MapData, Counter>,
    pub config: Array<MapData, Config>,
    pub rules: Array<MapData, RuleMeta>,
    pub notice: Array<MapData, NoticeTarget>,
    pub notice_dev: DevMap<MapData>,
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
    /// What shadow rules would have done, by action.
    pub shadow_pass: CounterJson,
    pub shadow_drop: CounterJson,
    pub shadow_redirect: CounterJson,
    pub shadow_reject: CounterJson,
    /// Blocked packets copied to the sample ring (`edgeblock tail`), and samples lost to a
    /// full ring.
    pub sampled: CounterJson,
    pub sample_lost: CounterJson,
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
            v4: Ranges::open(pins)?,
            v6: Ranges::open(pins)?,
            results: Array::try_from(open_map(pins, names::RESULTS)?)
                .map_err(op(names::RESULTS))?,
            active: Array::try_from(open_map(pins, names::ACTIVE)?).map_err(op(names::ACTIVE))?,
            rule_stats: PerCpuArray::try_from(open_map(pins, names::RULE_STATS)?)
                .map_err(op(names::RULE_STATS))?,
            stats: PerCpuArray::try_from(open_map(pins, names::STATS)?)
                .map_err(op(names::STATS))?,
            config: Array::try_from(open_map(pins, names::CONFIG)?).map_err(op(names::CONFIG))?,
            rules: Array::try_from(open_map(pins, names::RULES)?).map_err(op(names::RULES))?,
            notice: Array::try_from(open_map(pins, names::NOTICE)?).map_err(op(names::NOTICE))?,
            notice_dev: DevMap::try_from(open_map(pins, names::NOTICE_DEV)?)
                .map_err(op(names::NOTICE_DEV))?,
        })
    }

    /// The copy of the tables the program uses now.
    pub fn active(&self) -> Result<u32, MapsError> {
        Ok(self.active_word()? & filter_common::active::COPY)
    }

    /// `EB_ACTIVE` whole: the copy in use and which of its tables hold prefixes.
    pub fn active_word(&self) -> Result<u32, MapsError> {
        self.active.get(&0, 0).map_err(op(names::ACTIVE))
    }

    /// The prefixes and entries of a direction the active copy was built from, in ascending
    /// order of prefix, each once.
    pub fn record<F: Family>(
        &self,
        ranges: &Ranges<F>,
        direction: u8,
    ) -> Result<Vec<(F::Net, RuleEntry)>, MapsError> {
        let copy = self.active()?;
        // Each rule's entry read once, looked up by id for every prefix of the rule.
        let mut entries: Vec<Option<RuleEntry>> = vec![None; MAX_RULES as usize];
        let mut out = Vec::new();
        for r in ranges.record_slice(copy, direction) {
            let Some((net, id)) = F::unrecord(r) else {
                continue;
            };
            let entry = match entries.get(id as usize).copied().flatten() {
                Some(e) => e,
                None => {
                    let e = self
                        .results
                        .get(&(copy * MAX_RULES + id), 0)
                        .map_err(op(names::RESULTS))?;
                    if let Some(slot) = entries.get_mut(id as usize) {
                        *slot = Some(e);
                    }
                    e
                }
            };
            out.push((net, entry));
        }
        // Written in ascending order; a record that is not (a fault, another writer) is put
        // in order here, as the tree this used to be collected into did.
        if !out.is_sorted_by(|a, b| a.0 < b.0) {
            out.sort_by_key(|e| e.0);
            out.dedup_by_key(|e| e.0);
        }
        Ok(out)
    }

    /// Prefixes of a direction in the active copy.
    pub fn record_len<F: Family>(
        &self,
        ranges: &Ranges<F>,
        direction: u8,
    ) -> Result<usize, MapsError> {
        Ok(ranges.record_slice(self.active()?, direction).len())
    }

    /// The longest prefix of a direction holding `addr` in the active copy, with its entry.
    pub fn longest_match<F: Family>(
        &self,
        ranges: &Ranges<F>,
        direction: u8,
        addr: std::net::IpAddr,
    ) -> Result<Option<(F::Net, RuleEntry)>, MapsError> {
        Ok(self
            .record(ranges, direction)?
            .into_iter()
            .filter(|(p, _)| F::contains(p, addr))
            .max_by_key(|(p, _)| F::bits(p)))
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
            shadow_pass: get(stat::SHADOW + u32::from(action::PASS))?,
            shadow_drop: get(stat::SHADOW + u32::from(action::DROP))?,
            shadow_redirect: get(stat::SHADOW + u32::from(action::REDIRECT))?,
            shadow_reject: get(stat::SHADOW + u32::from(action::REJECT))?,
            sampled: get(stat::SAMPLED)?,
            sample_lost: get(stat::SAMPLE_LOST)?,
        })
    }

    /// Memory charged to every map, by name.
    pub fn memory(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        use aya::maps::IterableMap as _;
        let mut out = Vec::new();
        for (name, map) in [
            (names::RULE_STATS, self.rule_stats.map()),
            (names::STATS, self.stats.map()),
            (names::CONFIG, self.config.map()),
            (names::RULES, self.rules.map()),
            (names::RESULTS, self.results.map()),
            (names::NOTICE, self.notice.map()),
        ] {
            out.push((
                name,
                memlock(map).map_err(|source| MapsError::Io { name, source })?,
            ));
        }
        out.extend(self.v4.memory()?);
        out.extend(self.v6.memory()?);
        Ok(out)
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
