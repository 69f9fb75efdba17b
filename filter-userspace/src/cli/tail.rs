use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use edgeblock::{
    escape,
    maps::decode_name,
    privileges::Need,
    sample::{MAX_PER_SECOND, Pcap, Reader},
};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
};

use super::{Global, privileged};

/// Print a sample of the packets the filter blocks, live: time, interface, rule, action,
/// protocol, source and destination.
///
/// The program copies at most --rate packets of each rule each second into a ring (the
/// budget is split over the CPUs), and only while a reader is here: with no `tail` running
/// nothing is sampled. One reader at a time. Stops at Ctrl-C, SIGTERM or after --count
/// samples.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this rule's packets.
    #[arg(long, value_name = "NAME")]
    rule: Option<String>,
    /// Samples per rule per second, at most (1 to 1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PER_SECOND)))]
    rate: u32,
    /// Also write the samples (their first 128 bytes) to this pcap file, for tcpdump -r or
    /// Wireshark.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// Stop after this many samples.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// One JSON object per sample instead of text.
    #[arg(long)]
    json: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(g: &Global, args: Args) -> anyhow::Result<()> {
    let filter = g.open("tail")?;
    let rule_id = match &args.rule {
        None => None,
        Some(name) => {
            let metas = filter.maps.rule_metas()?;
            let id = metas
                .iter()
                .find(|(_, m)| decode_name(&m.name) == *name)
                .map(|(id, _)| *id);
            match id {
                Some(id) => Some(id),
                None => bail!(
                    "no rule named {:?} in the applied policy; `edgeblock stats` lists the rules",
                    name
                ),
            }
        }
    };
    drop(filter);
    let mut pcap = match &args.pcap {
        None => None,
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", escape::path(path)))?;
            // Unbuffered: each sample is written as it comes, so the file can be read while
            // it grows (a few syscalls per sample, at most --rate per rule per second).
            Some((
                Pcap::new(file).with_context(|| format!("writing {}", escape::path(path)))?,
                path,
            ))
        }
    };
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &handler) }.context("installing the signal handlers")?;
    }
    let mut reader =
        Reader::open(&g.pins(), args.rate).map_err(|e| privileged("tail", Need::Read, e.into()))?;
    eprintln!(
        "sampling at most {} packets per rule per second on each of {} CPUs; Ctrl-C to stop",
        reader.per_cpu(),
        reader.cpus()
    );
    let mut names = HashMap::new();
    let mut shown = 0u64;
    let mut renewed = Instant::now();
    let stdout = std::io::stdout();
    'read: while !STOP.load(Ordering::Relaxed) {
        if renewed.elapsed() >= Duration::from_secs(1) {
            reader.renew().context("renewing the sample lease")?;
            renewed = Instant::now();
        }
        {
            let fd = reader.fd();
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(250u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("waiting for samples"),
            }
        }
        while let Some(record) = reader.next_sample() {
            if rule_id.is_some_and(|id| id != record.rule_id) {
                continue;
            }
            let mut out = stdout.lock();
            if args.json {
                serde_json::to_writer(&mut out, &record)?;
                writeln!(out)?;
            } else {
                let iface = names
                    .entry(record.ifindex)
                    .or_insert_with(|| iface_name(record.ifindex));
                writeln!(out, "{}", record.line(iface))?;
            }
            out.flush()?;
            if let Some((pcap, path)) = &mut pcap {
                pcap.write(&record)
                    .with_context(|| format!("writing {}", escape::path(path)))?;
            }
            shown += 1;
            if args.count.is_some_and(|n| shown >= n) {
                break 'read;
            }
        }
    }
    reader.release().context("releasing the sample lease")?;
    if let Some((pcap, path)) = pcap {
        pcap.into_inner()
            .sync_all()
            .with_context(|| format!("writing {}", escape::path(path)))?;
    }
    Ok(())
}

/// The interface's name, or its index when it has none (any more).
fn iface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    escape::Escaped(&name.to_string_lossy()).to_string()
}
