//! Code generation flags for the XDP object, which bpf-linker generates (rustc hands it
//! bitcode): they cannot go through RUSTFLAGS, which aya-build sets.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Only the BPF binaries are linked by bpf-linker; the host build of the (empty) library,
    // as filter-userspace's build-dependency, links nothing.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    // Let LLVM read and write multi-byte fields at any alignment: an IPv6 address is then two
    // 64-bit loads instead of sixteen byte loads and shifts, and the IPv4 header fields one
    // load each. The kernel accepts misaligned packet and map-value access on architectures
    // with efficient unaligned access (x86-64, arm64; not with BPF_F_STRICT_ALIGNMENT), and
    // LLVM keeps stack slots aligned, which the verifier always requires. A bpf-linker built
    // on LLVM before 22 should ignore the feature with a warning (LLVM's handling of an unknown
    // feature; not tried here) and emit byte loads as before; bootstrap installs an LLVM 22 one.
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
