//! Fair admission under hostile traffic, run as an attacker would: requests from many
//! addresses of one IPv6 /64 (in a private network namespace), forged requests from a
//! victim's own address, a legitimate host fetching small files back to back, more transfers
//! than the descriptor limit, and requests built to blow up the log.
//!
//! Tests that need a private network namespace, a lower RLIMIT_NOFILE or a process-wide log
//! subscriber run their body in a child: the test binary re-executes itself with
//! `--exact NAME`, `child::CHILD_ENV` set (and under `unshare -n` for a namespace).

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tftpx::proto::wire::{ErrorCode, Packet};
use tftpx::{Client, DirHandler, Server, ServerBuilder, TransferSummary};
use tokio::net::UdpSocket;

#[path = "support/wire.rs"]
mod wire;
use wire::{request, rrq};

#[path = "support/child.rs"]
mod child;

use child::{in_child, runtime, sh};

/// The ERROR 0 text for "no resources now".
const BUSY: &str = "Server busy, try again later";

struct Srv {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    token: tftpx::CancellationToken,
    summaries: Arc<Mutex<Vec<TransferSummary>>>,
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Srv {
    /// Waits (bounded: 10 s) until `n` transfers have ended; returns how many have.
    async fn ended(&self, n: usize) -> usize {
        for _ in 0..400 {
            if self.summaries.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.summaries.lock().unwrap().len()
    }
}

/// A server on `listen` with default settings unless `configure` changes them, serving a
/// directory with `big.bin` (40 blocks), `small.txt` ("hello") and `f0`..`f99` (100 bytes).
async fn start(
    listen: &str,
    configure: impl FnOnce(ServerBuilder<DirHandler>) -> ServerBuilder<DirHandler>,
) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![0x5a; 512 * 40]).unwrap();
    std::fs::write(dir.path().join("small.txt"), b"hello").unwrap();
    for i in 0..100 {
        std::fs::write(dir.path().join(format!("f{i}")), [i as u8; 100]).unwrap();
    }
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let s2 = summaries.clone();
    let server = configure(
        Server::builder(DirHandler::new(dir.path()).unwrap()).listen(listen.parse().unwrap()),
    )
    .on_transfer_end(move |s| s2.lock().unwrap().push(s.clone()))
    .bind()
    .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    Srv {
        addr,
        _dir: dir,
        token,
        summaries,
    }
}

/// Everything `s` receives until it has been quiet for `quiet` (at most 10,000 datagrams).
async fn collect(s: &UdpSocket, quiet: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    for _ in 0..10_000 {
        match tokio::time::timeout(quiet, s.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => out.push((buf[..n].to_vec(), from)),
            _ => break,
        }
    }
    out
}

/// One datagram, or `None` after `wait`.
async fn recv_one(s: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

fn error_of(d: &[u8]) -> Option<(ErrorCode, String)> {
    match Packet::decode(d) {
        Ok(Packet::Error { code, message }) => {
            Some((code, String::from_utf8_lossy(message).into_owned()))
        }
        _ => None,
    }
}

/// Seconds from `t0` until the listener has taken up everything sent to it before: a request
/// from `from` (another client) is answered only after those, which the listener handles in
/// order. A rate bound computed over this span holds however slow the machine is.
async fn listener_caught_up(server: SocketAddr, from: &str, t0: Instant) -> f64 {
    let s = UdpSocket::bind(from).await.unwrap();
    s.send_to(&rrq("small.txt", &[]), server).await.unwrap();
    recv_one(&s, Duration::from_secs(30))
        .await
        .expect("the marker request is answered");
    t0.elapsed().as_secs_f64()
}

/// What a set of never-answering (forged) sockets received from the server: transfers that
/// answered them (distinct server TIDs), their datagrams and bytes, and ERRORs from the
/// listen port.
#[derive(Debug, Default)]
struct Drawn {
    transfers: usize,
    datagrams: usize,
    bytes: usize,
    listener_errors: Vec<String>,
}

/// Collects what each socket receives, all at once, until each has been quiet for `quiet`.
async fn drawn(socks: &[Arc<UdpSocket>], listener: SocketAddr, quiet: Duration) -> Drawn {
    let tasks: Vec<_> = socks
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { collect(&s, quiet).await })
        })
        .collect();
    let mut d = Drawn::default();
    for t in tasks {
        let got = t.await.unwrap();
        let mut tids = HashSet::new();
        for (data, from) in got {
            d.datagrams += 1;
            d.bytes += data.len();
            if from == listener {
                d.listener_errors
                    .push(error_of(&data).map_or_else(|| "?".into(), |(_, m)| m));
            } else {
                tids.insert(from);
            }
        }
        d.transfers += tids.len();
    }
    d
}

// ---------------------------------------------------------------------------------------
// F8: one IPv6 /64 is one client.

/// 100 addresses of 2001:db8:1::/64 share one client's rate limit and transfer slots, while
/// 2001:db8:2::1 (another /64) is still served. Runs in a private network namespace where
/// both /64s are local (AnyIP routes on lo).
#[test]
fn an_ipv6_64_is_one_client() {
    if !in_child("an_ipv6_64_is_one_client", true) {
        return;
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:1::/64",
        "dev",
        "lo",
    ]);
    sh(&[
        "ip",
        "-6",
        "route",
        "add",
        "local",
        "2001:db8:2::/64",
        "dev",
        "lo",
    ]);
    // Binding an AnyIP address needs non-local binds (this namespace only).
    sh(&["sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1"]);
    runtime().block_on(async {
        // Defaults (20 requests/s with a burst of 40, 32 transfers per client), with a long
        // timeout so the transfers held below stay for the whole test.
        let srv = start("[::1]:0", |b| b.timeout(Duration::from_secs(5))).await;
        let addr = |i: u32| -> SocketAddr {
            // Spread over the /64's interface identifiers, not only its low bits.
            let ip = format!("2001:db8:1::{:x}:{:x}", i * 7919 % 0xffff, i + 1);
            SocketAddr::new(ip.parse().unwrap(), 0)
        };

        // 1. 100 addresses send one request each and never answer (as forged ones would).
        let mut socks = Vec::new();
        for i in 0..100 {
            socks.push(Arc::new(UdpSocket::bind(addr(i)).await.unwrap()));
        }
        let t0 = Instant::now();
        for s in &socks {
            s.send_to(&rrq("big.bin", &[]), srv.addr).await.unwrap();
        }
        let flood_secs = listener_caught_up(srv.addr, "[2001:db8:2::99]:0", t0).await;
        // The first replies come at once (retransmissions only after 5 s: not waited for).
        let d = drawn(&socks, srv.addr, Duration::from_millis(1500)).await;
        eprintln!(
            "F8: 100 unanswered requests from 100 addresses of one /64 (taken up in {:.3} s): {} \
             answered by a transfer ({} datagrams, {} bytes), listener ERRORs {:?}",
            flood_secs, d.transfers, d.datagrams, d.bytes, d.listener_errors
        );
        // One bucket: the burst of 40, plus what refilled while sending (20/s).
        let allowed = 40 + (20.0 * flood_secs).ceil() as usize;
        assert!(d.transfers <= allowed, "{} > {allowed}", d.transfers);
        drop(socks);

        // 2. 40 real clients of the /64 start a transfer each and hold it (they ACK DATA 1,
        //    so they are not forged, then read nothing more). One client's 32 transfers
        //    run; the others are refused.
        tokio::time::sleep(Duration::from_secs(3)).await; // the bucket refills
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for i in 0..40 {
            let s = UdpSocket::bind(addr(1000 + i)).await.unwrap();
            s.send_to(&rrq("big.bin", &[]), srv.addr).await.unwrap();
            let Some((d, from)) = recv_one(&s, Duration::from_secs(5)).await else {
                refused.push("no answer".to_string());
                continue;
            };
            if let Some((_, m)) = error_of(&d) {
                refused.push(m);
                continue;
            }
            assert_eq!(&d[..4], &[0, 3, 0, 1], "DATA 1");
            s.send_to(&[0, 4, 0, 1], from).await.unwrap();
            let (d2, _) = recv_one(&s, Duration::from_secs(5))
                .await
                .expect("DATA 2 after ACK 1");
            assert_eq!(&d2[..4], &[0, 3, 0, 2]);
            held.push(s);
        }
        eprintln!(
            "F8: 40 real clients of one /64: {} transfers running, refused: {:?}",
            held.len(),
            refused
        );
        assert_eq!(held.len(), 32, "one client's 32 transfers");
        assert_eq!(refused.len(), 8);
        assert!(refused
            .iter()
            .all(|m| m.contains("Too many transfers from your address")));

        // 3. Another /64 is another client: served at once.
        let c = Client::builder(srv.addr)
            .bind("[2001:db8:2::1]:0".parse().unwrap())
            .dally(Duration::ZERO)
            .build();
        let mut back = Vec::new();
        c.get("big.bin", &mut back, |_| {}).await.unwrap();
        assert_eq!(back, vec![0x5a; 512 * 40]);
    });
}

// ---------------------------------------------------------------------------------------
// F9: forged requests from a victim's address; a real host fetching back to back.

/// 400 forged RRQs from the victim's address (50 ports, 8 different requests each, nobody
/// answers), then the real victim fetches: it is served within its client's retry budget
/// (the first request may meet the drained bucket; the second finds tokens), and the flood
/// drew answers for no more requests than the burst. Then, while forged requests keep
/// arriving at 14 per second (under the rate limit, each holding a transfer slot until it
/// times out), the victim fetches five files.
#[tokio::test]
async fn forged_requests_from_a_victims_address_do_not_lock_it_out() {
    // Default settings: 20 requests/s (burst 40), 32 transfers per client, timeout 1 s.
    let srv = start("127.0.0.1:0", |b| b).await;
    let mut forged = Vec::new();
    for _ in 0..50 {
        forged.push(Arc::new(UdpSocket::bind("127.0.0.9:0").await.unwrap()));
    }
    let t0 = Instant::now();
    for round in 0..8 {
        let blksize = (512 + round).to_string();
        for s in &forged {
            s.send_to(&rrq("big.bin", &[("blksize", &blksize)]), srv.addr)
                .await
                .unwrap();
        }
    }
    let flood_secs = listener_caught_up(srv.addr, "127.0.0.10:0", t0).await;

    let victim = Client::builder(srv.addr)
        .bind("127.0.0.9:0".parse().unwrap())
        .timeout(Duration::from_secs(1))
        .retries(2)
        .dally(Duration::ZERO)
        .build();
    let t = Instant::now();
    let mut back = Vec::new();
    let got = victim.get("small.txt", &mut back, |_| {}).await;
    let served_after = t.elapsed();
    let d = drawn(&forged, srv.addr, Duration::from_millis(1500)).await;
    eprintln!(
        "F9: 400 forged RRQs (taken up in {flood_secs:.3} s), then the victim: {:?} after {:.3} s; the \
         flood drew {} transfers ({} datagrams, {} bytes) and listener ERRORs {:?}",
        got.as_ref().map(|r| r.bytes),
        served_after.as_secs_f64(),
        d.transfers,
        d.datagrams,
        d.bytes,
        d.listener_errors
    );
    got.expect("the victim is served within its third attempt");
    assert_eq!(back, b"hello");
    let allowed = 40 + (20.0 * flood_secs).ceil() as usize;
    assert!(d.transfers <= allowed, "{} > {allowed}", d.transfers);
    // Each drew the first reply and at most its retransmissions (2).
    assert!(d.datagrams <= 3 * allowed + d.listener_errors.len());
    drop(forged);

    // A sustained forged stream under the rate limit: on main its transfers (3 s each)
    // filled the victim's 32 slots for as long as it lasted.
    let forged: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(UdpSocket::bind("127.0.0.9:0").await.unwrap());
        }
        v
    };
    let stop = tftpx::CancellationToken::new();
    let stream = {
        let stop = stop.clone();
        let addr = srv.addr;
        async move {
            let mut sent = 0u32;
            // At most 400 datagrams (~29 s).
            for i in 0..400u32 {
                if stop.is_cancelled() {
                    break;
                }
                let r = rrq("big.bin", &[("blksize", &(600 + i).to_string())]);
                let _ = forged[i as usize % forged.len()].send_to(&r, addr).await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(70)).await;
            }
            sent
        }
    };
    let victim_fetches = async {
        // Let the stream fill the slots first (on main: 14/s x 3 s > 32).
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut results = Vec::new();
        for i in 0..5 {
            let mut back = Vec::new();
            let t = Instant::now();
            let r = victim.get(&format!("f{i}"), &mut back, |_| {}).await;
            results.push((r.map(|_| back), t.elapsed()));
        }
        stop.cancel();
        results
    };
    let (sent, results) = tokio::join!(stream, victim_fetches);
    for (i, (r, took)) in results.iter().enumerate() {
        eprintln!(
            "F9: during a forged stream of {sent} requests at 14/s, victim fetch {i}: {} in \
             {:.3} s",
            match r {
                Ok(_) => "served".to_string(),
                Err(e) => e.to_string(),
            },
            took.as_secs_f64()
        );
    }
    for (i, (r, _)) in results.into_iter().enumerate() {
        assert_eq!(r.expect("served during the stream"), vec![i as u8; 100]);
    }
}

/// A single legitimate host fetching 200 small files back to back, as fast as it can, with
/// default settings: none refused.
#[tokio::test]
async fn a_real_client_fetching_back_to_back_is_never_rate_limited() {
    let srv = start("127.0.0.1:0", |b| b).await;
    let c = Client::builder(srv.addr)
        .bind("127.0.0.3:0".parse().unwrap())
        .build();
    let t = Instant::now();
    let mut refused = Vec::new();
    for i in 0..200 {
        let name = format!("f{}", i % 100);
        let mut back = Vec::new();
        match c.get(&name, &mut back, |_| {}).await {
            Ok(_) => assert_eq!(back, vec![(i % 100) as u8; 100]),
            Err(e) => refused.push(e.to_string()),
        }
    }
    eprintln!(
        "200 small files back to back in {:.3} s: {} served, refused: {refused:?}",
        t.elapsed().as_secs_f64(),
        200 - refused.len()
    );
    assert!(refused.is_empty(), "{refused:?}");

    // The same host's unanswered requests still drain its bucket: a flood from it is
    // limited as before.
    let s = Arc::new(UdpSocket::bind("127.0.0.3:0").await.unwrap());
    let t0 = Instant::now();
    for i in 0..200 {
        s.send_to(&rrq(&format!("f{}", i % 100), &[]), srv.addr)
            .await
            .unwrap();
    }
    let secs = listener_caught_up(srv.addr, "127.0.0.4:0", t0).await;
    let d = drawn(&[s], srv.addr, Duration::from_millis(1500)).await;
    eprintln!(
        "then 200 unanswered requests from it (taken up in {secs:.3} s): {} answered, listener ERRORs \
         {:?}",
        d.transfers, d.listener_errors
    );
    let allowed = 40 + (20.0 * secs).ceil() as usize;
    assert!(d.transfers <= allowed, "{} > {allowed}", d.transfers);
}

// ---------------------------------------------------------------------------------------
// Logs (F7) and descriptors (F12): in a child process with its own log subscriber.

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// Installs a process-wide DEBUG subscriber writing here (once per child process).
    fn install() -> Self {
        let buf = LogBuf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_global_default(sub).expect("one subscriber per child");
        buf
    }

    /// Takes what was logged so far.
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

/// Requests of 65,000 bytes with long names, modes, options and peer messages: every log
/// line stays under 1 KiB and a request costs a few KiB of log at most.
#[test]
fn hostile_requests_cost_a_bounded_number_of_log_bytes() {
    if !in_child("hostile_requests_cost_a_bounded_number_of_log_bytes", false) {
        return;
    }
    let log = LogBuf::install();
    runtime().block_on(async {
        let srv = start("127.0.0.1:0", |b| {
            b.rate_limit(None)
                .timeout(Duration::from_millis(200))
                .max_unanswered_retries(0)
        })
        .await;
        // A long name with control characters, quotes and multi-byte characters.
        let long_name = |n: usize| -> Vec<u8> {
            let unit = "a\"b\\c\n\x1b[31m\u{e9}\u{202e}/".as_bytes();
            unit.iter().copied().cycle().take(n).collect()
        };
        // 3,000 options, then padding in the last value up to `total` bytes.
        let with_options = |opcode: u8, name: &[u8], mode: &[u8], total: usize| -> Vec<u8> {
            let mut v = request(opcode, name, mode, &[]);
            for i in 0..3000 {
                v.extend_from_slice(format!("o{i}\0\n{i}\0").as_bytes());
            }
            v.extend_from_slice(b"blksize\0");
            let pad = total.saturating_sub(v.len() + 1);
            v.extend(std::iter::repeat_n(b'9', pad));
            v.push(0);
            v
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "RRQ, long missing name, 3,000 options",
                with_options(1, &long_name(20_000), b"octet", 65_000),
            ),
            (
                "WRQ, long name, 3,000 options",
                with_options(2, &long_name(20_000), b"octet", 65_000),
            ),
            (
                "RRQ, long invalid mode",
                with_options(1, b"big.bin", &long_name(30_000), 65_000),
            ),
            (
                "RRQ of an existing file, 3,000 options and a 30 KB blksize",
                with_options(1, b"big.bin", b"octet", 65_000),
            ),
        ];
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut worst_line = 0;
        let mut worst_total = 0;
        for (i, (what, req)) in cases.iter().enumerate() {
            assert!(req.len() <= 65_000 && req.len() > 64_000, "{}", req.len());
            log.take();
            c.send_to(req, srv.addr).await.unwrap();
            let _ = collect(&c, Duration::from_millis(300)).await;
            assert_eq!(srv.ended(i + 1).await, i + 1, "{what}: transfer ended");
            let text = log.take();
            let longest = text.lines().map(str::len).max().unwrap_or(0);
            eprintln!(
                "{what} ({} bytes): {} log lines, {} bytes, longest {longest}",
                req.len(),
                text.lines().count(),
                text.len()
            );
            for l in text.lines() {
                eprintln!("  | {}", &l[..l.floor_char_boundary_compat(300)]);
            }
            worst_line = worst_line.max(longest);
            worst_total = worst_total.max(text.len());
        }

        // A transfer whose peer answers with a 60 KB ERROR message.
        log.take();
        c.send_to(&rrq("big.bin", &[]), srv.addr).await.unwrap();
        let (_, tid) = recv_one(&c, Duration::from_secs(5)).await.expect("DATA 1");
        let mut err = vec![0, 5, 0, 0];
        err.extend(long_name(60_000));
        err.push(0);
        c.send_to(&err, tid).await.unwrap();
        assert_eq!(srv.ended(cases.len() + 1).await, cases.len() + 1);
        let text = log.take();
        eprintln!(
            "a peer ERROR with a 60 KB message: {} log bytes, longest line {}",
            text.len(),
            text.lines().map(str::len).max().unwrap_or(0)
        );
        worst_line = worst_line.max(text.lines().map(str::len).max().unwrap_or(0));
        worst_total = worst_total.max(text.len());
        // The hook still gets the whole name.
        let s = srv.summaries.lock().unwrap();
        assert_eq!(s[0].filename.len(), 20_000);
        eprintln!("worst line {worst_line} bytes, worst request {worst_total} bytes");
        assert!(worst_line <= 1024, "a log line of {worst_line} bytes");
        assert!(
            worst_total <= 4096,
            "{worst_total} log bytes for one request"
        );
    });
}

/// `floor_char_boundary` is unstable: the largest char boundary <= `i`.
trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, i: usize) -> usize {
        let mut i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// A server without rate or per-client limits and a 5 s timeout (the descriptor tests).
async fn start_unlimited() -> Srv {
    start("127.0.0.1:0", |b| {
        b.rate_limit(None)
            .max_transfers_per_client(None)
            .timeout(Duration::from_secs(5))
    })
    .await
}

/// Lowers this process's soft RLIMIT_NOFILE to the descriptors open now plus `room`, and
/// returns it.
fn room_for_descriptors(room: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let soft = open_fds() + room;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    soft
}

/// Number of descriptors this process has open.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// Waits (at most 10 s) until `n` descriptors can be opened, and returns them open.
async fn free_descriptors(n: usize) -> Vec<std::fs::File> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<_> = (0..n)
            .map_while(|_| std::fs::File::open("/proc/self/status").ok())
            .collect();
        if files.len() == n {
            return files;
        }
        drop(files);
        assert!(
            Instant::now() < deadline,
            "{n} descriptors never became free"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many descriptors this process could still open (at most 1,000; probed by opening
/// them, so this works at the limit, where listing /proc/self/fd cannot).
fn free_fds() -> usize {
    // Collected, so each stays open until all are counted (counting as they are opened
    // would drop each at once and reuse one descriptor: 0 or 1,000).
    let files: Vec<_> = (0..1000)
        .map_while(|_| std::fs::File::open("/proc/self/status").ok())
        .collect();
    files.len()
}

/// Waits (at most 10 s) until at least `n` descriptors are free.
async fn wait_free_fds_at_least(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while free_fds() < n {
        assert!(
            Instant::now() < deadline,
            "{} descriptors free, never rose to {n}",
            free_fds()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens descriptors until the limit (at most 1,000), then closes one: exactly one is free.
fn all_descriptors_but_one() -> Vec<std::fs::File> {
    let mut files: Vec<_> = (0..1000)
        .map_while(|_| std::fs::File::open("/proc/self/status").ok())
        .collect();
    assert!(!files.is_empty(), "no descriptor was free");
    files.pop();
    files
}

/// How the server answered one request in the descriptor test.
#[derive(Debug, PartialEq)]
enum Answer {
    /// DATA 1 from this transfer TID.
    Data(SocketAddr),
    /// ERROR 0 "Server busy, try again later", from the listen port or a transfer socket.
    Busy { from_listener: bool },
    /// Anything else (must not happen).
    Other(String),
}

/// Sends an RRQ for `name` from `c` and returns the answer, skipping retransmissions from
/// the transfers in `held`.
async fn ask(c: &UdpSocket, server: SocketAddr, name: &str, held: &[SocketAddr]) -> Answer {
    ask_with(c, server, &rrq(name, &[]), held).await
}

/// [`ask`] with the request datagram given.
async fn ask_with(c: &UdpSocket, server: SocketAddr, req: &[u8], held: &[SocketAddr]) -> Answer {
    c.send_to(req, server).await.unwrap();
    for _ in 0..10 {
        let Some((d, from)) = recv_one(c, Duration::from_secs(3)).await else {
            return Answer::Other("no answer".into());
        };
        if held.contains(&from) {
            continue;
        }
        return match error_of(&d) {
            Some((ErrorCode::NotDefined, m)) if m == BUSY => Answer::Busy {
                from_listener: from == server,
            },
            Some((code, m)) => Answer::Other(format!("ERROR {code:?} {m}")),
            None if d.len() >= 4 && d[..4] == [0, 3, 0, 1] => Answer::Data(from),
            None => Answer::Other(format!("{:?}", &d[..d.len().min(8)])),
        };
    }
    Answer::Other("only retransmissions".into())
}

/// More transfers than the descriptor limit (lowered in a child): every request past it
/// gets exactly ERROR 0 "Server busy, try again later" (never the OS text), whether the
/// transfer socket or the file could not be opened; the log warns once with a count; and
/// requests are served again once transfers end.
#[test]
fn out_of_descriptors_answers_server_busy() {
    if !in_child("out_of_descriptors_answers_server_busy", false) {
        return;
    }
    let log = LogBuf::install();
    runtime().block_on(async {
        let srv = start_unlimited().await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Room for about 12 transfers (a socket and a file each).
        let soft = room_for_descriptors(24);

        // 1. Transfers until the limit, then more requests.
        let t0 = Instant::now();
        let mut held: Vec<SocketAddr> = Vec::new();
        let mut answers = Vec::new();
        for i in 0..40 {
            let a = ask(&c, srv.addr, &format!("f{i}"), &held).await;
            match a {
                Answer::Data(tid) if answers.is_empty() => held.push(tid),
                a => answers.push(a),
            }
        }
        eprintln!(
            "RLIMIT_NOFILE {soft}: {} transfers running, then: {answers:?}",
            held.len()
        );
        assert!(held.len() >= 5, "{} transfers before the limit", held.len());
        assert_eq!(held.len() + answers.len(), 40);
        assert!(
            answers.iter().all(|a| matches!(a, Answer::Busy { .. })),
            "{answers:?}"
        );

        // 2. One descriptor free: the transfer socket opens, the file does not.
        let ended = srv.summaries.lock().unwrap().len();
        let free_at_limit = free_fds();
        c.send_to(b"\x00\x05\x00\x00stop\x00", held.remove(0))
            .await
            .unwrap();
        assert_eq!(srv.ended(ended + 1).await, ended + 1);
        // The summary can be reported a moment before the transfer's socket and file are
        // closed: wait until both are, then take every free descriptor but one (at the
        // limit one may already have been free: the count is odd).
        wait_free_fds_at_least(free_at_limit + 2).await;
        let spare = all_descriptors_but_one();
        let mut second = Vec::new();
        for i in 40..45 {
            second.push(ask(&c, srv.addr, &format!("f{i}"), &held).await);
        }
        eprintln!("with one descriptor free: {second:?}");
        assert!(
            second.iter().all(|a| *a
                == Answer::Busy {
                    from_listener: false
                }),
            "{second:?}"
        );
        drop(spare);

        let text = log.take();
        let warnings: Vec<_> = text
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("out of file descriptors"))
            .collect();
        eprintln!("descriptor warnings: {warnings:?}");
        // One per 10 s (this takes well under a second unless the machine is very busy).
        let periods = 1 + t0.elapsed().as_secs() as usize / 10;
        assert!(
            (1..=periods).contains(&warnings.len()),
            "{} warnings in {periods} period(s)",
            warnings.len()
        );
        assert!(warnings[0].contains(": 1 request(s)"), "{}", warnings[0]);
        // The OS text is for the operator only: in those warnings, nowhere else.
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("Too many open files"))
                .count(),
            warnings
                .iter()
                .filter(|l| l.contains("Too many open files"))
                .count()
        );

        // 3. The running transfers end; then requests are served again.
        let ended_before = srv.summaries.lock().unwrap().len();
        for tid in &held {
            c.send_to(b"\x00\x05\x00\x00stop\x00", tid).await.unwrap();
        }
        let want = ended_before + held.len();
        assert_eq!(srv.ended(want).await, want);
        drop(free_descriptors(6).await);
        let client = Client::builder(srv.addr)
            .bind("127.0.0.1:0".parse().unwrap())
            .dally(Duration::ZERO)
            .build();
        for i in 0..5 {
            let mut back = Vec::new();
            client
                .get(&format!("f{i}"), &mut back, |_| {})
                .await
                .unwrap();
            assert_eq!(back, vec![i as u8; 100]);
        }
    });
}

/// Transfers of one file share one descriptor (issue 14: ten thousand transfers of a boot
/// image must not need twenty thousand): with room for 24 descriptors, about 22 transfers
/// of one file run at once (a socket each, one file), where transfers of distinct files
/// stop at about 12 (see `out_of_descriptors_answers_server_busy`).
#[test]
fn transfers_of_one_file_share_one_descriptor() {
    if !in_child("transfers_of_one_file_share_one_descriptor", false) {
        return;
    }
    runtime().block_on(async {
        let srv = start_unlimited().await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let soft = room_for_descriptors(24);
        let mut held: Vec<SocketAddr> = Vec::new();
        let mut busy = 0;
        for i in 0..30 {
            // An unknown option makes each request differ (one repeated from the same port
            // would be a retransmission); the server ignores it.
            let req = rrq("f7", &[("x-seq", &i.to_string())]);
            match ask_with(&c, srv.addr, &req, &held).await {
                Answer::Data(tid) if busy == 0 => held.push(tid),
                Answer::Busy { .. } => busy += 1,
                a => panic!("{a:?} after {} transfers and {busy} busy", held.len()),
            }
        }
        eprintln!(
            "RLIMIT_NOFILE {soft}: {} transfers of one file running, {busy} busy",
            held.len()
        );
        assert!(
            held.len() >= 20,
            "{} transfers of one file with room for 24 descriptors",
            held.len()
        );
        let ended = srv.summaries.lock().unwrap().len();
        for tid in &held {
            c.send_to(b"\x00\x05\x00\x00stop\x00", tid).await.unwrap();
        }
        let want = ended + held.len();
        assert_eq!(srv.ended(want).await, want);
    });
}
