//! `tftpx serve` policy flags on the wire: `--allow`/`--deny` in command-line order (denied
//! sources get no answer, one warning per 10 s), `--allow-write-from` (ERROR 2),
//! `--refuse OPTION` (left out of the OACK), `--umask` (the mode of created files) and
//! `--port-range` (transfer ports), plus their usage errors.
//!
//! Raw datagrams from addresses of 127.0.0.0/8 (all local on lo) to a server on
//! 127.0.0.1 with an OS-picked port.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Kind, Layout, Server};

/// How long one answer is awaited.
const WAIT: Duration = Duration::from_secs(10);

fn request(opcode: u8, name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, opcode];
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(b"\0octet\0");
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

fn socket(ip: &str, wait: Duration) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind a client socket");
    s.set_read_timeout(Some(wait)).unwrap();
    s
}

/// One datagram, or `None` when nothing came within the socket's read timeout.
fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 70_000];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, a)| (buf[..n].to_vec(), a))
}

fn server_addr(srv: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], srv.port))
}

/// Downloads one-block `name` from `s`; returns the payload and the transfer's address.
fn fetch_small(s: &UdpSocket, srv: &Server, name: &str) -> (Vec<u8>, SocketAddr) {
    s.send_to(&request(1, name, &[]), server_addr(srv)).unwrap();
    let (d, tid) = recv(s).unwrap_or_else(|| panic!("no answer to RRQ {name}"));
    assert_eq!(&d[..4], [0, 3, 0, 1], "DATA 1 for {name}: {d:?}");
    s.send_to(&[0, 4, 0, 1], tid).unwrap();
    (d[4..].to_vec(), tid)
}

/// Uploads `bytes` (under 512) as `name` from `s`; panics unless every ACK comes.
fn upload_small(s: &UdpSocket, srv: &Server, name: &str, bytes: &[u8]) {
    s.send_to(&request(2, name, &[]), server_addr(srv)).unwrap();
    let (d, tid) = recv(s).expect("ACK 0");
    assert_eq!(d, [0, 4, 0, 0], "ACK 0 to WRQ {name}");
    let mut data = vec![0, 3, 0, 1];
    data.extend_from_slice(bytes);
    s.send_to(&data, tid).unwrap();
    let (d, _) = recv(s).expect("ACK 1");
    assert_eq!(d, [0, 4, 0, 1]);
}

/// Waits (bounded) until the server's log holds `needle`: its stderr is read by a thread of
/// its own, so a line written before an answer may reach the log after it.
fn logged(srv: &Server, needle: &str) -> bool {
    common::wait_until(WAIT, || srv.log().contains(needle))
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// `--allow 127.0.0.2 --deny 127.0.0.0/8`: .2 is served, .3 gets no answer to 50 requests
/// and the log warns once (first of the 10 s period); the same rules the other way round
/// deny .2 too, because the first match wins.
#[test]
fn allow_and_deny_apply_in_command_line_order() {
    let l = Layout::new();
    std::fs::write(l.root.join("a.txt"), b"allowed").unwrap();
    let srv = Server::start(&l.root, &["--allow", "127.0.0.2", "--deny", "127.0.0.0/8"]);
    let denied = socket("127.0.0.3", Duration::from_millis(1500));
    for _ in 0..50 {
        denied
            .send_to(&request(1, "a.txt", &[]), server_addr(&srv))
            .unwrap();
    }
    let ok = socket("127.0.0.2", WAIT);
    let (data, _) = fetch_small(&ok, &srv, "a.txt");
    assert_eq!(data, b"allowed");
    assert_eq!(recv(&denied), None, "a denied source gets no answer");
    assert!(logged(&srv, "denied by --allow/--deny"), "{}", srv.log());
    assert!(logged(&srv, "RRQ from 127.0.0.2"), "{}", srv.log());
    let log = srv.log();
    assert_eq!(
        count(&log, "denied by --allow/--deny"),
        1,
        "one warning for 50 denied datagrams within 10 s:\n{log}"
    );
    assert!(
        log.contains("1 datagram(s) from 127.0.0.3 dropped"),
        "{log}"
    );
    assert!(
        log.contains("address rules (first match wins, others allowed): allow 127.0.0.2/32, deny 127.0.0.0/8"),
        "{log}"
    );
    assert_eq!(
        count(&log, "RRQ from 127.0.0.3"),
        0,
        "denied requests are not taken up"
    );
    drop(srv);

    let srv = Server::start(&l.root, &["--deny", "127.0.0.0/8", "--allow", "127.0.0.2"]);
    let ok_before = socket("127.0.0.2", Duration::from_millis(1500));
    ok_before
        .send_to(&request(1, "a.txt", &[]), server_addr(&srv))
        .unwrap();
    assert_eq!(recv(&ok_before), None, "the /8 deny comes first and wins");
    assert!(logged(&srv, "dropped without an answer"), "{}", srv.log());
}

/// `--allow-create --allow-write-from 127.0.0.2`: a WRQ from 127.0.0.3 gets ERROR 2 and
/// creates nothing; 127.0.0.2 uploads.
#[test]
fn uploads_only_from_allow_write_from() {
    let l = Layout::new();
    let srv = Server::start(
        &l.root,
        &["--allow-create", "--allow-write-from", "127.0.0.2/32"],
    );
    let other = socket("127.0.0.3", WAIT);
    other
        .send_to(&request(2, "up.bin", &[]), server_addr(&srv))
        .unwrap();
    let (d, from) = recv(&other).expect("an answer to a refused WRQ");
    assert_eq!(from, server_addr(&srv));
    assert_eq!(&d[..4], [0, 5, 0, 2], "ERROR 2: {d:?}");
    assert_eq!(&d[4..], b"Uploads are not accepted from your address\0");
    assert!(!l.root.join("up.bin").exists());
    let up = socket("127.0.0.2", WAIT);
    upload_small(&up, &srv, "up.bin", b"from .2");
    srv.wait_summary(Kind::Wrq, "up.bin", WAIT);
    assert_eq!(std::fs::read(l.root.join("up.bin")).unwrap(), b"from .2");
    assert!(
        logged(&srv, "WRQ refused by --allow-write-from"),
        "{}",
        srv.log()
    );
}

/// `--refuse tsize --refuse BLKSIZE`: a request for blksize, tsize and timeout gets an OACK
/// with timeout alone, and DATA of 512-byte blocks; without --refuse all three come back.
#[test]
fn refused_options_never_appear_in_the_oack() {
    let l = Layout::new();
    std::fs::write(l.root.join("big.bin"), vec![7u8; 3000]).unwrap();
    let opts = [("blksize", "1024"), ("tsize", "0"), ("timeout", "2")];
    let oack_of = |srv: &Server| {
        let s = socket("127.0.0.1", WAIT);
        s.send_to(&request(1, "big.bin", &opts), server_addr(srv))
            .unwrap();
        let (d, tid) = recv(&s).expect("OACK");
        assert_eq!(&d[..2], [0, 6], "OACK: {d:?}");
        // Ends the transfer politely (ERROR 8 after the OACK, as a size probe does).
        s.send_to(b"\0\x05\0\x08probe\0", tid).unwrap();
        d[2..].to_vec()
    };
    let srv = Server::start(&l.root, &[]);
    assert_eq!(
        oack_of(&srv),
        b"blksize\x001024\x00timeout\x002\x00tsize\x003000\x00"
    );
    drop(srv);
    let srv = Server::start(&l.root, &["--refuse", "tsize", "--refuse", "BLKSIZE"]);
    assert_eq!(oack_of(&srv), b"timeout\x002\x00");
    assert!(
        logged(
            &srv,
            "options ignored in requests (--refuse): blksize, tsize"
        ),
        "{}",
        srv.log()
    );
    // With blksize refused, the transfer runs in 512-byte blocks.
    let s = socket("127.0.0.1", WAIT);
    s.send_to(
        &request(1, "big.bin", &[("blksize", "1024")]),
        server_addr(&srv),
    )
    .unwrap();
    let (d, _) = recv(&s).expect("DATA");
    assert_eq!(&d[..4], [0, 3, 0, 1], "no OACK at all: plain DATA 1");
    assert_eq!(d.len(), 4 + 512);
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `--allow-create --umask 077` creates uploads 0600; the default (022) 0644.
#[test]
fn umask_sets_the_mode_of_created_files() {
    let l = Layout::new();
    let srv = Server::start(&l.root, &["--allow-create", "--umask", "077"]);
    let s = socket("127.0.0.1", WAIT);
    upload_small(&s, &srv, "private.bin", b"secret");
    srv.wait_summary(Kind::Wrq, "private.bin", WAIT);
    assert_eq!(mode_of(&l.root.join("private.bin")), 0o600);
    drop(srv);
    let srv = Server::start(&l.root, &["--allow-create"]);
    upload_small(&s, &srv, "public.bin", b"shared");
    srv.wait_summary(Kind::Wrq, "public.bin", WAIT);
    assert_eq!(mode_of(&l.root.join("public.bin")), 0o644);
    assert_eq!(std::fs::read(l.root.join("public.bin")).unwrap(), b"shared");
}

/// `--port-range 47000:47099`: 20 downloads, each from a port of the range.
#[test]
fn port_range_is_honoured() {
    let l = Layout::new();
    for i in 0..20 {
        std::fs::write(l.root.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let srv = Server::start(
        &l.root,
        &["--port-range", "47000:47099", "--rate-limit", "0"],
    );
    assert!(logged(&srv, "transfer ports: 47000:47099"), "{}", srv.log());
    let s = socket("127.0.0.1", WAIT);
    for i in 0..20 {
        let (data, tid) = fetch_small(&s, &srv, &format!("f{i}"));
        assert_eq!(data, format!("file {i}").as_bytes());
        assert!(
            (47000..=47099).contains(&tid.port()),
            "DATA of f{i} from port {}",
            tid.port()
        );
    }
}

/// Bad values are usage errors (exit 2) that say what is valid.
#[test]
fn policy_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--port-range", "10:5"][..], "LOW must not exceed HIGH"),
        (&["--port-range", "0:5"][..], "LOW must be at least 1"),
        (
            &["--port-range", "1:65536"][..],
            "HIGH must be at most 65535",
        ),
        (&["--port-range", "100"][..], "LOW:HIGH"),
        (
            &["--refuse", "multicast"][..],
            "valid: blksize, tsize, timeout, windowsize, utimeout",
        ),
        (&["--umask", "8"][..], "not an octal mode"),
        (&["--allow", "10.0.0.0/33"][..], "0..=32"),
        (
            &["--deny", "example.com"][..],
            "not an IPv4 or IPv6 address",
        ),
        (&["--allow-write-from", "::/129"][..], "0..=128"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tftpx"))
            .arg("serve")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--user", "root"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// `--port-range 47150:47150` and 3 requests whose peers never answer: one holds the
/// one port, the others get ERROR 0 "Server busy" from the listen port, and the log says
/// so once (not once per request).
#[test]
fn a_full_port_range_answers_busy_and_warns_once() {
    let l = Layout::new();
    std::fs::write(l.root.join("f"), b"x").unwrap();
    let srv = Server::start(
        &l.root,
        &["--port-range", "47150:47150", "--timeout", "30s"],
    );
    let socks: Vec<UdpSocket> = (0..3).map(|_| socket("127.0.0.1", WAIT)).collect();
    for s in &socks {
        s.send_to(&request(1, "f", &[]), server_addr(&srv)).unwrap();
    }
    // The transfers race for the port: any one of them may win it.
    let (mut data, mut busy) = (0, 0);
    for s in &socks {
        let (d, from) = recv(s).expect("an answer");
        if from.port() == 47150 {
            assert_eq!(d, b"\0\x03\0\x01x", "DATA 1 from the range");
            data += 1;
        } else {
            assert_eq!(from, server_addr(&srv), "answered from the listen port");
            assert_eq!(d, b"\0\x05\0\0Server busy, try again later\0");
            busy += 1;
        }
    }
    // 47150 may be held by another program on this machine: then all three are busy.
    assert!(busy >= 2 && data + busy == 3, "{data} DATA, {busy} busy");
    assert!(
        common::wait_until(WAIT, || count(&srv.log(), "refused with ERROR 0") >= busy),
        "{}",
        srv.log()
    );
    let log = srv.log();
    assert_eq!(
        count(&log, "every port of --port-range 47150:47150 is in use"),
        1,
        "{log}"
    );
}
