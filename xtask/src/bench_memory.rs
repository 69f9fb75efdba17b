//! What one cache miss costs on this machine: the latency of dependent random reads over
//! buffers of growing size, in 4 KiB pages as the kernel's BPF arrays are (vmalloc). The spread
//! rows of the live part are a lookup structure read at random, so this says how far any
//! structure of a given size can go here: past the size where the latency jumps (the TLB's
//! reach, then the cache's), every packet that reads a new place pays the jump.

use std::time::Instant;

use anyhow::{Result, ensure};

/// Buffer sizes measured, in KiB.
pub const SIZES_KIB: [usize; 8] = [256, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

/// Nanoseconds per read for each size of [`SIZES_KIB`]: the best of three walks of `reads`
/// steps through a random cycle over one word per cache line, each read's address the value of
/// the one before, so that no two misses overlap (a packet's lookup waits for its table entry).
pub fn latency(reads: usize) -> Result<Vec<(usize, f64)>> {
    let mut out = Vec::new();
    for kib in SIZES_KIB {
        out.push((kib, walk(kib * 1024, reads)?));
    }
    Ok(out)
}

/// An anonymous mapping in small pages, unmapped when dropped.
struct Pages {
    ptr: *mut u64,
    bytes: usize,
}

impl Pages {
    fn new(bytes: usize) -> Result<Self> {
        // SAFETY: an anonymous private mapping; no file, no fixed address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        ensure!(
            ptr != libc::MAP_FAILED,
            "mmap of {bytes} bytes: {}",
            std::io::Error::last_os_error()
        );
        // Small pages like the kernel's vmalloc'd maps: transparent huge pages would reach
        // further with the same TLB. Advice only; ignoring its result loses nothing but that.
        // SAFETY: the range just mapped.
        unsafe { libc::madvise(ptr, bytes, libc::MADV_NOHUGEPAGE) };
        Ok(Self {
            ptr: ptr.cast(),
            bytes,
        })
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `bytes` long, readable and writable, zero-filled, and only
        // borrowed through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes / 8) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

fn walk(bytes: usize, reads: usize) -> Result<f64> {
    let mut pages = Pages::new(bytes)?;
    let words = pages.words();
    let lines = bytes / 64;
    // A random cyclic order of the lines (Sattolo's shuffle), each line's first word the index
    // of the next line's.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = super::bench_prefixes::Rng::new(lines as u64);
    for i in (1..lines).rev() {
        let j = rng.below(i as u64) as usize;
        order.swap(i, j);
    }
    for i in 0..lines {
        words[order[i] * 8] = (order[(i + 1) % lines] * 8) as u64;
    }
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        let mut at = 0usize;
        for _ in 0..reads {
            at = words[at] as usize;
        }
        std::hint::black_box(at);
        best = best.min(start.elapsed().as_nanos() as f64 / reads as f64);
    }
    Ok(best)
}
