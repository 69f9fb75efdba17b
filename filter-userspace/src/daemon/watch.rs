//! Watching the policy file, its includes and the runtime blocks file with inotify.
//!
//! The directories are watched, not the files: editors and config management replace a file
//! by writing a new one and renaming it over the old (a new inode a file watch would never
//! see), and a directory watch sees that rename as an event on the file's name. Events for
//! other names in those directories are ignored; the control loop debounces the rest.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use notify::{
    Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use tokio::sync::mpsc::UnboundedSender;

use super::Input;

pub struct Watch {
    watcher: RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    policy_files: Arc<Mutex<BTreeSet<PathBuf>>>,
    blocks_file: PathBuf,
}

impl Watch {
    /// Start watching `blocks_file`'s directory; [`Watch::set_policy_files`] adds the policy.
    pub fn new(blocks_file: PathBuf, tx: UnboundedSender<Input>) -> notify::Result<Self> {
        let policy_files: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let files = Arc::clone(&policy_files);
        let blocks = blocks_file.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let event = match res {
                Ok(e) => e,
                Err(e) => {
                    // The kernel dropped events (queue overflow): assume everything changed.
                    tracing::warn!(error = %e, "inotify error; rereading everything");
                    let _ = tx.send(Input::PolicyChanged);
                    let _ = tx.send(Input::BlocksChanged);
                    return;
                }
            };
            if !is_change(&event.kind) {
                return;
            }
            let files = files.lock().unwrap_or_else(|e| e.into_inner());
            let (mut policy, mut blocks_changed) = (event.paths.is_empty(), event.paths.is_empty());
            for p in &event.paths {
                policy |= files.contains(p);
                blocks_changed |= *p == blocks;
            }
            if policy {
                let _ = tx.send(Input::PolicyChanged);
            }
            if blocks_changed {
                let _ = tx.send(Input::BlocksChanged);
            }
        })?;
        let mut w = Self {
            watcher,
            dirs: BTreeSet::new(),
            policy_files,
            blocks_file,
        };
        w.update_dirs()?;
        Ok(w)
    }

    /// The files whose changes mean "reload the policy": the policy file and its includes
    /// (absolute paths).
    pub fn set_policy_files(&mut self, files: BTreeSet<PathBuf>) -> notify::Result<()> {
        *self.policy_files.lock().unwrap_or_else(|e| e.into_inner()) = files;
        self.update_dirs()
    }

    fn update_dirs(&mut self) -> notify::Result<()> {
        let files = self
            .policy_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let wanted: BTreeSet<PathBuf> = files
            .iter()
            .chain([&self.blocks_file])
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in wanted.difference(&self.dirs) {
            self.watcher.watch(new, RecursiveMode::NonRecursive)?;
        }
        self.dirs = wanted;
        Ok(())
    }
}

/// Whether an event can mean new content: anything but opening and reading.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}
