//! `tftpx serve --metrics ADDR:PORT`: an HTTP/1 endpoint with Prometheus metrics at
//! `/metrics` (OpenMetrics text, from the Prometheus org's `prometheus-client`) and the running
//! transfers as JSON at `/transfers`. Every other path is 404.
//!
//! Finished transfers are counted from their [`TransferSummary`] (the server's
//! `on_transfer_end` hook); refusals before a transfer, ERRORs sent and running transfers
//! are read from [`ServerStats`] at each scrape; with an origin and `--cache`, so are the
//! cache's counters (`tftpx_cache_*`: hits, fetches, not_modified, shared, stale_served,
//! evicted; `tftpx_cache_bytes` held).
//!
//! Outcome labels of `tftpx_transfers_total`, from [`TransferSummary::outcome_name`]:
//!
//! | summary outcome | label |
//! | --- | --- |
//! | `ok` | `ok` |
//! | `failed` after the peer stopped answering (timed out) | `timeout` |
//! | `refused` (an ERROR answered the request), `failed` otherwise | `error` |
//! | `cancelled` (server stopped), `evicted`, `size-probe`, `duplicate` | `cancelled` |
//!
//! `size-probe` (the client ended the transfer after reading tsize from the OACK) and
//! `duplicate` (the client repeated its request and continues with the first transfer) are
//! routine and ended by the client before any data: not errors. `evicted` transfers were
//! ended by the server because their peer never answered and a newer request needed the
//! slot.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tftpx::proto::transfer::TransferError;
use tftpx::{Kind, Outcome, Refusal, ServerStats, TransferSummary};
use tftpx_origin::CacheStats;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Content type of the OpenMetrics text format (what `prometheus-client` writes; Prometheus
/// reads it).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// HTTP connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection is kept, keep-alive included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bounds of `tftpx_transfer_duration_seconds`, in seconds: from a refused request
/// (a millisecond) to a large image over a slow link (10 minutes).
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];

/// `kind` and `outcome` labels.
type TransferLabels = [(&'static str, &'static str); 2];

/// The server's metrics: fed by [`Metrics::record`] for each finished transfer, read from
/// [`ServerStats`] for the rest.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    transfers: Family<TransferLabels, Counter>,
    bytes_sent: Counter,
    bytes_received: Counter,
    retransmits: Counter,
    busy_polls: Counter,
    busy_poll_hits: Counter,
    duration: Histogram,
    stats: ServerStats,
}

impl Metrics {
    /// Metrics of a server whose live counters are `stats`. Every label value is present
    /// from the start (at 0), so a rate over a new label never starts mid-way.
    pub(crate) fn new(stats: ServerStats, cache: Option<CacheSource>) -> Self {
        let mut registry = Registry::default();
        let transfers = Family::<TransferLabels, Counter>::default();
        for kind in ["rrq", "wrq"] {
            for outcome in ["ok", "error", "timeout", "cancelled"] {
                drop(transfers.get_or_create(&[("kind", kind), ("outcome", outcome)]));
            }
        }
        registry.register(
            "tftpx_transfers",
            "Transfers ended, by kind (rrq, wrq) and outcome (ok, error, timeout, cancelled)",
            transfers.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "tftpx_bytes_sent",
            "Payload bytes of finished downloads that their clients acknowledged",
            bytes_sent.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "tftpx_bytes_received",
            "Payload bytes of finished uploads received",
            bytes_received.clone(),
        );
        let retransmits = Counter::default();
        registry.register(
            "tftpx_retransmits",
            "Packets sent again by finished transfers (timeouts and gap recovery)",
            retransmits.clone(),
        );
        let busy_polls = Counter::default();
        registry.register(
            "tftpx_busy_polls",
            "Waits of finished transfers that polled their socket before sleeping (--busy-poll)",
            busy_polls.clone(),
        );
        let busy_poll_hits = Counter::default();
        registry.register(
            "tftpx_busy_poll_hits",
            "Busy polls of finished transfers that got a datagram before the wait slept",
            busy_poll_hits.clone(),
        );
        let duration = Histogram::new(DURATION_BUCKETS);
        registry.register_with_unit(
            "tftpx_transfer_duration",
            "Time from request to outcome of finished transfers, dally excluded",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register_collector(Box::new(Live(stats.clone())));
        if let Some(cache) = cache {
            registry.register_collector(Box::new(CacheLive(cache)));
        }
        Self {
            registry,
            transfers,
            bytes_sent,
            bytes_received,
            retransmits,
            busy_polls,
            busy_poll_hits,
            duration,
            stats,
        }
    }

    /// Counts a finished transfer.
    pub(crate) fn record(&self, s: &TransferSummary) {
        let kind = match s.kind {
            Kind::Rrq => "rrq",
            Kind::Wrq => "wrq",
        };
        self.transfers
            .get_or_create(&[("kind", kind), ("outcome", outcome_label(s))])
            .inc();
        match s.kind {
            Kind::Rrq => self.bytes_sent.inc_by(s.stats.bytes),
            Kind::Wrq => self.bytes_received.inc_by(s.stats.bytes),
        };
        self.retransmits.inc_by(s.stats.retransmits);
        self.busy_polls.inc_by(s.busy_polls.polls);
        self.busy_poll_hits.inc_by(s.busy_polls.hits);
        self.duration.observe(s.duration.as_secs_f64());
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The running transfers as a JSON array, oldest first: `peer` (`ADDR:PORT`), `kind`
    /// (`rrq`/`wrq`), `file` (and `remapped` when the remap rules changed it, else null),
    /// `bytes` (payload so far, acknowledged or received), `rate` (average payload bytes/s
    /// since the request), `started` (RFC 3339, UTC, milliseconds) and `seconds` (time
    /// since then).
    pub(crate) fn transfers_json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .stats
            .running()
            .into_iter()
            .map(|t| {
                serde_json::json!({
                    "peer": t.peer.to_string(),
                    "kind": match t.kind { Kind::Rrq => "rrq", Kind::Wrq => "wrq" },
                    "file": t.file,
                    "remapped": t.remapped,
                    "bytes": t.bytes,
                    "rate": (t.rate() * 10.0).round() / 10.0,
                    "started": humantime::format_rfc3339_millis(t.started).to_string(),
                    "seconds": (t.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        let mut out = serde_json::Value::Array(list).to_string();
        out.push('\n');
        out
    }
}

/// The `outcome` label of a finished transfer (see the module docs).
pub(crate) fn outcome_label(s: &TransferSummary) -> &'static str {
    match s.outcome_name() {
        "ok" => "ok",
        "cancelled" | "evicted" | "size-probe" | "duplicate" => "cancelled",
        _ if matches!(s.outcome, Outcome::Failed(TransferError::TimedOut { .. })) => "timeout",
        _ => "error",
    }
}

/// What [`ServerStats`] holds, read at each scrape.
#[derive(Debug)]
struct Live(ServerStats);

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        {
            let mut family = encoder.encode_descriptor(
                "tftpx_refused",
                "Requests refused by admission or policy before a transfer started, by reason \
                 (acl: datagrams dropped by --deny)",
                None,
                ConstCounter::<u64>::new(0).metric_type(),
            )?;
            for r in Refusal::ALL {
                let labels = [("reason", r.name())];
                ConstCounter::new(s.refused(r)).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "tftpx_errors_sent",
                "TFTP ERROR packets sent, by error code (RFC 1350 section 5)",
                None,
                ConstCounter::<u64>::new(0).metric_type(),
            )?;
            for code in 0..=8u16 {
                let code_label = code.to_string();
                let labels = [("code", code_label.as_str())];
                ConstCounter::new(s.errors_sent(code)).encode(family.encode_family(&labels)?)?;
            }
        }
        let active = ConstGauge::new(i64::try_from(s.active()).unwrap_or(i64::MAX));
        active.encode(encoder.encode_descriptor(
            "tftpx_active_transfers",
            "Transfers running now",
            None,
            active.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Reads an origin cache's counters and the bytes it holds (`--cache`), at each scrape.
pub(crate) type CacheSource = Arc<dyn Fn() -> (CacheStats, u64) + Send + Sync>;

/// The `--cache` counters: `tftpx_cache_*`.
struct CacheLive(CacheSource);

impl std::fmt::Debug for CacheLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheLive")
    }
}

impl Collector for CacheLive {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (s, used) = (self.0)();
        for (name, help, value) in [
            (
                "tftpx_cache_hits",
                "Requests served from a complete --cache file (the origin said not modified, \
                 or failed)",
                s.hits,
            ),
            (
                "tftpx_cache_fetches",
                "Bodies fetched from the origin in full into --cache",
                s.fetches,
            ),
            (
                "tftpx_cache_not_modified",
                "Revalidations the origin answered not modified (HTTP 304)",
                s.not_modified,
            ),
            (
                "tftpx_cache_shared",
                "Requests that joined an origin fetch or revalidation already under way",
                s.shared,
            ),
            (
                "tftpx_cache_stale_served",
                "Requests served from --cache because the origin failed to revalidate",
                s.stale_served,
            ),
            (
                "tftpx_cache_evicted",
                "Files removed from --cache to stay within --cache-size",
                s.evicted,
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let held = ConstGauge::new(i64::try_from(used).unwrap_or(i64::MAX));
        held.encode(encoder.encode_descriptor(
            "tftpx_cache",
            "Bytes --cache holds (a 4 KiB header per file included)",
            Some(&Unit::Bytes),
            held.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Serves `/metrics` and `/transfers` on `listener` until the runtime ends.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning.
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let m = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&m, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!("metrics: connection ended: {e}");
            }
            drop(permit);
        });
    }
}

fn respond(m: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (content_type, body) = match req.uri().path() {
        "/metrics" => (OPENMETRICS, m.encode()),
        "/transfers" => ("application/json", m.transfers_json()),
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: try /metrics or /transfers\n",
            )
        }
    };
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
    };
    let len = body.len();
    let mut r = Response::new(Full::new(if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    }));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if head {
        h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Binds the metrics listener (before privileges are dropped: Landlock denies TCP bind
/// afterwards, accepting on a bound socket stays allowed).
///
/// # Errors
/// A one-line message naming the address.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen for --metrics on {addr}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("--metrics {addr}: {e}"))?;
    Ok(l)
}

/// `http://ADDR/metrics` for the log.
pub(crate) fn describe(addr: SocketAddr) -> String {
    let mut s = String::new();
    let _ = write!(s, "http://{addr}/metrics and http://{addr}/transfers");
    s
}
