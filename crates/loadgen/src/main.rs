//! `tftpx-loadgen`: many simultaneous TFTP downloads from one process, against any server.
//!
//! Each transfer has its own UDP socket and runs tftpx-proto's [`Receiver`] state machine on a
//! tokio task. Two modes:
//!
//! - `--concurrent N --file F`: N downloads of F started at once; all must complete (length and
//!   FNV-1a checksum against `--verify LOCAL` when given). Reports wall time, the 50th and
//!   99th percentile completion times (from the start of all), and failures.
//! - `--slow N --ack-interval 100ms --duration 30s --file F --probe P`: times a download of P on
//!   an idle server, then opens N downloads of F that send at most one ACK per interval (so
//!   each holds a transfer open), and once all are open times P again while they run for
//!   `--duration`. Reports probe time loaded vs idle, and the server's RSS per open transfer.
//!
//! With `--server-pid` the server's memory (PSS of the process plus its direct children, for
//! servers that fork per transfer) is sampled every 20 ms; the peak is reported.
//!
//! The last line on stdout is a one-line summary (for bench/compare.sh's table); progress and
//! errors go to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tftpx_proto::negotiate::ClientOptions;
use tftpx_proto::transfer::{Event, Receiver, TransferConfig};
use tftpx_proto::wire::{ErrorCode, Mode};
use tokio::net::UdpSocket;

#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "TFTP load generator: many simultaneous downloads from one process"
)]
struct Args {
    /// The server's address.
    #[arg(long, value_name = "ADDR:PORT")]
    server: SocketAddr,
    /// The file to download (remote name).
    #[arg(long, value_name = "REMOTE")]
    file: String,
    /// Start N downloads at once and wait for all of them.
    #[arg(long, value_name = "N", conflicts_with = "slow")]
    concurrent: Option<usize>,
    /// Hold N slow downloads open (one ACK per --ack-interval) for --duration.
    #[arg(long, value_name = "N")]
    slow: Option<usize>,
    /// Slow mode: delay between a slow transfer's ACKs.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    ack_interval: Duration,
    /// Slow mode: how long the slow transfers stay open once all of them are.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Slow mode: slow transfers opened per second (a burst of thousands of RRQs would
    /// overflow the server's listening socket).
    #[arg(long, default_value_t = 2000)]
    open_rate: u32,
    /// Slow mode: the file timed idle and under load.
    #[arg(long, value_name = "REMOTE")]
    probe: Option<String>,
    /// Slow mode: blksize of the probe download.
    #[arg(long, default_value_t = 1468)]
    probe_blksize: u16,
    /// Slow mode: probe downloads per measurement (the median is used).
    #[arg(long, default_value_t = 3)]
    probe_reps: usize,
    /// Local copy of --file: every download is checked against its length and checksum.
    #[arg(long, value_name = "PATH")]
    verify: Option<PathBuf>,
    /// Local copy of --probe, checked likewise.
    #[arg(long, value_name = "PATH")]
    verify_probe: Option<PathBuf>,
    /// blksize to request (none: no option, 512).
    #[arg(long)]
    blksize: Option<u16>,
    /// windowsize to request.
    #[arg(long)]
    windowsize: Option<u16>,
    /// Retransmission timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Retransmissions before a transfer fails.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// PID of the server, to sample its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Accepted for compatibility with bench/compare.sh; the summary line is always printed.
    #[arg(long, hide = true)]
    tsv: bool,
}

/// What one download ended with.
struct Outcome {
    bytes: u64,
    sum: u64,
    error: Option<String>,
}

/// How a download behaves.
#[derive(Clone)]
struct Plan {
    server: SocketAddr,
    file: String,
    options: ClientOptions,
    config: TransferConfig,
    /// Slow mode: minimum time between two sends.
    pace: Option<Duration>,
    /// Slow mode: abort (ERROR to the server) once set.
    stop: Option<Arc<AtomicBool>>,
    /// Counts transfers that received their first DATA.
    opened: Option<Arc<AtomicUsize>>,
    /// Blocks received by all transfers.
    blocks: Arc<AtomicU64>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

async fn download(plan: Plan) -> Outcome {
    let mut out = Outcome {
        bytes: 0,
        sum: FNV_OFFSET,
        error: None,
    };
    let bind: SocketAddr = if plan.server.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("bind: {e}"));
            return out;
        }
    };
    let mut rx = match Receiver::client(
        plan.server,
        plan.file.as_bytes(),
        Mode::Octet,
        plan.options,
        plan.config,
    ) {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let blksize = usize::from(plan.options.blksize.unwrap_or(512));
    let mut buf = vec![0u8; (blksize + 4).max(1024)];
    let mut last_send: Option<tokio::time::Instant> = None;
    let mut opened = false;
    loop {
        if let Some(stop) = &plan.stop {
            if stop.load(Ordering::Relaxed) && !rx.is_finished() {
                rx.abort(ErrorCode::NotDefined, "load generator done");
                while let Some(t) = rx.poll_transmit(Instant::now()) {
                    let _ = sock.send_to(t.payload, t.destination).await;
                }
                return out;
            }
        }
        while let Some(t) = rx.poll_transmit(Instant::now()) {
            if let (Some(pace), Some(prev)) = (plan.pace, last_send) {
                tokio::time::sleep_until(prev + pace).await;
            }
            if let Err(e) = sock.send_to(t.payload, t.destination).await {
                out.error = Some(format!("send: {e}"));
                return out;
            }
            last_send = Some(tokio::time::Instant::now());
        }
        while let Some(ev) = rx.poll_event() {
            if let Event::Failed(e) = ev {
                out.error = Some(e.to_string());
            }
        }
        if rx.is_finished() {
            if out.error.is_none() && !rx.is_complete() {
                out.error = Some("ended incomplete".into());
            }
            return out;
        }
        let deadline = rx.poll_timeout();
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if let Some(p) = rx.handle_datagram(Instant::now(), from, &buf[..n]) {
                        out.bytes += p.len() as u64;
                        out.sum = fnv1a(out.sum, p);
                        plan.blocks.fetch_add(1, Ordering::Relaxed);
                        if !opened {
                            opened = true;
                            if let Some(c) = &plan.opened {
                                c.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Err(e) => {
                    out.error = Some(format!("recv: {e}"));
                    return out;
                }
            },
            _ = sleep_until_opt(deadline) => rx.handle_timeout(Instant::now()),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Length and checksum of a local file.
fn reference(path: &PathBuf) -> std::io::Result<(u64, u64)> {
    let data = std::fs::read(path)?;
    Ok((data.len() as u64, fnv1a(FNV_OFFSET, &data)))
}

fn check(o: &Outcome, want: Option<(u64, u64)>) -> Result<(), String> {
    if let Some(e) = &o.error {
        return Err(e.clone());
    }
    match want {
        Some((len, sum)) if (o.bytes, o.sum) != (len, sum) => Err(format!(
            "content differs: {} bytes (want {len}), checksum {:x} (want {sum:x})",
            o.bytes, o.sum
        )),
        _ => Ok(()),
    }
}

/// Proportional set size (kB) of a process (`Pss` of /proc/PID/smaps_rollup, else VmRSS): for
/// servers that fork per transfer, pages shared with the parent count once in total.
fn pss_kb(pid: u32) -> u64 {
    fn field(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
    if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        if let Some(v) = field(&t, "Pss:") {
            return v;
        }
    }
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| field(&t, "VmRSS:"))
        .unwrap_or(0)
}

/// Memory of a server (kB): its PSS plus its direct children's.
fn server_mem_kb(pid: u32) -> u64 {
    let mut total = pss_kb(pid);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if child == pid {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            // ppid is the second field after the parenthesised command name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                total += pss_kb(child);
            }
        }
    }
    total
}

/// Samples the server's memory every 20 ms until dropped; `peak()` is the highest sum seen.
struct RssSampler {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    pid: Option<u32>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        if let Some(pid) = pid {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(server_mem_kb(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        Self { peak, done, pid }
    }
    fn peak_mib(&self) -> f64 {
        if let Some(pid) = self.pid {
            self.peak.fetch_max(server_mem_kb(pid), Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

fn plan(args: &Args, file: &str, blksize: Option<u16>) -> Plan {
    Plan {
        server: args.server,
        file: file.to_owned(),
        options: ClientOptions {
            blksize,
            windowsize: args.windowsize,
            timeout: None,
            tsize: None,
        },
        config: TransferConfig {
            timeout: args.timeout,
            max_retries: args.retries,
            dally: Duration::ZERO,
            ..TransferConfig::default()
        },
        pace: None,
        stop: None,
        opened: None,
        blocks: Arc::new(AtomicU64::new(0)),
    }
}

async fn concurrent(args: &Args, n: usize) -> Result<String, String> {
    let want = match &args.verify {
        Some(p) => Some(reference(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let sampler = RssSampler::start(args.server_pid);
    let base = plan(args, &args.file, args.blksize);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let plan = base.clone();
            tokio::spawn(async move {
                let o = download(plan).await;
                (o, t0.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut failures = 0;
    let mut first_error = None;
    let mut bytes = 0;
    // Completion time of each download, seconds from the start of all.
    let mut done = Vec::with_capacity(n);
    for t in tasks {
        let (o, at) = t.await.map_err(|e| e.to_string())?;
        bytes += o.bytes;
        done.push(at);
        if let Err(e) = check(&o, want) {
            failures += 1;
            first_error.get_or_insert(e);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    done.sort_by(f64::total_cmp);
    let pct = |p: usize| done.get((done.len() * p / 100).min(done.len().saturating_sub(1)));
    let mut s = format!(
        "{}/{n} ok, wall {wall:.2} s, {:.1} MB/s aggregate",
        n - failures,
        bytes as f64 / wall / 1e6
    );
    if let (Some(p50), Some(p99)) = (pct(50), pct(99)) {
        s += &format!(", done p50 {p50:.2} s p99 {p99:.2} s");
    }
    if args.server_pid.is_some() {
        s += &format!(", server peak PSS {:.1} MiB", sampler.peak_mib());
    }
    if let Some(e) = first_error {
        s += &format!(", first failure: {e}");
    }
    Ok(s)
}

/// Times the probe download (median of `--probe-reps`) on a thread and runtime of its own, so
/// the thousands of slow transfers queued on the main runtime do not delay it.
async fn probe_secs(args: &Args, probe: &str, want: Option<(u64, u64)>) -> Result<f64, String> {
    let (args, probe) = (args.clone(), probe.to_owned());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let _ = tx.send(rt.block_on(probe_secs_here(&args, &probe, want)));
    });
    rx.await.map_err(|_| "probe thread panicked".to_string())?
}

async fn probe_secs_here(
    args: &Args,
    probe: &str,
    want: Option<(u64, u64)>,
) -> Result<f64, String> {
    let mut times = Vec::new();
    for _ in 0..args.probe_reps.max(1) {
        let t0 = Instant::now();
        let o = download(plan(args, probe, Some(args.probe_blksize))).await;
        check(&o, want).map_err(|e| format!("probe: {e}"))?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

async fn slow(args: &Args, n: usize) -> Result<String, String> {
    let probe = args.probe.clone().ok_or("--slow needs --probe")?;
    let want_probe = match &args.verify_probe {
        Some(p) => Some(reference(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let idle = probe_secs(args, &probe, want_probe).await?;
    let sampler = RssSampler::start(args.server_pid);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let idle_rss = sampler.peak_mib();
    eprintln!("idle probe {idle:.3} s, server PSS {idle_rss:.1} MiB; opening {n} slow transfers");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut p = plan(args, &args.file, args.blksize);
    p.pace = Some(args.ack_interval);
    p.stop = Some(stop.clone());
    p.opened = Some(opened.clone());
    let blocks = p.blocks.clone();
    let mut tasks = Vec::with_capacity(n);
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.open_rate.max(1)));
    let t_open = Instant::now();
    for i in 0..n {
        tasks.push(tokio::spawn(download(p.clone())));
        if i % 100 == 99 {
            tokio::time::sleep_until((t_open + gap * (i as u32 + 1)).into()).await;
        }
    }
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) < n && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_count = opened.load(Ordering::Relaxed);
    eprintln!(
        "{open_count}/{n} open after {:.1} s",
        t_open.elapsed().as_secs_f64()
    );
    let t_run = Instant::now();
    let b0 = blocks.load(Ordering::Relaxed);
    let loaded = probe_secs(args, &probe, want_probe).await;
    let rest = args.duration.saturating_sub(t_run.elapsed());
    tokio::time::sleep(rest).await;
    let held = t_run.elapsed().as_secs_f64();
    let ack_rate = (blocks.load(Ordering::Relaxed) - b0) as f64 / held;
    let peak = sampler.peak_mib();
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    let mut first_error = None;
    for t in tasks {
        let o = t.await.map_err(|e| e.to_string())?;
        if let Some(e) = o.error {
            failures += 1;
            first_error.get_or_insert(e);
        }
    }
    let mut s = match loaded {
        Ok(l) => format!(
            "{open_count}/{n} open for {held:.0} s, {ack_rate:.0} blocks/s (ideal {:.0}), probe idle {idle:.2} s -> loaded {l:.2} s ({:.2}x)",
            n as f64 / args.ack_interval.as_secs_f64(),
            l / idle
        ),
        Err(e) => format!("{open_count}/{n} open for {held:.0} s, probe under load failed: {e}"),
    };
    s += &format!(", {failures} failed");
    if args.server_pid.is_some() {
        s += &format!(
            ", server PSS idle {idle_rss:.1} MiB -> peak {peak:.1} MiB ({:.1} KiB per transfer)",
            (peak - idle_rss) * 1024.0 / n as f64
        );
    }
    if let Some(e) = first_error {
        s += &format!(", first failure: {e}");
    }
    Ok(s)
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let r = rt.block_on(async {
        match (args.concurrent, args.slow) {
            (Some(n), _) => concurrent(&args, n).await,
            (None, Some(n)) => slow(&args, n).await,
            (None, None) => Err("give --concurrent N or --slow N".into()),
        }
    });
    match r {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("tftpx-loadgen: {e}");
            std::process::exit(1);
        }
    }
}
