//! Running cargo from xtask, and running commands in view of the user.

use std::ffi::OsString;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail};

/// The cargo that runs xtask (cargo sets `$CARGO` for `cargo run`), so nested builds use the
/// same toolchain; plain `cargo` otherwise.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")))
}

/// The workspace root: xtask's own manifest dir is one level below it.
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The command line of `cmd`, for display.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Prints `$ <command line>`, runs it with inherited stdio, and returns its exit status.
pub fn run_shown(cmd: &mut Command) -> Result<ExitStatus> {
    println!("$ {}", describe(cmd));
    cmd.status()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// Like [`run_shown`], but an unsuccessful exit is an error.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = run_shown(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Which cargo profile to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

/// Builds the `edgeblock` CLI and returns the path cargo reports for it.
///
/// Asks cargo rather than guessing `target/<profile>/edgeblock`, which `CARGO_TARGET_DIR`,
/// `build.target-dir` or `--target` would all move.
pub fn build_edgeblock(profile: Profile) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "filter-userspace",
        "--bin",
        "edgeblock",
    ])
    .arg("--message-format=json-render-diagnostics")
    .current_dir(workspace_root())
    .stdout(Stdio::piped());
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    println!("$ {}", describe(&cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(&cmd)))?;
    let stdout = child
        .stdout
        .take()
        .context("cargo's stdout was not piped")?;
    let mut executable = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's build messages")?;
        if let Some(path) = edgeblock_artifact(&line) {
            executable = Some(path);
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("building the edgeblock binary failed ({status}); cargo's messages are above");
    }
    executable.context("cargo built filter-userspace but reported no `edgeblock` executable")
}

/// The executable path in a cargo JSON message, if the message is the `edgeblock` binary of
/// filter-userspace (filter-ebpf's object is also called `edgeblock`, but is not a host binary).
fn edgeblock_artifact(line: &str) -> Option<PathBuf> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    let is_ours = msg["reason"] == "compiler-artifact"
        && msg["target"]["name"] == "edgeblock"
        && msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        && msg["manifest_path"]
            .as_str()
            .is_some_and(|p| Path::new(p).ends_with("filter-userspace/Cargo.toml"));
    if !is_ours {
        return None;
    }
    msg["executable"].as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(manifest: &str, kind: &str, executable: &str) -> String {
        serde_json::json!({
            "reason": "compiler-artifact",
            "package_id": "path+file:///w/filter-userspace#0.1.0",
            "manifest_path": manifest,
            "target": { "name": "edgeblock", "kind": [kind] },
            "executable": executable,
        })
        .to_string()
    }

    #[test]
    fn finds_the_cli_binary() {
        let line = artifact(
            "/w/filter-userspace/Cargo.toml",
            "bin",
            "/t/release/edgeblock",
        );
        assert_eq!(
            edgeblock_artifact(&line),
            Some(PathBuf::from("/t/release/edgeblock"))
        );
    }

    #[test]
    fn ignores_other_messages() {
        let lib = artifact("/w/filter-userspace/Cargo.toml", "lib", "/x");
        let ebpf = artifact("/w/filter-ebpf/Cargo.toml", "bin", "/x");
        let finished = r#"{"reason":"build-finished","success":true}"#;
        for line in [lib.as_str(), ebpf.as_str(), finished, "not json"] {
            assert_eq!(edgeblock_artifact(line), None, "{line}");
        }
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("xtask").is_dir());
    }
}
