//! Prometheus metrics: read from the per-CPU maps at scrape time, plus what the daemon itself
//! counts (reloads, errors, repairs), in the OpenMetrics text format that Prometheus asks for.
//!
//! A scrape is a request to the control loop, which owns the maps: it answers between two
//! changes, never from a half-applied policy's metadata.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use filter_common::direction;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc::UnboundedSender, oneshot},
};

use super::Input;
use crate::{
    compile::{action_name, hash_hex},
    loader::Filter,
    maps::{CounterJson, MapsError, decode_name},
};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the daemon counts itself, beside the maps.
#[derive(Clone, Debug, Default)]
pub struct DaemonStats {
    /// Policy versions or runtime layers refused (invalid, lockout, apply failed).
    pub reload_errors: u64,
    /// Pins restored and interfaces re-attached after someone removed them.
    pub repairs: u64,
    /// When the last reload was attempted, and whether it succeeded.
    pub last_reload: Option<(jiff::Timestamp, bool)>,
    pub runtime_blocks: usize,
    /// Each configured interface and whether the filter runs on it.
    pub interfaces: Vec<(String, bool)>,
}

type Labels = Vec<(String, String)>;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// `<name>_packets_total` and `<name>_bytes_total`, labelled by `action`.
fn by_action<const N: usize>(
    registry: &mut Registry,
    name: &str,
    packets_help: &str,
    bytes_help: &str,
    counts: [(&str, CounterJson); N],
) {
    let packets = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    for (action, c) in counts {
        let l = labels([("action", action)]);
        packets.get_or_create(&l).inc_by(c.packets);
        bytes.get_or_create(&l).inc_by(c.bytes);
    }
    registry.register(format!("{name}_packets"), packets_help, packets);
    registry.register_with_unit(name, bytes_help, Unit::Bytes, bytes);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn count(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The metrics text, read from the maps now.
pub fn render(filter: &Filter, stats: &DaemonStats) -> Result<String, MapsError> {
    let maps = &filter.maps;
    let mut r = Registry::with_prefix("edgeblock");

    let rule_packets = Family::<Labels, Counter>::default();
    let rule_bytes = Family::<Labels, Counter>::default();
    for (id, meta) in maps.rule_metas()? {
        let c = maps.rule_counter(id)?;
        let l = labels([
            ("rule", &decode_name(&meta.name)),
            ("action", action_name(meta.action)),
            // A shadow rule's packets are those it would have handled, not what it did.
            (
                "mode",
                if meta.mode == filter_common::mode::SHADOW {
                    "shadow"
                } else {
                    "enforce"
                },
            ),
            (
                "direction",
                if meta.direction == direction::SRC {
                    "src"
                } else {
                    "dst"
                },
            ),
        ]);
        rule_packets.get_or_create(&l).inc_by(c.packets);
        rule_bytes.get_or_create(&l).inc_by(c.bytes);
    }
    r.register(
        "rule_packets",
        "Packets that matched each rule of the applied policy (mode=\"shadow\": packets the rule would have handled)",
        rule_packets,
    );
    r.register_with_unit(
        "rule",
        "Bytes of the packets that matched each rule",
        Unit::Bytes,
        rule_bytes,
    );

    let g = maps.global_stats()?;
    by_action(
        &mut r,
        "action",
        "Packets by the action taken (no_match: passed, no rule matched)",
        "Bytes by the action taken",
        [
            ("pass", g.pass),
            ("drop", g.drop),
            ("redirect", g.redirect),
            ("reject", g.reject),
            ("no_match", g.no_match),
        ],
    );
    by_action(
        &mut r,
        "shadow_action",
        "Packets shadow rules would have handled, by the action they would have taken (the enforced rules decided them)",
        "Bytes of the packets shadow rules would have handled",
        [
            ("pass", g.shadow_pass),
            ("drop", g.shadow_drop),
            ("redirect", g.shadow_redirect),
            ("reject", g.shadow_reject),
        ],
    );
    counter(
        &mut r,
        "malformed_packets",
        "Frames claiming to be IP that could not be parsed",
        g.malformed.packets,
    );
    counter(
        &mut r,
        "malformed_dropped_packets",
        "Malformed frames dropped (malformed = \"drop\")",
        g.malformed_dropped.packets,
    );
    counter(
        &mut r,
        "non_ip_packets",
        "Frames that are neither IPv4 nor IPv6 (passed)",
        g.non_ip.packets,
    );
    counter(
        &mut r,
        "reject_unanswered_packets",
        "Rejected packets dropped without a reply (rate limit, or no reply possible)",
        g.reject_unanswered.packets,
    );
    counter(
        &mut r,
        "redirect_failed_packets",
        "Packets a redirect rule could not send to its notice target",
        g.redirect_failed.packets,
    );
    counter(
        &mut r,
        "sampled_packets",
        "Blocked packets copied to the sample ring for `edgeblock tail`",
        g.sampled.packets,
    );
    counter(
        &mut r,
        "sample_lost_packets",
        "Samples lost because the ring was full (the reader fell behind)",
        g.sample_lost.packets,
    );

    let config = maps.config()?;
    gauge(
        &mut r,
        "policy_generation",
        "Generation of the policy in the maps; it grows with every apply that changed something",
        i64::try_from(config.generation).unwrap_or(i64::MAX),
    );
    r.register(
        "policy",
        "Hash of the policy in the maps (with its runtime layer)",
        Info::new(labels([(
            "hash",
            &if config.generation == 0 {
                "none".to_owned()
            } else {
                hash_hex(&config.policy_hash)
            },
        )])),
    );
    let last: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    let success: Gauge = Gauge::default();
    if let Some((at, ok)) = stats.last_reload {
        last.set(at.as_millisecond() as f64 / 1000.0);
        success.set(i64::from(ok));
    }
    r.register_with_unit(
        "last_reload_timestamp",
        "When the daemon last applied or tried to apply the policy",
        Unit::Seconds,
        last,
    );
    r.register(
        "last_reload_success",
        "1 if the last reload applied the policy, 0 if it was refused",
        success,
    );
    counter(
        &mut r,
        "reload_errors",
        "Policy versions and runtime layers refused (invalid, lockout, apply failure)",
        stats.reload_errors,
    );
    counter(
        &mut r,
        "repairs",
        "Pins restored and interfaces re-attached after someone removed them",
        stats.repairs,
    );
    gauge(
        &mut r,
        "runtime_blocks",
        "Runtime blocks in force (edgeblock block)",
        count(stats.runtime_blocks),
    );

    let attached = Family::<Labels, Gauge>::default();
    for (iface, up) in &stats.interfaces {
        attached
            .get_or_create(&labels([("interface", iface)]))
            .set(i64::from(*up));
    }
    r.register(
        "interface_attached",
        "1 while the filter runs on the interface",
        attached,
    );

    let entries = Family::<Labels, Gauge>::default();
    for (table, n) in [
        ("dst_v4", maps.record_len(&maps.v4, direction::DST)?),
        ("src_v4", maps.record_len(&maps.v4, direction::SRC)?),
        ("dst_v6", maps.record_len(&maps.v6, direction::DST)?),
        ("src_v6", maps.record_len(&maps.v6, direction::SRC)?),
    ] {
        entries
            .get_or_create(&labels([("table", table)]))
            .set(count(n));
    }
    r.register("table_entries", "Prefixes in each table", entries);
    let memory = Family::<Labels, Gauge>::default();
    for (map, bytes) in maps.memory()? {
        memory
            .get_or_create(&labels([("map", map)]))
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    r.register_with_unit(
        "map_memory",
        "Memory charged to each map",
        Unit::Bytes,
        memory,
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    Ok(out)
}

/// Serve `GET /metrics` on `listener` until the control loop goes away.
pub async fn serve(listener: TcpListener, control: UnboundedSender<Input>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let control = control.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&request, &control).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            // Errors here are the client's (a reset, a timeout): nothing to do.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    request: &Request<Incoming>,
    control: &UnboundedSender<Input>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        resp
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "edgeblock: metrics are at /metrics\n".into(),
        );
    }
    let (tx, rx) = oneshot::channel();
    if control.send(Input::Scrape(tx)).is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "edgeblock: stopping\n".into(),
        );
    }
    match rx.await {
        Ok(Ok(text)) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("edgeblock: reading the maps: {e}\n"),
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "edgeblock: stopping\n".into(),
        ),
    }
}

/// Bind the metrics listener before anything else, so a wrong address fails the start.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
