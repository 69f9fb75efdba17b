use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::ArgGroup;
use edgeblock::notice::{Handle, Limits, Notices, Server, TlsIdentity};
use tokio::signal::unix::{SignalKind, signal};

use super::now;

/// Serve the block notice to visitors of redirected origins.
///
/// Answers any Host header and any destination address. The address a client connected to (the
/// blocked origin's, accepted through an AnyIP route such as `ip route add local
/// 203.0.113.0/24 dev lo`) picks the `redirect` rule of --policy whose prefix covers it; the
/// answer is that rule's notice page (status 451 or 403), or 404 where no redirect rule
/// applies. SIGHUP re-reads the policy (a policy with errors is reported and the previous one
/// kept); SIGINT and SIGTERM stop the server.
#[derive(Debug, clap::Args)]
#[command(group(
    ArgGroup::new("listeners").required(true).multiple(true).args(["listen", "tls_listen"])
))]
pub struct Args {
    /// Serve HTTP on this address, e.g. `[::]:80` (repeat for several). An IPv6 address
    /// serves IPv4 too, unless an IPv4 address with the same port is also given.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Serve HTTPS on this address, e.g. `[::]:443` (repeat for several). Only rules with
    /// `https = "notice"` send HTTPS visitors here.
    #[arg(long, value_name = "ADDR")]
    tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for HTTPS, leaf first. Without it a self-signed certificate is
    /// made at start; browsers warn about either, since the server answers for other sites'
    /// names.
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_listen"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The policy file (TOML): the same one the filter applies.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Most connections served at once; more are closed when accepted.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections 0 would refuse every visitor; give at least 1"
    );
    let notices = load(&args.policy)?;
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_pem_files(cert, key).context(
            "check --tls-cert and --tls-key, or leave both out for a self-signed certificate",
        )?),
        _ if !args.tls_listen.is_empty() => {
            let identity =
                TlsIdentity::self_signed().context("making a self-signed certificate")?;
            eprintln!(
                "notice-server: HTTPS uses a self-signed certificate, SHA-256 {}",
                identity.fingerprint()
            );
            Some(identity)
        }
        _ => None,
    };
    if args.tls_listen.is_empty() {
        for rule in notices.https_rules() {
            eprintln!(
                "note: rule {rule:?} sends HTTPS visitors here (https = \"notice\"), but \
                 there is no --tls-listen to answer them"
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, notices, identity))
}

/// Load the policy's notices, printing its notes; every validation error is reported.
fn load(path: &Path) -> anyhow::Result<Notices> {
    let (notices, notes) = Notices::load(path, now()).map_err(|errors| {
        anyhow::anyhow!(
            "{errors}\n{}: {} error(s); the notice server did not start",
            path.display(),
            errors.0.len()
        )
    })?;
    for note in &notes {
        eprintln!("note: {note}");
    }
    if notices.redirect_rules() == 0 {
        eprintln!(
            "note: {} has no redirect rules: every request will get 404",
            path.display()
        );
    }
    Ok(notices)
}

async fn serve(args: Args, notices: Notices, identity: Option<TlsIdentity>) -> anyhow::Result<()> {
    // Handlers first: SIGHUP's default action would end the process, and the operator may send
    // it as soon as the ports answer.
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let limits = Limits {
        max_connections: args.max_connections,
        ..Limits::default()
    };
    let server = Server::bind(&args.listen, &args.tls_listen, identity, notices, limits)
        .await
        .context("is another server on that port, or the address not on this host?")?;
    for bound in server.local_addrs() {
        let scheme = if bound.tls { "https" } else { "http" };
        eprintln!("notice-server: listening on {scheme}://{}", bound.addr);
    }
    let handle = server.handle();
    let path = args.policy.clone();
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = hangup.recv() => reload(&handle, &path),
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
    };
    server.run(shutdown).await;
    // Connections still open are cut when the runtime is dropped.
    eprintln!("notice-server: stopped");
    Ok(())
}

fn reload(handle: &Handle, path: &Path) {
    match handle.reload(path) {
        Ok(loaded) => {
            for note in &loaded.notes {
                eprintln!("note: {note}");
            }
            eprintln!(
                "notice-server: reloaded {}: {} redirect rule(s)",
                path.display(),
                loaded.redirect_rules
            );
        }
        Err(errors) => eprintln!(
            "{errors}\nnotice-server: {}: {} error(s); still serving the previous policy",
            path.display(),
            errors.0.len()
        ),
    }
}
