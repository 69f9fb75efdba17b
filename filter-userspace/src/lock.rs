//! Serialises edgeblock invocations that change state (attach, detach, apply): one flock on
//! `<state-dir>/lock`. A second invocation waits up to a timeout, saying who holds it.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

pub const DEFAULT_STATE_DIR: &str = "/run/edgeblock";

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "another edgeblock ({holder}) has held {path} for more than {waited:?}; try again when it finishes"
    )]
    Timeout {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
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
        fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let path = state_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
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
}
