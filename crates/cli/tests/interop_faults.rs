//! Real TFTP peers behind the seeded fault-injecting relay (issue 4's fault matrix, real-peer
//! half): the `tftpx serve` binary with tftp-hpa, atftp (plain and with blksize/windowsize),
//! curl and busybox; and the `tftpx get`/`put` binary against tftpd-hpa and atftpd (plain and
//! with options). Faults: loss 5 % and 20 % both ways, duplication 10 %, reordering, and the
//! exact losses (the request, the OACK, the first ACK, the last DATA, the final ACK); and a
//! link that dies mid-transfer.
//!
//! Real peers have their own retry budgets (and some leave partial files when they fail), so
//! for a real client the check is: it completed byte-identical, or it reported failure. For
//! the tftpx side: never a hang (every process is bounded and killed by PID), never a
//! corrupt file (a failed `tftpx get` leaves no output file and keeps an existing one; a
//! failed upload to `tftpx serve` leaves the old file intact and no temporary file).
//! Each test prints its matrix (`-- --nocapture`): outcome, DATA sent, distinct blocks and
//! retransmissions as the relay counted them.

#[path = "../../tftpx/tests/support/relay.rs"]
mod relay;

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{list_dir, part_files, pseudo_random_seeded, Kind, Layout, Server};
use relay::{op, Counts, Dir, Faults, Pick, Relay};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");
const ATFTPD: &str = "/opt/tftpx-peers/atftpd/usr/sbin/atftpd";
const IN_TFTPD: &str = "/usr/sbin/in.tftpd";
const INSTALL: &str = "run `bash .ci/install-peers.sh` as root to install the TFTP peers";
/// Past this a process counts as hung: it is killed (by PID) and the case fails.
const LIMIT: Duration = Duration::from_secs(150);
/// Cases run side by side (they mostly wait on their peers' timers).
const WORKERS: usize = 12;
/// The file moved in every case: 30 blocks of 512 bytes and a short one.
const SIZE: usize = 512 * 30 + 100;

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

struct Out {
    ok_exit: bool,
    code: Option<i32>,
    text: String,
    elapsed: Duration,
}

/// Runs `cmd` (feeding it `stdin`) to the end, or kills it by PID after [`LIMIT`] and
/// panics: a hang.
fn run(mut cmd: Command, stdin: Option<String>) -> Out {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}: {INSTALL}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(input.as_bytes());
    }
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let o = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let e = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung: killed after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        ok_exit: status.success(),
        code: status.code(),
        text: format!("{}{}", o.join().unwrap(), e.join().unwrap()),
        elapsed: start.elapsed(),
    }
}

/// The last non-empty line a process printed, shortened: why a client says it failed.
fn last_line(text: &str) -> String {
    let l = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let l: String = l.trim().chars().take(70).collect();
    format!("\"{l}\"")
}

fn unique(dir: &Path, what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("{what}-{}", N.fetch_add(1, Ordering::Relaxed)))
}

// ---------------------------------------------------------------------------------------
// The fault set
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Xfer {
    Get,
    Put,
}

/// A named fault: (to server, to client), given the direction of transfer and whether
/// options are negotiated (no OACK to lose otherwise).
struct Fault {
    name: &'static str,
    make: fn(Xfer) -> (Faults, Faults),
    needs_oack: bool,
}

fn both(f: Faults) -> (Faults, Faults) {
    (f.clone(), f)
}

fn drop_to_server(p: Pick) -> (Faults, Faults) {
    (
        Faults {
            drop: vec![p],
            ..Faults::default()
        },
        Faults::default(),
    )
}

fn drop_to_client(p: Pick) -> (Faults, Faults) {
    let (a, b) = drop_to_server(p);
    (b, a)
}

/// Drops `p` in the direction DATA flows (`data`) or the one ACKs flow.
fn drop_in(x: Xfer, data: bool, p: Pick) -> (Faults, Faults) {
    if (x == Xfer::Get) == data {
        drop_to_client(p)
    } else {
        drop_to_server(p)
    }
}

fn faults() -> Vec<Fault> {
    vec![
        Fault {
            name: "loss 5%",
            make: |_| {
                both(Faults {
                    loss: 5,
                    ..Faults::default()
                })
            },
            needs_oack: false,
        },
        Fault {
            name: "loss 20%",
            make: |_| {
                both(Faults {
                    loss: 20,
                    ..Faults::default()
                })
            },
            needs_oack: false,
        },
        Fault {
            name: "dup 10%",
            make: |_| {
                both(Faults {
                    dup: 10,
                    ..Faults::default()
                })
            },
            needs_oack: false,
        },
        Fault {
            name: "reorder 10%",
            make: |_| {
                both(Faults {
                    reorder: 10,
                    delay: Duration::from_millis(5),
                    ..Faults::default()
                })
            },
            needs_oack: false,
        },
        Fault {
            name: "lose request",
            make: |x| {
                let op = if x == Xfer::Get { op::RRQ } else { op::WRQ };
                drop_to_server(Pick::Of(op, 1))
            },
            needs_oack: false,
        },
        Fault {
            name: "lose OACK",
            make: |_| drop_to_client(Pick::Of(op::OACK, 1)),
            needs_oack: true,
        },
        Fault {
            // The first reply is lost; the client repeats its request, and that repeat
            // arrives late, when the transfer is under way or over (a duplicate request).
            name: "late dup request",
            make: |x| {
                let op = if x == Xfer::Get { op::RRQ } else { op::WRQ };
                (
                    Faults {
                        hold: vec![(Pick::Of(op, 2), Duration::from_millis(1500))],
                        ..Faults::default()
                    },
                    Faults {
                        drop: vec![Pick::Nth(1)],
                        ..Faults::default()
                    },
                )
            },
            needs_oack: false,
        },
        Fault {
            name: "lose first ACK",
            make: |x| drop_in(x, false, Pick::Of(op::ACK, 1)),
            needs_oack: false,
        },
        Fault {
            name: "lose last DATA",
            make: |x| drop_in(x, true, Pick::LastData(1)),
            needs_oack: false,
        },
        Fault {
            name: "lose final ACK",
            make: |x| drop_in(x, false, Pick::FinalAck(1)),
            needs_oack: false,
        },
        Fault {
            name: "link dies",
            make: |x| {
                // After 5 datagrams one way and 3 the other (a few DATA and ACKs) nothing
                // passes: no file here is that short.
                let dead = |n| Faults {
                    drop: vec![Pick::After(n)],
                    ..Faults::default()
                };
                match x {
                    Xfer::Get => (dead(3), dead(5)),
                    Xfer::Put => (dead(5), dead(3)),
                }
            },
            needs_oack: false,
        },
    ]
}

// ---------------------------------------------------------------------------------------
// The matrix rows
// ---------------------------------------------------------------------------------------

struct Row {
    pair: String,
    fault: &'static str,
    xfer: Xfer,
    outcome: Result<(), String>,
    data: Counts,
    ctrl: Counts,
    elapsed: Duration,
    /// A file that must still hold these bytes once every case is over (a late duplicate
    /// request must not undo a completed upload).
    recheck: Option<(PathBuf, Vec<u8>)>,
}

/// `TFTPX_FAULTS_ONLY=TEXT` runs only the cases whose "pair fault Get|Put" contains TEXT
/// (to reproduce one); `TFTPX_FAULTS_TRACE=1` prints each case's datagrams as the relay saw
/// them.
fn selected(pair: &str, fault: &Fault, x: Xfer) -> bool {
    let label = format!("{pair} {} {x:?}", fault.name);
    std::env::var("TFTPX_FAULTS_ONLY").map_or(true, |only| label.contains(&only))
}

fn row(
    pair: &str,
    fault: &'static str,
    xfer: Xfer,
    relay: &Relay,
    outcome: Result<(), String>,
    elapsed: Duration,
) -> Row {
    let (d, c) = match xfer {
        Xfer::Get => (Dir::ToClient, Dir::ToServer),
        Xfer::Put => (Dir::ToServer, Dir::ToClient),
    };
    if std::env::var_os("TFTPX_FAULTS_TRACE").is_some() {
        eprintln!(
            "-- {pair} {fault} {xfer:?}: {outcome:?}\n{}",
            relay.trace().join("\n")
        );
    }
    Row {
        pair: pair.to_owned(),
        fault,
        xfer,
        outcome,
        data: relay.counts(d),
        ctrl: relay.counts(c),
        elapsed,
        recheck: None,
    }
}

/// How long after the last case the completed uploads are checked again: longer than any
/// stall the relay puts on a repeated request.
const SETTLE: Duration = Duration::from_secs(3);

/// Checks every completed upload again, after [`SETTLE`]: returns the rows whose file
/// changed since.
fn recheck(rows: &mut [Row]) -> Vec<String> {
    std::thread::sleep(SETTLE);
    let mut changed = Vec::new();
    for r in rows.iter_mut() {
        let Some((path, want)) = &r.recheck else {
            continue;
        };
        let got = std::fs::read(path).unwrap_or_default();
        if got != *want {
            let msg = format!(
                "ANOMALY: the upload completed, then the server's file changed to {} of {} bytes",
                got.len(),
                want.len()
            );
            changed.push(format!("{} {} {:?}: {msg}", r.pair, r.fault, r.xfer));
            r.outcome = Err(msg);
        }
    }
    changed
}

fn show(title: &str, rows: &[Row]) {
    let mut t = format!(
        "\n== {title}\n{:<30} {:<15} {:<4} {:>5} {:>6} {:>5} {:>5} {:>7} {:>6}  outcome\n",
        "pair", "fault", "xfer", "DATA", "blocks", "retx", "ACKs", "dropped", "secs"
    );
    for r in rows {
        let outcome = match &r.outcome {
            Ok(()) => "ok".to_owned(),
            Err(e) if e.starts_with("ANOMALY") => e.clone(),
            Err(e) => format!("failed cleanly: {e}"),
        };
        t.push_str(&format!(
            "{:<30} {:<15} {:<4} {:>5} {:>6} {:>5} {:>5} {:>3}/{:<3} {:>6.1}  {}\n",
            r.pair,
            r.fault,
            format!("{:?}", r.xfer),
            r.data.data,
            r.data.data_blocks,
            r.data.data_retransmits(),
            r.ctrl.acks,
            r.data.dropped,
            r.ctrl.dropped,
            r.elapsed.as_secs_f64(),
            outcome
        ));
    }
    let done = rows.iter().filter(|r| r.outcome.is_ok()).count();
    let odd = rows
        .iter()
        .filter(|r| r.outcome.as_ref().is_err_and(|e| e.starts_with("ANOMALY")))
        .count();
    t.push_str(&format!(
        "== {title}: {} cases, {done} completed, {odd} anomalies (a peer's doing), the others \
         failed cleanly\n",
        rows.len()
    ));
    eprint!("{t}");
}

/// One case, run on a worker thread with the runtime the relays live on.
type Job<'a> = Box<dyn FnOnce(&tokio::runtime::Runtime) -> Row + Send + 'a>;

/// Runs `jobs` on [`WORKERS`] threads, each with the tokio runtime the relays live on.
fn run_jobs<'a>(rt: &tokio::runtime::Runtime, jobs: Vec<Job<'a>>) -> Vec<Row> {
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let next = {
                    let mut q = queue.lock().unwrap();
                    if q.is_empty() {
                        None
                    } else {
                        Some(q.remove(0))
                    }
                };
                let Some((i, job)) = next else { break };
                let r = job(rt);
                done.lock().unwrap().push((i, r));
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start_relay(
    rt: &tokio::runtime::Runtime,
    server: SocketAddr,
    seed: u64,
    (ts, tc): (Faults, Faults),
) -> Relay {
    rt.block_on(Relay::start(server, seed, ts, tc))
}

// ---------------------------------------------------------------------------------------
// tftpx serve with real clients
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    TftpHpa,
    /// tftp-hpa with its default timing: retransmit after 5 s, give up after 25 s.
    TftpHpaDefault,
    Atftp,
    /// atftp with its default timing.
    AtftpDefault,
    AtftpOpts,
    Curl,
    Busybox,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::TftpHpa => "tftp-hpa",
            Client::TftpHpaDefault => "tftp-hpa (default timing)",
            Client::Atftp => "atftp",
            Client::AtftpDefault => "atftp (default timing)",
            Client::AtftpOpts => "atftp b1468 w8",
            Client::Curl => "curl",
            Client::Busybox => "busybox",
        }
    }

    /// Whether the server answers this client's requests with an OACK.
    fn oack(self) -> bool {
        !matches!(
            self,
            Client::TftpHpa | Client::TftpHpaDefault | Client::Atftp | Client::AtftpDefault
        )
    }

    /// The command (and what to feed its stdin) that moves `remote` <-> `local` via `port`.
    fn command(self, x: Xfer, port: u16, remote: &str, local: &Path) -> (Command, Option<String>) {
        let local = local.to_str().unwrap().to_owned();
        let port_s = port.to_string();
        match self {
            Client::TftpHpa | Client::TftpHpaDefault => {
                let mut c = Command::new("tftp");
                c.args(["127.0.0.1", &port_s]);
                let verb = match x {
                    Xfer::Get => format!("get {remote} {local}"),
                    Xfer::Put => format!("put {local} {remote}"),
                };
                // Retransmit every second (default 5), give up after 10 s without progress.
                let timing = if self == Client::TftpHpa {
                    "rexmt 1\ntimeout 10\n"
                } else {
                    ""
                };
                (c, Some(format!("mode binary\n{timing}{verb}\nquit\n")))
            }
            Client::Atftp | Client::AtftpOpts | Client::AtftpDefault => {
                let mut c = Command::new("atftp");
                if self != Client::AtftpDefault {
                    c.args(["--tftp-timeout", "1"]);
                }
                if self == Client::AtftpOpts {
                    c.args(["--option", "blksize 1468", "--option", "windowsize 8"]);
                    c.args(["--option", "tsize 0"]);
                }
                c.arg(if x == Xfer::Get { "-g" } else { "-p" });
                c.args(["-r", remote, "-l", &local, "127.0.0.1", &port_s]);
                (c, None)
            }
            Client::Curl => {
                let mut c = Command::new("curl");
                c.args(["-sS", "--max-time", "60"]);
                c.arg(if x == Xfer::Get { "-o" } else { "-T" });
                c.arg(&local);
                c.arg(format!("tftp://127.0.0.1:{port}/{remote}"));
                (c, None)
            }
            Client::Busybox => {
                let mut c = Command::new("busybox");
                c.arg("tftp");
                c.arg(if x == Xfer::Get { "-g" } else { "-p" });
                c.args(["-r", remote, "-l", &local, "127.0.0.1", &port_s]);
                (c, None)
            }
        }
    }

    /// Whether the client said it failed (tftp-hpa exits 0 after an error or time-out).
    fn reported_failure(self, o: &Out) -> bool {
        if !o.ok_exit {
            return true;
        }
        matches!(self, Client::TftpHpa | Client::TftpHpaDefault)
            && (o.text.contains("Transfer timed out") || o.text.contains("Error code"))
    }
}

/// One real client moving a file through the relay to or from a `tftpx serve`.
fn client_case(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    layout: &Layout,
    client: Client,
    fault: &Fault,
    x: Xfer,
    seed: u64,
) -> Row {
    let data = pseudo_random_seeded(SIZE, seed);
    let old = b"the old content of the file\n".to_vec();
    let remote = format!("{}-{}-{:?}.bin", client.name().replace(' ', "_"), seed, x);
    let target = layout.root.join(&remote);
    let local = unique(&layout.local, &remote);
    match x {
        Xfer::Get => common::write_file(&target, &data),
        Xfer::Put => {
            common::write_file(&target, &old);
            common::write_file(&local, &data);
        }
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let relay = start_relay(rt, addr, seed, (fault.make)(x));
    let (cmd, stdin) = client.command(x, relay.addr().port(), &remote, &local);
    let out = run(cmd, stdin);
    let failed = client.reported_failure(&out);
    let said = last_line(&out.text);
    let what = format!("{} {} {:?}", client.name(), fault.name, x);
    let outcome = match x {
        Xfer::Get => {
            if failed {
                Err(format!("client exit {:?} {said}", out.code))
            } else {
                let got = std::fs::read(&local).unwrap_or_default();
                assert!(
                    got == data,
                    "{what}: the client reported success, file differs ({} of {} bytes): {}",
                    got.len(),
                    data.len(),
                    out.text
                );
                Ok(())
            }
        }
        Xfer::Put => {
            // The server reports every upload when it ends (its retries are bounded: at most
            // 11 timeouts of 5 s when curl negotiates `timeout 5`); only then is the target
            // final.
            // A client that gave up may never have got a request through the relay (every
            // copy dropped): then there is no transfer to report, and the old file must be
            // untouched. Any request the relay passed must show up in the server's log.
            let passed = {
                let c = relay.counts(Dir::ToServer);
                c.requests.saturating_sub(c.dropped.min(c.requests))
            };
            let summary = if failed && passed == 0 {
                common::wait_until(Duration::from_secs(5), || {
                    !server.summaries(Kind::Wrq, &remote).is_empty()
                });
                server
                    .summaries(Kind::Wrq, &remote)
                    .pop()
                    .unwrap_or_else(|| "never reached the server".into())
            } else {
                server.wait_summary(Kind::Wrq, &remote, Duration::from_secs(90))
            };
            let now = std::fs::read(&target).unwrap();
            let parts: Vec<String> = part_files(&layout.root)
                .into_iter()
                .filter(|p| p.contains(&remote))
                .collect();
            assert!(parts.is_empty(), "{what}: temporary files left: {parts:?}");
            if failed {
                assert!(
                    now == old || now == data,
                    "{what}: failed upload left {} bytes, neither old nor new; server: {summary}",
                    now.len()
                );
                Err(format!(
                    "client exit {:?} {said}; server kept the {} file",
                    out.code,
                    if now == old { "old" } else { "complete new" }
                ))
            } else {
                assert!(
                    now == data,
                    "{what}: the client reported success, server file differs ({} bytes); \
                     server: {summary}; client: {}",
                    now.len(),
                    out.text
                );
                Ok(())
            }
        }
    };
    let _ = std::fs::remove_file(&local);
    let mut r = row(client.name(), fault.name, x, &relay, outcome, out.elapsed);
    if x == Xfer::Put && r.outcome.is_ok() {
        r.recheck = Some((target, data));
    }
    r
}

#[test]
fn real_clients_with_tftpx_serve_under_faults() {
    let rt = runtime();
    let clients = [
        Client::TftpHpa,
        Client::Atftp,
        Client::AtftpOpts,
        Client::Curl,
        Client::Busybox,
    ];
    // One server (and directory) per client: no server sees more than a few requests.
    let setups: Vec<(Client, Layout, Server)> = clients
        .iter()
        .map(|&c| {
            let layout = Layout::new();
            let server = Server::start(
                &layout.root,
                &["--allow-create", "--timeout", "200ms", "--retries", "10"],
            );
            (c, layout, server)
        })
        .collect();
    let all = faults();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for (ci, (client, layout, server)) in setups.iter().enumerate() {
        for (fi, fault) in all.iter().enumerate() {
            if fault.needs_oack && !client.oack() {
                continue;
            }
            for x in [Xfer::Get, Xfer::Put] {
                let seed = (ci * 100 + fi * 2 + (x == Xfer::Put) as usize) as u64 + 1;
                if !selected(client.name(), fault, x) {
                    continue;
                }
                jobs.push(Box::new(move |rt| {
                    client_case(rt, server, layout, *client, fault, x, seed)
                }));
            }
        }
    }
    let start = Instant::now();
    let mut rows = run_jobs(&rt, jobs);
    let changed = recheck(&mut rows);
    show("real clients -> relay -> tftpx serve", &rows);
    assert!(
        changed.is_empty(),
        "tftpx serve changed completed uploads: {changed:#?}"
    );
    eprintln!("wall time {:.1} s", start.elapsed().as_secs_f64());
    for (_, layout, _) in &setups {
        assert!(
            part_files(&layout.root).is_empty(),
            "{:?}",
            list_dir(&layout.root)
        );
    }
    // Every case checked its invariants (byte-identical, or a failure the client reported
    // and an intact server file). A dead link cannot complete.
    for r in &rows {
        if r.fault == "link dies" {
            assert!(r.outcome.is_err(), "{} over a dead link", r.pair);
        }
    }
}

/// Single losses with everyone's default timing (`tftpx serve`: 1 s, 5 retries; the
/// clients' own defaults): what a user meets on a lossy link.
#[test]
fn real_clients_with_default_timing_and_single_losses() {
    let rt = runtime();
    let clients = [
        Client::TftpHpaDefault,
        Client::AtftpDefault,
        Client::Curl,
        Client::Busybox,
    ];
    let setups: Vec<(Client, Layout, Server)> = clients
        .iter()
        .map(|&c| {
            let layout = Layout::new();
            let server = Server::start(&layout.root, &["--allow-create"]);
            (c, layout, server)
        })
        .collect();
    let all: Vec<Fault> = faults()
        .into_iter()
        .filter(|f| f.name.starts_with("lose") || f.name == "late dup request")
        .collect();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for (ci, (client, layout, server)) in setups.iter().enumerate() {
        for (fi, fault) in all.iter().enumerate() {
            if fault.needs_oack && !client.oack() {
                continue;
            }
            for x in [Xfer::Get, Xfer::Put] {
                let seed = (5000 + ci * 100 + fi * 2 + (x == Xfer::Put) as usize) as u64;
                if !selected(client.name(), fault, x) {
                    continue;
                }
                jobs.push(Box::new(move |rt| {
                    client_case(rt, server, layout, *client, fault, x, seed)
                }));
            }
        }
    }
    let start = Instant::now();
    let mut rows = run_jobs(&rt, jobs);
    let changed = recheck(&mut rows);
    show(
        "real clients (default timing) -> relay -> tftpx serve (default timing)",
        &rows,
    );
    assert!(
        changed.is_empty(),
        "tftpx serve changed completed uploads: {changed:#?}"
    );
    eprintln!("wall time {:.1} s", start.elapsed().as_secs_f64());
    for (_, layout, _) in &setups {
        assert!(
            part_files(&layout.root).is_empty(),
            "{:?}",
            list_dir(&layout.root)
        );
    }
}

// ---------------------------------------------------------------------------------------
// The tftpx client with real servers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RealServer {
    Hpa,
    Atftpd,
}

/// A real server on 127.0.0.1, killed by PID on drop.
struct Peer {
    child: Child,
    addr: SocketAddr,
    root: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn start(kind: RealServer) -> Peer {
        let root = tempfile::Builder::new()
            .prefix("tftpx-if-root-")
            .tempdir()
            .unwrap();
        std::fs::write(root.path().join("ready"), b"ready\n").unwrap();
        let dir = root.path().to_str().unwrap().to_owned();
        for _ in 0..6 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = match kind {
                RealServer::Hpa => {
                    assert!(Path::new(IN_TFTPD).is_file(), "tftpd-hpa: {INSTALL}");
                    let mut c = Command::new(IN_TFTPD);
                    // -T: retransmit after 200 ms (microseconds).
                    c.args(["-L", "-s", "-c", "-p", "-u", "root", "-T", "200000", "-a"])
                        .arg(format!("127.0.0.1:{port}"))
                        .arg(&dir);
                    c
                }
                RealServer::Atftpd => {
                    assert!(Path::new(ATFTPD).is_file(), "atftpd: {INSTALL}");
                    let mut c = Command::new(ATFTPD);
                    c.args(["--daemon", "--no-fork", "--port"])
                        .arg(port.to_string())
                        .args(["--bind-address", "127.0.0.1", "--user", "root"])
                        .args(["--group", "root", "--logfile", "/dev/null"])
                        .args(["--retry-timeout", "1"])
                        .arg(&dir);
                    c
                }
            };
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {kind:?}: {e}: {INSTALL}"));
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            // Ready once a tiny download works (bounded: 40 tries).
            for _ in 0..40 {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let mut c = Command::new(BIN);
                c.args(["-q", "get", &addr.to_string(), "ready", "-o", "-"])
                    .args(["--timeout", "200ms", "--retries", "1", "--dally", "0"]);
                let o = run(c, None);
                if o.ok_exit && o.text.contains("ready") {
                    return Peer { child, addr, root };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("{kind:?} did not start");
    }
}

/// One `tftpx get`/`put` through the relay to a real server.
#[allow(clippy::too_many_arguments)]
fn tftpx_case(
    rt: &tokio::runtime::Runtime,
    peer: &Peer,
    label: &str,
    flags: &[&str],
    fault: &Fault,
    x: Xfer,
    seed: u64,
    local_dir: &Path,
) -> Row {
    let data = pseudo_random_seeded(SIZE, seed);
    let remote = format!("{}-{seed}-{:?}.bin", label.replace(' ', "_"), x);
    let target = peer.root.path().join(&remote);
    // A download goes over an existing local file, which a failure must leave alone.
    let case_dir = unique(local_dir, "case");
    std::fs::create_dir(&case_dir).unwrap();
    let local = case_dir.join("local.bin");
    let old = b"the old local file\n".to_vec();
    match x {
        Xfer::Get => {
            std::fs::write(&target, &data).unwrap();
            std::fs::write(&local, &old).unwrap();
        }
        Xfer::Put => std::fs::write(&local, &data).unwrap(),
    }
    let relay = start_relay(rt, peer.addr, seed, (fault.make)(x));
    let relay_addr = relay.addr().to_string();
    let mut c = Command::new(BIN);
    c.arg("-q");
    match x {
        Xfer::Get => {
            c.args(["get", &relay_addr, &remote, "-o"]).arg(&local);
        }
        Xfer::Put => {
            c.args(["put", &relay_addr]).arg(&local).arg(&remote);
        }
    }
    c.args(["--timeout", "200ms", "--retries", "20", "--dally", "1s"])
        .args(flags);
    let out = run(c, None);
    let what = format!("tftpx {label} {} {x:?}", fault.name);
    let outcome = if out.ok_exit {
        match x {
            Xfer::Get => {
                assert!(
                    std::fs::read(&local).unwrap() == data,
                    "{what}: exit 0, local file differs"
                );
                Ok(())
            }
            Xfer::Put => {
                // The server may write the last block just after its final ACK.
                let ok = common::wait_until(Duration::from_secs(10), || {
                    std::fs::read(&target).is_ok_and(|b| b == data)
                });
                if ok {
                    Ok(())
                } else {
                    // What the server did with the bytes it acknowledged is the server's
                    // business; recorded, and reported as an anomaly in the table.
                    let got = std::fs::read(&target).unwrap_or_default();
                    let at = got.iter().zip(&data).position(|(a, b)| a != b);
                    let zeros = at.is_some_and(|a| got[a..].iter().take(64).all(|&b| b == 0));
                    Err(format!(
                        "ANOMALY: tftpx exit 0, but the server's file differs: {} of {} bytes, \
                         first difference at {at:?}{}",
                        got.len(),
                        data.len(),
                        if zeros { " (zeros)" } else { "" }
                    ))
                }
            }
        }
    } else {
        assert_eq!(out.code, Some(1), "{what}: {}", out.text);
        if x == Xfer::Get {
            assert!(
                std::fs::read(&local).unwrap() == old,
                "{what}: a failed download touched the existing local file"
            );
            let names = list_dir(&case_dir);
            assert_eq!(
                names.len(),
                1,
                "{what}: a failed download left files: {names:?}"
            );
        }
        Err(format!("exit 1 {}", last_line(&out.text)))
    };
    let _ = std::fs::remove_dir_all(&case_dir);
    let mut r = row(
        &format!("tftpx -> {label}"),
        fault.name,
        x,
        &relay,
        outcome,
        out.elapsed,
    );
    if x == Xfer::Put && r.outcome.is_ok() {
        r.recheck = Some((target, data));
    }
    r
}

#[test]
fn tftpx_client_with_real_servers_under_faults() {
    let rt = runtime();
    let local = tempfile::Builder::new()
        .prefix("tftpx-if-local-")
        .tempdir()
        .unwrap();
    // (server, label, flags, negotiates an OACK)
    type Setup = (RealServer, &'static str, &'static [&'static str], bool);
    let setups: Vec<Setup> = vec![
        (RealServer::Hpa, "tftpd-hpa", &["--no-tsize"], false),
        (
            RealServer::Hpa,
            "tftpd-hpa b1468",
            &["--blksize", "1468"],
            true,
        ),
        (RealServer::Atftpd, "atftpd", &["--no-tsize"], false),
        (
            RealServer::Atftpd,
            "atftpd b1468 w8",
            &["--blksize", "1468", "--windowsize", "8"],
            true,
        ),
    ];
    let peers: Vec<Peer> = setups.iter().map(|s| Peer::start(s.0)).collect();
    let all = faults();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for (si, ((_, label, flags, oack), peer)) in setups.iter().zip(&peers).enumerate() {
        for (fi, fault) in all.iter().enumerate() {
            if fault.needs_oack && !oack {
                continue;
            }
            for x in [Xfer::Get, Xfer::Put] {
                let seed = (1000 + si * 100 + fi * 2 + (x == Xfer::Put) as usize) as u64;
                if !selected(&format!("tftpx -> {label}"), fault, x) {
                    continue;
                }
                let dir = local.path();
                jobs.push(Box::new(move |rt| {
                    tftpx_case(rt, peer, label, flags, fault, x, seed, dir)
                }));
            }
        }
    }
    let start = Instant::now();
    let mut rows = run_jobs(&rt, jobs);
    // The real servers' doing, not tftpx's: recorded as anomalies in the table.
    recheck(&mut rows);
    show("tftpx get/put -> relay -> real servers", &rows);
    eprintln!("wall time {:.1} s", start.elapsed().as_secs_f64());
    // Every case checked its invariants (byte-identical; or exit 1, no output file and an
    // existing one untouched). A dead link cannot complete.
    for r in &rows {
        if r.fault == "link dies" {
            assert!(r.outcome.is_err(), "{} over a dead link", r.pair);
        }
    }
}
