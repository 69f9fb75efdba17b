//! Where the pinned program, maps and links live on bpffs, and making sure bpffs is there.
//!
//! ```text
//! <root>/prog              the loaded XDP program
//! <root>/maps/<EB_NAME>    every map (filter_common::maps)
//! <root>/links/<ifname>@<mode>   one bpf_link per attached interface
//! ```
//! The root is configurable (`--pin-root`, `EDGEBLOCK_PIN_ROOT`) because `ip netns exec`
//! mounts a fresh /sys: inside it, /sys/fs/bpf is a different, empty filesystem.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use thiserror::Error;

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/edgeblock";

#[derive(Debug, Error)]
pub enum PinsError {
    #[error(
        "{path} is not on a bpf filesystem; mount one with `mount -t bpf bpf {mount_hint}` or choose another --pin-root"
    )]
    NotBpffs { path: PathBuf, mount_hint: PathBuf },
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("creating {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
}

/// The attach mode recorded in a link's pin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Native,
    Generic,
}

impl LinkMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "generic" => Some(Self::Generic),
            _ => None,
        }
    }
}

/// A pinned link found under `<root>/links`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub iface: String,
    pub mode: LinkMode,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn prog(&self) -> PathBuf {
        self.root.join("prog")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, iface: &str, mode: LinkMode) -> PathBuf {
        self.links_dir().join(format!("{iface}@{}", mode.as_str()))
    }

    /// The links pinned now, sorted by interface name.
    pub fn links(&self) -> io::Result<Vec<LinkPin>> {
        let mut out = Vec::new();
        let dir = match fs::read_dir(self.links_dir()) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in dir {
            let entry = entry?;
            let name = entry.file_name();
            let Some((iface, mode)) = name.to_str().and_then(|n| n.rsplit_once('@')) else {
                continue;
            };
            if let Some(mode) = LinkMode::parse(mode) {
                out.push(LinkPin {
                    iface: iface.to_owned(),
                    mode,
                    path: entry.path(),
                });
            }
        }
        out.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(out)
    }

    pub fn link_for(&self, iface: &str) -> io::Result<Option<LinkPin>> {
        Ok(self.links()?.into_iter().find(|l| l.iface == iface))
    }

    /// Whether a program has been loaded and pinned here.
    pub fn exists(&self) -> bool {
        self.prog().exists()
    }

    /// Make sure the root sits on bpffs and its subdirectories exist. When the root is under
    /// /sys/fs/bpf and nothing is mounted there (a fresh boot without systemd's mount), mount it.
    pub fn prepare(&self) -> Result<(), PinsError> {
        let probe = existing_ancestor(&self.root);
        if !is_bpffs(&probe) {
            let default_mount = Path::new("/sys/fs/bpf");
            if self.root.starts_with(default_mount) && probe.starts_with("/sys") {
                mount_bpffs(default_mount)?;
            } else {
                return Err(PinsError::NotBpffs {
                    path: self.root.clone(),
                    mount_hint: probe,
                });
            }
        }
        for dir in [self.root.clone(), self.root.join("maps"), self.links_dir()] {
            fs::create_dir_all(&dir)
                .map_err(|source| PinsError::CreateDir { path: dir, source })?;
        }
        Ok(())
    }
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> Result<(), PinsError> {
    // Mode 0700, as systemd mounts it: a default bpffs is world-writable (1777), and anyone
    // who creates the pin root first would control what edgeblock pins there.
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| PinsError::Mount {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    })
}
