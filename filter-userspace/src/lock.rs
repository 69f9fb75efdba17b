//! Serialises edgeblock invocations that change state (attach, detach, apply): one flock on
//! `<state-dir>/lock`. A second invocation waits up to a timeout, saying who holds it.
//!
//! edgeblock runs as root, so the lock must not become a way to write to other files: the state
//! directory is created 0700, an existing one is refused when someone other than root or us
//! owns it or anyone may write to it (without the sticky bit), and `lock` is opened with
//! `O_NOFOLLOW` and must be a regular file owned by root or us (docs/security.md, "State").

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

pub const DEFAULT_STATE_DIR: &str = "/run/edgeblock";

#[derive(Debug, Error)]
pub enum LockError {
    // The cause is the error's source, which callers print after it.
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "another edgeblock ({holder}) has held {} for more than {waited:?}; try again when it finishes",
        path.display()
    )]
    Timeout {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
    #[error(
        "state directory {} {problem}; choose a --state-dir only root (or this user) can write to, \
         such as the default {DEFAULT_STATE_DIR}",
        path.display()
    )]
    UnsafeDir { path: PathBuf, problem: Unsafe },
    #[error(
        "{} {problem}; edgeblock will not write through it: remove it and check who planted it",
        path.display()
    )]
    UnsafeLock { path: PathBuf, problem: Unsafe },
}

/// What makes a state directory or lock file unsafe to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Unsafe {
    #[error("is writable by every user and has no sticky bit (mode {mode:04o})")]
    WorldWritable { mode: u32 },
    #[error("is owned by uid {owner}, neither root nor this user (uid {me})")]
    Owner { owner: u32, me: u32 },
    #[error("is a symbolic link")]
    Symlink,
    #[error("is not a directory")]
    NotADirectory,
    #[error("is not a regular file")]
    NotAFile,
}

/// Whether a directory with `mode` owned by `owner` is safe for a process running as `me`.
fn check_dir(mode: u32, owner: u32, me: u32) -> Result<(), Unsafe> {
    if mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Unsafe::NotADirectory);
    }
    if owner != 0 && owner != me {
        return Err(Unsafe::Owner { owner, me });
    }
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Unsafe::WorldWritable {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Whether an opened lock file with `mode` owned by `owner` is safe for a process running as `me`.
fn check_file(mode: u32, owner: u32, me: u32) -> Result<(), Unsafe> {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Unsafe::NotAFile);
    }
    if owner != 0 && owner != me {
        return Err(Unsafe::Owner { owner, me });
    }
    Ok(())
}

/// Held for as long as it lives; the kernel releases the flock when the process exits, even
/// on `kill -9`.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Take the lock, waiting up to `timeout`. `on_wait` is called once if we have to wait.
    pub fn acquire(
        state_dir: &Path,
        timeout: Duration,
        on_wait: impl FnOnce(&str),
    ) -> Result<Self, LockError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        let me = nix::unistd::geteuid().as_raw();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err(state_dir))?;
        // Following a symlinked state directory is fine (`/var/run` -> `/run`): what it points
        // at is checked.
        let dir = fs::metadata(state_dir).map_err(io_err(state_dir))?;
        check_dir(dir.mode(), dir.uid(), me).map_err(|problem| LockError::UnsafeDir {
            path: state_dir.to_path_buf(),
            problem,
        })?;
        let path = state_dir.join("lock");
        // O_NONBLOCK: a FIFO planted as `lock` would otherwise block the open forever; it is
        // refused below as not a regular file.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ELOOP) => LockError::UnsafeLock {
                    path: path.clone(),
                    problem: Unsafe::Symlink,
                },
                _ => LockError::Io {
                    path: path.clone(),
                    source,
                },
            })?;
        let meta = file.metadata().map_err(io_err(&path))?;
        check_file(meta.mode(), meta.uid(), me).map_err(|problem| LockError::UnsafeLock {
            path: path.clone(),
            problem,
        })?;
        let start = Instant::now();
        let mut on_wait = Some(on_wait);
        loop {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Io { path, source: err });
            }
            let holder = holder(&mut file);
            if start.elapsed() >= timeout {
                return Err(LockError::Timeout {
                    path,
                    holder,
                    waited: timeout,
                });
            }
            if let Some(f) = on_wait.take() {
                f(&holder);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.rewind().map_err(io_err(&path))?;
        writeln!(file, "pid {}", std::process::id()).map_err(io_err(&path))?;
        Ok(Self { _file: file })
    }
}

fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut s));
    let s = s.trim();
    if s.is_empty() {
        "unknown pid".into()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_times_out_naming_the_holder() {
        let dir = std::env::temp_dir().join(format!("edgeblock-lock-{}", std::process::id()));
        let first = Lock::acquire(&dir, Duration::from_secs(1), |_| {}).expect("first lock");
        let mut waited = None;
        let err = Lock::acquire(&dir, Duration::from_millis(200), |h| {
            waited = Some(h.to_owned())
        })
        .expect_err("second lock must not be granted while the first is held");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(waited.is_some(), "on_wait must be called");
        drop(first);
        Lock::acquire(&dir, Duration::from_secs(1), |_| {}).expect("lock after release");
        let _ = fs::remove_dir_all(&dir);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgeblock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_missing_state_dir_is_created_0700() {
        let dir = scratch("lock-mode");
        let _lock = Lock::acquire(&dir, Duration::from_secs(1), |_| {}).expect("lock");
        let mode = fs::metadata(&dir).expect("state dir").mode() & 0o7777;
        assert_eq!(mode, 0o700, "state dir created with mode {mode:o}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symlinked_lock_is_refused_and_its_target_untouched() {
        let dir = scratch("lock-symlink");
        fs::create_dir_all(&dir).expect("state dir");
        let victim = dir.join("victim");
        fs::write(&victim, "precious\n").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join("lock")).expect("symlink");
        let err = Lock::acquire(&dir, Duration::from_secs(1), |_| {})
            .expect_err("a lock path that is a symlink must be refused");
        assert!(
            matches!(
                err,
                LockError::UnsafeLock {
                    problem: Unsafe::Symlink,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "precious\n");
        // A dangling symlink must not create its target either.
        let dangling = dir.join("created-through-link");
        fs::remove_file(dir.join("lock")).expect("rm");
        std::os::unix::fs::symlink(&dangling, dir.join("lock")).expect("symlink");
        Lock::acquire(&dir, Duration::from_secs(1), |_| {})
            .expect_err("a dangling symlink must be refused");
        assert!(!dangling.exists(), "the lock was created through a symlink");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_world_writable_state_dir_needs_the_sticky_bit() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("lock-world");
        fs::create_dir_all(&dir).expect("state dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = Lock::acquire(&dir, Duration::from_secs(1), |_| {})
            .expect_err("a world-writable state dir must be refused");
        assert!(
            matches!(
                err,
                LockError::UnsafeDir {
                    problem: Unsafe::WorldWritable { mode: 0o777 },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            !dir.join("lock").exists(),
            "nothing may be created in a refused dir"
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).expect("chmod");
        Lock::acquire(&dir, Duration::from_secs(1), |_| {}).expect("sticky /tmp-like dir");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn ownership_rules() {
        const DIR: u32 = libc::S_IFDIR;
        assert_eq!(check_dir(DIR | 0o755, 0, 1000), Ok(()));
        assert_eq!(check_dir(DIR | 0o700, 1000, 1000), Ok(()));
        assert_eq!(
            check_dir(DIR | 0o755, 65534, 0),
            Err(Unsafe::Owner {
                owner: 65534,
                me: 0
            })
        );
        assert_eq!(
            check_dir(DIR | 0o777, 0, 0),
            Err(Unsafe::WorldWritable { mode: 0o777 })
        );
        assert_eq!(check_dir(DIR | 0o1777, 0, 0), Ok(()));
        assert_eq!(
            check_dir(libc::S_IFREG | 0o700, 0, 0),
            Err(Unsafe::NotADirectory)
        );
        assert_eq!(check_file(libc::S_IFREG | 0o644, 0, 0), Ok(()));
        assert_eq!(
            check_file(libc::S_IFREG | 0o644, 65534, 0),
            Err(Unsafe::Owner {
                owner: 65534,
                me: 0
            })
        );
        assert_eq!(
            check_file(libc::S_IFIFO | 0o644, 0, 0),
            Err(Unsafe::NotAFile)
        );
    }
}
