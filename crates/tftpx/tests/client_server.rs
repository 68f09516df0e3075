//! tftpx client against tftpx server, in one process over loopback: every option
//! combination, both directions, both modes, refusals, limits and shutdown.

#[path = "support/data.rs"]
mod data;
use data::content;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tftpx::proto::{ErrorCode, Mode};
use tftpx::{Client, ClientError, DirHandler, Outcome, Server, TransferSummary};

struct TestServer {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    token: tftpx::CancellationToken,
    summaries: Arc<Mutex<Vec<TransferSummary>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(
    configure: impl FnOnce(DirHandler) -> DirHandler,
    limits: impl FnOnce(tftpx::ServerBuilder<DirHandler>) -> tftpx::ServerBuilder<DirHandler>,
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let handler = configure(DirHandler::new(dir.path()).unwrap());
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let s2 = summaries.clone();
    let server = limits(
        Server::builder(handler)
            .listen("127.0.0.1:0".parse().unwrap())
            .timeout(Duration::from_millis(200))
            .max_retries(3)
            // Hundreds of requests from 127.0.0.1 in a few seconds: the request rate limit
            // has its own tests (limits.rs).
            .rate_limit(None),
    )
    .on_transfer_end(move |s| s2.lock().unwrap().push(s.clone()))
    .bind()
    .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    let task = tokio::spawn(server.run());
    TestServer {
        addr,
        dir,
        token,
        summaries,
        task,
    }
}

impl TestServer {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }

    /// Waits (bounded) until `n` transfers have ended, and returns their summaries.
    async fn summaries(&self, n: usize) -> Vec<TransferSummary> {
        for _ in 0..200 {
            if self.summaries.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.summaries.lock().unwrap().clone()
    }
}

fn client(addr: SocketAddr, blksize: Option<u16>, windowsize: Option<u16>, mode: Mode) -> Client {
    let mut b = Client::builder(addr)
        .mode(mode)
        .timeout(Duration::from_millis(200))
        .retries(3)
        .dally(Duration::from_millis(50));
    if let Some(n) = blksize {
        b = b.blksize(n);
    }
    if let Some(n) = windowsize {
        b = b.windowsize(n);
    }
    b.build()
}

async fn get(c: &Client, name: &str) -> Result<(Vec<u8>, tftpx::Report), ClientError> {
    let mut out = Vec::new();
    let r = c.get(name, &mut out, |_| {}).await?;
    Ok((out, r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_combination_both_directions() {
    let srv = start(|h| h.allow_create(true), |b| b).await;
    every_combination(srv.addr, srv.dir.path(), false).await;
    srv.stop().await;
}

/// The same with [`tftpx::ClientBuilder::blocking_wait`]: each client transfer waits in the
/// receive call, on a thread and current-thread runtime of its own (as `tftpx get` runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_combination_with_blocking_waits() {
    let srv = start(|h| h.allow_create(true), |b| b).await;
    let (addr, dir) = (srv.addr, srv.dir.path().to_owned());
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(every_combination(addr, &dir, true))
    })
    .await
    .unwrap();
    srv.stop().await;
}

/// Uploads then downloads files of the sizes around each blksize, for every blksize x
/// windowsize x tsize, to the server at `addr` serving `dir`; asserts the bytes, the options
/// in force and that a clean loopback needs no retransmission.
async fn every_combination(addr: SocketAddr, dir: &Path, blocking: bool) {
    let blksizes = [None, Some(8), Some(512), Some(1468), Some(65464)];
    let windows = [None, Some(1), Some(4), Some(16)];
    let mut case = 0u64;
    for blksize in blksizes {
        let bs = usize::from(blksize.unwrap_or(512));
        for windowsize in windows {
            for tsize in [true, false] {
                let sizes = [0, 1, bs - 1, bs, bs + 1, bs * 3, 70_000];
                for len in sizes {
                    case += 1;
                    let data = content(len, case);
                    let name = format!("f{case}.bin");
                    let c = Client::builder(addr)
                        .timeout(Duration::from_millis(200))
                        .dally(Duration::ZERO)
                        .tsize(tsize)
                        .blocking_wait(blocking);
                    let c = match blksize {
                        Some(n) => c.blksize(n),
                        None => c,
                    };
                    let c = match windowsize {
                        Some(n) => c.windowsize(n),
                        None => c,
                    }
                    .build();
                    let up = c
                        .put(&name, &data[..], Some(len as u64), |_| {})
                        .await
                        .unwrap_or_else(|e| panic!("put {name} {blksize:?}/{windowsize:?}: {e}"));
                    assert_eq!(up.bytes, len as u64);
                    assert_eq!(up.negotiated.blksize as usize, bs);
                    assert_eq!(up.negotiated.windowsize, windowsize.unwrap_or(1));
                    assert_eq!(
                        std::fs::read(dir.join(&name)).unwrap(),
                        data,
                        "{name} on disk"
                    );
                    let (back, r) = get(&c, &name).await.unwrap();
                    assert!(back == data, "{name}: downloaded bytes differ");
                    assert_eq!(r.negotiated.tsize, tsize.then_some(len as u64));
                    assert_eq!(r.stats.retransmits, 0, "{name}: clean loopback");
                }
            }
        }
    }
}

/// A blocking-wait client still retransmits on its timer, gives up after its retries, and
/// ends at once when cancelled from another thread (not at its 60 s timeout).
#[test]
fn blocking_wait_retransmits_times_out_and_is_cancelled() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let silent = rt.block_on(times_out_against_a_silent_port(true));

    let token = tftpx::CancellationToken::new();
    let c = Client::builder(silent.local_addr().unwrap())
        .timeout(Duration::from_secs(60))
        .retries(1)
        .cancel_token(token.clone())
        .blocking_wait(true)
        .build();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        token.cancel();
    });
    let r = rt.block_on(c.put("y", &b"data"[..], Some(4), |_| {}));
    canceller.join().unwrap();
    assert!(matches!(r, Err(ClientError::Cancelled)), "{r:?}");
}

#[tokio::test]
async fn rollover_past_65535_blocks() {
    let srv = start(|h| h.allow_create(true), |b| b).await;
    // 8-byte blocks: 80,000 blocks, the block number wraps once.
    let data = content(8 * 80_000 + 3, 42);
    let c = client(srv.addr, Some(8), Some(32), Mode::Octet);
    c.put("roll.bin", &data[..], Some(data.len() as u64), |_| {})
        .await
        .unwrap();
    assert!(std::fs::read(srv.path("roll.bin")).unwrap() == data);
    let (back, r) = get(&c, "roll.bin").await.unwrap();
    assert!(back == data);
    assert_eq!(r.stats.blocks, 80_001);
    srv.stop().await;
}

#[tokio::test]
async fn netascii_round_trip_translates_line_ends() {
    let srv = start(|h| h.allow_create(true), |b| b).await;
    let text = b"line one\nline two\r\nbare\rcr\n\n".repeat(100);
    let c = client(srv.addr, Some(16), Some(4), Mode::Netascii);
    let up = c.put("t.txt", &text[..], None, |_| {}).await.unwrap();
    // On the wire each LF became CR LF and each CR became CR NUL.
    let crs = text.iter().filter(|&&b| b == b'\r' || b == b'\n').count();
    assert_eq!(up.bytes, (text.len() + crs) as u64);
    assert_eq!(std::fs::read(srv.path("t.txt")).unwrap(), text);
    let (back, _) = get(&c, "t.txt").await.unwrap();
    assert_eq!(back, text);
    // The same file read in octet mode is the stored bytes.
    let (raw, _) = get(&client(srv.addr, None, None, Mode::Octet), "t.txt")
        .await
        .unwrap();
    assert_eq!(raw, text);
    srv.stop().await;
}

#[tokio::test]
async fn server_caps_blksize_and_windowsize() {
    let srv = start(|h| h, |b| b.max_blksize(1024).max_windowsize(4)).await;
    let data = content(100_000, 5);
    std::fs::write(srv.path("cap.bin"), &data).unwrap();
    let c = client(srv.addr, Some(65464), Some(64), Mode::Octet);
    let (back, r) = get(&c, "cap.bin").await.unwrap();
    assert!(back == data);
    assert_eq!((r.negotiated.blksize, r.negotiated.windowsize), (1024, 4));
    srv.stop().await;
}

fn server_error(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected a server ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn refusals_carry_the_right_error_codes() {
    let ro = start(|h| h, |b| b).await;
    std::fs::write(ro.path("exists.txt"), b"old").unwrap();
    let c = client(ro.addr, None, None, Mode::Octet);
    let (code, _) = server_error(get(&c, "missing.txt").await);
    assert_eq!(code, ErrorCode::FileNotFound);
    let (code, _) = server_error(get(&c, "../etc/passwd").await);
    assert_eq!(code, ErrorCode::AccessViolation);
    let (code, _) = server_error(c.put("exists.txt", &b"new"[..], Some(3), |_| {}).await);
    assert_eq!(code, ErrorCode::AccessViolation, "read-only server");
    assert_eq!(std::fs::read(ro.path("exists.txt")).unwrap(), b"old");
    std::fs::create_dir(ro.path("sub")).unwrap();
    let (code, _) = server_error(get(&c, "sub").await);
    assert_eq!(
        code,
        ErrorCode::AccessViolation,
        "a directory is not served"
    );
    let s = ro.summaries(4).await;
    assert!(s
        .iter()
        .all(|s| matches!(s.outcome, Outcome::Refused { .. })));
    ro.stop().await;

    // --allow-write without --allow-create: overwrite yes, create no.
    let rw = start(|h| h.allow_write(true), |b| b.max_upload_size(Some(1000))).await;
    std::fs::write(rw.path("exists.txt"), b"old").unwrap();
    let c = client(rw.addr, None, None, Mode::Octet);
    c.put("exists.txt", &b"new"[..], Some(3), |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(rw.path("exists.txt")).unwrap(), b"new");
    let (code, _) = server_error(c.put("new.txt", &b"x"[..], Some(1), |_| {}).await);
    assert_eq!(code, ErrorCode::AccessViolation);
    assert!(!rw.path("new.txt").exists());
    // Over the size limit: announced (tsize) and not announced.
    let big = content(5000, 1);
    let (code, _) = server_error(c.put("exists.txt", &big[..], Some(5000), |_| {}).await);
    assert_eq!(code, ErrorCode::DiskFull);
    let quiet = Client::builder(rw.addr)
        .tsize(false)
        .dally(Duration::ZERO)
        .build();
    let (code, _) = server_error(quiet.put("exists.txt", &big[..], None, |_| {}).await);
    assert_eq!(code, ErrorCode::DiskFull);
    assert_eq!(std::fs::read(rw.path("exists.txt")).unwrap(), b"new");
    assert_no_temp_files(rw.dir.path());
    rw.stop().await;
}

fn assert_no_temp_files(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tftpx-part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// A reader that yields `n` bytes and then never completes (a stalled local source).
struct Stall(usize);

impl tokio::io::AsyncRead for Stall {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0 == 0 {
            return std::task::Poll::Pending;
        }
        let n = self.0.min(buf.remaining());
        buf.put_slice(&vec![b'x'; n]);
        self.0 -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn abandoned_upload_leaves_the_old_file_intact() {
    let srv = start(|h| h.allow_write(true), |b| b).await;
    std::fs::write(srv.path("keep.bin"), b"precious").unwrap();
    let token = tftpx::CancellationToken::new();
    let c = Client::builder(srv.addr)
        .timeout(Duration::from_millis(200))
        .cancel_token(token.clone())
        .build();
    let upload = tokio::spawn(async move { c.put("keep.bin", Stall(100_000), None, |_| {}).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), upload)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(ClientError::Cancelled)), "{r:?}");
    let s = srv.summaries(1).await;
    assert!(
        matches!(s[0].outcome, Outcome::Failed(_)),
        "{:?}",
        s[0].outcome
    );
    assert_eq!(std::fs::read(srv.path("keep.bin")).unwrap(), b"precious");
    assert_no_temp_files(srv.dir.path());
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_ends_running_transfers_with_an_error() {
    let srv = start(|h| h.allow_create(true), |b| b).await;
    // A raw client: WRQ, one full DATA block, then silence.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(b"\x00\x02half.bin\x00octet\x00", srv.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 600];
    let (n, tid) = sock.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"\x00\x04\x00\x00", "ACK 0");
    let mut data = b"\x00\x03\x00\x01".to_vec();
    data.extend_from_slice(&[7u8; 512]);
    sock.send_to(&data, tid).await.unwrap();
    let (n, _) = sock.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"\x00\x04\x00\x01", "ACK 1");
    let dir = srv.dir.path().to_path_buf();
    let TestServer {
        dir: _keep,
        token,
        task,
        ..
    } = srv;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("server stops with a transfer running")
        .unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("the client is told")
        .unwrap();
    assert_eq!(from, tid);
    assert_eq!(&buf[..4], b"\x00\x05\x00\x00", "ERROR 0: {:?}", &buf[..n]);
    assert!(!dir.join("half.bin").exists(), "no half-written file");
    assert_no_temp_files(&dir);
}

#[tokio::test]
async fn client_times_out_against_a_silent_port() {
    times_out_against_a_silent_port(false).await;
}

/// A get (with [`tftpx::ClientBuilder::blocking_wait`] as `blocking` says) from a port
/// that never answers ends `TimedOut { retries: 2 }`, and the request and its two
/// retransmissions reached the port, nothing else. Returns the port's socket.
async fn times_out_against_a_silent_port(blocking: bool) -> std::net::UdpSocket {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let c = Client::builder(silent.local_addr().unwrap())
        .timeout(Duration::from_millis(50))
        .retries(2)
        .blocking_wait(blocking)
        .build();
    let mut out = Vec::new();
    let r = c.get("x", &mut out, |_| {}).await;
    assert!(
        matches!(r, Err(ClientError::TimedOut { retries: 2 })),
        "{r:?}"
    );
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 600];
    let mut n = 0;
    // Bounded by what was queued: the socket does not wait.
    while silent.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    assert_eq!(n, 3, "the request and two retransmissions");
    silent
}

#[tokio::test]
async fn summaries_describe_transfers() {
    let srv = start(|h| h, |b| b).await;
    std::fs::write(srv.path("s.bin"), content(3000, 9)).unwrap();
    let c = client(srv.addr, Some(1468), Some(2), Mode::Octet);
    get(&c, "s.bin").await.unwrap();
    let s = srv.summaries(1).await;
    let line = s[0].to_string();
    assert!(line.starts_with("RRQ from 127.0.0.1:"), "{line}");
    assert!(
        line.contains("\"s.bin\" octet: ok, 3000 bytes in"),
        "{line}"
    );
    assert!(
        line.contains("blksize=1468 windowsize=2 tsize=3000"),
        "{line}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_never_delays_another() {
    let srv = start(|h| h, |b| b.timeout(Duration::from_secs(1)).max_retries(5)).await;
    let data = content(200_000, 3);
    std::fs::write(srv.path("a.bin"), &data).unwrap();
    // Ten clients that request and then never ACK: each holds a transfer for ~6 s.
    let mut silent = Vec::new();
    for _ in 0..10 {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(b"\x00\x01a.bin\x00octet\x00", srv.addr)
            .await
            .unwrap();
        silent.push(s);
    }
    let c = client(srv.addr, None, None, Mode::Octet);
    for _ in 0..3 {
        let (back, _) = get(&c, "a.bin").await.unwrap();
        assert!(back == data);
    }
    // All three downloads ended while every silent transfer was still retrying.
    let s = srv.summaries(3).await;
    assert_eq!(s.len(), 3, "only the real downloads have ended");
    assert!(s.iter().all(|s| s.outcome == Outcome::Ok));
    srv.stop().await;
}

/// With a dally, `get` lingers after its final ACK and re-acknowledges a repeated last DATA
/// (the server missed our final ACK) before it returns: nothing runs on after it, so a
/// program that exits at once loses no dally (no `finish()` to call).
#[tokio::test]
async fn download_dallies_before_it_returns() {
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = Client::builder(server.local_addr().unwrap())
        .tsize(false)
        .timeout(Duration::from_millis(200))
        .dally(Duration::from_millis(500))
        .build();
    let fake = async {
        let mut buf = [0u8; 600];
        let (_, client) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..2], b"\x00\x01", "RRQ");
        let tid = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tid.send_to(b"\x00\x03\x00\x01end", client).await.unwrap();
        let (n, _) = tid.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\x00\x04\x00\x01");
        // The server repeats its last DATA and is answered again, from the same port.
        tid.send_to(b"\x00\x03\x00\x01end", client).await.unwrap();
        let (n, from) = tid.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"\x00\x04\x00\x01"[..], client));
    };
    let mut out = Vec::new();
    let (r, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(c.get("f", &mut out, |_| {}), fake)
    })
    .await
    .expect("the dally ends");
    r.unwrap();
    assert_eq!(out, b"end");
}

/// By default there is no dally, in `get` or after it: once `get` has returned, a repeated
/// last DATA finds the client's port closed (ICMP port unreachable, seen by a connected
/// socket as ECONNREFUSED) instead of a background task re-acknowledging it.
#[tokio::test]
async fn download_has_no_dally_by_default() {
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = Client::builder(server.local_addr().unwrap())
        .tsize(false)
        .build();
    let tid = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let fake = async {
        let mut buf = [0u8; 600];
        let (_, client) = server.recv_from(&mut buf).await.unwrap();
        tid.send_to(b"\x00\x03\x00\x01end", client).await.unwrap();
        let (n, _) = tid.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\x00\x04\x00\x01");
        client
    };
    let mut out = Vec::new();
    let (r, client) = tokio::join!(c.get("f", &mut out, |_| {}), fake);
    r.unwrap();
    assert_eq!(out, b"end");
    tid.connect(client).await.unwrap();
    tid.send(b"\x00\x03\x00\x01end").await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(30), tid.recv(&mut buf))
        .await
        .expect("an answer or an error");
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "nothing listens on the client's port once get has returned"
    );
}

#[tokio::test]
async fn a_download_shorter_than_its_tsize_is_an_error_not_a_file() {
    // A fake server that announces tsize=1000 and sends 10 bytes (its file shrank).
    let fake = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap();
    let serve = async {
        let mut buf = [0u8; 600];
        let (_, client) = fake.recv_from(&mut buf).await.unwrap();
        fake.send_to(b"\x00\x06tsize\x001000\x00", client)
            .await
            .unwrap();
        let (n, _) = fake.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\x00\x04\x00\x00");
        fake.send_to(b"\x00\x03\x00\x01short data", client)
            .await
            .unwrap();
        let (n, _) = fake.recv_from(&mut buf).await.unwrap();
        buf[..n].to_vec()
    };
    let c = Client::builder(addr)
        .timeout(Duration::from_millis(500))
        .dally(Duration::ZERO)
        .build();
    let mut out = Vec::new();
    let (reply, got) = tokio::join!(serve, c.get("f", &mut out, |_| {}));
    assert!(
        matches!(
            got,
            Err(ClientError::SizeMismatch {
                announced: 1000,
                received: 10
            })
        ),
        "{got:?}"
    );
    assert_eq!(
        &reply[..4],
        b"\x00\x05\x00\x00",
        "ERROR 0 instead of the final ACK"
    );
}

/// A reader that yields `good` bytes, then fails with a permission error.
struct FailAfter {
    good: usize,
}

impl tokio::io::AsyncRead for FailAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.good == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            )));
        }
        let n = self.good.min(buf.remaining());
        buf.put_slice(&vec![7u8; n]);
        self.good -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// `download` and `upload` are one call each (no progress callback); an upload whose
/// reader fails returns the reader's own error (its kind intact, not a string), and the
/// server keeps the old file.
#[tokio::test]
async fn one_call_transfers_and_a_typed_local_abort() {
    let srv = start(|h| h.allow_write(true).allow_create(true), |b| b).await;
    let c = Client::builder(srv.addr).build();
    let data = content(5_000, 11);
    let r = c.upload("one.bin", &data[..], Some(5_000)).await.unwrap();
    assert_eq!(r.bytes, 5_000);
    let mut back = Vec::new();
    let r = c.download("one.bin", &mut back).await.unwrap();
    assert_eq!((r.bytes, back), (5_000, data.clone()));

    let r = c.upload("one.bin", FailAfter { good: 2_000 }, None).await;
    match r {
        Err(ClientError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied),
        other => panic!("expected the reader's own error, got {other:?}"),
    }
    let s = srv.summaries(3).await;
    assert!(
        matches!(s[2].outcome, Outcome::Failed(_)),
        "{:?}",
        s[2].outcome
    );
    assert_eq!(std::fs::read(srv.path("one.bin")).unwrap(), data);
    srv.stop().await;
}

/// A writer whose first write waits until `go` is set (and its waker called); it keeps
/// what it is given and the length of every write.
#[derive(Default)]
struct HeldWriter {
    out: Vec<u8>,
    writes: Vec<usize>,
    go: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<Mutex<Option<std::task::Waker>>>,
}

impl tokio::io::AsyncWrite for HeldWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if !self.go.load(std::sync::atomic::Ordering::SeqCst) {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            // Checked again: `go` may have been set before the waker was stored.
            if !self.go.load(std::sync::atomic::Ordering::SeqCst) {
                return std::task::Poll::Pending;
            }
        }
        self.out.extend_from_slice(buf);
        self.writes.push(buf.len());
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Write-behind in the client: a full block's ACK leaves before the block is written (the
/// writer here holds its first write until the fake server has that ACK), so the server
/// sends the next block while the client writes. The last block is written before its ACK.
#[tokio::test]
async fn a_download_acknowledges_a_block_before_writing_it() {
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = Client::builder(server.local_addr().unwrap())
        .tsize(false)
        .build();
    let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waker = Arc::new(Mutex::new(None::<std::task::Waker>));
    let mut out = HeldWriter {
        go: go.clone(),
        waker: waker.clone(),
        ..HeldWriter::default()
    };
    let block1 = content(512, 7);
    let fake = async {
        let mut buf = [0u8; 600];
        let (_, client) = server.recv_from(&mut buf).await.unwrap();
        let tid = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut data = b"\x00\x03\x00\x01".to_vec();
        data.extend_from_slice(&block1);
        tid.send_to(&data, client).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), tid.recv_from(&mut buf))
            .await
            .expect("ACK 1 arrives while the client's write of block 1 is held")
            .unwrap();
        assert_eq!(&buf[..n], b"\x00\x04\x00\x01");
        go.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = waker.lock().unwrap().take() {
            w.wake();
        }
        tid.send_to(b"\x00\x03\x00\x02end", client).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), tid.recv_from(&mut buf))
            .await
            .expect("ACK 2")
            .unwrap();
        assert_eq!(&buf[..n], b"\x00\x04\x00\x02");
    };
    let (r, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(c.get("f", &mut out, |_| {}), fake)
    })
    .await
    .expect("the download ends");
    r.unwrap();
    let mut want = block1.clone();
    want.extend_from_slice(b"end");
    assert_eq!(out.out, want);
}

/// A download's blocks are written in runs of at least 64 KiB, each right after an ACK:
/// with windows, at a window's end (a write in the middle of a window holds back the ACK
/// the server waits for). What arrives is written whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_writes_in_runs_at_window_ends() {
    let srv = start(|h| h, |b| b).await;
    let data = content(1 << 20, 3);
    std::fs::write(srv.path("w.bin"), &data).unwrap();
    // blksize 1000, windowsize 8: a window is 8,000 bytes; lock-step at 512.
    for (blksize, windowsize, window) in [(1000u16, Some(8u16), 8000usize), (512, None, 512)] {
        let c = client(srv.addr, Some(blksize), windowsize, Mode::Octet);
        let mut out = HeldWriter {
            go: Arc::new(true.into()),
            ..HeldWriter::default()
        };
        c.get("w.bin", &mut out, |_| {}).await.unwrap();
        assert!(out.out == data, "the file whole, in order");
        let (last, runs) = out.writes.split_last().unwrap();
        assert!(*last > 0);
        let mut end = 0;
        for &n in runs {
            end += n;
            assert!(n >= 64 << 10, "a run of {n} bytes: {:?}", out.writes);
            assert_eq!(
                end % window,
                0,
                "a write ending mid-window: {:?}",
                out.writes
            );
        }
        // 1 MiB in runs of at least 64 KiB: 16 writes at most, not one per block.
        assert!(out.writes.len() <= 17, "{:?}", out.writes);
    }
    srv.stop().await;
}
