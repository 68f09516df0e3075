//! The server driven with raw datagrams, asserting on the exact bytes it sends back.

use std::net::SocketAddr;
use std::time::Duration;

use tftpx::{DirHandler, Outcome, Server};
use tokio::net::UdpSocket;

struct Srv {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    token: tftpx::CancellationToken,
    summaries: std::sync::Arc<std::sync::Mutex<Vec<tftpx::TransferSummary>>>,
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn start(files: &[(&str, &[u8])]) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let summaries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = summaries.clone();
    let server = Server::builder(DirHandler::new(dir.path()).unwrap().allow_create(true))
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_millis(300))
        .max_retries(2)
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

async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("a reply within 5 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

async fn sock() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut v = vec![0, 5];
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v.push(0);
    v
}

#[tokio::test]
async fn mail_and_unknown_modes_get_error_4() {
    let srv = start(&[("f", b"x")]).await;
    for mode in ["mail", "binary", "MAIL"] {
        let s = sock().await;
        let req = format!("\0\x01f\0{mode}\0");
        s.send_to(req.as_bytes(), srv.addr).await.unwrap();
        let (reply, _) = recv(&s).await;
        assert_eq!(&reply[..4], b"\x00\x05\x00\x04", "{mode}");
    }
}

#[tokio::test]
async fn oack_lists_only_accepted_options_case_insensitively() {
    let srv = start(&[("f.bin", &[1u8; 1000])]).await;
    let s = sock().await;
    s.send_to(
        b"\x00\x01/f.bin\x00OcTeT\x00BLKSIZE\x00600\x00multicast\x00\x00TSize\x000\x00windowsize\x000\x00",
        srv.addr,
    )
    .await
    .unwrap();
    let (reply, tid) = recv(&s).await;
    assert_eq!(reply, b"\x00\x06blksize\x00600\x00tsize\x001000\x00");
    s.send_to(b"\x00\x04\x00\x00", tid).await.unwrap();
    let (d1, _) = recv(&s).await;
    assert_eq!(&d1[..4], b"\x00\x03\x00\x01");
    assert_eq!(d1.len(), 4 + 600);
    s.send_to(b"\x00\x04\x00\x01", tid).await.unwrap();
    let (d2, _) = recv(&s).await;
    assert_eq!(d2.len(), 4 + 400);
    s.send_to(b"\x00\x04\x00\x02", tid).await.unwrap();
}

#[tokio::test]
async fn error_8_after_oack_ends_the_transfer_quietly() {
    let srv = start(&[("boot.efi", &[0u8; 5000])]).await;
    let s = sock().await;
    s.send_to(
        b"\x00\x01boot.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00",
        srv.addr,
    )
    .await
    .unwrap();
    let (oack, tid) = recv(&s).await;
    assert_eq!(oack, b"\x00\x06blksize\x001468\x00tsize\x005000\x00");
    s.send_to(&error(8, "size\nprobe\x1b[2J"), tid)
        .await
        .unwrap();
    // The server neither answers nor retransmits.
    let mut buf = [0u8; 100];
    let r = tokio::time::timeout(Duration::from_millis(800), s.recv_from(&mut buf)).await;
    assert!(r.is_err(), "no packet after the client's ERROR 8");
    let sums = srv.summaries.lock().unwrap().clone();
    assert_eq!(sums.len(), 1);
    // The client's message cannot inject a log line or a terminal escape.
    let line = sums[0].to_string();
    assert!(line.contains(r"size\nprobe\u{1b}[2J"), "{line}");
    // It reads as the routine size probe it is, not as a failure.
    assert!(
        line.contains(": size probe, the client read the OACK and ended the transfer (ERROR 8: "),
        "{line}"
    );
    assert!(!line.contains("fail"), "{line}");
    assert!(!line.contains('\n') && !line.contains('\x1b'), "{line}");
    assert!(
        matches!(&sums[0].outcome, Outcome::Failed(tftpx::proto::transfer::TransferError::Peer { code, .. }) if code.to_u16() == 8)
    );
}

#[tokio::test]
async fn stranger_gets_error_5_and_the_transfer_goes_on() {
    let srv = start(&[("f.bin", &[9u8; 700])]).await;
    let s = sock().await;
    s.send_to(b"\x00\x01f.bin\x00octet\x00", srv.addr)
        .await
        .unwrap();
    let (d1, tid) = recv(&s).await;
    assert_eq!(&d1[..4], b"\x00\x03\x00\x01");
    let stranger = sock().await;
    stranger.send_to(b"\x00\x04\x00\x01", tid).await.unwrap();
    let (e, from) = recv(&stranger).await;
    assert_eq!(from, tid);
    assert_eq!(&e[..4], b"\x00\x05\x00\x05");
    s.send_to(b"\x00\x04\x00\x01", tid).await.unwrap();
    let (d2, _) = recv(&s).await;
    assert_eq!(d2, [&b"\x00\x03\x00\x02"[..], &[9u8; 188]].concat());
    s.send_to(b"\x00\x04\x00\x02", tid).await.unwrap();
}

#[tokio::test]
async fn duplicate_ack_does_not_resend_and_timeout_does() {
    let srv = start(&[("f.bin", &[1u8; 2000])]).await;
    let s = sock().await;
    s.send_to(b"\x00\x01f.bin\x00octet\x00", srv.addr)
        .await
        .unwrap();
    let (_, tid) = recv(&s).await;
    s.send_to(b"\x00\x04\x00\x01", tid).await.unwrap();
    let (d2, _) = recv(&s).await;
    assert_eq!(&d2[..4], b"\x00\x03\x00\x02");
    // Duplicate ACK 1: no DATA 2 in answer (Sorcerer's Apprentice), only the timeout's.
    s.send_to(b"\x00\x04\x00\x01", tid).await.unwrap();
    let t = std::time::Instant::now();
    let (again, _) = recv(&s).await;
    assert_eq!(&again[..4], b"\x00\x03\x00\x02");
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "the repeat came from the retransmission timer, not the duplicate ACK"
    );
}

#[tokio::test]
async fn server_gives_up_after_its_retries_and_says_so() {
    let srv = start(&[("f.bin", &[1u8; 600])]).await;
    let s = sock().await;
    s.send_to(b"\x00\x01f.bin\x00octet\x00", srv.addr)
        .await
        .unwrap();
    let (p, tid) = recv(&s).await;
    assert_eq!(&p[..4], b"\x00\x03\x00\x01");
    // The client answers once, then goes silent.
    s.send_to(b"\x00\x04\x00\x01", tid).await.unwrap();
    let mut datas = 0;
    loop {
        let (p, _) = recv(&s).await;
        match &p[..4] {
            [0, 3, 0, 2] => datas += 1,
            [0, 5, ..] => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(datas, 3, "the original and 2 retransmissions, then ERROR");
}

#[tokio::test]
async fn a_client_never_heard_from_gets_no_closing_error() {
    let srv = start(&[("f.bin", &[1u8; 100])]).await;
    let s = sock().await;
    s.send_to(b"\x00\x01f.bin\x00octet\x00", srv.addr)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1000];
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_millis(1500), s.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => got.push(buf[..n].to_vec()),
            _ => break,
        }
    }
    assert_eq!(
        got.len(),
        2,
        "DATA 1 and 1 retransmission (max_unanswered_retries)"
    );
    assert!(
        got.iter().all(|p| p[..4] == [0, 3, 0, 1]),
        "no ERROR: {got:?}"
    );
}

#[tokio::test]
async fn undecodable_and_non_request_datagrams_do_not_start_transfers() {
    let srv = start(&[]).await;
    let s = sock().await;
    for junk in [&b""[..], b"\x00", b"\x00\x01noterminator", b"\x00\x09"] {
        s.send_to(junk, srv.addr).await.unwrap();
    }
    s.send_to(b"\x00\x04\x00\x01", srv.addr).await.unwrap();
    let (r, from) = recv(&s).await;
    assert_eq!(from, srv.addr, "ERROR 4 from the listen port");
    assert_eq!(&r[..4], b"\x00\x05\x00\x04");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(srv.summaries.lock().unwrap().is_empty());
}
