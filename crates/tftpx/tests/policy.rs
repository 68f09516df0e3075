//! Policy at the listener, tried on the wire: address rules (`Acl`: first match wins, denied
//! sources get no answer and cost no rate token), uploads only from some blocks
//! (`allow_write_from`: ERROR 2), and transfer ports kept within a range (`port_range`).
//!
//! IPv4 tests use 127.0.0.0/8, which is all local on lo. Tests that need IPv6 addresses of
//! their own, or every port of a range free, run their body in a child under `unshare -n`
//! (the test binary re-executes itself with `--exact NAME` and `child::CHILD_ENV` set).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tftpx::proto::wire::{ErrorCode, Packet};
use tftpx::{Acl, Cidr, DirHandler, PolicyStats, PortRange, Server, ServerBuilder};
use tokio::net::UdpSocket;

#[path = "support/wire.rs"]
mod wire;

#[path = "support/child.rs"]
mod child;

use child::{runtime, sh};

struct Srv {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    token: tftpx::CancellationToken,
    stats: PolicyStats,
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A server on `listen` serving `f0`..`f29` (100 bytes each, byte value = number).
async fn start(
    listen: &str,
    configure: impl FnOnce(ServerBuilder<DirHandler>) -> ServerBuilder<DirHandler>,
) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..30u8 {
        std::fs::write(dir.path().join(format!("f{i}")), [i; 100]).unwrap();
    }
    let server = configure(
        Server::builder(
            DirHandler::new(dir.path())
                .unwrap()
                .allow_create(true)
                .allow_write(true),
        )
        .listen(listen.parse().unwrap()),
    )
    .bind()
    .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    let stats = server.policy_stats();
    tokio::spawn(server.run());
    Srv {
        addr,
        dir,
        token,
        stats,
    }
}

/// One datagram, or `None` after `wait`.
async fn recv_one(s: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    match tokio::time::timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

/// Fetches `name` (one block, under 512 bytes) from `from`, acknowledging it; returns the
/// DATA and the port it came from.
async fn fetch_one(from: &UdpSocket, server: SocketAddr, name: &str) -> (Vec<u8>, SocketAddr) {
    from.send_to(&wire::rrq(name, &[]), server).await.unwrap();
    let (d, tid) = recv_one(from, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer to RRQ {name}"));
    match Packet::decode(&d) {
        Ok(Packet::Data {
            block: 1,
            payload: data,
        }) => {
            assert!(data.len() < 512, "one block");
            from.send_to(&[0, 4, 0, 1], tid).await.unwrap();
            (data.to_vec(), tid)
        }
        other => panic!("RRQ {name}: expected DATA 1, got {other:?}"),
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

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// `--allow 127.0.0.2 --deny 127.0.0.0/24`: 127.0.0.2 is served; 127.0.0.3 gets no answer
/// to anything it sends (requests, junk), every datagram is counted; 127.0.1.1 (no rule
/// matches) is served. 127.0.0.2 and .3 are one client for the rate limit (/24), and .2 is
/// still served at once after .3 sent 200 datagrams: denied datagrams take no rate token
/// (the bucket holds 2 x 20 = 40).
#[test]
fn denied_sources_get_no_answer_cost_no_rate_token_and_are_counted() {
    runtime().block_on(async {
        let acl = Acl::new()
            .allow(cidr("127.0.0.2"))
            .deny(cidr("127.0.0.0/24"));
        let srv = start("127.0.0.1:0", |b| {
            b.acl(acl).client_prefix_v4(24).rate_limit(Some(20))
        })
        .await;
        let denied = UdpSocket::bind("127.0.0.3:0").await.unwrap();
        for i in 0..200u32 {
            let d = match i % 4 {
                0 => wire::rrq("f1", &[]),
                1 => wire::wrq("new", &[]),
                2 => vec![0, 4, 0, 1],
                _ => b"junk".to_vec(),
            };
            denied.send_to(&d, srv.addr).await.unwrap();
        }
        let allowed = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let (data, _) = fetch_one(&allowed, srv.addr, "f7").await;
        assert_eq!(data, [7u8; 100]);
        // The listener takes datagrams in order: .2's answer means .3's were all handled.
        assert_eq!(srv.stats.denied(), 200);
        assert_eq!(
            recv_one(&denied, Duration::from_millis(1500)).await,
            None,
            "a denied source is never answered"
        );
        assert!(!srv.dir.path().join("new").exists());
        let other = UdpSocket::bind("127.0.1.1:0").await.unwrap();
        let (data, _) = fetch_one(&other, srv.addr, "f9").await;
        assert_eq!(data, [9u8; 100]);
        assert_eq!(srv.stats.denied(), 200);
        assert_eq!(srv.stats.write_refused(), 0);
    });
}

/// IPv6 rules, and IPv4 clients arriving on a dual-stack `[::]` listener as IPv4-mapped
/// addresses matched by IPv4 rules. In a private network namespace with 2001:db8::/64 on lo.
#[test]
fn ipv6_rules_and_ipv4_mapped_clients() {
    if !child::in_child("ipv6_rules_and_ipv4_mapped_clients", true) {
        return;
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "lo",
        "nodad",
    ]);
    sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8::2/64",
        "dev",
        "lo",
        "nodad",
    ]);
    runtime().block_on(async {
        let acl = Acl::new()
            .deny(cidr("2001:db8::2"))
            .allow(cidr("2001:db8::/64"))
            .deny(cidr("127.0.0.3/32"))
            .deny(cidr("::/0"));
        let srv = start("[::]:0", |b| b.acl(acl)).await;
        let port = srv.addr.port();
        let v6_server: SocketAddr = format!("[2001:db8::1]:{port}").parse().unwrap();
        let v4_server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ok6 = UdpSocket::bind("[2001:db8::1]:0").await.unwrap();
        let (data, _) = fetch_one(&ok6, v6_server, "f3").await;
        assert_eq!(data, [3u8; 100]);
        // IPv4 through the dual-stack listener: no IPv4 rule matches .2, so allowed (the
        // trailing ::/0 is IPv6 only and does not catch ::ffff:127.0.0.2).
        let ok4 = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let (data, _) = fetch_one(&ok4, v4_server, "f4").await;
        assert_eq!(data, [4u8; 100]);
        let no6 = UdpSocket::bind("[2001:db8::2]:0").await.unwrap();
        let no_loop = UdpSocket::bind("[::1]:0").await.unwrap();
        let no4 = UdpSocket::bind("127.0.0.3:0").await.unwrap();
        no6.send_to(&wire::rrq("f1", &[]), v6_server).await.unwrap();
        no_loop
            .send_to(
                &wire::rrq("f1", &[]),
                format!("[::1]:{port}").parse::<SocketAddr>().unwrap(),
            )
            .await
            .unwrap();
        no4.send_to(&wire::rrq("f1", &[]), v4_server).await.unwrap();
        // Answered after the three denied ones: they have been handled.
        let (data, _) = fetch_one(&ok6, v6_server, "f5").await;
        assert_eq!(data, [5u8; 100]);
        assert_eq!(srv.stats.denied(), 3);
        for s in [&no6, &no_loop, &no4] {
            assert_eq!(recv_one(s, Duration::from_millis(500)).await, None);
        }
    });
}

/// `allow_write_from(127.0.0.2)`: a WRQ from 127.0.0.3 is answered ERROR 2 from the listen
/// port and creates nothing; its RRQs are still served; 127.0.0.2 uploads.
#[test]
fn uploads_only_from_allowed_blocks() {
    runtime().block_on(async {
        let srv = start("127.0.0.1:0", |b| {
            b.allow_write_from(vec![cidr("127.0.0.2/32")])
        })
        .await;
        let other = UdpSocket::bind("127.0.0.3:0").await.unwrap();
        other
            .send_to(&wire::wrq("up.bin", &[]), srv.addr)
            .await
            .unwrap();
        let (d, from) = recv_one(&other, Duration::from_secs(10))
            .await
            .expect("a refused WRQ is answered");
        assert_eq!(from, srv.addr, "answered from the listen port");
        let (code, msg) = error_of(&d).expect("an ERROR");
        assert_eq!(code, ErrorCode::AccessViolation);
        assert_eq!(msg, "Uploads are not accepted from your address");
        assert_eq!(srv.stats.write_refused(), 1);
        assert!(!srv.dir.path().join("up.bin").exists());
        let (data, _) = fetch_one(&other, srv.addr, "f2").await;
        assert_eq!(data, [2u8; 100]);

        let up = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        up.send_to(&wire::wrq("up.bin", &[]), srv.addr)
            .await
            .unwrap();
        let (d, tid) = recv_one(&up, Duration::from_secs(10)).await.expect("ACK 0");
        assert_eq!(d, [0, 4, 0, 0]);
        let mut data = vec![0, 3, 0, 1];
        data.extend_from_slice(b"uploaded");
        up.send_to(&data, tid).await.unwrap();
        let (d, _) = recv_one(&up, Duration::from_secs(10)).await.expect("ACK 1");
        assert_eq!(d, [0, 4, 0, 1]);
        let path = srv.dir.path().join("up.bin");
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"uploaded");
        assert_eq!(srv.stats.write_refused(), 1);
        assert_eq!(srv.stats.denied(), 0);
    });
}

/// 20 downloads in a row with `port_range(40000:40009)`: every DATA comes from a port of the
/// range. In a private network namespace, so no other program holds those ports.
#[test]
fn transfers_use_ports_of_the_range() {
    if !child::in_child("transfers_use_ports_of_the_range", true) {
        return;
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    runtime().block_on(async {
        let range: PortRange = "40000:40009".parse().unwrap();
        let srv = start("127.0.0.1:0", |b| b.port_range(range).rate_limit(None)).await;
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut used = HashSet::new();
        for i in 0..20u8 {
            let (data, tid) = fetch_one(&c, srv.addr, &format!("f{i}")).await;
            assert_eq!(data, [i; 100]);
            assert!(
                range.ports().contains(&tid.port()),
                "DATA from port {} outside {range}",
                tid.port()
            );
            used.insert(tid.port());
        }
        eprintln!(
            "20 downloads used {} distinct ports of {range}: {used:?}",
            used.len()
        );
    });
}

/// `port_range(40000:40001)` and 3 requests whose peers never answer, from 3 sockets: two
/// transfers hold the two ports (retransmitting), the third request is answered ERROR 0
/// "Server busy, try again later" from the listen port.
#[test]
fn a_full_port_range_answers_server_busy() {
    if !child::in_child("a_full_port_range_answers_server_busy", true) {
        return;
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    runtime().block_on(async {
        let range = PortRange::new(40000, 40001).unwrap();
        let srv = start("127.0.0.1:0", |b| {
            b.port_range(range).timeout(Duration::from_secs(30))
        })
        .await;
        let mut socks = Vec::new();
        for i in 0..2u8 {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.send_to(&wire::rrq(&format!("f{i}"), &[]), srv.addr)
                .await
                .unwrap();
            let (d, from) = recv_one(&s, Duration::from_secs(10)).await.expect("DATA");
            assert!(matches!(
                Packet::decode(&d),
                Ok(Packet::Data { block: 1, .. })
            ));
            assert!(range.ports().contains(&from.port()), "from {from}");
            socks.push((s, from));
        }
        assert_ne!(socks[0].1, socks[1].1, "each transfer has its own port");
        let third = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        third
            .send_to(&wire::rrq("f2", &[]), srv.addr)
            .await
            .unwrap();
        let (d, from) = recv_one(&third, Duration::from_secs(10))
            .await
            .expect("the third request is answered");
        assert_eq!(from, srv.addr, "answered from the listen port");
        assert_eq!(
            error_of(&d),
            Some((ErrorCode::NotDefined, "Server busy, try again later".into()))
        );
    });
}
