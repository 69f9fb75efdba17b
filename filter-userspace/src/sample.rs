//! Sampled flows, the reading side (`edgeblock tail`; the kernel side is described in
//! `filter_common::sample`).
//!
//! A [`Reader`] holds the lease that makes the program sample at all: it writes
//! [`SampleControl`] with an expiry a few seconds ahead and renews it while it reads. A reader
//! killed with `kill -9` stops renewing, and the program stops offering packets once the lease
//! has run out. There is one ring, so there is one reader at a time: a second one is refused
//! while the first one's process lives.

use std::{
    io::Write,
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    time::Duration,
};

use aya::maps::{Array, MapData, MapError, RingBuf};
use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use filter_common::{RuleMeta, Sample, SampleControl, maps as names, sample};
use nix::time::{ClockId, clock_gettime};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use serde::Serialize;
use thiserror::Error;

use crate::{compile::action_name, maps::decode_name, pins::Pins};

/// Largest budget a reader may ask for, per rule per second.
pub const MAX_PER_SECOND: u32 = 1000;

#[derive(Debug, Error)]
pub enum SampleError {
    #[error("opening map {path}: {source}")]
    Open { path: String, source: MapError },
    #[error(
        "{path} is missing: the pinned program was loaded by an edgeblock older than sampled \
         flows, or someone removed the pin; `edgeblock detach --all --purge`, then `apply` and \
         `attach`, loads the program again with it"
    )]
    TooOld { path: String },
    #[error("{name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error(
        "another reader (pid {pid}) is taking the samples: there is one sample ring, so one \
         `edgeblock tail` at a time; stop that one first"
    )]
    Busy { pid: u32 },
    #[error("reading the clocks: {0}")]
    Clock(nix::Error),
    #[error("counting the CPUs: {0}")]
    Cpus(std::io::Error),
}

/// The lease holder and ring reader.
pub struct Reader {
    ring: RingBuf<MapData>,
    ctl: Array<MapData, SampleControl>,
    rules: Array<MapData, RuleMeta>,
    lease: SampleControl,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to date samples.
    wall_offset_ns: i128,
    cpus: u32,
}

impl Reader {
    /// Take the lease, asking for at most `per_second` samples of each rule each second
    /// (split over the CPUs, rounded up to one per CPU).
    pub fn open(pins: &Pins, per_second: u32) -> Result<Self, SampleError> {
        let map = |name: &'static str| {
            let path = pins.map(name);
            if !path.exists() && pins.prog().exists() {
                return Err(SampleError::TooOld {
                    path: path.display().to_string(),
                });
            }
            MapData::from_pin(&path).map_err(|source| SampleError::Open {
                path: path.display().to_string(),
                source,
            })
        };
        let err = |name| move |source| SampleError::Map { name, source };
        let ring = RingBuf::try_from(aya::maps::Map::RingBuf(map(names::SAMPLES)?))
            .map_err(err(names::SAMPLES))?;
        let ctl = Array::try_from(aya::maps::Map::Array(map(names::SAMPLE_CTL)?))
            .map_err(err(names::SAMPLE_CTL))?;
        let rules = Array::try_from(aya::maps::Map::Array(map(names::RULES)?))
            .map_err(err(names::RULES))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| SampleError::Cpus(e))? as u32;
        let wall_offset_ns =
            ns(ClockId::CLOCK_REALTIME)? as i128 - ns(ClockId::CLOCK_MONOTONIC)? as i128;
        let mut reader = Self {
            ring,
            ctl,
            rules,
            lease: SampleControl {
                until_ns: 0,
                per_cpu: per_second.clamp(1, MAX_PER_SECOND).div_ceil(cpus).max(1),
                owner: std::process::id(),
            },
            wall_offset_ns,
            cpus,
        };
        let current = reader.current()?;
        let live = current.until_ns > ns(ClockId::CLOCK_MONOTONIC)?;
        if live && current.owner != reader.lease.owner && process_alive(current.owner) {
            return Err(SampleError::Busy { pid: current.owner });
        }
        // What an earlier reader left unread (or what was sampled after it died, until its
        // lease ran out) is not this reader's.
        while reader.ring.next().is_some() {}
        reader.renew()?;
        Ok(reader)
    }

    /// Samples allowed per rule per second on each CPU.
    pub fn per_cpu(&self) -> u32 {
        self.lease.per_cpu
    }

    /// CPUs the budget is split over.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    fn current(&self) -> Result<SampleControl, SampleError> {
        self.ctl.get(&0, 0).map_err(|source| SampleError::Map {
            name: names::SAMPLE_CTL,
            source,
        })
    }

    /// Extend the lease by `sample::LEASE_NS` from now; call it at least every second.
    pub fn renew(&mut self) -> Result<(), SampleError> {
        self.lease.until_ns = ns(ClockId::CLOCK_MONOTONIC)? + sample::LEASE_NS;
        self.ctl
            .set(0, self.lease, 0)
            .map_err(|source| SampleError::Map {
                name: names::SAMPLE_CTL,
                source,
            })
    }

    /// Give the lease up, unless another reader has taken it over meanwhile.
    pub fn release(&mut self) -> Result<(), SampleError> {
        if self.current()?.owner == self.lease.owner {
            self.ctl
                .set(0, SampleControl::default(), 0)
                .map_err(|source| SampleError::Map {
                    name: names::SAMPLE_CTL,
                    source,
                })?;
        }
        Ok(())
    }

    /// The ring's descriptor, to wait on (readable when samples are waiting).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// The next sample waiting in the ring, decoded.
    pub fn next_sample(&mut self) -> Option<Record> {
        let raw = {
            let item = self.ring.next()?;
            decode(&item)
        };
        let raw = raw?;
        let rule = self
            .rules
            .get(&raw.rule_id, 0)
            .ok()
            .filter(|m| m.in_use != 0)
            .map(|m| decode_name(&m.name));
        let cap = usize::from(raw.cap).min(sample::BYTES);
        let data = raw.data[..cap].to_vec();
        Some(Record {
            time_unix_ns: (i128::from(raw.time_ns) + self.wall_offset_ns).max(0) as u128,
            rule_id: raw.rule_id,
            rule,
            action: action_name(raw.action),
            ifindex: raw.ifindex,
            len: raw.len,
            flow: Flow::parse(&data),
            data,
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Best effort: an expired lease is cleared by the program anyway.
        let _ = self.release();
    }
}

/// One sampled packet.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// When the program saw it, as Unix time in ns.
    pub time_unix_ns: u128,
    pub rule_id: u32,
    /// None when the rule is no longer in the policy.
    pub rule: Option<String>,
    pub action: &'static str,
    pub ifindex: u32,
    /// Length on the wire.
    pub len: u32,
    #[serde(flatten)]
    pub flow: Flow,
    /// The packet's first bytes (at most `sample::BYTES`).
    #[serde(skip)]
    pub data: Vec<u8>,
}

impl Record {
    pub fn time(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_nanosecond(self.time_unix_ns as i128)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    /// One line for a terminal: time, interface, rule, action, protocol, source and destination.
    pub fn line(&self, iface: &str) -> String {
        let rule = self.rule.as_deref().map_or_else(
            || format!("#{}", self.rule_id),
            |r| crate::escape::Escaped(r).to_string(),
        );
        let f = &self.flow;
        let endpoint = |ip: Option<IpAddr>, port: Option<u16>| match (ip, port) {
            (Some(IpAddr::V6(ip)), Some(p)) => format!("[{ip}]:{p}"),
            (Some(ip), Some(p)) => format!("{ip}:{p}"),
            (Some(ip), None) => ip.to_string(),
            (None, _) => "?".into(),
        };
        format!(
            "{} {iface} rule={rule} action={} {} {} > {} len={}",
            self.time().strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
            self.action,
            f.proto,
            endpoint(f.src, f.src_port),
            endpoint(f.dst, f.dst_port),
            self.len,
        )
    }
}

/// What the sampled headers say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// "tcp", "udp", "icmp", "ipv6-icmp", ... or the protocol number.
    pub proto: String,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

impl Flow {
    /// Decode an Ethernet frame's first bytes, as far as they go: a sample may stop inside
    /// the transport header, and the program samples malformed-looking but blocked packets too.
    pub fn parse(frame: &[u8]) -> Self {
        let mut flow = Self {
            proto: "?".into(),
            ..Self::default()
        };
        let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else {
            return flow;
        };
        let payload = match &p.net {
            Some(LaxNetSlice::Ipv4(v4)) => {
                flow.src = Some(v4.header().source_addr().into());
                flow.dst = Some(v4.header().destination_addr().into());
                v4.payload()
            }
            Some(LaxNetSlice::Ipv6(v6)) => {
                flow.src = Some(v6.header().source_addr().into());
                flow.dst = Some(v6.header().destination_addr().into());
                v6.payload()
            }
            _ => return flow,
        };
        let number = payload.ip_number;
        flow.proto = number
            .keyword_str()
            .map_or_else(|| number.0.to_string(), str::to_ascii_lowercase);
        match &p.transport {
            Some(TransportSlice::Tcp(t)) => {
                flow.src_port = Some(t.source_port());
                flow.dst_port = Some(t.destination_port());
            }
            Some(TransportSlice::Udp(u)) => {
                flow.src_port = Some(u.source_port());
                flow.dst_port = Some(u.destination_port());
            }
            // Cut inside the transport header: the ports are its first four bytes.
            _ if !payload.fragmented
                && matches!(number.0, 6 | 17)
                && payload.payload.len() >= 4 =>
            {
                let b = payload.payload;
                flow.src_port = Some(u16::from_be_bytes([b[0], b[1]]));
                flow.dst_port = Some(u16::from_be_bytes([b[2], b[3]]));
            }
            _ => {}
        }
        flow
    }
}

/// A ring entry as the program wrote it; None for an entry of another size (a program of
/// another version).
fn decode(bytes: &[u8]) -> Option<Sample> {
    if bytes.len() < size_of::<Sample>() {
        return None;
    }
    // SAFETY: Sample is plain data (aya::Pod) and `bytes` holds at least size_of::<Sample>();
    // read_unaligned copes with any alignment of the ring.
    Some(unsafe { bytes.as_ptr().cast::<Sample>().read_unaligned() })
}

/// Samples as a pcap file (Ethernet, nanosecond timestamps, snaplen `sample::BYTES`), readable
/// by tcpdump and Wireshark. Each packet is flushed, so the file can be read while it grows.
pub struct Pcap<W: Write> {
    writer: PcapWriter<W>,
}

impl<W: Write> Pcap<W> {
    pub fn new(out: W) -> Result<Self, pcap_file::PcapError> {
        let header = PcapHeader {
            snaplen: sample::BYTES as u32,
            datalink: pcap_file::DataLink::ETHERNET,
            ts_resolution: pcap_file::TsResolution::NanoSecond,
            ..PcapHeader::default()
        };
        Ok(Self {
            writer: PcapWriter::with_header(out, header)?,
        })
    }

    pub fn write(&mut self, r: &Record) -> Result<(), pcap_file::PcapError> {
        let at = Duration::from_nanos(r.time_unix_ns.min(u128::from(u64::MAX)) as u64);
        self.writer
            .write_packet(&PcapPacket::new(at, r.len, &r.data))?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.writer.into_writer()
    }
}

fn ns(clock: ClockId) -> Result<u64, SampleError> {
    let t = clock_gettime(clock).map_err(SampleError::Clock)?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Whether a process with this id exists (in our pid namespace).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame, cut at `cut` bytes.
    fn tcp4(cut: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 203, 0, 113, 7,
        ]);
        f.extend_from_slice(&[0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        f.truncate(cut);
        f
    }

    #[test]
    fn flows_are_decoded_as_far_as_the_sample_goes() {
        let full = Flow::parse(&tcp4(54));
        assert_eq!(full.src, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(full.dst, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(full.proto, "tcp");
        assert_eq!((full.src_port, full.dst_port), (Some(12345), Some(80)));
        // Cut inside the TCP header: addresses, protocol and ports.
        let cut = Flow::parse(&tcp4(40));
        assert_eq!(cut.dst, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(cut.proto, "tcp");
        assert_eq!(cut.dst_port, Some(80));
        // Cut inside the ports: no ports.
        assert_eq!(Flow::parse(&tcp4(36)).dst_port, None);
        // Not even an IP header.
        assert_eq!(Flow::parse(&tcp4(20)).src, None);
    }

    #[test]
    fn a_line_shows_time_rule_action_and_flow() {
        let data = tcp4(54);
        let r = Record {
            time_unix_ns: 1_795_000_000_120_000_000,
            rule_id: 3,
            rule: Some("hijack\u{1b}[31m".into()),
            action: "drop",
            ifindex: 2,
            len: 54,
            flow: Flow::parse(&data),
            data,
        };
        assert_eq!(
            r.line("eth1"),
            "2026-11-18T11:06:40.120000Z eth1 rule=hijack\\u{1b}[31m action=drop tcp \
             192.0.2.1:12345 > 203.0.113.7:80 len=54"
        );
    }

    #[test]
    fn short_ring_entries_are_skipped() {
        assert!(decode(&[0u8; 16]).is_none());
        let mut bytes = vec![0u8; size_of::<Sample>()];
        bytes[8] = 7;
        assert_eq!(decode(&bytes).map(|s| s.rule_id), Some(7));
    }
}
