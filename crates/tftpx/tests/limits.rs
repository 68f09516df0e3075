//! Reflection and flood defences, driven with raw datagrams: what a forged RRQ draws toward
//! its victim (the amplification factor), the request rate limit per source address, the
//! per-client and total transfer limits, and repeated requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tftpx::proto::wire::{ErrorCode, Packet};
use tftpx::{Client, DirHandler, Outcome, Server, ServerBuilder, TransferSummary};
use tokio::net::UdpSocket;

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
    /// Waits (bounded) until `n` transfers have ended.
    async fn ended(&self, n: usize) -> Vec<TransferSummary> {
        for _ in 0..400 {
            if self.summaries.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.summaries.lock().unwrap().clone()
    }
}

async fn start(
    configure: impl FnOnce(ServerBuilder<DirHandler>) -> ServerBuilder<DirHandler>,
) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![0x5a; 512 * 40]).unwrap();
    std::fs::write(dir.path().join("small.txt"), b"hello").unwrap();
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let s2 = summaries.clone();
    let server = configure(
        Server::builder(DirHandler::new(dir.path()).unwrap())
            .listen("127.0.0.1:0".parse().unwrap())
            .timeout(Duration::from_millis(100)),
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

fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v.extend_from_slice(b"octet\0");
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// Everything `s` receives until it has been quiet for `quiet`: (datagram, source).
async fn collect(s: &UdpSocket, quiet: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    for _ in 0..100_000 {
        match tokio::time::timeout(quiet, s.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => out.push((buf[..n].to_vec(), from)),
            _ => break,
        }
    }
    out
}

fn error_of(d: &[u8]) -> Option<(ErrorCode, String)> {
    match Packet::decode(d) {
        Ok(Packet::Error { code, message }) => {
            Some((code, String::from_utf8_lossy(message).into_owned()))
        }
        _ => None,
    }
}

/// What a forged RRQ (its source is the victim, who never answers) makes the server send to
/// the victim. Returns (bytes received by the victim, datagrams, request bytes).
async fn reflect(srv: &Srv, request: &[u8]) -> (usize, usize) {
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    victim.send_to(request, srv.addr).await.unwrap();
    // The server gives up after its retries (100 ms timeout): 1.5 s of quiet is the end.
    let got = collect(&victim, Duration::from_millis(1500)).await;
    (got.iter().map(|(d, _)| d.len()).sum(), got.len())
}

#[tokio::test]
async fn forged_rrq_amplification_is_bounded() {
    let request = rrq("big.bin", &[]);
    // As before the cap: every retransmission (5). (The code before the cap also closed
    // with an ERROR 0 to the victim; a peer never heard from gets none now.)
    let old = start(|b| b.max_retries(5).max_unanswered_retries(5)).await;
    let (old_bytes, old_n) = reflect(&old, &request).await;
    // Now: the first DATA and one retransmission (the default max_unanswered_retries), no
    // ERROR: 2 x 516 bytes for 16 (64.5x; 3 x 516 = 96.8x before, tftpd-hpa 161x).
    let srv = start(|b| b.max_retries(5)).await;
    let (bytes, n) = reflect(&srv, &request).await;
    // With options the first reply is the (small) OACK; a victim never sends ACK 0.
    let with_opts = rrq("big.bin", &[("blksize", "65464"), ("windowsize", "64")]);
    let (oack_bytes, oack_n) = reflect(&srv, &with_opts).await;
    eprintln!(
        "amplification of a {}-byte forged RRQ: before {old_n} datagrams / {old_bytes} bytes \
         = {:.1}x; after {n} / {bytes} = {:.1}x; RRQ with blksize+windowsize ({} bytes): \
         {oack_n} / {oack_bytes} = {:.1}x",
        request.len(),
        old_bytes as f64 / request.len() as f64,
        bytes as f64 / request.len() as f64,
        with_opts.len(),
        oack_bytes as f64 / with_opts.len() as f64,
    );
    assert_eq!(old_n, 6, "DATA 1 sent 6 times without the cap");
    assert_eq!(n, 2, "DATA 1 sent twice");
    assert_eq!(bytes, 2 * 516);
    assert!(bytes as f64 / request.len() as f64 <= 65.0);
    assert_eq!(oack_n, 2, "OACK sent twice");
    assert!(oack_bytes < with_opts.len() * 2);
    let ended = srv.ended(2).await;
    assert!(ended
        .iter()
        .all(|s| matches!(s.outcome, Outcome::Failed(_))));
}

#[tokio::test]
async fn a_flood_from_one_source_is_rate_limited_and_does_not_stop_another() {
    let srv = start(|b| b.rate_limit(Some(20)).max_transfers_per_client(None)).await;
    let data = std::fs::read(srv.dir.path().join("big.bin")).unwrap();
    let flooder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Another client on another address (127.0.0.2 is loopback too).
    let c = Client::builder(srv.addr)
        .bind("127.0.0.2:0".parse().unwrap())
        .timeout(Duration::from_millis(200))
        .dally(Duration::ZERO)
        .build();
    let flood = async {
        for i in 0..2000u32 {
            // Different names so none is a repeat of another.
            let r = rrq(&format!("missing-{i}"), &[]);
            let _ = flooder.send_to(&r, srv.addr).await;
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let mut back = Vec::new();
    let (_, got) = tokio::join!(flood, c.get("big.bin", &mut back, |_| {}));
    got.expect("the other client's download completes during the flood");
    assert!(back == data);
    let replies = collect(&flooder, Duration::from_millis(500)).await;
    let errors: Vec<_> = replies.iter().filter_map(|(d, _)| error_of(d)).collect();
    let rate_limited = errors
        .iter()
        .filter(|(_, m)| m.contains("Too many requests"))
        .count();
    let not_found = errors
        .iter()
        .filter(|(c, _)| *c == ErrorCode::FileNotFound)
        .count();
    eprintln!(
        "2000 requests flooded: {not_found} answered (burst + rate), {rate_limited} told to \
         slow down, {} dropped",
        2000 - not_found - rate_limited
    );
    assert_eq!(rate_limited, 1, "told once per 10 s");
    assert!((40..=80).contains(&not_found), "{not_found}");
}

#[tokio::test]
async fn per_client_and_total_transfer_limits_answer_error_0() {
    // A long timeout: the two held transfers must outlast the third request.
    let srv = start(|b| {
        b.rate_limit(None)
            .max_transfers_per_client(Some(2))
            .timeout(Duration::from_secs(5))
    })
    .await;
    // Three downloads from one address; the first two ACK DATA 1 (so their peers are real:
    // unanswered transfers would be evicted to make room) and then stall: the third is
    // refused.
    let socks = [
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    ];
    let mut buf = vec![0u8; 1000];
    for s in &socks[..2] {
        s.send_to(&rrq("big.bin", &[]), srv.addr).await.unwrap();
        let (n, tid) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..4], &[0, 3, 0, 1], "{:?}", &buf[..n.min(8)]);
        s.send_to(&[0, 4, 0, 1], tid).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf)).await;
    }
    socks[2]
        .send_to(&rrq("big.bin", &[]), srv.addr)
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socks[2].recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let (code, msg) = error_of(&buf[..n]).expect("ERROR for the third transfer");
    assert_eq!(code, ErrorCode::NotDefined);
    assert!(
        msg.contains("Too many transfers from your address"),
        "{msg}"
    );
    // Another address still gets served.
    let c = Client::builder(srv.addr)
        .bind("127.0.0.2:0".parse().unwrap())
        .dally(Duration::ZERO)
        .build();
    let mut back = Vec::new();
    c.get("small.txt", &mut back, |_| {}).await.unwrap();
    assert_eq!(back, b"hello");
    drop(srv);

    // The total: one transfer at once.
    let srv = start(|b| b.rate_limit(None).max_transfers(1)).await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.send_to(&rrq("big.bin", &[]), srv.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    b.send_to(&rrq("small.txt", &[]), srv.addr).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let (code, msg) = error_of(&buf[..n]).expect("ERROR: busy");
    assert_eq!(code, ErrorCode::NotDefined);
    assert!(msg.contains("Server busy"), "{msg}");
}

#[tokio::test]
async fn a_repeated_request_does_not_start_a_second_transfer() {
    let srv = start(|b| b).await;
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = rrq("small.txt", &[]);
    c.send_to(&r, srv.addr).await.unwrap();
    c.send_to(&r, srv.addr).await.unwrap();
    c.send_to(&r, srv.addr).await.unwrap();
    let mut buf = vec![0u8; 1000];
    let (n, tid) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"\x00\x03\x00\x01hello");
    c.send_to(&[0, 4, 0, 1], tid).await.unwrap();
    // Nothing from any other TID: one transfer answered three copies of the request.
    let rest = collect(&c, Duration::from_millis(500)).await;
    assert!(rest.is_empty(), "{rest:?}");
    let ended = srv.ended(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(srv.summaries.lock().unwrap().len(), 1);
    assert_eq!(ended[0].outcome, Outcome::Ok);

    // The same request again after the transfer made progress is a restart: served anew.
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = rrq("big.bin", &[]);
    c.send_to(&r, srv.addr).await.unwrap();
    let (_, tid1) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    c.send_to(&[0, 4, 0, 1], tid1).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..4], &[0, 3, 0, 2][..], "{:?}", &buf[..n.min(8)]);
    c.send_to(&r, srv.addr).await.unwrap();
    let mut from_new = false;
    for _ in 0..20 {
        let (n, tid) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if tid != tid1 && buf[..4] == [0, 3, 0, 1] {
            from_new = n == 516;
            break;
        }
    }
    assert!(from_new, "the restarted request got DATA 1 from a new TID");
}
