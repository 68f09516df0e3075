//! `tftpx serve --metrics 127.0.0.1:0`: real transfers (curl, tftp-hpa, raw datagrams), then
//! `/metrics` scraped over HTTP and parsed by the Python Prometheus client's OpenMetrics
//! parser (`prometheus_client.openmetrics.parser.text_string_to_metric_families`, Debian's
//! `python3-prometheus-client`, installed by `.ci/install-peers.sh`) with every value
//! asserted; `/transfers` while a slowly acknowledged download runs, and after it.
//!
//! The server runs confined (Landlock denies TCP bind and connect after start-up): the
//! metrics listener bound before that still serves.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, metrics_port, Layout, Opts, Peer, Server};

/// Bound on every wait for a condition.
const WAIT: Duration = Duration::from_secs(20);

/// One sample as the parser read it.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    family: String,
    kind: String,
    value: f64,
}

/// Parses OpenMetrics text with the Python Prometheus client: `name{k="v",...}` (labels
/// sorted) -> sample. Panics when the parser rejects the text.
fn parse_metrics(text: &str) -> BTreeMap<String, Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.txt");
    std::fs::write(&input, text).unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", SCRIPT])
        .stdin(std::fs::File::open(&input).unwrap());
    let out = cmd.output().expect("run /usr/bin/python3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'prometheus_client'"),
        "python3-prometheus-client is not installed: run `bash .ci/install-peers.sh` as root"
    );
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the text: {err}\n{text}"
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = BTreeMap::new();
    for s in list {
        let labels: BTreeMap<String, String> = serde_json::from_value(s["labels"].clone()).unwrap();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let key = if labels.is_empty() {
            s["name"].as_str().unwrap().to_owned()
        } else {
            format!("{}{{{}}}", s["name"].as_str().unwrap(), labels.join(","))
        };
        map.insert(
            key,
            Sample {
                family: s["family"].as_str().unwrap().to_owned(),
                kind: s["type"].as_str().unwrap().to_owned(),
                value: s["value"].as_f64().unwrap(),
            },
        );
    }
    map
}

fn scrape(port: u16) -> BTreeMap<String, Sample> {
    let (status, head, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    parse_metrics(&body)
}

fn value(m: &BTreeMap<String, Sample>, key: &str) -> f64 {
    m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", m.keys()))
        .value
}

fn request(opcode: u8, name: &str) -> Vec<u8> {
    let mut p = vec![0, opcode];
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(b"\0octet\0");
    p
}

fn udp(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Retransmissions the server's summary lines report (`, N timeouts, M retransmits`).
fn logged_retransmits(log: &str) -> f64 {
    log.lines()
        .filter_map(|l| {
            let at = l.find(" retransmits")?;
            let head = &l[..at];
            head.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Every metric of the issue, each value exact, after: a curl download (ok), a curl request
/// for a missing file (ERROR 1), a remap refusal (ERROR 2), a WRQ from outside
/// --allow-write-from (ERROR 2 from the listener, no transfer), 3 datagrams from a denied
/// source (no answer), a tftp-hpa upload (ok).
#[test]
fn metrics_count_real_transfers_and_refusals_exactly() {
    let l = Layout::new();
    let big = common::pseudo_random(3000);
    common::write_file(&l.root.join("big.bin"), &big);
    let map = l.base.join("rules");
    std::fs::write(&map, "a ^secret/\n").unwrap();
    let srv = Server::start(
        &l.root,
        &[
            "--allow-create",
            "--metrics",
            "127.0.0.1:0",
            "--deny",
            "127.0.0.3",
            "--allow-write-from",
            "127.0.0.1/32",
            "--map",
            map.to_str().unwrap(),
        ],
    );
    let port = metrics_port(&srv);
    // Before any request: every label value present, all zero.
    let m = scrape(port);
    assert_eq!(
        value(&m, r#"tftpx_transfers_total{kind="rrq",outcome="ok"}"#),
        0.0
    );
    assert_eq!(value(&m, "tftpx_active_transfers"), 0.0);

    let opts = Opts::default();
    let got = l.local.join("big.bin");
    let out = common::download(Peer::Curl, &srv, "big.bin", &got, &opts);
    assert!(out.status.success(), "{out}");
    common::assert_file_content(&got, &big, "curl download");
    let out = common::download(Peer::Curl, &srv, "missing.txt", &l.local.join("m"), &opts);
    common::assert_client_saw_error(Peer::Curl, &out, &[1]);
    let out = common::download(Peer::Curl, &srv, "secret/key", &l.local.join("s"), &opts);
    common::assert_client_saw_error(Peer::Curl, &out, &[2]);
    // A WRQ from 127.0.0.2: refused at the listener with ERROR 2.
    let s = udp("127.0.0.2");
    s.send_to(&request(2, "up2.bin"), ("127.0.0.1", srv.port))
        .unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = s.recv_from(&mut buf).expect("ERROR 2 for the refused WRQ");
    assert_eq!(&buf[..4], [0, 5, 0, 2], "{:?}", &buf[..n]);
    // A denied source: dropped without an answer.
    let d = udp("127.0.0.3");
    for _ in 0..3 {
        d.send_to(&request(1, "big.bin"), ("127.0.0.1", srv.port))
            .unwrap();
    }
    let up = common::pseudo_random_seeded(1500, 7);
    let local = l.local.join("up.bin");
    common::write_file(&local, &up);
    let out = common::upload(Peer::TftpHpa, &srv, &local, "up.bin", &opts);
    common::assert_file_content(
        &l.root.join("up.bin"),
        &up,
        &format!("tftp-hpa upload: {out}"),
    );

    // The counters are updated just after the summary is logged: wait for all of them.
    let mut m = BTreeMap::new();
    let settled = common::wait_until(WAIT, || {
        m = scrape(port);
        let ended: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("tftpx_transfers_total{"))
            .map(|(_, s)| s.value)
            .sum();
        ended == 4.0 && value(&m, r#"tftpx_refused_total{reason="acl"}"#) == 3.0
    });
    assert!(settled, "metrics did not settle: {m:#?}\n{}", srv.log());
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for kind in ["rrq", "wrq"] {
        for outcome in ["ok", "error", "timeout", "cancelled"] {
            expected.insert(
                format!(r#"tftpx_transfers_total{{kind="{kind}",outcome="{outcome}"}}"#),
                0.0,
            );
        }
    }
    expected.insert(
        r#"tftpx_transfers_total{kind="rrq",outcome="ok"}"#.into(),
        1.0,
    );
    expected.insert(
        r#"tftpx_transfers_total{kind="rrq",outcome="error"}"#.into(),
        2.0,
    );
    expected.insert(
        r#"tftpx_transfers_total{kind="wrq",outcome="ok"}"#.into(),
        1.0,
    );
    expected.insert("tftpx_bytes_sent_total".into(), 3000.0);
    expected.insert("tftpx_bytes_received_total".into(), 1500.0);
    expected.insert(
        "tftpx_retransmits_total".into(),
        logged_retransmits(&srv.log()),
    );
    for code in 0..=8 {
        let n = match code {
            1 => 1.0,
            2 => 2.0,
            _ => 0.0,
        };
        expected.insert(format!(r#"tftpx_errors_sent_total{{code="{code}"}}"#), n);
    }
    for (reason, n) in [
        ("acl", 3.0),
        ("rate_limit", 0.0),
        ("write_not_allowed", 1.0),
        ("per_client_limit", 0.0),
        ("max_transfers", 0.0),
        ("out_of_descriptors", 0.0),
        ("port_range_exhausted", 0.0),
        ("remap", 1.0),
    ] {
        expected.insert(format!(r#"tftpx_refused_total{{reason="{reason}"}}"#), n);
    }
    expected.insert("tftpx_active_transfers".into(), 0.0);
    expected.insert("tftpx_transfer_duration_seconds_count".into(), 4.0);
    expected.insert(
        r#"tftpx_transfer_duration_seconds_bucket{le="+Inf"}"#.into(),
        4.0,
    );
    for (k, v) in &expected {
        assert_eq!(value(&m, k), *v, "{k}\n{m:#?}");
    }
    // Busy polls: the two transfers that ran (one at a time) polled before sleeping;
    // whether a reply beat the budget is up to the scheduler.
    let (polls, hits) = (
        value(&m, "tftpx_busy_polls_total"),
        value(&m, "tftpx_busy_poll_hits_total"),
    );
    assert!(polls >= 2.0 && hits <= polls, "{hits} of {polls}");
    expected.insert("tftpx_busy_polls_total".into(), polls);
    expected.insert("tftpx_busy_poll_hits_total".into(), hits);
    // Nothing else but the histogram's buckets and sum.
    for k in m.keys() {
        assert!(
            expected.contains_key(k)
                || k.starts_with("tftpx_transfer_duration_seconds_bucket{")
                || k == "tftpx_transfer_duration_seconds_sum",
            "unexpected sample {k}"
        );
    }
    let sum = value(&m, "tftpx_transfer_duration_seconds_sum");
    assert!(sum > 0.0 && sum < 4.0 * WAIT.as_secs_f64(), "{sum}");
    // Buckets are cumulative and end at the count.
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("tftpx_transfer_duration_seconds_bucket{"))
        .map(|(k, s)| {
            let le = k.split('"').nth(1).unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 5, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    // Families and their types as a Prometheus parser reads them.
    for (k, family, kind) in [
        ("tftpx_bytes_sent_total", "tftpx_bytes_sent", "counter"),
        ("tftpx_active_transfers", "tftpx_active_transfers", "gauge"),
        (
            "tftpx_transfer_duration_seconds_count",
            "tftpx_transfer_duration_seconds",
            "histogram",
        ),
        (
            r#"tftpx_refused_total{reason="acl"}"#,
            "tftpx_refused",
            "counter",
        ),
    ] {
        assert_eq!(
            (m[k].family.as_str(), m[k].kind.as_str()),
            (family, kind),
            "{k}"
        );
    }
    // Other paths.
    let (status, _, body) = http_get(port, "/nothing");
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = http_get(port, "/transfers");
    assert_eq!((status, body.trim()), (200, "[]"));
    // The log names the address (and the port the OS picked), after confinement.
    let log = srv.log();
    assert!(
        log.contains(&format!(
            "metrics at http://127.0.0.1:{port}/metrics and http://127.0.0.1:{port}/transfers"
        )),
        "{log}"
    );
    assert!(
        log.contains("no TCP"),
        "the server should run under Landlock, TCP denied:\n{log}"
    );
}

/// `/transfers` lists a download whose client acknowledges slowly, with its peer, file,
/// kind, bytes so far, a rate and an RFC 3339 start; `tftpx_active_transfers` is 1 meanwhile;
/// both are empty / 0 once it ends.
#[test]
fn transfers_lists_a_running_download_then_nothing() {
    let l = Layout::new();
    let data = common::pseudo_random(512 * 8 + 100);
    common::write_file(&l.root.join("slow.bin"), &data);
    let srv = Server::start(&l.root, &["--metrics", "127.0.0.1:0", "--timeout", "5s"]);
    let port = metrics_port(&srv);
    let c = udp("127.0.0.1");
    let me = c.local_addr().unwrap();
    c.send_to(&request(1, "slow.bin"), ("127.0.0.1", srv.port))
        .unwrap();
    let mut buf = [0u8; 600];
    let (n, tid) = c.recv_from(&mut buf).expect("DATA 1");
    assert_eq!(&buf[..4], [0, 3, 0, 1]);
    let mut got = buf[4..n].to_vec();
    c.send_to(&[0, 4, 0, 1], tid).unwrap();
    // DATA 2 comes; it is not acknowledged until /transfers has shown the transfer.
    let (n, _) = c.recv_from(&mut buf).expect("DATA 2");
    assert_eq!(&buf[..4], [0, 3, 0, 2]);
    let mut list = serde_json::Value::Null;
    let shown = common::wait_until(WAIT, || {
        let (status, _, body) = http_get(port, "/transfers");
        assert_eq!(status, 200, "{body}");
        list = serde_json::from_str(&body).expect("JSON");
        list.as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["bytes"] == 512)
    });
    assert!(shown, "/transfers: {list}\n{}", srv.log());
    let t = &list[0];
    assert_eq!(t["peer"], me.to_string());
    assert_eq!(t["file"], "slow.bin");
    assert_eq!(t["kind"], "rrq");
    assert!(t["remapped"].is_null(), "{t}");
    assert!(t["rate"].as_f64().is_some_and(|r| r > 0.0), "{t}");
    let started = t["started"].as_str().unwrap();
    let at = humantime::parse_rfc3339(started).expect("RFC 3339");
    let age = std::time::SystemTime::now()
        .duration_since(at)
        .unwrap_or_default();
    assert!(started.ends_with('Z') && age < WAIT * 2, "{started}");
    let m = scrape(port);
    assert_eq!(value(&m, "tftpx_active_transfers"), 1.0);
    // Finish the download lock-step (each block acknowledged once it is the next).
    got.extend_from_slice(&buf[4..n]);
    c.send_to(&[0, 4, 0, 2], tid).unwrap();
    let mut next = 3u16;
    let deadline = Instant::now() + WAIT;
    while got.len() < data.len() && Instant::now() < deadline {
        let (n, from) = c.recv_from(&mut buf).expect("DATA");
        assert_eq!(from, tid);
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if buf[1] == 3 && block == next {
            got.extend_from_slice(&buf[4..n]);
            next += 1;
        }
        c.send_to(&[0, 4, buf[2], buf[3]], tid).unwrap();
    }
    assert_eq!(got, data, "the download arrived whole");
    let mut body = String::new();
    let empty = common::wait_until(WAIT, || {
        body = http_get(port, "/transfers").2;
        body.trim() == "[]"
    });
    assert!(empty, "/transfers after the end: {body}");
    let m = scrape(port);
    assert_eq!(value(&m, "tftpx_active_transfers"), 0.0);
    assert_eq!(
        value(&m, r#"tftpx_transfers_total{kind="rrq",outcome="ok"}"#),
        1.0
    );
    assert_eq!(value(&m, "tftpx_bytes_sent_total"), data.len() as f64);
}

/// A metrics address that cannot be bound stops start-up with one line naming it.
#[test]
fn an_unbindable_metrics_address_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let l = Layout::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tftpx"));
    cmd.arg("serve")
        .arg(&l.root)
        .args(["--listen", "127.0.0.1:0", "--user", "root"])
        .args(["--metrics", &addr.to_string()]);
    let out = common::run_bounded(cmd, WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen for --metrics on {addr}")),
        "{err}"
    );
}

/// Sends an RRQ for `name` from `s` and returns the first datagram answering it and where
/// it came from.
fn ask(s: &UdpSocket, port: u16, name: &str) -> (Vec<u8>, SocketAddr) {
    s.send_to(&request(1, name), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 600];
    let (n, from) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to RRQ {name}: {e}"));
    (buf[..n].to_vec(), from)
}

/// `per_client_limit` and `max_transfers` refusals (each answered ERROR 0), and the active
/// gauge and `/transfers` with two downloads running.
#[test]
fn transfer_limits_are_counted_as_refusals() {
    let l = Layout::new();
    common::write_file(&l.root.join("slow.bin"), &common::pseudo_random(512 * 4));
    let srv = Server::start(
        &l.root,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-transfers",
            "2",
            "--max-transfers-per-client",
            "1",
            "--timeout",
            "5s",
        ],
    );
    let port = metrics_port(&srv);
    // Two running downloads whose peers answered (ACK 1), from two clients.
    let mut running = Vec::new();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let s = udp(ip);
        let (d, tid) = ask(&s, srv.port, "slow.bin");
        assert_eq!(&d[..4], [0, 3, 0, 1], "{d:?}");
        s.send_to(&[0, 4, 0, 1], tid).unwrap();
        let mut buf = [0u8; 600];
        s.recv_from(&mut buf).expect("DATA 2");
        running.push((s, tid));
    }
    // Same client again: its running transfer answered, so it is refused.
    let (d, _) = ask(&udp("127.0.0.1"), srv.port, "slow.bin");
    assert_eq!(&d[..4], [0, 5, 0, 0], "{d:?}");
    // Another client: both slots are taken.
    let (d, _) = ask(&udp("127.0.0.4"), srv.port, "slow.bin");
    assert_eq!(&d[..4], [0, 5, 0, 0], "{d:?}");
    let m = scrape(port);
    assert_eq!(
        value(&m, r#"tftpx_refused_total{reason="per_client_limit"}"#),
        1.0
    );
    assert_eq!(
        value(&m, r#"tftpx_refused_total{reason="max_transfers"}"#),
        1.0
    );
    assert_eq!(value(&m, r#"tftpx_errors_sent_total{code="0"}"#), 2.0);
    assert_eq!(value(&m, "tftpx_active_transfers"), 2.0);
    let list: serde_json::Value = serde_json::from_str(&http_get(port, "/transfers").2).unwrap();
    let mut peers: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["peer"].as_str().unwrap().to_owned())
        .collect();
    peers.sort();
    let mut want: Vec<String> = running
        .iter()
        .map(|(s, _)| s.local_addr().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(peers, want);
    // The clients give up (ERROR 0 to the transfer): counted as errors the server did not
    // send.
    for (s, tid) in &running {
        s.send_to(b"\x00\x05\x00\x00stop\x00", tid).unwrap();
    }
    let mut m = BTreeMap::new();
    let ended = common::wait_until(WAIT, || {
        m = scrape(port);
        value(&m, r#"tftpx_transfers_total{kind="rrq",outcome="error"}"#) == 2.0
    });
    assert!(ended, "{m:#?}\n{}", srv.log());
    assert_eq!(value(&m, "tftpx_active_transfers"), 0.0);
    assert_eq!(value(&m, r#"tftpx_errors_sent_total{code="0"}"#), 2.0);
    assert_eq!(value(&m, "tftpx_bytes_sent_total"), 1024.0);
}

/// `rate_limit` refusals: with `--rate-limit 1` (burst 2) a burst of 6 unanswered requests
/// from 6 ports of one address gets the first ones served and the rest refused, the first
/// refusal with ERROR 0.
#[test]
fn rate_limited_requests_are_counted() {
    let l = Layout::new();
    let srv = Server::start(&l.root, &["--metrics", "127.0.0.1:0", "--rate-limit", "1"]);
    let port = metrics_port(&srv);
    // One socket (port) each: a repeat from the same port would be a duplicate request.
    let sockets: Vec<UdpSocket> = (0..6).map(|_| udp("127.0.0.5")).collect();
    for s in &sockets {
        s.send_to(&request(1, "missing.bin"), ("127.0.0.1", srv.port))
            .unwrap();
    }
    // Every request is either a transfer (ERROR 1) or a refusal; wait until all 6 counted.
    let mut m = BTreeMap::new();
    let settled = common::wait_until(WAIT, || {
        m = scrape(port);
        value(&m, r#"tftpx_transfers_total{kind="rrq",outcome="error"}"#)
            + value(&m, r#"tftpx_refused_total{reason="rate_limit"}"#)
            == 6.0
    });
    assert!(settled, "{m:#?}\n{}", srv.log());
    let served = value(&m, r#"tftpx_transfers_total{kind="rrq",outcome="error"}"#);
    // A burst of 2; a third only if the machine stalled a second between two requests.
    assert!((2.0..=3.0).contains(&served), "{served}");
    assert_eq!(value(&m, r#"tftpx_errors_sent_total{code="1"}"#), served);
    // One ERROR 0 per 10 s for the refusals.
    assert_eq!(value(&m, r#"tftpx_errors_sent_total{code="0"}"#), 1.0);
}
