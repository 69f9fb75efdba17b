//! `cargo xtask bootstrap`: check, and install when missing, what the eBPF build and the
//! privileged tests need. Every step checks first, so running it again changes nothing.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use edgeblock_tests::{is_bpffs, is_root};
use nix::mount::MsFlags;

use crate::cargo::{cargo, describe, run_checked};

/// Debian packages bpf-linker links against (LLVM 22, as the `llvm-22` feature expects).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian packages the tests, the demo and the benchmarks run.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "nftables",
    "xdp-tools",
    "curl",
    "chromium",
    // The fleet tests (tests/tests/fleet.rs) run a real NATS server with JetStream.
    "nats-server",
    // `edgeblock tail --pcap` is checked by reading its file back (tests/tests/tail.rs).
    "tcpdump",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where Debian's llvm-22-dev lives; bpf-linker's build finds LLVM through `LLVM_PREFIX`.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only report what is missing; install nothing (exits non-zero if anything is missing).
    #[arg(long)]
    check: bool,
}

impl Args {
    /// Check and install (what `test` and `demo` run first).
    pub fn install() -> Self {
        Args { check: false }
    }
}

/// What one check found; printed as it goes.
fn report(ok: bool, what: &str, detail: &str) {
    let mark = if ok { "ok" } else { "missing" };
    println!("  {mark:<8} {what:<26} {detail}");
}

pub fn run(args: &Args) -> Result<()> {
    println!("== bootstrap: build and test prerequisites");
    let mut missing = Vec::new();
    apt_packages(args, &mut missing)?;
    rust_src(args, &mut missing)?;
    bpf_linker(args, &mut missing)?;
    bpffs(args, &mut missing)?;
    if !missing.is_empty() {
        bail!(
            "missing: {}; run `cargo xtask bootstrap` (as root) to install them",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The error for a step that needs root, naming the command to run instead.
fn needs_root(what: &str, command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs root: run `sudo -E env \"PATH=$PATH\" cargo xtask bootstrap`, or run \
         `{command}` yourself"
    )
}

/// Whether a `dpkg-query -W -f='${Status}'` answer means installed ("install ok installed",
/// "hold ok installed"; not "deinstall ok config-files").
fn dpkg_installed(status: &str) -> bool {
    status.split_whitespace().last() == Some("installed")
}

fn apt_installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context("cannot run dpkg-query: bootstrap expects a Debian-based system")?;
    // dpkg-query exits non-zero for a package it has never heard of.
    Ok(out.status.success() && dpkg_installed(&String::from_utf8_lossy(&out.stdout)))
}

fn apt_packages(args: &Args, missing: &mut Vec<String>) -> Result<()> {
    let mut to_install = Vec::new();
    for (purpose, packages) in [("build", BUILD_PACKAGES), ("test", TEST_PACKAGES)] {
        for &package in packages {
            let installed = apt_installed(package)?;
            report(installed, &format!("apt {package}"), purpose);
            if !installed {
                to_install.push(package);
            }
        }
    }
    if to_install.is_empty() {
        return Ok(());
    }
    let install_line = format!("apt-get install -y {}", to_install.join(" "));
    if args.check {
        missing.extend(to_install.iter().map(|p| format!("apt {p}")));
        return Ok(());
    }
    if !is_root() {
        return Err(needs_root("installing Debian packages", &install_line));
    }
    // Only now: a machine with everything installed needs no network round trip.
    run_checked(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&to_install)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("`{install_line}` failed"))?;
    println!("  installed {}", to_install.join(" "));
    Ok(())
}

fn rustup(args: &[&str]) -> Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .context("cannot run rustup: install Rust with rustup (the eBPF build needs rust-src)")?;
    if !out.status.success() {
        bail!(
            "`rustup {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `rustup toolchain list` shows a nightly toolchain.
fn has_nightly(toolchains: &str) -> bool {
    toolchains.lines().any(|line| line.starts_with("nightly"))
}

/// Whether `rustup component list --installed` shows rust-src.
fn has_rust_src(components: &str) -> bool {
    components.lines().any(|line| line.trim() == "rust-src")
}

fn rust_src(args: &Args, missing: &mut Vec<String>) -> Result<()> {
    let toolchain = if has_nightly(&rustup(&["toolchain", "list"])?) {
        "nightly"
    } else {
        println!(
            "  note     no nightly toolchain: the eBPF build will use stable with \
             RUSTC_BOOTSTRAP=1 (filter-userspace/build.rs switches by itself)"
        );
        "stable"
    };
    let installed = has_rust_src(&rustup(&[
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ])?);
    report(
        installed,
        &format!("rust-src for {toolchain}"),
        "eBPF build-std",
    );
    if installed {
        return Ok(());
    }
    if args.check {
        missing.push(format!("rust-src ({toolchain})"));
        return Ok(());
    }
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        toolchain,
    ]))
}

/// The bpf-linker version line, or `None` if there is no bpf-linker on PATH.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn bpf_linker(args: &Args, missing: &mut Vec<String>) -> Result<()> {
    let found = bpf_linker_version();
    let ok = found
        .as_deref()
        .is_some_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER_VERSION));
    let detail = found.as_deref().unwrap_or("not on PATH");
    report(
        ok,
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        &format!("found: {detail}"),
    );
    if ok {
        return Ok(());
    }
    if args.check {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        bail!("{LLVM_PREFIX} has no LLVM 22 (llvm-config): install llvm-22-dev first");
    }
    // The default features want LLVM 23; Debian ships 22.
    let mut install = cargo();
    install
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX);
    println!("  building bpf-linker against LLVM 22 (a few minutes)");
    run_checked(&mut install)
        .with_context(|| format!("LLVM_PREFIX={LLVM_PREFIX} {} failed", describe(&install)))?;
    match bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => Ok(()),
        _ => bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed, but `bpf-linker` on PATH is not it: \
             put cargo's bin dir (~/.cargo/bin) first on PATH"
        ),
    }
}

fn bpffs(args: &Args, missing: &mut Vec<String>) -> Result<()> {
    let mounted = is_bpffs(Path::new(BPFFS));
    report(mounted, &format!("bpffs at {BPFFS}"), "pins");
    if mounted {
        return Ok(());
    }
    if args.check {
        missing.push(format!("bpffs at {BPFFS}"));
        return Ok(());
    }
    let command = format!("mount -t bpf bpf {BPFFS}");
    if !is_root() {
        return Err(needs_root("mounting the bpffs", &command));
    }
    println!("$ {command}");
    // Mode 0700, as systemd mounts it (the default is world-writable 1777): see
    // docs/security.md, "The bpffs mount".
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .with_context(|| format!("`{command}` failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_words() {
        assert!(dpkg_installed("install ok installed"));
        assert!(dpkg_installed("hold ok installed"));
        assert!(!dpkg_installed("deinstall ok config-files"));
        assert!(!dpkg_installed("unknown ok not-installed"));
        assert!(!dpkg_installed(""));
    }

    #[test]
    fn rustup_listings() {
        let toolchains = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                          nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(toolchains));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(has_rust_src("cargo-x86_64-unknown-linux-gnu\nrust-src\n"));
        assert!(!has_rust_src("rust-std-x86_64-unknown-linux-gnu\n"));
    }
}
