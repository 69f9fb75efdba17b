//! edgeblock's userspace library: policy parsing and validation (`policy`), compilation to map
//! contents (`compile`), lockout protection (`lockout`), the pinned program and maps (`pins`,
//! `loader`, `maps`), applying a policy without a gap (`apply`), the invocation lock (`lock`),
//! escaping what files and arguments put into messages (`escape`), which capabilities are
//! missing when BPF work fails (`privileges`), the reference matcher that the differential
//! tests hold the XDP program to (`reference`), the hash-chained audit trail (`audit`),
//! signed policies (`signing`) and sampled flows (`sample`).

pub mod apply;
pub mod audit;
pub mod compile;
pub mod daemon;
pub mod dxr;
pub mod enforce;
pub mod escape;
pub mod fleet;
pub mod loader;
pub mod lock;
pub mod lockout;
pub mod maps;
pub mod neigh;
pub mod notice;
pub mod pins;
pub mod policy;
pub mod privileges;
pub mod reference;
pub mod runtime;
pub mod sample;
pub mod signing;
pub mod snapshot;

/// Where edgeblock keeps what must survive a reboot: runtime blocks, the audit log, the last good
/// policy. `--data-dir` / `EDGEBLOCK_DATA_DIR` override it.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/edgeblock";
