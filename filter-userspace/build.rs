//! Builds the XDP program (filter-ebpf) for bpfel-unknown-none with aya-build; the object lands
//! in OUT_DIR and is embedded by `src/loader.rs`.
//!
//! Toolchain: the nightly when rustup has one; otherwise the stable toolchain with
//! RUSTC_BOOTSTRAP=1 (build-std needs it). `cargo xtask bootstrap` installs rust-src for
//! whichever is used, and bpf-linker.

use std::process::Command;

use aya_build::{Package, Toolchain};

fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=EDGEBLOCK_EBPF_TOOLCHAIN");
    let custom = std::env::var("EDGEBLOCK_EBPF_TOOLCHAIN").ok();
    let toolchain = match custom.as_deref() {
        Some(t) => Toolchain::Custom(t),
        None if has_nightly() => Toolchain::Nightly,
        None => {
            // SAFETY: build scripts are single-threaded; aya-build reads the variable and
            // passes it on to the cargo it spawns.
            unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
            Toolchain::Custom("stable")
        }
    };
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../filter-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "filter-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
}
