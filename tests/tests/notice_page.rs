//! The real `edgeblock notice-server` in a throwaway namespace, set up as on a notice host: an
//! AnyIP local route makes every address of the redirected prefixes local, the server listens
//! on the wildcard address, and clients connect to the blocked origin's address. `curl` checks
//! the status, headers and text (HTTP and HTTPS, IPv4 and IPv6, the 404 elsewhere, SIGHUP
//! reloads); headless Chromium renders the page, whose text is checked from `--dump-dom` and
//! whose screenshot is kept as a test artifact (`<target>/test-artifacts/notice-page.png`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgeblock_tests::{Netns, edgeblock_bin, require_root};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Redirected by the policy below; made local in the namespace by an AnyIP route.
const POOL_V4: &str = "203.0.113.0/24";
const POOL_V6: &str = "2001:db8:1::/64";
/// The blocked origin the tests "visit".
const ORIGIN_V4: &str = "203.0.113.9";
const ORIGIN_V6: &str = "2001:db8:1::9";
const HOST: &str = "blocked.example";
const TEXT: &str = "Access to this site has been blocked by order of the District Court of \
                    Example, case 2026/123.";
const URL: &str = "https://example.net/statement";

fn policy(text: &str) -> String {
    format!(
        r#"
[notice.main]
interface = "eth1"
next_hop = "198.51.100.250"

[[rule]]
name = "court-order"
action = "redirect"
notice = "main"
notice_text = "{text}"
notice_url = "{URL}"
https = "notice"
prefixes = ["{POOL_V4}", "{POOL_V6}"]

[[rule]]
name = "abuse"
action = "reject"
prefixes = ["198.51.100.0/25"]
"#
    )
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("edgeblock-notice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running server; killed (by its pid) and reaped on drop, also when a test panics.
struct NoticeServer {
    child: Child,
    log: PathBuf,
}

impl NoticeServer {
    fn start(ns: &Netns, policy: &Path, log: PathBuf) -> Self {
        let stderr =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        // `ip netns exec` execs the program, so the child's pid is the server's.
        let child = ns
            .command(edgeblock_bin())
            .args([
                "notice-server",
                "--listen",
                "[::]:80",
                "--tls-listen",
                "[::]:443",
            ])
            .arg("--policy")
            .arg(policy)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start edgeblock notice-server: {e}"));
        Self { child, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to the notice server: {e}"));
    }
}

impl Drop for NoticeServer {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// `curl` inside the namespace; the HTTP response (headers and body) on success.
fn curl(ns: &Netns, args: &[&str]) -> Output {
    ns.exec(
        "curl",
        [
            "--silent",
            "--show-error",
            "--include",
            "--max-time",
            "5",
            "--noproxy",
            "*",
        ]
        .iter()
        .chain(args),
    )
}

fn curl_ok(ns: &Netns, args: &[&str]) -> String {
    let out = curl(ns, args);
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// Status code, lowercase header lines, body.
fn split(response: &str) -> (u16, Vec<String>, String) {
    let (head, body) = response
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no header/body split in {response:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    (
        status,
        lines.map(str::to_ascii_lowercase).collect(),
        body.to_string(),
    )
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cmd` with stdout and stderr in files (Chromium can be chatty enough to fill a pipe),
/// killing it after `timeout`.
fn run_bounded(mut cmd: Command, dir: &Path, name: &str, timeout: Duration) -> (String, String) {
    let (out_path, err_path) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    let file = |p: &Path| File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {name}: {e} (`cargo xtask bootstrap` installs chromium)")
        });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} did not finish within {timeout:?}; its stderr:\n{}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("waiting for {name}: {e}"),
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        status.success(),
        "{name} failed ({status}); stderr:\n{}",
        read(&err_path)
    );
    (read(&out_path), read(&err_path))
}

/// `<target>/test-artifacts`: `$CARGO_TARGET_DIR`, else from the test executable's path
/// (`<target>/<profile>/deps/<exe>`).
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| panic!("cannot tell the target dir: set CARGO_TARGET_DIR"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !png.starts_with(SIGNATURE) || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |r: std::ops::Range<usize>| -> Option<u32> {
        Some(u32::from_be_bytes(png.get(r)?.try_into().ok()?))
    };
    Some((be(16..20)?, be(20..24)?))
}

#[test]
fn notice_page_over_http_https_and_in_chromium() {
    require_root();
    let tmp = TempDir::new();
    let ns = Netns::new("notice");
    ns.ip(["link", "set", "lo", "up"]);
    // The notice host's AnyIP setup from docs/policy.md.
    ns.ip(["route", "add", "local", POOL_V4, "dev", "lo"]);
    ns.ip(["-6", "route", "add", "local", POOL_V6, "dev", "lo"]);

    let policy_path = tmp.0.join("policy.toml");
    std::fs::write(&policy_path, policy(TEXT)).expect("write the policy");
    let server = NoticeServer::start(&ns, &policy_path, tmp.0.join("server.log"));
    let v4 = format!("http://{ORIGIN_V4}/");
    wait_until(
        "the notice server to answer",
        Duration::from_secs(10),
        || curl(&ns, &["--output", "/dev/null", &v4]).status.success(),
    );

    // HTTP, a Host header naming the blocked site, the origin's address as destination.
    let resolve = format!("{HOST}:80:{ORIGIN_V4}");
    let page_url = format!("http://{HOST}/news/today?id=7");
    let (status, headers, body) = split(&curl_ok(&ns, &["--resolve", &resolve, &page_url]));
    assert_eq!(status, 451, "{headers:?}\n{body}");
    for header in [
        "cache-control: no-store",
        "content-type: text/html; charset=utf-8",
    ] {
        assert!(
            headers.iter().any(|h| h == header),
            "{header} missing from {headers:?}"
        );
    }
    for fragment in [
        "<html lang=\"en\">",
        "<title>Blocked: blocked.example</title>",
        TEXT,
        &format!("<a href=\"{URL}\">"),
        "<span class=\"host\">blocked.example</span>",
        "EB-",
    ] {
        assert!(body.contains(fragment), "{fragment:?} missing from\n{body}");
    }

    // Plain text on request; IPv6 through the same wildcard socket; HEAD.
    let (status, headers, body) = split(&curl_ok(
        &ns,
        &[
            "--header",
            "Accept: text/plain",
            "--resolve",
            &resolve,
            &page_url,
        ],
    ));
    assert_eq!(status, 451);
    assert!(headers.contains(&"content-type: text/plain; charset=utf-8".to_string()));
    assert!(
        body.starts_with("Access to blocked.example has been blocked.\n"),
        "{body}"
    );
    assert!(body.contains(&format!("Statement:  {URL}")), "{body}");
    let (status, _, body) = split(&curl_ok(
        &ns,
        &["--globoff", &format!("http://[{ORIGIN_V6}]/")],
    ));
    assert_eq!(status, 451, "{body}");
    assert!(body.contains(TEXT));
    let (status, headers, body) = split(&curl_ok(&ns, &["--head", &v4]));
    assert_eq!(status, 451);
    assert!(body.is_empty(), "{body:?}");
    assert!(
        headers.iter().any(|h| h.starts_with("content-length: ")),
        "{headers:?}"
    );

    // HTTPS (https = "notice"): the self-signed certificate, which curl is told to accept.
    let resolve_tls = format!("{HOST}:443:{ORIGIN_V4}");
    let (status, _, body) = split(&curl_ok(
        &ns,
        &[
            "--insecure",
            "--resolve",
            &resolve_tls,
            &format!("https://{HOST}/"),
        ],
    ));
    assert_eq!(status, 451, "{body}");
    assert!(body.contains(TEXT));

    // Addresses no redirect rule covers: 404.
    let (status, _, body) = split(&curl_ok(&ns, &["http://127.0.0.1/"]));
    assert_eq!(
        (status, body.as_str()),
        (404, "no notice for this address\n")
    );

    // One log line per request, with the reference.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("host=\"blocked.example\"")
            && l.contains("path=\"/news/today?id=7\"")
            && l.contains("status=451")
            && l.contains("ref=EB-")
            && l.contains("rule=court-order")),
        "{log}"
    );

    // SIGHUP: a new text is served; a broken policy is refused and the last good one kept.
    let new_text = "Blocked until further notice.";
    std::fs::write(&policy_path, policy(new_text)).expect("rewrite the policy");
    server.signal(Signal::SIGHUP);
    wait_until("the reloaded text", Duration::from_secs(5), || {
        curl_ok(&ns, &[&v4]).contains(new_text)
    });
    std::fs::write(
        &policy_path,
        policy(new_text).replace("notice = \"main\"", "notice = \"mian\""),
    )
    .expect("break the policy");
    server.signal(Signal::SIGHUP);
    wait_until(
        "the reload error in the log",
        Duration::from_secs(5),
        || server.log().contains("still serving the previous policy"),
    );
    assert!(
        server.log().contains("notice \"mian\" is not defined"),
        "{}",
        server.log()
    );
    assert!(curl_ok(&ns, &[&v4]).contains(new_text));
    std::fs::write(&policy_path, policy(TEXT)).expect("restore the policy");
    server.signal(Signal::SIGHUP);
    wait_until("the restored text", Duration::from_secs(5), || {
        curl_ok(&ns, &[&v4]).contains(TEXT)
    });

    // Headless Chromium, as a visitor's browser would show it.
    let chromium = |profile: &str| -> Command {
        let mut cmd = ns.command("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1024,768",
            &format!("--host-resolver-rules=MAP {HOST} {ORIGIN_V4}"),
        ])
        .arg(format!("--user-data-dir={}", tmp.0.join(profile).display()))
        // Keep Chromium's caches and config out of root's home.
        .env("HOME", &tmp.0)
        .env("XDG_CONFIG_HOME", tmp.0.join("xdg-config"))
        .env("XDG_CACHE_HOME", tmp.0.join("xdg-cache"));
        cmd
    };
    let url = format!("http://{HOST}/");
    let mut dump = chromium("profile-dom");
    dump.args(["--dump-dom", &url]);
    let (dom, _) = run_bounded(dump, &tmp.0, "chromium-dump-dom", Duration::from_secs(60));
    for fragment in [
        "Access to <span class=\"host\">blocked.example</span> has been blocked",
        TEXT,
        "Read the full statement",
        "451 Unavailable For Legal Reasons",
        "Reference",
        "EB-",
        "Time (UTC)",
    ] {
        assert!(
            dom.contains(fragment),
            "{fragment:?} missing from the rendered DOM:\n{dom}"
        );
    }

    let screenshot = tmp.0.join("notice-page.png");
    let mut shot = chromium("profile-shot");
    shot.arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url);
    run_bounded(shot, &tmp.0, "chromium-screenshot", Duration::from_secs(60));
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert_eq!(png_size(&png), Some((1024, 768)), "not a 1024x768 PNG");
    // A blank or error page compresses to a few KiB; the notice has text, a card and a rule.
    assert!(png.len() > 15_000, "screenshot is only {} bytes", png.len());
    let artifact = artifacts_dir().join("notice-page.png");
    std::fs::copy(&screenshot, &artifact)
        .unwrap_or_else(|e| panic!("cannot save {}: {e}", artifact.display()));
    println!("notice page screenshot: {}", artifact.display());

    // Chromium's requests were served and logged like any other.
    assert!(
        server
            .log()
            .contains("host=\"blocked.example\" path=\"/\" status=451"),
        "{}",
        server.log()
    );
}
