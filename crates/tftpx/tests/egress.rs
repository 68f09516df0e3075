//! The egress budget, attacked: what a blind attacker who forges a victim's address, and a
//! real client that sends an ACK train without reading, make the server send ("safe to
//! expose" F3 and F4). Default server settings throughout.
//!
//! F3 sprays ACK 0 to every ephemeral port of the server's address: it runs in a private
//! network namespace (the test re-executes itself under `unshare -n`, as root), so the
//! spray reaches nothing but the server under test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tftpx::{DirHandler, Server, TransferSummary};
use tokio::net::UdpSocket;

#[path = "support/wire.rs"]
mod wire;
use wire::{ack, rrq};

#[path = "support/child.rs"]
mod child;

/// IPv4 + UDP headers: what each datagram costs on the wire beyond its payload.
const HEADERS: usize = 28;
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

async fn start(files: &[(String, Vec<u8>)]) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let s2 = summaries.clone();
    // Default settings: 1 s timeout, 5 retries, 1 unanswered retry, 32 per client.
    let server = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen("127.0.0.1:0".parse().unwrap())
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

/// Receives everything until `quiet` passes without a datagram (at most `limit` in all):
/// (wire bytes, datagrams, DATA datagrams).
async fn drain(s: &UdpSocket, quiet: Duration, limit: Duration) -> (usize, usize, usize) {
    let mut buf = vec![0u8; 70_000];
    let (mut bytes, mut n, mut data) = (0, 0, 0);
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match tokio::time::timeout(quiet, s.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) => {
                bytes += len + HEADERS;
                n += 1;
                if buf[..2] == [0, 3] {
                    data += 1;
                }
            }
            Ok(Err(_)) => {}
            Err(_) => break,
        }
    }
    (bytes, n, data)
}

/// F3: 32 big-window RRQs (blksize 65464, windowsize 64) "from" a victim's address, then ACK
/// 0 "from" it to every ephemeral port, blind. On main (6be9d0e) the victim received 805 MB
/// for the attacker's 0.9 MB (888x). The victim is a socket the test owns: sending from it is
/// what a forger with raw sockets does, and it counts what arrives.
#[test]
fn f3_a_blind_ack0_spray_reflects_at_most_5x() {
    if !child::in_child("f3_a_blind_ack0_spray_reflects_at_most_5x", true) {
        return;
    }
    child::sh(&["ip", "link", "set", "lo", "up"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let files: Vec<(String, Vec<u8>)> = (0..32)
            .map(|i| (format!("img{i}.bin"), vec![i as u8; 8 << 20]))
            .collect();
        let srv = start(&files).await;
        let victim = UdpSocket::bind("127.0.0.7:0").await.unwrap();
        let mut sent = 0;
        for (name, _) in &files {
            let r = rrq(name, &[("blksize", "65464"), ("windowsize", "64")]);
            victim.send_to(&r, srv.addr).await.unwrap();
            sent += r.len() + HEADERS;
        }
        // Let the OACKs go out, then spray ACK 0 to every port of the ephemeral range.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let mut it = range.split_whitespace().map(|p| p.parse::<u16>().unwrap());
        let (lo, hi) = (it.next().unwrap(), it.next().unwrap());
        let counter = {
            let victim = &victim;
            async move { drain(victim, Duration::from_secs(4), Duration::from_secs(60)).await }
        };
        let spray = async {
            let mut n = 0;
            for port in lo..=hi {
                let to = SocketAddr::new(srv.addr.ip(), port);
                if victim.send_to(&ack(0), to).await.is_ok() {
                    n += 1;
                }
                if port % 512 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            n
        };
        let ((got, datagrams, data), sprayed) = tokio::join!(counter, spray);
        sent += sprayed * (4 + HEADERS);
        let ratio = got as f64 / sent as f64;
        eprintln!(
            "F3: attacker sent {sent} bytes (32 RRQs + {sprayed} ACK 0); victim received \
             {datagrams} datagrams ({data} DATA), {got} bytes: {ratio:.2}x (main: 888x)"
        );
        assert!(ratio <= 5.0, "{ratio:.2}x");
        assert!(data <= 64, "at most 2 DATA per transfer: {data}");
        // Every transfer gave up; none is left running.
        let ended = srv.summaries.lock().unwrap().len();
        assert_eq!(ended, 32, "every transfer ended");
    });
}

/// F4: a real client asks for blksize 65464 x windowsize 64, then sends ACK 0, 1, 2, ... 900
/// as fast as it can without reading. On main every ACK below the window's end resent the rest
/// of the window: 4.2 MB per 32-byte ACK, 3.8 GB in 1 s. Now at most 2 DATA per ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_an_ack_train_draws_at_most_two_data_per_ack() {
    let srv = start(&[("big.bin".into(), vec![0x42; 65464 * 1000])]).await;
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(
        &rrq("big.bin", &[("blksize", "65464"), ("windowsize", "64")]),
        srv.addr,
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, tid) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .expect("OACK")
        .unwrap();
    assert_eq!(buf[..2], [0, 6], "OACK: {:?}", &buf[..n]);
    for b in 0..=900u16 {
        c.send_to(&ack(b), tid).await.unwrap();
    }
    // End the transfer (without reading anything meanwhile) and read its counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.send_to(b"\x00\x05\x00\x00stop\x00", tid).await.unwrap();
    let mut summary = None;
    for _ in 0..200 {
        if let Some(s) = srv.summaries.lock().unwrap().first() {
            summary = Some(s.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let s = summary.expect("the transfer ended");
    let per_ack = s.stats.data_sent as f64 / 901.0;
    eprintln!(
        "F4: 901 ACKs drew {} DATA ({:.2} per ACK, {} MB; main: 4.2 MB per ACK)",
        s.stats.data_sent,
        per_ack,
        s.stats.data_sent * 65468 / 1_000_000
    );
    assert!(per_ack <= 2.0, "{per_ack:.2} DATA per ACK");
}
