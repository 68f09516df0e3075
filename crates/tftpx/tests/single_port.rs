//! Single-port mode (`ServerBuilder::single_port`): every transfer answers from the listen
//! socket's address and port, datagrams are routed to transfers by the peer's address and
//! port, and every rule of the socket-per-transfer mode still holds. Raw UDP sockets play
//! the client, so every datagram's bytes and source are checked.

#[path = "support/relay.rs"]
mod relay;
#[path = "support/wire.rs"]
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tftpx::proto::wire::{ErrorCode, Packet};
use tftpx::{Client, DirHandler, Outcome, Server, ServerBuilder, TransferSummary};
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};
use wire::{ack, rrq, wrq};

struct Srv {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    token: tftpx::CancellationToken,
    summaries: Arc<Mutex<Vec<TransferSummary>>>,
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Srv {
    /// Waits (at most 20 s) until `n` transfers have ended; returns how many have.
    async fn ended(&self, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let have = self.summaries.lock().unwrap().len();
            if have >= n || Instant::now() > deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The bytes of the test file `f{i}`.
fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j * 7 + i * 13) as u8).collect()
}

/// Both ways single-port transfers get their datagrams: a connected socket each (the
/// default), or routed from the listen socket (`single_port_shared`).
const MODES: [bool; 2] = [false, true];

async fn start(
    listen: &str,
    configure: impl FnOnce(ServerBuilder<DirHandler>) -> ServerBuilder<DirHandler>,
) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..8 {
        std::fs::write(dir.path().join(format!("f{i}")), content(i, 512 * 20 + i)).unwrap();
    }
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let s2 = summaries.clone();
    let server = configure(
        Server::builder(
            DirHandler::new(dir.path())
                .unwrap()
                .allow_write(true)
                .allow_create(true),
        )
        .listen(listen.parse().unwrap())
        .single_port(true),
    )
    .on_transfer_end(move |s| s2.lock().unwrap().push(s.clone()))
    .bind()
    .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    Srv {
        addr,
        dir,
        token,
        summaries,
    }
}

/// One datagram, or `None` after `wait`.
async fn recv(s: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

/// Downloads `name` in lock-step by hand from `c`, checking that every datagram comes from
/// `from`; returns the bytes.
async fn lockstep_get(c: &UdpSocket, server: SocketAddr, from: SocketAddr, name: &str) -> Vec<u8> {
    c.send_to(&rrq(name, &[]), server).await.unwrap();
    let mut out = Vec::new();
    let mut expect: u16 = 1;
    for _ in 0..10_000 {
        let (d, src) = recv(c, Duration::from_secs(5)).await.expect("DATA");
        assert_eq!(
            src, from,
            "every datagram comes from the listen address and port"
        );
        let Ok(Packet::Data {
            block,
            payload: data,
        }) = Packet::decode(&d)
        else {
            panic!("expected DATA, got {d:?}");
        };
        if block == expect {
            out.extend_from_slice(data);
            expect = expect.wrapping_add(1);
        }
        c.send_to(&ack(block), src).await.unwrap();
        if data.len() < 512 {
            return out;
        }
    }
    panic!("no last block");
}

/// Asks for `name` and returns its DATA 1 (checked to be DATA 1).
async fn first_data(c: &UdpSocket, server: SocketAddr, name: &str) -> Vec<u8> {
    c.send_to(&rrq(name, &[]), server).await.unwrap();
    let (d, _) = recv(c, Duration::from_secs(5)).await.expect("DATA 1");
    assert_eq!(&d[..4], &[0, 3, 0, 1]);
    d
}

/// The next datagram is an ERROR with `code` from `from`.
async fn expect_error(c: &UdpSocket, from: SocketAddr, code: ErrorCode) {
    let (d, src) = recv(c, Duration::from_secs(5)).await.expect("ERROR");
    assert_eq!(src, from);
    assert!(
        matches!(Packet::decode(&d), Ok(Packet::Error { code: got, .. }) if got == code),
        "{d:?}"
    );
}

/// Remote ports of the connected (state 01) IPv4 UDP sockets on local port `port`, from
/// /proc/net/udp.
fn connected_peers(port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let remote = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            (local == port && *f.get(3)? == "01").then_some(remote)
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Transfers answer from the listen address and port, and several transfers from ports of
/// one host run side by side, each getting its own bytes.
#[test]
fn transfers_answer_from_the_listen_port_and_are_routed_by_peer() {
    runtime().block_on(async {
        for shared in MODES {
            let srv = start("127.0.0.1:0", |b| b.single_port_shared(shared)).await;
            let mut tasks = Vec::new();
            for i in 0..6 {
                let addr = srv.addr;
                tasks.push(tokio::spawn(async move {
                    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    let got = lockstep_get(&c, addr, addr, &format!("f{i}")).await;
                    assert_eq!(got, content(i, 512 * 20 + i), "f{i}");
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(srv.ended(6).await, 6);
            {
                let s = srv.summaries.lock().unwrap();
                assert!(s.iter().all(|s| s.outcome == Outcome::Ok), "{s:?}");
            }

            // The library's client, windowed, and an upload: the same socket serves them.
            let client = Client::builder(srv.addr)
                .bind("127.0.0.1:0".parse().unwrap())
                .blksize(1468)
                .windowsize(16)
                .dally(Duration::ZERO)
                .build();
            let mut back = Vec::new();
            client.get("f3", &mut back, |_| {}).await.unwrap();
            assert_eq!(back, content(3, 512 * 20 + 3));
            let data = content(9, 300_000);
            client
                .put("up.bin", &data[..], Some(data.len() as u64), |_| {})
                .await
                .unwrap();
            assert_eq!(std::fs::read(srv.dir.path().join("up.bin")).unwrap(), data);
        }
    });
}

/// A datagram that is not a request, from a peer with no transfer, gets ERROR 5 from the
/// listen port; a repeated request is folded into its running transfer (one transfer, one
/// summary).
#[test]
fn strays_get_error_5_and_repeated_requests_are_folded() {
    runtime().block_on(async {
        for shared in MODES {
            let srv = start("127.0.0.1:0", |b| b.single_port_shared(shared)).await;
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.send_to(&ack(7), srv.addr).await.unwrap();
            expect_error(&c, srv.addr, ErrorCode::UnknownTid).await;

            // The same RRQ three times: one DATA 1 each time it is (re)sent by the server, never
            // a second transfer.
            let r = rrq("f1", &[]);
            for _ in 0..3 {
                c.send_to(&r, srv.addr).await.unwrap();
            }
            let (d, from) = recv(&c, Duration::from_secs(5)).await.expect("DATA 1");
            assert_eq!(from, srv.addr);
            assert_eq!(&d[..4], &[0, 3, 0, 1]);
            // Finish it in lock-step, skipping duplicates of DATA 1.
            let mut got = d[4..].to_vec();
            let mut expect = 2u16;
            c.send_to(&ack(1), srv.addr).await.unwrap();
            for _ in 0..200 {
                let (d, _) = recv(&c, Duration::from_secs(5)).await.expect("DATA");
                let block = u16::from_be_bytes([d[2], d[3]]);
                if block == expect {
                    got.extend_from_slice(&d[4..]);
                    expect += 1;
                }
                c.send_to(&ack(block), srv.addr).await.unwrap();
                if block == expect - 1 && d.len() < 516 {
                    break;
                }
            }
            assert_eq!(got, content(1, 512 * 20 + 1));
            assert_eq!(srv.ended(1).await, 1);
            // No second transfer started (give a duplicate every chance to show up).
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(srv.summaries.lock().unwrap().len(), 1);
        }
    });
}

/// A transfer has a socket of its own on the listen address and port, connected to its
/// peer; a new, different request from the address and port of a running transfer takes
/// the peer over: the old transfer ends without sending anything more, the new one is
/// served.
#[test]
fn a_new_request_from_the_same_port_supersedes_the_running_transfer() {
    runtime().block_on(async {
        for shared in MODES {
        let srv = start("127.0.0.1:0", |b| b.single_port_shared(shared)).await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        first_data(&c, srv.addr, "f2").await;
        c.send_to(&ack(1), srv.addr).await.unwrap();
        let (d, _) = recv(&c, Duration::from_secs(5)).await.expect("DATA 2");
        assert_eq!(&d[..4], &[0, 3, 0, 2]);
        // The transfer has a socket of its own on the listen port, connected to the client.
        let me = c.local_addr().unwrap().port();
        let want = if shared { vec![] } else { vec![me] };
        assert_eq!(connected_peers(srv.addr.port()), want, "shared: {shared}");
        // Now another file, from the same port, without finishing the first.
        let got = lockstep_get(&c, srv.addr, srv.addr, "f5").await;
        assert_eq!(got, content(5, 512 * 20 + 5));
        assert_eq!(srv.ended(2).await, 2);
        {
            let s = srv.summaries.lock().unwrap();
            let old = s.iter().find(|s| s.filename == "f2").unwrap();
            assert!(
                matches!(&old.outcome, Outcome::Failed(e) if e.to_string().contains("superseded")),
                "{:?}",
                old.outcome
            );
            assert!(s
                .iter()
                .any(|s| s.filename == "f5" && s.outcome == Outcome::Ok));
        }
        // Nothing more from the old transfer (no ERROR, no DATA of f2).
        assert!(recv(&c, Duration::from_millis(1500)).await.is_none());
        }
    });
}

/// A dual-stack listener (`[::]:0`) serves IPv4 clients from the IPv4 address they asked,
/// at the listen port.
#[test]
fn dual_stack_listener_answers_ipv4_from_the_address_asked() {
    runtime().block_on(async {
        for shared in MODES {
            let srv = start("[::]:0", |b| b.single_port_shared(shared)).await;
            let port = srv.addr.port();
            for ip in ["127.0.0.1", "127.0.0.2"] {
                let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
                let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let got = lockstep_get(&c, to, to, "f4").await;
                assert_eq!(got, content(4, 512 * 20 + 4));
            }
            let c = UdpSocket::bind("[::1]:0").await.unwrap();
            let to: SocketAddr = format!("[::1]:{port}").parse().unwrap();
            let got = lockstep_get(&c, to, to, "f6").await;
            assert_eq!(got, content(6, 512 * 20 + 6));
        }
    });
}

/// A wildcard IPv4 listener answers from the address the request was sent to (IP_PKTINFO
/// on every reply), not from the kernel's choice.
#[test]
fn wildcard_listener_answers_from_the_address_asked() {
    runtime().block_on(async {
        for shared in MODES {
            let srv = start("0.0.0.0:0", |b| b.single_port_shared(shared)).await;
            let port = srv.addr.port();
            for ip in ["127.0.0.1", "127.0.0.3"] {
                let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
                let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let got = lockstep_get(&c, to, to, "f7").await;
                assert_eq!(got, content(7, 512 * 20 + 7));
                // Refusals too.
                c.send_to(&rrq("missing", &[]), to).await.unwrap();
                let (d, from) = recv(&c, Duration::from_secs(5)).await.expect("ERROR 1");
                assert_eq!(from, to);
                assert_eq!(&d[..4], &[0, 5, 0, 1]);
            }
        }
    });
}

/// An upload in single-port mode: the file lands whole, every ACK comes from the listen
/// port, and a WRQ refused by the handler is answered from it too.
#[test]
fn uploads_commit_and_ack_from_the_listen_port() {
    runtime().block_on(async {
        for shared in MODES {
            let srv = start("127.0.0.1:0", |b| b.single_port_shared(shared)).await;
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.send_to(&wrq("new.bin", &[]), srv.addr).await.unwrap();
            let (d, from) = recv(&c, Duration::from_secs(5)).await.expect("ACK 0");
            assert_eq!((from, d.as_slice()), (srv.addr, &ack(0)[..]));
            let data = content(3, 512 * 3 + 100);
            for (i, chunk) in data.chunks(512).enumerate() {
                let block = (i + 1) as u16;
                let mut p = vec![0, 3];
                p.extend_from_slice(&block.to_be_bytes());
                p.extend_from_slice(chunk);
                c.send_to(&p, srv.addr).await.unwrap();
                let (d, from) = recv(&c, Duration::from_secs(5)).await.expect("ACK");
                assert_eq!((from, d.as_slice()), (srv.addr, &ack(block)[..]));
            }
            assert_eq!(std::fs::read(srv.dir.path().join("new.bin")).unwrap(), data);
            assert_eq!(srv.ended(1).await, 1);
        }
    });
}

/// Shared mode runs a directory's downloads in the listener (no task per datagram): its
/// timers retransmit an unanswered DATA, give up after the retries with the transfer's
/// place given back, and a later download is served as before.
#[test]
fn listener_run_downloads_retransmit_and_give_up_on_a_silent_peer() {
    runtime().block_on(async {
        let srv = start("127.0.0.1:0", |b| {
            b.single_port_shared(true)
                .timeout(Duration::from_millis(200))
                .max_retries(2)
                .max_unanswered_retries(2)
                .max_transfers(1)
        })
        .await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&rrq("f1", &[]), srv.addr).await.unwrap();
        // DATA 1, then its two retransmissions; never acknowledged.
        let mut firsts = 0;
        while let Some((d, from)) = recv(&c, Duration::from_secs(2)).await {
            assert_eq!(from, srv.addr);
            assert_eq!(&d[..4], &[0, 3, 0, 1], "only DATA 1, again and again");
            assert_eq!(&d[4..], &content(1, 512 * 20 + 1)[..512]);
            firsts += 1;
            assert!(firsts <= 3, "no more than the retries");
        }
        assert_eq!(firsts, 3, "DATA 1 and two retransmissions");
        assert_eq!(srv.ended(1).await, 1);
        {
            let s = srv.summaries.lock().unwrap();
            assert!(
                matches!(&s[0].outcome, Outcome::Failed(e) if e.to_string().contains("timed out")),
                "{:?}",
                s[0].outcome
            );
        }
        // Its place (--max-transfers 1) is free again: a new download is served whole,
        // with a lost ACK on the way (the peer answers DATA 3 only when it comes again).
        let c2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c2.send_to(&rrq("f4", &[]), srv.addr).await.unwrap();
        let mut got = Vec::new();
        let mut expect: u16 = 1;
        let mut dropped = false;
        for _ in 0..200 {
            let (d, _) = recv(&c2, Duration::from_secs(5)).await.expect("DATA");
            let Ok(Packet::Data { block, payload }) = Packet::decode(&d) else {
                panic!("expected DATA, got {d:?}");
            };
            if block == 3 && !dropped {
                dropped = true;
                continue;
            }
            if block == expect {
                got.extend_from_slice(payload);
                expect += 1;
            }
            c2.send_to(&ack(block), srv.addr).await.unwrap();
            if payload.len() < 512 {
                break;
            }
        }
        assert_eq!(got, content(4, 512 * 20 + 4));
        assert_eq!(srv.ended(2).await, 2);
        let s = srv.summaries.lock().unwrap();
        assert_eq!(s[1].outcome, Outcome::Ok);
        assert!(s[1].stats.retransmits >= 1, "{:?}", s[1].stats);
    });
}

/// Stopping the server ends a download the listener runs with ERROR 0 to its peer, from
/// the listen port, and its summary says so.
#[test]
fn stopping_the_server_ends_listener_run_downloads_with_an_error() {
    runtime().block_on(async {
        let srv = start("127.0.0.1:0", |b| b.single_port_shared(true)).await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        first_data(&c, srv.addr, "f2").await;
        srv.token.cancel();
        expect_error(&c, srv.addr, ErrorCode::NotDefined).await;
        assert_eq!(srv.ended(1).await, 1);
        let s = srv.summaries.lock().unwrap();
        assert!(
            matches!(s[0].outcome, Outcome::Failed(_)),
            "{:?}",
            s[0].outcome
        );
    });
}

/// A download the listener runs whose peer never answered is evicted when its client
/// needs the place (--max-transfers-per-client): it ends with ERROR 0 to that peer, and
/// the new request is served.
#[test]
fn an_evicted_listener_run_download_ends_with_an_error() {
    runtime().block_on(async {
        let srv = start("127.0.0.1:0", |b| {
            b.single_port_shared(true).max_transfers_per_client(Some(1))
        })
        .await;
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        first_data(&silent, srv.addr, "f2").await;
        // Never acknowledged; the same client (address) asks again from another port.
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = lockstep_get(&c, srv.addr, srv.addr, "f6").await;
        assert_eq!(got, content(6, 512 * 20 + 6));
        expect_error(&silent, srv.addr, ErrorCode::NotDefined).await;
        assert_eq!(srv.ended(2).await, 2);
        let s = srv.summaries.lock().unwrap();
        assert!(s
            .iter()
            .any(|s| s.filename == "f6" && s.outcome == Outcome::Ok));
        assert!(s
            .iter()
            .any(|s| s.filename == "f2" && matches!(s.outcome, Outcome::Failed(_))));
    });
}

/// The listener that runs downloads polls its socket and, under steady traffic, could run
/// on without ever yielding: a silent peer's timer still fires on time while other
/// downloads keep the socket busy, and a new request is still answered.
#[test]
fn listener_run_timers_fire_under_steady_traffic() {
    runtime().block_on(async {
        let srv = start("127.0.0.1:0", |b| {
            b.single_port_shared(true)
                .timeout(Duration::from_millis(200))
                .max_retries(3)
                .max_unanswered_retries(3)
        })
        .await;
        std::fs::write(srv.dir.path().join("big"), content(1, 4 << 20)).unwrap();
        // Steady traffic: windowed downloads back to back until told to stop.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut busy = Vec::new();
        for _ in 0..6 {
            let (addr, stop) = (srv.addr, stop.clone());
            busy.push(tokio::spawn(async move {
                let client = Client::builder(addr)
                    .bind("127.0.0.1:0".parse().unwrap())
                    .windowsize(8)
                    .build();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200 {
                    let mut out = Vec::new();
                    client.get("big", &mut out, |_| {}).await.unwrap();
                    assert_eq!(out.len(), 4 << 20);
                    n += 1;
                }
                n
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let asked = Instant::now();
        first_data(&c, srv.addr, "f1").await;
        // Not acknowledged: it comes again after about the timeout (200 ms), not once the
        // traffic stops.
        let (d, _) = recv(&c, Duration::from_secs(3))
            .await
            .expect("DATA 1 again");
        assert_eq!(&d[..4], &[0, 3, 0, 1]);
        let waited = asked.elapsed();
        assert!(
            busy.iter().all(|t| !t.is_finished()),
            "the traffic ran throughout"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in busy {
            assert!(t.await.unwrap() >= 1);
        }
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    });
}

/// A copy of the request that reaches the listener after the transfer has made progress
/// (busybox repeats its RRQ when the answer is slow, and in a storm a copy can be read
/// after its ACK of DATA 1) is folded into the transfer, in both single-port modes, not
/// taken as a restart that would end it.
#[test]
fn a_late_copy_of_the_request_is_folded_not_a_restart() {
    runtime().block_on(async {
        for shared in MODES {
            let srv = start("127.0.0.1:0", |b| b.single_port_shared(shared)).await;
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut got = first_data(&c, srv.addr, "f3").await[4..].to_vec();
            c.send_to(&ack(1), srv.addr).await.unwrap();
            let (d, _) = recv(&c, Duration::from_secs(5)).await.expect("DATA 2");
            assert_eq!(&d[..4], &[0, 3, 0, 2]);
            got.extend_from_slice(&d[4..]);
            // The late copy, then the rest of the transfer as if it had not come.
            c.send_to(&rrq("f3", &[]), srv.addr).await.unwrap();
            c.send_to(&ack(2), srv.addr).await.unwrap();
            for _ in 0..100 {
                let (d, _) = recv(&c, Duration::from_secs(5)).await.expect("DATA");
                let Ok(Packet::Data { block, payload }) = Packet::decode(&d) else {
                    panic!("expected DATA, got {d:?} (shared: {shared})");
                };
                assert!(
                    block >= 3,
                    "no new transfer from block 1 (shared: {shared})"
                );
                got.extend_from_slice(payload);
                c.send_to(&ack(block), srv.addr).await.unwrap();
                if payload.len() < 512 {
                    break;
                }
            }
            assert_eq!(got, content(3, 512 * 20 + 3), "shared: {shared}");
            assert_eq!(srv.ended(1).await, 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let s = srv.summaries.lock().unwrap();
            assert_eq!(s.len(), 1, "one transfer (shared: {shared})");
            assert_eq!(s[0].outcome, Outcome::Ok, "shared: {shared}");
        }
    });
}

/// Downloads the listener runs survive a lossy, duplicating and reordering path (the seeded
/// relay, both directions): every byte arrives, lock-step and windowed, and the server
/// reports each transfer as done (the client dallies, so a lost final ACK is repeated).
#[test]
fn listener_run_downloads_survive_loss_duplication_and_reordering() {
    runtime().block_on(async {
        let srv = start("127.0.0.1:0", |b| {
            b.single_port_shared(true)
                .timeout(Duration::from_millis(100))
                .max_retries(20)
        })
        .await;
        let data = content(5, 100_000);
        std::fs::write(srv.dir.path().join("lossy.bin"), &data).unwrap();
        let faults = || relay::Faults {
            loss: 10,
            dup: 5,
            reorder: 5,
            delay: Duration::from_millis(3),
            ..relay::Faults::default()
        };
        let mut n = 0;
        for seed in 1..=3u64 {
            for (blksize, windowsize) in [(512u16, 1u16), (1468, 8)] {
                let r = relay::Relay::start(srv.addr, seed, faults(), faults()).await;
                let client = Client::builder(r.addr())
                    .bind("127.0.0.1:0".parse().unwrap())
                    .blksize(blksize)
                    .windowsize(windowsize)
                    .timeout(Duration::from_millis(100))
                    .retries(20)
                    // Re-acknowledges a repeated last DATA (its final ACK may be lost).
                    .dally(Duration::from_secs(1))
                    .build();
                let mut out = Vec::new();
                timeout(
                    Duration::from_secs(60),
                    client.get("lossy.bin", &mut out, |_| {}),
                )
                .await
                .expect("bounded")
                .unwrap_or_else(|e| panic!("seed {seed} {blksize}x{windowsize}: {e}"));
                assert!(
                    out == data,
                    "seed {seed} {blksize}x{windowsize}: bytes differ"
                );
                let c = r.counts(relay::Dir::ToClient);
                assert!(c.dropped > 0, "the path lost datagrams: {c:?}");
                n += 1;
                assert_eq!(srv.ended(n).await, n);
            }
        }
        let s = srv.summaries.lock().unwrap();
        assert!(s.iter().all(|s| s.outcome == Outcome::Ok), "{s:?}");
    });
}
