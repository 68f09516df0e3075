//! Listen sockets the server did not bind itself (`ServerBuilder::listen_socket`, as systemd
//! socket activation passes them) and dual-stack `[::]`: raw datagrams in, exact bytes out,
//! replies from the address asked.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tftpx::{DirHandler, Server, ServerError};
use tokio::net::UdpSocket;

/// Bytes 0..1300 (three DATA blocks at blksize 512, the last one short).
fn content() -> Vec<u8> {
    (0..1300u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn dir_with_file() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), content()).unwrap();
    dir
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

/// Downloads `f.bin` in lock-step with raw datagrams from `client` through `server_addr`;
/// returns the bytes and the address the DATA came from (the transfer's TID).
async fn fetch(client: &UdpSocket, server_addr: SocketAddr) -> (Vec<u8>, SocketAddr) {
    client
        .send_to(b"\x00\x01f.bin\x00octet\x00", server_addr)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut tid = None;
    // At most 3 blocks are expected; 10 bounds the loop.
    for block in 1u16..=10 {
        let (d, from) = recv(client).await;
        assert_eq!(&d[..4], &[0, 3, 0, block as u8], "DATA {block}");
        assert_eq!(*tid.get_or_insert(from), from, "every DATA from one TID");
        got.extend_from_slice(&d[4..]);
        let mut ack = vec![0, 4];
        ack.extend_from_slice(&block.to_be_bytes());
        client.send_to(&ack, from).await.unwrap();
        if d.len() < 516 {
            return (got, from);
        }
    }
    panic!("more than 10 blocks for a 1300-byte file");
}

fn std_udp(addr: &str, v6only: Option<bool>) -> std::net::UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).unwrap();
    if let Some(v) = v6only {
        s.set_only_v6(v).unwrap();
    }
    s.bind(&addr.into()).unwrap();
    s.into()
}

#[tokio::test]
async fn a_passed_socket_serves_with_replies_from_the_address_asked() {
    let dir = dir_with_file();
    // Bound by "systemd": blocking, no IP_PKTINFO; the server sets both up itself.
    let passed = std_udp("127.0.0.1:0", None);
    let addr = passed.local_addr().unwrap();
    let server = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen_socket(passed)
        .bind()
        .unwrap();
    assert_eq!(server.local_addrs(), vec![addr]);
    let token = server.shutdown_token();
    let run = tokio::spawn(server.run());
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (got, tid) = fetch(&client, addr).await;
    assert_eq!(got, content());
    assert_eq!(tid.ip(), addr.ip());
    assert_ne!(tid.port(), addr.port(), "a transfer has its own port");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("server stops")
        .unwrap();
}

/// A dual-stack socket (as systemd passes `ListenDatagram=[::]:69` by default) serves an
/// IPv4 client as IPv4: DATA comes from 127.0.0.1, not from an IPv6 socket.
#[tokio::test]
async fn a_passed_dual_stack_socket_serves_ipv4_clients_over_ipv4() {
    let dir = dir_with_file();
    let passed = std_udp("[::]:0", Some(false));
    let port = passed.local_addr().unwrap().port();
    let server = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen_socket(passed)
        .bind()
        .unwrap();
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (got, tid) = fetch(&client, (Ipv4Addr::LOCALHOST, port).into()).await;
    assert_eq!(got, content());
    assert_eq!(tid.ip(), Ipv4Addr::LOCALHOST);
    let client6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let (got, tid) = fetch(&client6, format!("[::1]:{port}").parse().unwrap()).await;
    assert_eq!(got, content());
    assert_eq!(tid.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    token.cancel();
}

/// `[::]:0` as the only listen address is dual-stack: an IPv4 client gets its file, and the
/// listen socket's own answers (ERROR 4 to an ACK) reach it too.
#[tokio::test]
async fn listening_on_the_ipv6_wildcard_alone_serves_ipv4_too() {
    let dir = dir_with_file();
    let server = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen("[::]:0".parse().unwrap())
        .bind()
        .unwrap();
    let port = server.local_addrs()[0].port();
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (got, tid) = fetch(&client, (Ipv4Addr::LOCALHOST, port).into()).await;
    assert_eq!(got, content());
    assert_eq!(tid.ip(), Ipv4Addr::LOCALHOST);
    client
        .send_to(b"\x00\x04\x00\x01", (Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    let (reply, from) = recv(&client).await;
    assert_eq!(reply, b"\x00\x05\x00\x04Expected RRQ or WRQ\x00");
    assert_eq!(from, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    token.cancel();
}

/// Beside `0.0.0.0:P`, `[::]:P` stays IPv6-only (both bind; the defaults rely on it).
#[tokio::test]
async fn the_ipv6_wildcard_beside_ipv4_on_the_same_port_is_ipv6_only() {
    let dir = dir_with_file();
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let server = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen(format!("0.0.0.0:{port}").parse().unwrap())
        .listen(format!("[::]:{port}").parse().unwrap())
        .bind()
        .expect("both families bind side by side");
    assert_eq!(server.local_addrs().len(), 2);
}

#[tokio::test]
async fn a_passed_socket_that_is_not_udp_is_refused_with_what_it_is() {
    let dir = dir_with_file();
    let tcp = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    tcp.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    let fake = std::net::UdpSocket::from(std::os::fd::OwnedFd::from(tcp));
    let err = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen_socket(fake)
        .bind()
        .err()
        .expect("a TCP socket cannot serve TFTP");
    assert!(matches!(err, ServerError::Adopt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a datagram socket"), "{err}");

    let unbound = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    let unbound = std::net::UdpSocket::from(std::os::fd::OwnedFd::from(unbound));
    let err = Server::builder(DirHandler::new(dir.path()).unwrap())
        .listen_socket(unbound)
        .bind()
        .err()
        .expect("an unbound socket cannot serve");
    assert!(err.to_string().contains("not bound"), "{err}");
}
