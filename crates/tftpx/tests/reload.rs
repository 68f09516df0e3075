//! The library's reload and drain API on the wire: `Server::reloader` swaps the refused
//! options, the address rules and the remap rules for new requests while a running transfer
//! keeps its own; `Server::drain_token` stops answering requests, lets the running
//! transfers finish and makes `Server::run` return once they have.

use std::sync::Arc;
use std::time::Duration;

use tftpx::reload::LiveSettings;
use tftpx::{Acl, DirHandler, RemapRules, Server};
use tokio::net::UdpSocket;
use tokio::time::timeout;

#[path = "support/wire.rs"]
mod wire;

const WAIT: Duration = Duration::from_secs(20);

async fn recv(s: &UdpSocket) -> (Vec<u8>, std::net::SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = timeout(WAIT, s.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// True when nothing arrives for 1.5 s (a slow machine can only make this pass).
async fn silent(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    timeout(Duration::from_millis(1500), s.recv_from(&mut buf))
        .await
        .is_err()
}

async fn client(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.unwrap()
}

#[tokio::test]
async fn reloader_applies_to_new_requests_and_drain_lets_the_running_one_finish() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..512 * 6 + 7).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("f"), &data).unwrap();
    let server = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen("127.0.0.1:0".parse().unwrap())
        .bind()
        .unwrap();
    let addr = server.local_addrs()[0];
    let reloader = server.reloader();
    let drain = server.drain_token();
    let run = tokio::spawn(server.run());

    // A running download, lock-step, with tsize in its OACK.
    let a = client("127.0.0.1").await;
    a.send_to(&wire::rrq("f", &[("tsize", "0")]), addr)
        .await
        .unwrap();
    let (oack, tid) = recv(&a).await;
    assert_eq!(&oack[..2], &[0, 6]);
    assert!(oack.windows(6).any(|w| w == b"tsize\0"));
    a.send_to(&wire::ack(0), tid).await.unwrap();
    let (d1, _) = recv(&a).await;
    assert_eq!(&d1[..4], &[0, 3, 0, 1]);

    // New settings: tsize refused, 127.0.0.2 denied, `alias` is `f`.
    let old = reloader.replace(LiveSettings {
        acl: Acl::new().deny("127.0.0.2".parse().unwrap()),
        refused: tftpx::proto::negotiate::RefusedOptions::from_name("tsize").unwrap(),
        remap: Some(Arc::new(RemapRules::parse("r ^alias$ f\n").unwrap())),
        ..LiveSettings::default()
    });
    assert!(old.acl.is_empty());
    let b = client("127.0.0.1").await;
    b.send_to(&wire::rrq("alias", &[("tsize", "0")]), addr)
        .await
        .unwrap();
    let (first, _) = recv(&b).await;
    assert_eq!(&first[..4], &[0, 3, 0, 1], "no OACK: tsize was refused");
    assert_eq!(&first[4..], &data[..512], "alias is remapped to f");
    let denied = client("127.0.0.2").await;
    denied.send_to(&wire::rrq("f", &[]), addr).await.unwrap();
    assert!(silent(&denied).await, "a denied source got an answer");

    // Drain: no new request is answered, the running download finishes, run() returns.
    drain.cancel();
    let late = client("127.0.0.1").await;
    late.send_to(&wire::rrq("f", &[]), addr).await.unwrap();
    let mut got = d1[4..].to_vec();
    let mut block = 1u16;
    loop {
        a.send_to(&wire::ack(block), tid).await.unwrap();
        if got.len() == data.len() {
            break;
        }
        let (p, _) = recv(&a).await;
        if p[..2] == [0, 3] && u16::from_be_bytes([p[2], p[3]]) == block + 1 {
            block += 1;
            got.extend_from_slice(&p[4..]);
        }
    }
    assert!(got == data);
    assert!(silent(&late).await, "a request was answered while draining");
    // `b` never acknowledged anything: it gives up on its own (an unanswered peer gets one
    // retransmission), and then `run` returns without the shutdown token.
    timeout(WAIT, run)
        .await
        .expect("run() returns once the running transfers ended")
        .unwrap();
}
