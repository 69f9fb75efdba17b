//! The notice server: the web page that visitors of a `redirect`ed origin see instead of a
//! silent timeout (`edgeblock notice-server`, the setup is in `docs/policy.md`).
//!
//! The XDP program forwards a redirected packet unchanged at L3, so the notice host receives
//! connections addressed to the blocked origin and accepts them through an AnyIP local route.
//! The address the client connected to is therefore the accepted socket's *local* address, and
//! that is what picks the notice: the `redirect` rule whose destination prefix covers it, by
//! the same longest-prefix lookup the filter uses ([`crate::compile::Tables::lookup`]). Any
//! Host header and any path get the same page; an address no `redirect` rule covers gets a
//! plain 404.
//!
//! # API
//!
//! - [`Notices`]: the notices of one policy, by destination address ([`Notices::lookup`]).
//! - Rendering, pure functions: [`negotiate`] (HTML or plain text from `Accept`), [`Page`] with
//!   [`Page::html`] and [`Page::text`], [`escape_html`], [`display_host`], and
//!   [`ReferenceIds`] for the per-response reference (`EB-` and 12 hex digits).
//! - [`TlsIdentity`]: a certificate chain and key, from PEM files or self-signed at start.
//! - [`Server`]: [`Server::bind`] the listeners, [`Server::handle`] for [`Handle::reload`] (the
//!   CLI calls it on SIGHUP), [`Server::run`] until a shutdown future completes.
//!
//! # Bounds
//!
//! At most [`Limits::max_connections`] connections at once (more are closed at accept), the
//! TLS handshake and the request head each within [`Limits::header_timeout`], a request head
//! of at most [`MAX_HEADER_BYTES`] in at most [`MAX_HEADERS`] fields, and a connection lives at
//! most [`Limits::connection_lifetime`]. Request bodies are never read.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::compile::{Compiled, compile};
use crate::policy::{self, Action, Direction, Note, Policy, PolicyErrors, RuleNotice};

/// Largest request head (request line and header fields) read, in bytes; a larger one is
/// answered 431 by hyper. Browsers send a few KiB at most.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;
/// Longest host name shown on the page; a longer Host header is cut.
pub const MAX_HOST_CHARS: usize = 253;
/// Longest path quoted in the log.
const MAX_LOGGED_PATH: usize = 200;

/// The text shown when a rule has no `notice_text`.
pub const DEFAULT_TEXT: &str = "The operator of this network has blocked access to this site.";

// ---------------------------------------------------------------------------------------------
// What to show
// ---------------------------------------------------------------------------------------------

/// The notices of one policy, looked up by the address a client connected to.
#[derive(Clone, Debug)]
pub struct Notices {
    compiled: Compiled,
    /// Index = rule id; `Some` for `redirect` rules.
    notices: Vec<Option<(String, RuleNotice)>>,
}

/// The `redirect` rule that covers an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match<'a> {
    pub rule: &'a str,
    pub prefix: IpNet,
    pub notice: &'a RuleNotice,
}

impl Notices {
    pub fn from_policy(policy: &Policy) -> Self {
        let notices = policy
            .rules
            .iter()
            .map(|r| match (&r.notice, r.action) {
                (Some(n), Action::Redirect) => Some((r.name.clone(), n.clone())),
                _ => None,
            })
            .collect();
        Self {
            compiled: compile(policy),
            notices,
        }
    }

    /// Read and validate the policy at `path` (rules expired at `now` left out), returning its
    /// notices and the policy's notes.
    pub fn load(path: &Path, now: Timestamp) -> Result<(Self, Vec<Note>), PolicyErrors> {
        let policy = policy::load(path, now)?;
        Ok((Self::from_policy(&policy), policy.notes))
    }

    /// The notice for a connection to `addr`: the longest destination prefix that covers it, if
    /// its rule is a `redirect`. A `pass` exception or a `drop` rule with a longer prefix wins
    /// here as it does in the filter, and gives no notice. IPv4-mapped IPv6 addresses (what a
    /// dual-stack socket reports for IPv4 clients) are looked up as IPv4.
    pub fn lookup(&self, addr: IpAddr) -> Option<Match<'_>> {
        let (prefix, rule) = self
            .compiled
            .tables
            .lookup(Direction::Dst, addr.to_canonical())?;
        let (name, notice) = self.notices.get(rule)?.as_ref()?;
        Some(Match {
            rule: name,
            prefix,
            notice,
        })
    }

    /// How many loaded rules are `redirect` rules.
    pub fn redirect_rules(&self) -> usize {
        self.notices.iter().flatten().count()
    }

    /// Names of the `redirect` rules with `https = "notice"`: their HTTPS visitors reach the
    /// notice server, which then needs a TLS listener.
    pub fn https_rules(&self) -> Vec<&str> {
        self.notices
            .iter()
            .flatten()
            .filter(|(_, n)| n.https == policy::HttpsMode::Notice)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// The body format of a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Text,
}

impl Format {
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Html => "text/html; charset=utf-8",
            Self::Text => "text/plain; charset=utf-8",
        }
    }
}

/// Plain text only when the client prefers `text/plain` to `text/html` (higher q-value, each
/// media type weighed by its most specific matching range: `text/html` over `text/*` over
/// `*/*`). No header, a tie, or neither acceptable gives HTML: a page is better than a 406.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Html;
    };
    // (specificity, q) of the range that decides each type.
    let mut html: Option<(u8, f32)> = None;
    let mut text: Option<(u8, f32)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        // A q that does not parse makes the range unacceptable rather than preferred.
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| {
                v.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| q.is_finite())
                    .map_or(0.0, |q| q.clamp(0.0, 1.0))
            });
        for (target, slot) in [("text/html", &mut html), ("text/plain", &mut text)] {
            let specificity = match media.as_str() {
                m if m == target => 3,
                "text/*" => 2,
                "*/*" => 1,
                _ => continue,
            };
            if slot.is_none_or(|(s, _)| specificity > s) {
                *slot = Some((specificity, q));
            }
        }
    }
    let q = |slot: Option<(u8, f32)>| slot.map_or(0.0, |(_, q)| q);
    if q(text) > q(html) {
        Format::Text
    } else {
        Format::Html
    }
}

/// `&`, `<`, `>`, `"` and `'` as character references: safe in element content and in quoted
/// attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The host name a client asked for, from raw Host-header bytes (or an SNI name, or an
/// address), made safe to show: invalid UTF-8 replaced, control characters dropped, the port
/// removed, at most [`MAX_HOST_CHARS`] characters. It is still attacker-controlled text: escape
/// it for HTML.
pub fn display_host(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim();
    let without_port = if text.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop what follows them.
        text.find(']').map_or(text, |end| &text[..=end])
    } else {
        match text.rsplit_once(':') {
            Some((host, port))
                if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                host
            }
            _ => text,
        }
    };
    let mut host: String = without_port
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_HOST_CHARS + 1)
        .collect();
    if host.chars().count() > MAX_HOST_CHARS {
        host = host.chars().take(MAX_HOST_CHARS).collect();
        host.push('\u{2026}');
    }
    host
}

/// One notice response, ready to render.
#[derive(Clone, Debug)]
pub struct Page<'a> {
    pub notice: &'a RuleNotice,
    /// From [`display_host`]; escaped when rendered.
    pub host: &'a str,
    pub reference: &'a str,
    pub time: Timestamp,
}

fn status_line(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}")
}

/// The page's stylesheet: inline (no external resources), optional (the page reads top to
/// bottom without it), with a dark variant.
const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#f3f4f6;--fg:#1f2430;--card:#fff;--muted:#545b6b;\
--line:#dfe2e8;--accent:#b3261e;--link:#0b57d0}\
@media (prefers-color-scheme:dark){:root{--bg:#15171c;--fg:#e8eaef;--card:#1e2128;\
--muted:#a5abb8;--line:#343842;--accent:#f2867e;--link:#8ab4f8}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);\
font:1.0625rem/1.6 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Noto Sans\",sans-serif}\
main{max-width:42rem;margin:4rem auto;padding:2.25rem 2.5rem;background:var(--card);\
border-top:.375rem solid var(--accent);border-radius:.5rem;\
box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.06)}\
.status{margin:0 0 .5rem;color:var(--accent);font-weight:600;font-size:.875rem;\
letter-spacing:.04em;text-transform:uppercase}\
h1{margin:0 0 1.25rem;font-size:1.75rem;line-height:1.25;overflow-wrap:anywhere}\
.statement p{margin:0 0 1rem}\
a{color:var(--link);text-underline-offset:.15em}\
a:focus-visible{outline:2px solid var(--link);outline-offset:2px}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.375rem 1.25rem;margin:2rem 0 0;\
padding-top:1.25rem;border-top:1px solid var(--line);font-size:.9375rem;color:var(--muted)}\
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}\
.mono{font-family:ui-monospace,\"SFMono-Regular\",Menlo,Consolas,monospace}\
.help{margin:1.5rem 0 0;font-size:.875rem;color:var(--muted)}\
@media (max-width:40rem){main{margin:0;border-radius:0;padding:1.5rem 1.25rem}}";

impl Page<'_> {
    fn text_or_default(&self) -> &str {
        self.notice
            .text
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or(DEFAULT_TEXT)
    }

    fn time_text(&self) -> String {
        // Whole seconds: the reference identifies the response, the time is for people.
        self.time
            .round(jiff::Unit::Second)
            .unwrap_or(self.time)
            .to_string()
    }

    /// A self-contained HTML page: no scripts, no external resources, one `<h1>`, readable
    /// without its stylesheet. Every value from the policy or the request is escaped.
    pub fn html(&self) -> String {
        let host = escape_html(self.host);
        let status = escape_html(&status_line(self.notice.status));
        let time = escape_html(&self.time_text());
        let reference = escape_html(self.reference);
        let mut out = String::with_capacity(4096);
        // `write!` to a String cannot fail.
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"robots\" content=\"noindex\">\n\
             <title>Blocked: {host}</title>\n<link rel=\"icon\" href=\"data:,\">\n\
             <style>{STYLE}</style>\n</head>\n<body>\n<main>\n\
             <p class=\"status\">{status}</p>\n\
             <h1>Access to <span class=\"host\">{host}</span> has been blocked</h1>\n\
             <div class=\"statement\">\n"
        );
        // Blank lines separate paragraphs; single newlines are line breaks.
        for paragraph in self
            .text_or_default()
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let lines: Vec<String> = paragraph.lines().map(escape_html).collect();
            let _ = writeln!(out, "<p>{}</p>", lines.join("<br>\n"));
        }
        out.push_str("</div>\n");
        if let Some(url) = &self.notice.url {
            let _ = writeln!(
                out,
                "<p><a href=\"{}\">Read the full statement</a></p>",
                escape_html(url)
            );
        }
        let _ = write!(
            out,
            "<dl>\n<dt>Blocked site</dt><dd>{host}</dd>\n\
             <dt>Reference</dt><dd class=\"mono\">{reference}</dd>\n\
             <dt>Time (UTC)</dt><dd class=\"mono\"><time datetime=\"{time}\">{time}</time></dd>\n\
             </dl>\n\
             <p class=\"help\">If you contact the operator of this network about this page, \
             please quote the reference.</p>\n</main>\n</body>\n</html>\n"
        );
        out
    }

    /// The same facts as plain text.
    pub fn text(&self) -> String {
        let mut out = format!("Access to {} has been blocked.\n\n", self.host);
        for line in self.text_or_default().trim().lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
        if let Some(url) = &self.notice.url {
            let _ = writeln!(out, "Statement:  {url}");
        }
        let _ = write!(
            out,
            "Status:     {}\nReference:  {}\nTime (UTC): {}\n",
            status_line(self.notice.status),
            self.reference,
            self.time_text()
        );
        out
    }
}

/// Reference ids: `EB-` and 12 hex digits, unique per response. SHA-256 of a per-process
/// random key and a counter, so they are unique within a process, unrelated across processes
/// and do not reveal how many requests were served.
#[derive(Debug)]
pub struct ReferenceIds {
    key: [u8; 32],
    counter: AtomicU64,
}

impl Default for ReferenceIds {
    fn default() -> Self {
        Self::new()
    }
}

impl ReferenceIds {
    pub fn new() -> Self {
        // `RandomState` is seeded from the OS's random source; four of them give 256 bits.
        let mut h = Sha256::new();
        for i in 0u64..4 {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(i);
            h.update(hasher.finish().to_le_bytes());
        }
        h.update(std::process::id().to_le_bytes());
        h.update(Timestamp::now().as_nanosecond().to_le_bytes());
        Self {
            key: h.finalize().into(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let digest = Sha256::new()
            .chain_update(self.key)
            .chain_update(n.to_le_bytes())
            .finalize();
        let mut id = String::from("EB-");
        for b in &digest[..6] {
            let _ = write!(id, "{b:02x}");
        }
        id
    }
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the TLS certificate chain from {}: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCert { path: PathBuf },
    #[error("cannot read the TLS private key from {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(#[source] rcgen::Error),
    #[error("the TLS certificate and key are not usable: {0}")]
    Tls(#[source] rustls::Error),
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Read a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, NoticeError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| NoticeError::ReadCert {
                path: cert.to_path_buf(),
                source,
            })?;
        if chain.is_empty() {
            return Err(NoticeError::NoCert {
                path: cert.to_path_buf(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| NoticeError::ReadKey {
            path: key.to_path_buf(),
            source,
        })?;
        Ok(Self { chain, key })
    }

    /// A fresh self-signed certificate (ECDSA P-256) for `localhost`. No browser trusts it, and
    /// none could: the notice server answers for names it does not own. It only lets an
    /// `https = "notice"` visitor who accepts the warning read the page.
    pub fn self_signed() -> Result<Self, NoticeError> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(NoticeError::SelfSigned)?;
        Ok(Self {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            )),
        })
    }

    /// SHA-256 of the leaf certificate, as colon-separated hex, for the operator to compare
    /// with what a browser shows.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.chain.first().map_or(&[][..], |c| c.as_ref()));
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn acceptor(self) -> Result<TlsAcceptor, NoticeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(self.chain, self.key)
            })
            .map_err(NoticeError::Tls)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// The server's resource bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// For the TLS handshake, and for each request head (including the wait for it on a
    /// kept-alive connection).
    pub header_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it is doing.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(60),
        }
    }
}

/// Shared by every connection.
struct State {
    notices: RwLock<Arc<Notices>>,
    ids: ReferenceIds,
    limits: Limits,
    connections: Arc<Semaphore>,
}

impl State {
    fn notices(&self) -> Arc<Notices> {
        // A poisoned lock still holds a complete `Arc`: it is only ever replaced whole.
        match self.notices.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// Replaces the notices of a running [`Server`].
#[derive(Clone)]
pub struct Handle {
    state: Arc<State>,
}

/// What a successful [`Handle::reload`] loaded.
#[derive(Debug)]
pub struct Reloaded {
    pub redirect_rules: usize,
    pub notes: Vec<Note>,
}

impl Handle {
    /// Re-read the policy at `path`. On any validation error the running notices stay as they
    /// were and the errors are returned.
    pub fn reload(&self, path: &Path) -> Result<Reloaded, PolicyErrors> {
        let (notices, notes) = Notices::load(path, Timestamp::now())?;
        let redirect_rules = notices.redirect_rules();
        self.replace(notices);
        Ok(Reloaded {
            redirect_rules,
            notes,
        })
    }

    pub fn replace(&self, notices: Notices) {
        let notices = Arc::new(notices);
        match self.state.notices.write() {
            Ok(mut guard) => *guard = notices,
            Err(poisoned) => *poisoned.into_inner() = notices,
        }
    }
}

/// One bound listening socket.
struct Listener {
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// A bound notice server; [`Server::run`] serves it.
pub struct Server {
    listeners: Vec<Listener>,
    state: Arc<State>,
}

/// Where a [`Server`] listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Server {
    /// Bind every address (plain HTTP on `listen`, HTTPS with `tls` on `tls_listen`) before
    /// serving any, so a bad address fails the start rather than leaving half a server. An
    /// IPv6 address also accepts IPv4 (as `::ffff:a.b.c.d`) unless an IPv4 address with the
    /// same port is listed too, so both `[::]:80` alone and the pair `0.0.0.0:80`, `[::]:80`
    /// work.
    pub async fn bind(
        listen: &[SocketAddr],
        tls_listen: &[SocketAddr],
        tls: Option<TlsIdentity>,
        notices: Notices,
        limits: Limits,
    ) -> Result<Self, NoticeError> {
        let acceptor = match (tls_listen.is_empty(), tls) {
            (true, _) => None,
            (false, Some(identity)) => Some(identity.acceptor()?),
            (false, None) => Some(TlsIdentity::self_signed()?.acceptor()?),
        };
        let mut listeners = Vec::new();
        let plain = listen.iter().map(|a| (a, None));
        let secure = tls_listen.iter().map(|a| (a, acceptor.clone()));
        let all: Vec<SocketAddr> = listen.iter().chain(tls_listen).copied().collect();
        for (&addr, tls) in plain.chain(secure) {
            // `[::]:80` alone serves IPv4 too; next to `0.0.0.0:80` (the usual pair) it must
            // be IPv6-only, or the two would collide on the port.
            let v6_only = all
                .iter()
                .any(|other| other.is_ipv4() && other.port() == addr.port());
            let socket = listen_socket(addr, v6_only)
                .map_err(|source| NoticeError::Bind { addr, source })?;
            listeners.push(Listener { socket, tls });
        }
        Ok(Self {
            listeners,
            state: Arc::new(State {
                notices: RwLock::new(Arc::new(notices)),
                ids: ReferenceIds::new(),
                limits,
                connections: Arc::new(Semaphore::new(limits.max_connections)),
            }),
        })
    }

    /// The bound addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<Bound> {
        self.listeners
            .iter()
            .filter_map(|l| {
                Some(Bound {
                    addr: l.socket.local_addr().ok()?,
                    tls: l.tls.is_some(),
                })
            })
            .collect()
    }

    pub fn handle(&self) -> Handle {
        Handle {
            state: Arc::clone(&self.state),
        }
    }

    /// Serve until `shutdown` completes; then stop accepting and return. Connections still
    /// open are dropped with the runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut accepting = tokio::task::JoinSet::new();
        for listener in self.listeners {
            accepting.spawn(accept_loop(listener, Arc::clone(&self.state)));
        }
        shutdown.await;
        accepting.abort_all();
    }
}

/// A listening socket; an IPv6 one is dual-stack unless `v6_only`, whatever the host's
/// `net.ipv6.bindv6only` says.
fn listen_socket(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &v6_only)
                .map_err(io::Error::from)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: Listener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                log(format_args!("notice-server: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&state.connections).try_acquire_owned() else {
            // Full: closing at once is the cheapest answer, and the client may retry.
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = listener.tls.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let lifetime = state.limits.connection_lifetime;
            let _ =
                tokio::time::timeout(lifetime, connection(stream, tls, local, peer, &state)).await;
            drop(permit);
        });
    }
}

/// What a request handler knows about its connection.
#[derive(Clone, Debug)]
struct Conn {
    local: SocketAddr,
    peer: SocketAddr,
    /// The TLS server name the client asked for, if any.
    sni: Option<String>,
}

async fn connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    local: SocketAddr,
    peer: SocketAddr,
    state: &Arc<State>,
) {
    let mut conn = Conn {
        local,
        peer,
        sni: None,
    };
    match tls {
        None => serve_http(stream, conn, state).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(state.limits.header_timeout, acceptor.accept(stream));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            conn.sni = stream.get_ref().1.server_name().map(str::to_string);
            serve_http(stream, conn, state).await;
        }
    }
}

async fn serve_http<S>(stream: S, conn: Conn, state: &Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_state = Arc::clone(state);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = respond(&request, &conn, &service_state);
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    // Errors here are the client's (a reset, a timeout, a malformed request): nothing to do.
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The response to one request, and its log line.
fn respond<B>(request: &Request<B>, conn: &Conn, state: &State) -> Response<Full<Bytes>> {
    let raw_host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .or_else(|| request.uri().host().map(|h| h.as_bytes().to_vec()))
        .or_else(|| conn.sni.as_ref().map(|s| s.as_bytes().to_vec()))
        .unwrap_or_else(|| conn.local.ip().to_canonical().to_string().into_bytes());
    let host = display_host(&raw_host);
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let head_only = request.method() == hyper::Method::HEAD;
    let now = Timestamp::now();

    let notices = state.notices();
    let (status, content_type, body, reference, rule) = match notices.lookup(conn.local.ip()) {
        None => (
            StatusCode::NOT_FOUND,
            Format::Text.content_type(),
            "no notice for this address\n".to_string(),
            None,
            None,
        ),
        Some(found) => {
            let reference = state.ids.next_id();
            let page = Page {
                notice: found.notice,
                host: &host,
                reference: &reference,
                time: now,
            };
            let format = negotiate(accept);
            let body = match format {
                Format::Html => page.html(),
                Format::Text => page.text(),
            };
            let status = StatusCode::from_u16(found.notice.status).unwrap_or(StatusCode::FORBIDDEN);
            (
                status,
                format.content_type(),
                body,
                Some(reference),
                Some(found.rule.to_string()),
            )
        }
    };

    let path: String = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .chars()
        .take(MAX_LOGGED_PATH)
        .collect();
    log(format_args!(
        "{} notice-server: local={} peer={} host={:?} path={:?} status={} ref={} rule={}",
        now.round(jiff::Unit::Millisecond).unwrap_or(now),
        conn.local,
        conn.peer,
        host,
        path,
        status.as_u16(),
        reference.as_deref().unwrap_or("-"),
        rule.as_deref().unwrap_or("-"),
    ));

    let length = body.len();
    let mut response = Response::new(Full::new(if head_only {
        Bytes::new()
    } else {
        Bytes::from(body)
    }));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-store"),
        (header::VARY, "Accept"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// One line to stderr. Request logs go through here so a test run shows them once per request.
fn log(line: std::fmt::Arguments<'_>) {
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls::pki_types::ServerName;

    use super::*;
    use crate::policy::HttpsMode;

    fn now() -> Timestamp {
        "2026-06-01T12:34:56.789Z"
            .parse()
            .unwrap_or_else(|e| panic!("test timestamp: {e}"))
    }

    fn notice(text: Option<&str>, url: Option<&str>, status: u16) -> RuleNotice {
        RuleNotice {
            target: "main".into(),
            text: text.map(str::to_string),
            url: url.map(str::to_string),
            status,
            https: HttpsMode::Reject,
        }
    }

    fn page<'a>(notice: &'a RuleNotice, host: &'a str) -> Page<'a> {
        Page {
            notice,
            host,
            reference: "EB-0123456789ab",
            time: now(),
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("caf\u{e9} \u{1f6ab}"), "caf\u{e9} \u{1f6ab}");
    }

    #[test]
    fn html_escapes_everything_from_the_policy_and_the_request() {
        let n = notice(
            Some("Blocked <b>by</b> order & \"decree\".\n\nSecond <script>alert(1)</script>"),
            Some("https://example.net/s?a=1&b=\"2\""),
            451,
        );
        let host = display_host(b"<img src=x onerror=alert(1)>.example");
        let html = page(&n, &host).html();
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("Blocked &lt;b&gt;by&lt;/b&gt; order &amp; &quot;decree&quot;."));
        assert!(html.contains("<p>Second &lt;script&gt;alert(1)&lt;/script&gt;</p>"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;.example"));
        assert!(html.contains(r#"<a href="https://example.net/s?a=1&amp;b=&quot;2&quot;">"#));
    }

    #[test]
    fn html_page_structure() {
        let n = notice(
            Some("Access to this site has been blocked by order of the court.\nCase 12/34."),
            Some("https://example.net/statement"),
            451,
        );
        let html = page(&n, "blocked.example").html();
        assert!(
            html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"),
            "{html}"
        );
        assert!(html.contains("<title>Blocked: blocked.example</title>"));
        assert_eq!(html.matches("<h1>").count(), 1, "{html}");
        assert!(html.contains(
            "<h1>Access to <span class=\"host\">blocked.example</span> has been blocked</h1>"
        ));
        assert!(html.contains("451 Unavailable For Legal Reasons"));
        assert!(html.contains(
            "<p>Access to this site has been blocked by order of the court.<br>\nCase 12/34.</p>"
        ));
        assert!(html.contains("<a href=\"https://example.net/statement\">"));
        assert!(html.contains("EB-0123456789ab"));
        assert!(
            html.contains("<time datetime=\"2026-06-01T12:34:57Z\">2026-06-01T12:34:57Z</time>")
        );
        // Nothing loaded from elsewhere: no scripts, no stylesheets or images by URL.
        for forbidden in [
            "<script",
            "src=",
            "@import",
            "url(",
            "<link rel=\"stylesheet\"",
        ] {
            assert!(!html.contains(forbidden), "{forbidden} in {html}");
        }
    }

    #[test]
    fn missing_text_and_url() {
        let n = notice(None, None, 403);
        let html = page(&n, "blocked.example").html();
        assert!(html.contains(&format!("<p>{}</p>", escape_html(DEFAULT_TEXT))));
        assert!(!html.contains("<a "), "{html}");
        assert!(html.contains("403 Forbidden"));
        let text = page(&n, "blocked.example").text();
        assert!(text.contains(DEFAULT_TEXT));
        assert!(!text.contains("Statement:"), "{text}");
        assert!(text.contains("Status:     403 Forbidden"));
        // Blank text counts as missing.
        let blank = notice(Some("  \n "), None, 451);
        assert!(page(&blank, "h").text().contains(DEFAULT_TEXT));
    }

    #[test]
    fn text_body_has_the_same_facts() {
        let n = notice(
            Some("Blocked by order of the court."),
            Some("https://example.net/statement"),
            451,
        );
        let text = page(&n, "blocked.example").text();
        assert_eq!(
            text,
            "Access to blocked.example has been blocked.\n\n\
             Blocked by order of the court.\n\n\
             Statement:  https://example.net/statement\n\
             Status:     451 Unavailable For Legal Reasons\n\
             Reference:  EB-0123456789ab\n\
             Time (UTC): 2026-06-01T12:34:57Z\n"
        );
    }

    #[test]
    fn negotiation() {
        let cases = [
            (None, Format::Html),
            (Some(""), Format::Html),
            (Some("*/*"), Format::Html),
            (Some("text/plain"), Format::Text),
            (Some("text/html"), Format::Html),
            (Some("text/plain, text/html"), Format::Html),
            (Some("text/html;q=0.5, text/plain"), Format::Text),
            (Some("text/plain;q=0.9, text/html;q=0.9"), Format::Html),
            (Some("TEXT/PLAIN; Q=1, */*;q=0.1"), Format::Text),
            (Some("text/plain, */*;q=0.8"), Format::Text),
            (Some("text/*, text/html;q=0.1"), Format::Text),
            (Some("application/json"), Format::Html),
            (Some("text/plain;q=0"), Format::Html),
            (Some("text/plain;q=nan"), Format::Html),
            // What browsers send.
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                Format::Html,
            ),
        ];
        for (accept, expected) in cases {
            assert_eq!(negotiate(accept), expected, "Accept: {accept:?}");
        }
    }

    #[test]
    fn host_display() {
        assert_eq!(display_host(b"blocked.example"), "blocked.example");
        assert_eq!(display_host(b"blocked.example:8080"), "blocked.example");
        assert_eq!(display_host(b"[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(display_host(b"203.0.113.9"), "203.0.113.9");
        assert_eq!(display_host(b"2001:db8::1"), "2001:db8::1");
        assert_eq!(display_host(b"a\x00b\x1b[31mc"), "ab[31mc");
        assert_eq!(display_host(b"caf\xc3\xa9.example"), "caf\u{e9}.example");
        assert_eq!(display_host(b"bad\xff.example"), "bad\u{fffd}.example");
        let long = display_host("x".repeat(1000).as_bytes());
        assert_eq!(long.chars().count(), MAX_HOST_CHARS + 1);
        assert!(long.ends_with('\u{2026}'));
    }

    #[test]
    fn reference_ids_are_unique_and_well_formed() {
        let ids = ReferenceIds::new();
        let other = ReferenceIds::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = ids.next_id();
            assert_eq!(id.len(), 15, "{id}");
            assert!(id.starts_with("EB-"));
            assert!(
                id[3..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(seen.insert(id));
        }
        // Another process (or server) does not repeat the same sequence.
        assert_ne!(ReferenceIds::new().next_id(), other.next_id());
    }

    const POLICY: &str = r#"
[notice.main]
interface = "lo"
next_hop = "192.0.2.250"

[[rule]]
name = "court-order"
action = "redirect"
notice = "main"
notice_text = "Access to this site has been blocked by order of the court."
notice_url = "https://example.net/statement"
prefixes = ["127.0.0.0/8", "::1"]

[[rule]]
name = "forbidden"
action = "redirect"
notice = "main"
notice_status = 403
https = "notice"
prefixes = ["127.0.0.3"]

[[rule]]
name = "just-dropped"
action = "drop"
prefixes = ["127.0.0.2"]
"#;

    fn notices(text: &str) -> Notices {
        let policy = crate::policy::parse(text, Path::new("policy.toml"), now(), |p| {
            Err(io::Error::other(format!("no include {}", p.display())))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Notices::from_policy(&policy)
    }

    #[test]
    fn lookup_follows_the_longest_prefix_and_redirect_rules_only() {
        let n = notices(POLICY);
        let rule = |a: &str| {
            n.lookup(a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
                .map(|m| (m.rule, m.notice.status))
        };
        assert_eq!(rule("127.0.0.1"), Some(("court-order", 451)));
        assert_eq!(rule("::ffff:127.0.0.1"), Some(("court-order", 451)));
        assert_eq!(rule("::1"), Some(("court-order", 451)));
        assert_eq!(rule("127.0.0.3"), Some(("forbidden", 403)));
        assert_eq!(rule("127.0.0.2"), None);
        assert_eq!(rule("192.0.2.1"), None);
        assert_eq!(n.redirect_rules(), 2);
        assert_eq!(n.https_rules(), ["forbidden"]);
    }

    /// A parsed HTTP/1.1 response.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse_reply(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> Reply {
        stream
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("send: {e}"));
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw));
        match read.await {
            Ok(Ok(_)) => {}
            // A TLS peer that closes without close_notify still sent the whole reply.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!("no reply within 10s to {request:?}"),
        }
        parse_reply(&raw)
    }

    async fn get(addr: SocketAddr, request: &str) -> Reply {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        exchange(stream, request).await
    }

    fn request(method: &str, host: &str, accept: &str) -> String {
        format!(
            "{method} /some/path?q=1 HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n\
             Connection: close\r\n\r\n"
        )
    }

    /// Accepts exactly one certificate: the test's stand-in for a visitor who clicked through
    /// the browser's warning for the self-signed certificate.
    #[derive(Debug)]
    struct Pinned {
        cert: CertificateDer<'static>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl rustls::client::danger::ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            if end_entity.as_ref() == self.cert.as_ref() {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("not the pinned certificate".into()))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[tokio::test]
    async fn serves_real_http_and_https() {
        let identity = TlsIdentity::self_signed().unwrap_or_else(|e| panic!("{e}"));
        let cert = identity.chain[0].clone();
        assert_eq!(identity.fingerprint().len(), 32 * 3 - 1);
        let any = |ip: &str| -> SocketAddr {
            format!("{ip}:0")
                .parse()
                .unwrap_or_else(|e| panic!("{ip}: {e}"))
        };
        // 127.0.0.2 is covered by a drop rule only: no notice there.
        let server = Server::bind(
            &[any("127.0.0.1"), any("127.0.0.2"), any("127.0.0.3")],
            &[any("127.0.0.1")],
            Some(identity),
            notices(POLICY),
            Limits::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
        let bound = server.local_addrs();
        let (plain, dropped, forbidden, secure) =
            (bound[0].addr, bound[1].addr, bound[2].addr, bound[3].addr);
        assert!(!bound[0].tls && bound[3].tls, "{bound:?}");
        let handle = server.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        // HTML by default, with the rule's text, link, host, reference and time.
        let r = get(plain, &request("GET", "blocked.example", "*/*")).await;
        assert_eq!(r.status, 451, "{r:#?}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("content-length"), Some(&*r.body.len().to_string()));
        assert!(r.body.contains("by order of the court"), "{}", r.body);
        assert!(r.body.contains("href=\"https://example.net/statement\""));
        assert!(
            r.body
                .contains("<span class=\"host\">blocked.example</span>")
        );
        let reference = r
            .body
            .split("EB-")
            .nth(1)
            .map(|s| format!("EB-{}", &s[..12]))
            .unwrap_or_else(|| panic!("no reference in {}", r.body));

        // Plain text when preferred; a new reference per response; hostile Host escaped.
        let r = get(plain, &request("GET", "<i>x</i>.example:80", "text/plain")).await;
        assert_eq!(r.status, 451);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert!(
            r.body
                .starts_with("Access to <i>x</i>.example has been blocked."),
            "{}",
            r.body
        );
        assert!(r.body.contains("Statement:  https://example.net/statement"));
        assert!(!r.body.contains(&reference), "references must differ");
        let r = get(plain, &request("GET", "<i>x</i>.example", "text/html")).await;
        assert!(r.body.contains("&lt;i&gt;x&lt;/i&gt;.example"));
        assert!(!r.body.contains("<i>"));

        // HEAD: the headers of the GET, no body.
        let r = get(plain, &request("HEAD", "blocked.example", "*/*")).await;
        assert_eq!(r.status, 451);
        assert!(r.body.is_empty(), "{:?}", r.body);
        let length: usize = r
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("{r:#?}"));
        assert!(length > 500, "{length}");

        // Per-rule status; no Host header at all (HTTP/1.0) shows the address.
        let r = get(forbidden, "GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(r.status, 403, "{r:#?}");
        assert!(
            r.body.contains("<span class=\"host\">127.0.0.3</span>"),
            "{}",
            r.body
        );

        // An address no redirect rule covers.
        let r = get(dropped, &request("GET", "blocked.example", "*/*")).await;
        assert_eq!(r.status, 404, "{r:#?}");
        assert_eq!(r.body, "no notice for this address\n");
        assert_eq!(r.header("cache-control"), Some("no-store"));

        // A header section over the limit is refused, not buffered.
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES * 2)
        );
        let r = get(plain, &huge).await;
        assert_eq!(r.status, 431, "{r:#?}");

        // HTTPS with the self-signed certificate, any SNI name.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("{e}"))
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(secure)
            .await
            .unwrap_or_else(|e| panic!("connect {secure}: {e}"));
        let name = ServerName::try_from("blocked.example").unwrap_or_else(|e| panic!("{e}"));
        let tls = connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake: {e}"));
        let r = exchange(tls, &request("GET", "blocked.example", "text/plain")).await;
        assert_eq!(r.status, 451, "{r:#?}");
        assert!(r.body.contains("by order of the court"), "{}", r.body);

        // Reload: a new policy takes effect for the next request.
        handle.replace(notices(
            &POLICY.replace("by order of the court", "for a new reason"),
        ));
        let r = get(plain, &request("GET", "blocked.example", "text/plain")).await;
        assert!(r.body.contains("for a new reason"), "{}", r.body);

        let _ = stop.send(());
        serving.await.unwrap_or_else(|e| panic!("server task: {e}"));
    }

    #[tokio::test]
    async fn reload_keeps_the_old_notices_on_errors() {
        let dir = std::env::temp_dir().join(format!("edgeblock-notice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("policy.toml");
        std::fs::write(&path, POLICY).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::bind(&[], &[], None, notices(POLICY), Limits::default())
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let handle = server.handle();
        let loaded = handle.reload(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.redirect_rules, 2);
        std::fs::write(
            &path,
            POLICY.replace("notice_status = 403", "notice_status = 404"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let errors = handle
            .reload(&path)
            .err()
            .unwrap_or_else(|| panic!("a bad policy should not load"));
        assert!(
            errors
                .to_string()
                .contains(":18: rule \"forbidden\": notice_status = 404"),
            "{errors}"
        );
        let status = |h: &Handle| {
            h.state
                .notices()
                .lookup("127.0.0.3".parse().unwrap_or_else(|e| panic!("{e}")))
                .map(|m| m.notice.status)
        };
        assert_eq!(status(&handle), Some(403));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A port that was free a moment ago.
    async fn free_port() -> u16 {
        let probe = TcpListener::bind("[::]:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        probe.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
    }

    #[tokio::test]
    async fn ipv6_wildcard_is_dual_stack_alone_and_v6_only_beside_ipv4() {
        let text = &request("GET", "h", "text/plain");
        for pair in [false, true] {
            let port = free_port().await;
            let mut listen: Vec<SocketAddr> = vec![SocketAddr::from(([0u16; 8], port))];
            if pair {
                listen.insert(0, SocketAddr::from(([0, 0, 0, 0], port)));
            }
            let server = Server::bind(&listen, &[], None, notices(POLICY), Limits::default())
                .await
                .unwrap_or_else(|e| panic!("bind {listen:?}: {e}"));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(server.run(async {
                let _ = stopped.await;
            }));
            for client in [
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)),
            ] {
                let r = get(client, text).await;
                assert_eq!(r.status, 451, "{listen:?} <- {client}: {r:#?}");
            }
            let _ = stop.send(());
            serving.await.unwrap_or_else(|e| panic!("server task: {e}"));
        }
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let e = Server::bind(&[addr], &[], None, notices(POLICY), Limits::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("binding a taken port should fail"));
        assert!(
            e.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{e}"
        );
    }

    #[test]
    fn pem_files() {
        let dir = std::env::temp_dir().join(format!("edgeblock-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let certified = rcgen::generate_simple_self_signed(vec!["notice.example".to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
        let (cert, key, empty) = (dir.join("c.pem"), dir.join("k.pem"), dir.join("e.pem"));
        let pem = |der: &[u8], label: &str| {
            use std::fmt::Write as _;
            let b64 = base64_encode(der);
            let mut out = format!("-----BEGIN {label}-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                let _ = writeln!(out, "{}", String::from_utf8_lossy(chunk));
            }
            let _ = writeln!(out, "-----END {label}-----");
            out
        };
        std::fs::write(&cert, pem(certified.cert.der(), "CERTIFICATE"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            &key,
            pem(&certified.signing_key.serialize_der(), "PRIVATE KEY"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&empty, "nothing here\n").unwrap_or_else(|e| panic!("{e}"));
        let identity = TlsIdentity::from_pem_files(&cert, &key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(identity.chain.len(), 1);
        assert!(identity.acceptor().is_ok());
        let e = TlsIdentity::from_pem_files(&empty, &key)
            .err()
            .unwrap_or_else(|| panic!("no certificate should fail"));
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = TlsIdentity::from_pem_files(&cert, &empty)
            .err()
            .unwrap_or_else(|| panic!("no key should fail"));
        assert!(
            e.to_string().contains("cannot read the TLS private key"),
            "{e}"
        );
        let e = TlsIdentity::from_pem_files(&dir.join("missing.pem"), &key)
            .err()
            .unwrap_or_else(|| panic!("a missing file should fail"));
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn base64_encode(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
