//! The one owner of the loaded XDP program, its links and its maps.
//!
//! Everything is pinned under a `Pins` root, so filtering goes on after the CLI exits and every
//! later invocation (or the daemon) finds the same program and maps. One policy per host: every
//! attached interface runs the same program with the same maps.

use std::{fs, io};

use aya::{
    EbpfLoader,
    maps::{Array, MapData, MapError, ProgramArray},
    programs::{
        ProgramError, ProgramFd, Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode},
    },
};
use aya_obj::programs::XdpAttachType;
use filter_common::{MAX_RULES, RuleMeta, dxr, maps as names, sample};
use thiserror::Error;

use crate::{
    maps::{Maps, MapsError},
    pins::{LinkMode, LinkPin, Pins, PinsError},
};

/// The XDP object built by build.rs from filter-ebpf.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edgeblock-xdp"));

/// Benchmark-only (`cargo xtask bench`): filter-ebpf's `xdp-drop` object, holding the bare
/// XDP_DROP floor (`xdp_drop`), an `xdp_pass` and the live-traffic generator (`xdp_gen`).
/// edgeblock itself never loads it.
pub static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-drop"));

/// The program's function name in filter-ebpf.
pub const PROGRAM_NAME: &str = "edgeblock";

/// The sampler's (`filter_common::sample`): loaded beside the filter, reached only by tail call
/// through `EB_PROGS`, which holds it; it has no pin of its own.
pub const SAMPLER_NAME: &str = "edgeblock_sample";

/// Maps the program declares (the loader pins them). `EB_RULES` and the prefix records are
/// created by userspace: the program never reads them.
const PROGRAM_MAPS: [&str; 18] = [
    names::V4_INDEX,
    names::V4_DIRECT,
    names::V4_PALETTE,
    names::V4_RANGES_DST,
    names::V4_RANGES_SRC,
    names::V6_DIRECT,
    names::V6_PALETTE,
    names::V6_LINES,
    names::V6_RANGES_DST,
    names::V6_RANGES_SRC,
    names::RESULTS,
    names::ACTIVE,
    names::RULE_STATS,
    names::STATS,
    names::CONFIG,
    names::NOTICE,
    names::NOTICE_DEV,
    names::REJECT_TB,
];

/// The program's maps of sampled flows (`filter_common::sample`).
const SAMPLE_MAPS: [&str; 5] = [
    names::PROGS,
    names::SAMPLES,
    names::SAMPLE_CTL,
    names::SAMPLE_SCRATCH,
    names::SAMPLE_BUDGET,
];

/// Maps userspace creates for itself.
const USERSPACE_MAPS: [&str; 6] = [
    names::RULES,
    names::ABI,
    names::V4_RECORD_DST,
    names::V4_RECORD_SRC,
    names::V6_RECORD_DST,
    names::V6_RECORD_SRC,
];

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error(transparent)]
    Pins(#[from] PinsError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(
        "edgeblock is not loaded at {root}: run `edgeblock attach IFACE` or `edgeblock apply POLICY` first"
    )]
    NotLoaded { root: String },
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no program named {name}")]
    NoProgram { name: &'static str },
    #[error("the XDP object has no map named {name}")]
    NoMap { name: &'static str },
    #[error("{what}: {source}")]
    Program { what: String, source: ProgramError },
    #[error("creating map {name}: {source}")]
    CreateMap {
        name: &'static str,
        source: MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: String,
        source: aya::pin::PinError,
    },
    #[error("interface {iface} does not exist")]
    NoSuchInterface { iface: String },
    #[error(
        "cannot attach to {iface}: {source}; if another XDP program is attached there (see `ip link show {iface}`), edgeblock will not replace it"
    )]
    Attach { iface: String, source: ProgramError },
    #[error(
        "{iface} was attached through netlink, not a bpf_link (kernel older than 5.9?); edgeblock needs bpf_link to keep the program attached after it exits"
    )]
    NotALink { iface: String },
    #[error("edgeblock is not attached to {iface}")]
    NotAttached { iface: String },
    #[error(
        "the program pin {prog} is missing, but edgeblock still filters {} with program id \
         {program_id}: someone removed the pin; run `edgeblock attach {}` to pin the running \
         program again",
        ifaces.join(", "),
        ifaces.first().map_or("IFACE", String::as_str)
    )]
    ProgramPinMissing {
        prog: String,
        ifaces: Vec<String>,
        program_id: u32,
    },
    #[error(
        "the program pinned under {root} was loaded by another edgeblock version (its table \
         layout is {}, this edgeblock's is {}), and this one cannot work on it safely; nothing \
         was changed. Keep using the edgeblock that loaded it, or move to this one with \
         `edgeblock detach --all --purge`, then `edgeblock apply POLICY` and `edgeblock attach \
         IFACE` (nothing is filtered in between)",
        found.map_or("older than recorded versions".to_owned(), |v| format!("version {v}")),
        filter_common::ABI
    )]
    Incompatible { root: String, found: Option<u32> },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("opening map {path}: {source}")]
    OpenMap { path: String, source: MapError },
    #[error("{var}={value:?}: expected a number of ranges from 1024 to 2^30")]
    BadCapacity { var: &'static str, value: String },
}

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic when the driver has no XDP support.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works everywhere, after the kernel has built an skb.
    Generic,
}

/// What `attach` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    New(LinkMode),
    /// Already attached earlier; nothing changed.
    Already(LinkMode),
    /// The link ran another program (`old`, the pinned one having been replaced after its pin
    /// was removed); it now runs the pinned one, swapped in atomically (BPF_LINK_UPDATE).
    Replaced {
        mode: LinkMode,
        old: u32,
    },
}

pub struct Filter {
    pins: Pins,
    prog: Xdp,
    pub maps: Maps,
    /// Every pinned map by name, held so that [`Filter::restore_pins`] can pin it again.
    held: Vec<(&'static str, MapData)>,
}

impl Filter {
    /// Open the pinned program and maps, loading and pinning them first when absent. When only
    /// the program pin is gone while links still run the program, that program is pinned again
    /// instead: loading a second one would leave the interfaces on the first.
    pub fn load_or_open(pins: &Pins) -> Result<Self, LoaderError> {
        pins.prepare()?;
        if !pins.exists() && !repin_running(pins)? {
            load_and_pin(pins)?;
        }
        Self::open(pins)
    }

    /// Load the program and create its maps without pinning anything, for a first `apply` to
    /// do while it validates its policy: the kernel zeroes the maps' memory (236 MiB) and
    /// verifies the program meanwhile. Nothing is visible until [`Filter::install`]; dropping
    /// the result unloads it all, so a refused policy leaves nothing behind.
    pub fn preload() -> Result<Loaded, LoaderError> {
        load(None)
    }

    /// [`Filter::load_or_open`], using `loaded` (from [`Filter::preload`]) when nothing at
    /// all is pinned under `pins` and no interface runs an unpinned program: a root with
    /// anything in it (maps left by a purge, a program loaded meanwhile by another process)
    /// goes the ordinary way, and `loaded` is dropped.
    pub fn install(pins: &Pins, loaded: Loaded) -> Result<Self, LoaderError> {
        pins.prepare()?;
        let empty = !pins.prog().exists()
            && all_maps().all(|name| !pins.map(name).exists())
            && running_without_pin(pins).is_none();
        if !empty {
            drop(loaded);
            return Self::load_or_open(pins);
        }
        loaded.pin(pins)?;
        Self::open(pins)
    }

    /// Open what is pinned; an error when nothing is, or when the program pin alone is missing
    /// while links run ([`LoaderError::ProgramPinMissing`]).
    pub fn open(pins: &Pins) -> Result<Self, LoaderError> {
        if !pins.exists() {
            if let Some((program_id, ifaces)) = running_without_pin(pins) {
                return Err(LoaderError::ProgramPinMissing {
                    prog: pins.prog().display().to_string(),
                    ifaces,
                    program_id,
                });
            }
            return Err(LoaderError::NotLoaded {
                root: pins.root().display().to_string(),
            });
        }
        let found = pinned_abi(pins);
        if found != Some(filter_common::ABI) {
            return Err(LoaderError::Incompatible {
                root: pins.root().display().to_string(),
                found,
            });
        }
        let prog = Xdp::from_pin(pins.prog(), XdpAttachType::Interface).map_err(|source| {
            LoaderError::Program {
                what: format!("opening {}", pins.prog().display()),
                source,
            }
        })?;
        let maps = Maps::open(pins)?;
        let held = all_maps()
            // A program pinned by an edgeblock older than sampling has no sample maps; it
            // filters the same, and only `tail` needs them (and says what to do).
            .filter(|name| !SAMPLE_MAPS.contains(name) || pins.map(name).exists())
            .map(|name| {
                let path = pins.map(name);
                MapData::from_pin(&path)
                    .map(|data| (name, data))
                    .map_err(|source| LoaderError::OpenMap {
                        path: path.display().to_string(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pins: pins.clone(),
            prog,
            maps,
            held,
        })
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN` and for `status`.
    pub fn program(&self) -> &Xdp {
        &self.prog
    }

    pub fn program_id(&self) -> Result<u32, LoaderError> {
        let info = self.prog.info().map_err(|source| LoaderError::Program {
            what: "reading program info".into(),
            source,
        })?;
        Ok(info.id())
    }

    /// Attach to `iface` and pin the link. Idempotent: an interface already attached is left
    /// as it is; a pinned link whose interface is gone is replaced.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached, LoaderError> {
        if let Some(existing) = self
            .pins
            .link_for(iface)
            .map_err(|source| LoaderError::Io {
                path: self.pins.links_dir().display().to_string(),
                source,
            })?
        {
            if link_is_live(&existing) {
                let running = link_program_id(&existing.path);
                let pinned = self.program_id()?;
                return match running {
                    Some(old) if old != pinned => {
                        self.replace_program(&existing)?;
                        Ok(Attached::Replaced {
                            mode: existing.mode,
                            old,
                        })
                    }
                    _ => Ok(Attached::Already(existing.mode)),
                };
            }
            // The interface went away (or was replaced) under the link: the pin is stale.
            unpin_link(&existing)?;
        }
        if if_index(iface) == 0 {
            return Err(LoaderError::NoSuchInterface {
                iface: iface.into(),
            });
        }
        let attempts: &[(XdpMode, LinkMode)] = match mode {
            AttachMode::Auto => &[
                (XdpMode::Driver, LinkMode::Native),
                (XdpMode::Skb, LinkMode::Generic),
            ],
            AttachMode::Native => &[(XdpMode::Driver, LinkMode::Native)],
            AttachMode::Generic => &[(XdpMode::Skb, LinkMode::Generic)],
        };
        let mut last_err = None;
        for &(xdp_mode, link_mode) in attempts {
            match self.prog.attach(iface, xdp_mode) {
                Ok(id) => {
                    let link = self
                        .prog
                        .take_link(id)
                        .map_err(|source| LoaderError::Program {
                            what: format!("taking the link on {iface}"),
                            source,
                        })?;
                    let fd_link = FdLink::try_from(link).map_err(|_| LoaderError::NotALink {
                        iface: iface.into(),
                    })?;
                    let path = self.pins.link(iface, link_mode);
                    fd_link.pin(&path).map_err(|source| LoaderError::Pin {
                        path: path.display().to_string(),
                        source,
                    })?;
                    return Ok(Attached::New(link_mode));
                }
                Err(source) => last_err = Some(source),
            }
        }
        Err(LoaderError::Attach {
            iface: iface.into(),
            source: last_err.expect("at least one attempt is made"),
        })
    }

    /// Make a live link run the pinned program, in one atomic swap: no packet goes unfiltered.
    fn replace_program(&mut self, pin: &LinkPin) -> Result<(), LoaderError> {
        let what = || format!("switching the link on {} to the pinned program", pin.iface);
        let link = PinnedLink::from_pin(&pin.path).map_err(|e| LoaderError::Io {
            path: pin.path.display().to_string(),
            source: io::Error::other(e),
        })?;
        let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| LoaderError::Io {
            path: pin.path.display().to_string(),
            source: io::Error::other(e),
        })?;
        let id = self
            .prog
            .attach_to_link(link)
            .map_err(|source| LoaderError::Program {
                what: what(),
                source,
            })?;
        // The link stays pinned; our descriptor for it is closed here, which detaches nothing.
        drop(
            self.prog
                .take_link(id)
                .map_err(|source| LoaderError::Program {
                    what: what(),
                    source,
                })?,
        );
        Ok(())
    }

    /// Detach from `iface` by removing its pinned link (the last reference to it).
    pub fn detach(&mut self, iface: &str) -> Result<LinkMode, LoaderError> {
        let io_err = |source| LoaderError::Io {
            path: self.pins.links_dir().display().to_string(),
            source,
        };
        let Some(pin) = self.pins.link_for(iface).map_err(io_err)? else {
            return Err(LoaderError::NotAttached {
                iface: iface.into(),
            });
        };
        unpin_link(&pin)?;
        Ok(pin.mode)
    }

    /// Whether the program pinned now is the one this `Filter` holds (not removed, not
    /// replaced by another load after a purge).
    pub fn pinned_program_is_ours(&self) -> Result<bool, LoaderError> {
        if !self.pins.exists() {
            return Ok(false);
        }
        let pinned = Xdp::from_pin(self.pins.prog(), XdpAttachType::Interface)
            .and_then(|p| p.info())
            .map_err(|source| LoaderError::Program {
                what: format!("opening {}", self.pins.prog().display()),
                source,
            })?;
        Ok(pinned.id() == self.program_id()?)
    }

    /// Whether the program and every map are pinned (by path; see
    /// [`Filter::pinned_program_is_ours`] for whose they are).
    pub fn pins_complete(&self) -> bool {
        self.pins.exists()
            && self
                .held
                .iter()
                .all(|(name, _)| self.pins.map(name).exists())
    }

    /// Pin again, from this process's descriptors, whatever of the program and its maps
    /// someone removed (`rm`, a purge): the kernel objects live on while a descriptor or a
    /// link holds them. The program is pinned last, as at load. Returns the paths restored.
    pub fn restore_pins(&mut self) -> Result<Vec<std::path::PathBuf>, LoaderError> {
        self.pins.prepare()?;
        let mut restored = Vec::new();
        for (name, data) in &self.held {
            let path = self.pins.map(name);
            if !path.exists() {
                data.pin(&path).map_err(|source| LoaderError::Pin {
                    path: path.display().to_string(),
                    source,
                })?;
                restored.push(path);
            }
        }
        let prog = self.pins.prog();
        if !prog.exists() {
            self.prog.pin(&prog).map_err(|source| LoaderError::Pin {
                path: prog.display().to_string(),
                source,
            })?;
            restored.push(prog);
        }
        Ok(restored)
    }

    pub fn links(&self) -> Result<Vec<LinkPin>, LoaderError> {
        self.pins.links().map_err(|source| LoaderError::Io {
            path: self.pins.links_dir().display().to_string(),
            source,
        })
    }
}

/// The ifindex a pinned XDP link runs on, from the kernel: 0 once its interface is gone (a
/// deleted veth, a renamed or replaced NIC), when the link no longer filters anything.
pub fn link_ifindex(path: &std::path::Path) -> io::Result<u32> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    use aya_obj::generated::{bpf_cmd, bpf_link_info};

    // The leading fields of `union bpf_attr` for BPF_OBJ_GET and BPF_OBJ_GET_INFO_BY_FD; the
    // kernel accepts a shorter attr as long as what it reads is there.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let bpf = |cmd: bpf_cmd, attr: *const libc::c_void, size: usize| {
        // SAFETY: `attr` points at a live, initialised attr of `size` bytes for `cmd`.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr, size) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let get = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(
        bpf_cmd::BPF_OBJ_GET,
        (&raw const get).cast(),
        size_of::<ObjGet>(),
    )?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: bpf_link_info is plain data; all-zero is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_link_info>() as u32,
        info: (&raw mut info) as u64,
    };
    bpf(
        bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
        (&raw const attr).cast(),
        size_of::<InfoByFd>(),
    )?;
    // SAFETY: the kernel filled the union's xdp member: every pin under links/ is an XDP link.
    Ok(unsafe { info.__bindgen_anon_1.xdp.ifindex })
}

/// Whether a pinned link still filters `iface`: the kernel's ifindex for the link is the
/// interface's current one.
pub fn link_is_live(pin: &LinkPin) -> bool {
    let current = if_index(&pin.iface);
    current != 0 && link_ifindex(&pin.path).is_ok_and(|i| i == current)
}

/// The id of the program a pinned link runs, when the kernel says.
pub fn link_program_id(path: &std::path::Path) -> Option<u32> {
    let link = PinnedLink::from_pin(path).ok()?;
    FdLink::from(link).info().ok().map(|i| i.program_id())
}

/// With the program pin gone: the program that live links still run (the first live link's),
/// and the interfaces running it.
fn running_without_pin(pins: &Pins) -> Option<(u32, Vec<String>)> {
    let live: Vec<LinkPin> = pins
        .links()
        .ok()?
        .into_iter()
        .filter(link_is_live)
        .collect();
    let id = live.iter().find_map(|l| link_program_id(&l.path))?;
    let ifaces = live
        .into_iter()
        .filter(|l| link_program_id(&l.path) == Some(id))
        .map(|l| l.iface)
        .collect();
    Some((id, ifaces))
}

/// Pin again the edgeblock program that live links run after someone removed its pin; false
/// when no live link runs one (then a fresh program is loaded). Needs `CAP_SYS_ADMIN`
/// (BPF_PROG_GET_FD_BY_ID).
fn repin_running(pins: &Pins) -> Result<bool, LoaderError> {
    let Some((id, _)) = running_without_pin(pins) else {
        return Ok(false);
    };
    let Some(info) = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
    else {
        return Ok(false);
    };
    if info.name_as_str() != Some(PROGRAM_NAME) {
        return Ok(false);
    }
    let what = || format!("pinning the running program (id {id}) again");
    let mut prog = Xdp::from_program_info(info, PROGRAM_NAME.into(), XdpAttachType::Interface)
        .map_err(|source| LoaderError::Program {
            what: what(),
            source,
        })?;
    let path = pins.prog();
    prog.pin(&path).map_err(|source| LoaderError::Pin {
        path: path.display().to_string(),
        source,
    })?;
    Ok(true)
}

fn unpin_link(pin: &LinkPin) -> Result<(), LoaderError> {
    let link = PinnedLink::from_pin(&pin.path).map_err(|e| LoaderError::Io {
        path: pin.path.display().to_string(),
        source: io::Error::other(e),
    })?;
    // Dropping the FdLink after removing the pin releases the last reference: detached.
    let _link: FdLink = link.unpin().map_err(|source| LoaderError::Io {
        path: pin.path.display().to_string(),
        source,
    })?;
    Ok(())
}

/// Detach everywhere and remove the program and maps: the policy is gone too.
pub fn purge(pins: &Pins) -> Result<(), LoaderError> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| LoaderError::Io { path, source }
    };
    for pin in pins.links().map_err(io(&pins.links_dir()))? {
        unpin_link(&pin)?;
    }
    remove_if_exists(&pins.prog()).map_err(io(&pins.prog()))?;
    for name in all_maps() {
        let path = pins.map(name);
        remove_if_exists(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// Every map pinned under `<root>/maps`: the program's and the ones userspace creates.
fn all_maps() -> impl Iterator<Item = &'static str> {
    PROGRAM_MAPS
        .into_iter()
        .chain(SAMPLE_MAPS)
        .chain(USERSPACE_MAPS)
}

/// The ABI recorded beside the pinned program; None when there is no record (an edgeblock from
/// before the record) or it cannot be read.
fn pinned_abi(pins: &Pins) -> Option<u32> {
    let data = MapData::from_pin(pins.map(names::ABI)).ok()?;
    let abi = Array::<MapData, u32>::try_from(aya::maps::Map::Array(data)).ok()?;
    abi.get(&0, 0).ok()
}

/// A range-table capacity from the environment, or the default.
fn ranges_capacity(var: &'static str, default: u32) -> Result<u32, LoaderError> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1 << 10..=1 << 30).contains(n))
            .ok_or(LoaderError::BadCapacity { var, value: v }),
    }
}

fn remove_if_exists(path: &std::path::Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The interface's index, 0 when there is no such interface.
fn if_index(iface: &str) -> u32 {
    nix::net::if_::if_nametoindex(iface).unwrap_or(0)
}

/// Load (verify) one XDP program of the object; a descriptor of it for the program array.
fn load_xdp(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<ProgramFd, LoaderError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(LoaderError::NoProgram { name })?
        .try_into()
        .map_err(|source| LoaderError::Program {
            what: format!("XDP program {name}"),
            source,
        })?;
    prog.load().map_err(|source| LoaderError::Program {
        what: format!("loading the XDP program {name} (verifier)"),
        source,
    })?;
    prog.fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(|source| LoaderError::Program {
            what: format!("a descriptor of {name}"),
            source,
        })
}

/// Load the object with every map pinned under `pins` (reusing maps already pinned there),
/// create the userspace rule table, and pin the program last: a pinned program means a
/// complete set.
fn load_and_pin(pins: &Pins) -> Result<(), LoaderError> {
    load(Some(pins))?.pin(pins)
}

/// The program, its sampler and every map, loaded but (apart from maps reused from `pins`)
/// pinned nowhere: held by this process's descriptors alone, so dropping it unloads it all.
pub struct Loaded {
    ebpf: aya::Ebpf,
    /// The maps userspace creates (the prefix records and the rule table), each with what
    /// pins it.
    created: Vec<(&'static str, PinTo)>,
}

type PinTo = Box<dyn FnOnce(&std::path::Path) -> Result<(), aya::pin::PinError> + Send>;

/// Load the object: with `pins`, every map of the program is pinned there as it is created
/// (or the one already pinned there is reused), as for any later load; without, nothing is
/// pinned until [`Loaded::pin`].
fn load(pins: Option<&Pins>) -> Result<Loaded, LoaderError> {
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        for name in PROGRAM_MAPS.iter().chain(&SAMPLE_MAPS) {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    // Both copies of each range table, sized before the maps exist (they are arrays: the
    // memory is taken up front).
    let sizes = [
        (
            names::V4_RANGES_DST,
            names::V4_RECORD_DST,
            "EDGEBLOCK_V4_DST_RANGES",
            dxr::DEFAULT_DST_RANGES,
            8,
        ),
        (
            names::V4_RANGES_SRC,
            names::V4_RECORD_SRC,
            "EDGEBLOCK_V4_SRC_RANGES",
            dxr::DEFAULT_SRC_RANGES,
            8,
        ),
        (
            names::V6_RANGES_DST,
            names::V6_RECORD_DST,
            "EDGEBLOCK_V6_DST_RANGES",
            dxr::DEFAULT_V6_DST_RANGES,
            24,
        ),
        (
            names::V6_RANGES_SRC,
            names::V6_RECORD_SRC,
            "EDGEBLOCK_V6_SRC_RANGES",
            dxr::DEFAULT_V6_SRC_RANGES,
            24,
        ),
    ];
    let mut records = Vec::new();
    for (ranges, record, var, default, value_size) in sizes {
        let n = ranges_capacity(var, default)?;
        loader.map_max_entries(ranges, 2 * n);
        records.push((record, n, value_size));
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let sampler = load_xdp(&mut ebpf, SAMPLER_NAME)?;
    let main = load_xdp(&mut ebpf, PROGRAM_NAME)?;
    // The tail calls: the filter to the sampler and back. The array is pinned before this
    // process's descriptors close, so its entries live as long as the pins (the kernel
    // empties a program array when its last pin and descriptor are gone).
    let mut progs = ebpf
        .map_mut(names::PROGS)
        .ok_or(LoaderError::NoMap { name: names::PROGS })
        .and_then(|m| {
            ProgramArray::try_from(m).map_err(|source| LoaderError::CreateMap {
                name: names::PROGS,
                source,
            })
        })?;
    for (slot, fd) in [(sample::PROG_MAIN, &main), (sample::PROG_SAMPLER, &sampler)] {
        progs
            .set(slot, fd, 0)
            .map_err(|source| LoaderError::CreateMap {
                name: names::PROGS,
                source,
            })?;
    }
    // The records of the prefixes behind each copy of the range tables: half as many
    // prefixes as ranges, plus the count in slot 0 of each copy.
    let mut created = Vec::new();
    let pinned = |name| pins.is_some_and(|p: &Pins| p.map(name).exists());
    for (name, ranges, value_size) in records {
        if pinned(name) {
            continue;
        }
        let entries = 2 * (ranges / 2 + 1);
        let flags = aya_obj::generated::BPF_F_MMAPABLE;
        let record: PinTo = if value_size == 8 {
            let a = Array::<MapData, u64>::create(entries, flags);
            a.map(|a| Box::new(move |path: &std::path::Path| a.pin(path)) as PinTo)
        } else {
            let a = Array::<MapData, filter_common::Range6>::create(entries, flags);
            a.map(|a| Box::new(move |path: &std::path::Path| a.pin(path)) as PinTo)
        }
        .map_err(|source| LoaderError::CreateMap { name, source })?;
        created.push((name, record));
    }
    if !pinned(names::RULES) {
        let rules = Array::<MapData, RuleMeta>::create(MAX_RULES, 0).map_err(|source| {
            LoaderError::CreateMap {
                name: names::RULES,
                source,
            }
        })?;
        created.push((names::RULES, Box::new(move |path| rules.pin(path))));
    }
    Ok(Loaded { ebpf, created })
}

impl Loaded {
    /// Pin every map not pinned yet, record the ABI, and pin the program last: a pinned
    /// program means a complete set.
    fn pin(mut self, pins: &Pins) -> Result<(), LoaderError> {
        let pin_err = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| LoaderError::Pin { path, source }
        };
        for name in PROGRAM_MAPS.iter().chain(&SAMPLE_MAPS) {
            let path = pins.map(name);
            if path.exists() {
                continue;
            }
            let map = self.ebpf.map(name).ok_or(LoaderError::NoMap { name })?;
            map.pin(&path).map_err(pin_err(&path))?;
        }
        for (name, pin) in self.created {
            let path = pins.map(name);
            pin(&path).map_err(pin_err(&path))?;
        }
        // The program about to be pinned is this edgeblock's: record its ABI (over any
        // record a purge left behind).
        let abi_path = pins.map(names::ABI);
        let set_err = |source| LoaderError::CreateMap {
            name: names::ABI,
            source,
        };
        if abi_path.exists() {
            let data = MapData::from_pin(&abi_path).map_err(|source| LoaderError::OpenMap {
                path: abi_path.display().to_string(),
                source,
            })?;
            Array::<MapData, u32>::try_from(aya::maps::Map::Array(data))
                .and_then(|mut abi| abi.set(0, filter_common::ABI, 0))
                .map_err(set_err)?;
        } else {
            let mut abi = Array::<MapData, u32>::create(1, 0).map_err(set_err)?;
            abi.set(0, filter_common::ABI, 0).map_err(set_err)?;
            abi.pin(&abi_path).map_err(pin_err(&abi_path))?;
        }
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(LoaderError::NoProgram { name: PROGRAM_NAME })?
            .try_into()
            .map_err(|source| LoaderError::Program {
                what: "XDP program".into(),
                source,
            })?;
        let prog_path = pins.prog();
        prog.pin(&prog_path).map_err(pin_err(&prog_path))
    }
}
