//! `tftpx get/put -v` and `-vv` (issue 11, "seeing what happens"), and names with several
//! addresses, `-4` / `-6` ("names and addresses").
//!
//! Fake servers are plain UDP sockets on loopback with OS-picked ports; every wait is
//! bounded; a host name with several addresses comes from a hosts file bind-mounted over
//! /etc/hosts inside a private mount namespace (`unshare -m`) the test creates.

mod common;

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");
const LIMIT: Duration = Duration::from_secs(60);
/// Set in the re-executed child that runs inside the private mount namespace.
const CHILD: &str = "TFTPX_VERBOSE_TEST_CHILD";

fn tftpx(args: &[&str], cwd: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(cwd);
    let o = common::run_bounded(cmd, LIMIT);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Receives one datagram (at most 5 s), returning its bytes and sender.
fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("a datagram within 5 s");
    (buf[..n].to_vec(), from)
}

/// Waits (bounded) for the ACK of `block`, skipping repeated ACKs of earlier blocks.
fn wait_ack(sock: &UdpSocket, block: u16) {
    for _ in 0..10 {
        let (d, _) = recv(sock);
        if d == [0, 4, (block >> 8) as u8, block as u8] {
            return;
        }
    }
    panic!("no ACK {block}");
}

fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 3, (block >> 8) as u8, block as u8];
    d.extend_from_slice(payload);
    d
}

/// A fake server for one download of `content` (at most 2 blocks of 1024), answering the
/// RRQ with an OACK (blksize 1024, tsize). With `tricks` it repeats DATA 1 once (a
/// duplicate) and has a stranger send a DATA to the client before the last block.
fn fake_download(listen: UdpSocket, content: Vec<u8>, tricks: bool) -> std::thread::JoinHandle<()> {
    slow_download(listen, content, tricks, Duration::ZERO)
}

/// [`fake_download`] whose OACK and DATA leave `delay` after what they answer.
fn slow_download(
    listen: UdpSocket,
    content: Vec<u8>,
    tricks: bool,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (rrq, client) = recv(&listen);
        assert_eq!(&rrq[..2], &[0, 1], "an RRQ");
        let ip = listen.local_addr().unwrap().ip();
        let s = UdpSocket::bind((ip, 0)).unwrap();
        let oack = format!("\0\x06blksize\x001024\0tsize\0{}\0", content.len());
        std::thread::sleep(delay);
        s.send_to(oack.as_bytes(), client).unwrap();
        wait_ack(&s, 0);
        let (one, two) = content.split_at(1024);
        std::thread::sleep(delay);
        s.send_to(&data(1, one), client).unwrap();
        wait_ack(&s, 1);
        if tricks {
            s.send_to(&data(1, one), client).unwrap();
            let stranger = UdpSocket::bind((ip, 0)).unwrap();
            stranger.send_to(&data(2, b"x"), client).unwrap();
            // The client tells the stranger off (ERROR 5) before it sees the last block.
            let (err, _) = recv(&stranger);
            assert_eq!(&err[..4], &[0, 5, 0, 5], "ERROR 5 to the stranger");
        }
        std::thread::sleep(delay);
        s.send_to(&data(2, two), client).unwrap();
        wait_ack(&s, 2);
    })
}

/// The `-v` line "busy polls: H of P got a datagram before the wait slept", as (H, P).
fn busy_polls(err: &str) -> (u64, u64) {
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("tftpx: busy polls: "))
        .unwrap_or_else(|| panic!("no busy-poll line: {err}"));
    let (hits, rest) = line.split_once(" of ").expect("H of P");
    let polls = rest.split(' ').next().unwrap();
    (hits.parse().unwrap(), polls.parse().unwrap())
}

/// `--busy-poll`: by default each wait polls the socket before it sleeps (counted by `-v`),
/// misses back off (a server slower than the budget: the 3 waits poll, skip, poll), and
/// `--busy-poll 0` turns it off. The download is whole in every case.
#[test]
fn busy_polls_are_counted_back_off_and_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let content = common::pseudo_random(1124);
    let run = |extra: &[&str], slow: Duration| {
        let listen = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = format!("127.0.0.1:{}", listen.local_addr().unwrap().port());
        let server = slow_download(listen, content.clone(), false, slow);
        let mut args = vec![
            "get",
            "-v",
            "--blksize",
            "1024",
            &target,
            "f.bin",
            "-o",
            "out.bin",
        ];
        args.extend_from_slice(extra);
        let (code, err) = tftpx(&args, dir.path());
        server.join().expect("fake server");
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(common::read_file(&dir.path().join("out.bin")), content);
        busy_polls(&err)
    };
    // Three waits (OACK, DATA 1, DATA 2); whether a reply beats the budget is up to the
    // scheduler, so only the polls are certain.
    let (hits, polls) = run(&[], Duration::ZERO);
    assert!(
        (1..=3).contains(&polls) && hits <= polls,
        "{hits} of {polls}"
    );
    // Replies 20 ms late: the first wait polls and misses, the second sleeps at once (the
    // back-off), the third polls and misses.
    assert_eq!(run(&[], Duration::from_millis(20)), (0, 2));
    assert_eq!(run(&["--busy-poll", "0"], Duration::ZERO), (0, 0));
}

#[test]
fn verbose_shows_address_options_counters_and_a_packet_trace() {
    let dir = tempfile::tempdir().unwrap();
    let content = common::pseudo_random(1124);
    let listen = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = listen.local_addr().unwrap().port();
    let server = fake_download(listen, content.clone(), true);
    let target = format!("127.0.0.1:{port}");
    let (code, err) = tftpx(
        &[
            "get",
            "-vv",
            "--blksize",
            "1024",
            &target,
            "f.bin",
            "-o",
            "out.bin",
        ],
        dir.path(),
    );
    server.join().expect("fake server");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(common::read_file(&dir.path().join("out.bin")), content);

    // -v: the address, the options asked and in force, the counters.
    assert!(
        err.contains(&format!("tftpx: {target} -> {target} (address 1 of 1)")),
        "{err}"
    );
    assert!(
        err.contains("tftpx: options asked: mode octet, blksize 1024, tsize 0\n"),
        "{err}"
    );
    assert!(
        err.contains("tftpx: options in force: blksize 1024, windowsize 1, tsize 1124\n"),
        "{err}"
    );
    let counters = err
        .lines()
        .find(|l| l.starts_with("tftpx: counters: "))
        .unwrap_or_else(|| panic!("no counters: {err}"));
    assert!(
        counters.starts_with("tftpx: counters: 2 blocks, "),
        "{counters}"
    );
    assert!(
        counters.contains(", 1 duplicates, 1 strangers, "),
        "{counters}"
    );
    // One unit system: the summary in IEC units, as the bar.
    assert!(err.contains("received 1124 bytes (1.1 KiB) in "), "{err}");
    assert!(err.contains("iB/s), blksize 1024 windowsize 1"), "{err}");

    // -vv: every datagram, in order, with its size and a time that never goes back.
    let trace: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("tftpx: sent ") || l.starts_with("tftpx: received "))
        .collect();
    let expect = [
        ("tftpx: sent RRQ, ", None),
        ("tftpx: received OACK, 26 bytes, ", None),
        ("tftpx: sent ACK block 0, 4 bytes, ", None),
        ("tftpx: received DATA block 1, 1028 bytes, ", None),
        ("tftpx: sent ACK block 1, 4 bytes, ", None),
        ("tftpx: received DATA block 1, 1028 bytes, ", None),
        ("tftpx: sent ACK block 1, 4 bytes, ", None),
        ("tftpx: received DATA block 2, 5 bytes, ", Some("stranger")),
        ("tftpx: sent ERROR code 5, ", Some("stranger")),
        ("tftpx: received DATA block 2, 104 bytes, ", None),
        ("tftpx: sent ACK block 2, 4 bytes, ", None),
    ];
    assert_eq!(trace.len(), expect.len(), "{err}");
    let mut last = -1.0f64;
    for (line, (prefix, who)) in trace.iter().zip(expect) {
        assert!(
            line.starts_with(prefix),
            "{line:?} should start {prefix:?}\n{err}"
        );
        let to_server = line.contains(&format!("127.0.0.1:{port})"));
        if prefix.starts_with("tftpx: sent RRQ") {
            assert!(to_server, "the request goes to the well-known port: {line}");
        } else if who.is_none() {
            assert!(!to_server, "the rest goes to the transfer's port: {line}");
        }
        let t: f64 = line
            .split(" +")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no time in {line}"));
        assert!(t >= last, "time goes forward: {line}");
        last = t;
    }
    // The RRQ: opcode, "f.bin", "octet", blksize 1024, tsize 0, all NUL-terminated.
    let rrq_len = 2 + 6 + 6 + "blksize\x001024\0".len() + "tsize\x000\0".len();
    assert!(
        trace[0].starts_with(&format!("tftpx: sent RRQ, {rrq_len} bytes, ")),
        "{}",
        trace[0]
    );
}

#[test]
fn verbose_upload_shows_options_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let content = common::pseudo_random(700);
    common::write_file(&dir.path().join("up.bin"), &content);
    let listen = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = listen.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (wrq, client) = recv(&listen);
        assert_eq!(&wrq[..2], &[0, 2], "a WRQ");
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        // No OACK: the RFC 1350 defaults are in force.
        s.send_to(&[0, 4, 0, 0], client).unwrap();
        let (d1, _) = recv(&s);
        assert_eq!(d1.len(), 4 + 512);
        s.send_to(&[0, 4, 0, 1], client).unwrap();
        let (d2, _) = recv(&s);
        assert_eq!(d2.len(), 4 + 188);
        s.send_to(&[0, 4, 0, 2], client).unwrap();
        [&d1[4..], &d2[4..]].concat()
    });
    let (code, err) = tftpx(
        &["put", "-v", &format!("127.0.0.1:{port}"), "up.bin", "r.bin"],
        dir.path(),
    );
    let got = server.join().expect("fake server");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(got, content);
    assert!(
        err.contains("tftpx: options asked: mode octet, tsize 700\n"),
        "{err}"
    );
    assert!(
        err.contains("tftpx: options in force: blksize 512, windowsize 1\n"),
        "{err}"
    );
    assert!(
        err.contains("tftpx: counters: 2 blocks, 0 retransmissions, 0 timeouts, 0 duplicates, 0 strangers, 0 ignored\n"),
        "{err}"
    );
    assert!(err.contains("sent 700 bytes (700 B) in "), "{err}");
    // -v alone prints no packet trace.
    assert!(!err.contains("tftpx: sent WRQ"), "{err}");
}

/// `-v` after a failed transfer still shows its counters: a server that sends DATA 1 and
/// falls silent leaves the client with 1 block and its timeouts.
#[test]
fn verbose_shows_counters_of_a_failed_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let listen = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = listen.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (_rrq, client) = recv(&listen);
        // No OACK (options ignored, RFC 2347): DATA 1, a full block, then silence.
        let tid = UdpSocket::bind("127.0.0.1:0").unwrap();
        tid.send_to(&data(1, &[7u8; 512]), client).unwrap();
        wait_ack(&tid, 1);
        tid
    });
    let target = format!("127.0.0.1:{port}");
    let (code, err) = tftpx(
        &[
            "get",
            "-v",
            "--timeout",
            "1s",
            "--retries",
            "1",
            &target,
            "f.bin",
            "-o",
            "out.bin",
        ],
        dir.path(),
    );
    drop(server.join().expect("fake server"));
    assert_eq!(code, Some(1), "{err}");
    assert!(!dir.path().join("out.bin").exists(), "no partial file");
    let counters = err
        .lines()
        .find(|l| l.starts_with("tftpx: counters: "))
        .unwrap_or_else(|| panic!("no counters after the failure: {err}"));
    assert!(
        counters.starts_with("tftpx: counters: 1 blocks, "),
        "{counters}"
    );
    let timeouts: u64 = counters
        .split(", ")
        .find_map(|f| f.strip_suffix(" timeouts"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{counters}"));
    assert!(timeouts >= 1, "{counters}");
}

#[test]
fn family_flags_refuse_literals_of_the_other_family() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = tftpx(&["get", "-6", "127.0.0.1:6969", "f"], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("-6 forbids the address 127.0.0.1"), "{err}");
    let (code, err) = tftpx(&["put", "-4", "[::1]:6969", "f"], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("-4 forbids the address ::1"), "{err}");
    let (code, err) = tftpx(&["get", "-4", "-6", "127.0.0.1", "f"], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

/// Runs `test` in a child of this test binary inside a private mount namespace whose
/// /etc/hosts is `hosts`.
fn in_mount_namespace(test: &str, hosts: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts");
    std::fs::write(&file, hosts).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        r#"mount --bind "$HOSTS" /etc/hosts && exec "$@""#,
        "sh",
    ])
    .arg(std::env::current_exe().unwrap())
    .args(["--exact", test, "--nocapture", "--test-threads", "1"])
    .env(CHILD, "1")
    .env("HOSTS", &file);
    let o = common::run_bounded(cmd, Duration::from_secs(120));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "child {:?}\n{out}\n{err}", o.status);
    assert!(
        out.contains("1 passed"),
        "the child ran the test:\n{out}\n{err}"
    );
}

const HOSTS: &str = "127.0.0.1 localhost\n\
    127.0.0.2 multi.test\n\
    127.0.0.3 multi.test\n\
    ::1 both.test\n\
    127.0.0.1 both.test\n";

#[test]
fn a_silent_first_address_moves_on_to_the_next() {
    if std::env::var_os(CHILD).is_none() {
        return in_mount_namespace("a_silent_first_address_moves_on_to_the_next", HOSTS);
    }
    // The order the resolver gives (as tftpx sees it): nothing answers at the first, the
    // fake server listens on the second, same port.
    let order: Vec<SocketAddr> = ("multi.test", 0).to_socket_addrs().unwrap().collect();
    let mut ips: Vec<_> = order.iter().map(|a| a.ip()).collect();
    ips.dedup();
    assert_eq!(
        ips.len(),
        2,
        "the hosts file gives two addresses: {order:?}"
    );
    let listen = UdpSocket::bind((ips[1], 0)).unwrap();
    let port = listen.local_addr().unwrap().port();
    let content = common::pseudo_random(1500);
    let server = fake_download(listen, content.clone(), false);
    let dir = tempfile::tempdir().unwrap();
    let target = format!("multi.test:{port}");
    let (code, err) = tftpx(
        &[
            "get",
            "-v",
            "--timeout",
            "200ms",
            "--retries",
            "1",
            "--blksize",
            "1024",
            &target,
            "f.bin",
        ],
        dir.path(),
    );
    server.join().expect("fake server");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(common::read_file(&dir.path().join("f.bin")), content);
    let first = SocketAddr::new(ips[0], port);
    let second = SocketAddr::new(ips[1], port);
    assert!(
        err.contains(&format!("tftpx: {target} -> {first} (address 1 of 2)\n")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "tftpx: {first} did not answer (timed out after 1 retries); trying {second}\n"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("tftpx: {target} -> {second} (address 2 of 2)\n")),
        "{err}"
    );

    // An upload from stdin: nothing is read before the server answers, so the second
    // address gets the whole input.
    let listen = UdpSocket::bind((ips[1], 0)).unwrap();
    let port = listen.local_addr().unwrap().port();
    let upload = std::thread::spawn(move || {
        let (wrq, client) = recv(&listen);
        assert_eq!(&wrq[..2], &[0, 2], "a WRQ");
        let s = UdpSocket::bind((listen.local_addr().unwrap().ip(), 0)).unwrap();
        s.send_to(&[0, 4, 0, 0], client).unwrap();
        let mut got = Vec::new();
        for block in 1..=3u16 {
            let (d, _) = recv(&s);
            assert_eq!(&d[..4], &data(block, b"")[..], "DATA {block}");
            got.extend_from_slice(&d[4..]);
            s.send_to(&[0, 4, 0, block as u8], client).unwrap();
            if d.len() < 4 + 512 {
                break;
            }
        }
        got
    });
    let payload = common::pseudo_random(1000);
    let input = dir.path().join("in.bin");
    common::write_file(&input, &payload);
    let target = format!("multi.test:{port}");
    // run_bounded gives its child a null stdin: a shell redirect gives tftpx the file.
    let mut sh = Command::new("sh");
    sh.args(["-c", r#"exec "$@" < "$IN""#, "sh", BIN, "put", "-v"])
        .args([
            "--timeout",
            "200ms",
            "--retries",
            "1",
            &target,
            "-",
            "r.bin",
        ])
        .env("IN", &input)
        .current_dir(dir.path());
    let o = common::run_bounded(sh, LIMIT);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(upload.join().expect("fake server"), payload, "{err}");
    assert_eq!(o.status.code(), Some(0), "{err}");
    let second = SocketAddr::new(ips[1], port);
    assert!(err.contains(&format!("trying {second}\n")), "{err}");
}

#[test]
fn minus_four_and_minus_six_pick_one_family_of_a_name() {
    if std::env::var_os(CHILD).is_none() {
        return in_mount_namespace("minus_four_and_minus_six_pick_one_family_of_a_name", HOSTS);
    }
    for (flag, ip) in [("-6", "::1"), ("-4", "127.0.0.1")] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let listen = UdpSocket::bind((ip, 0)).unwrap();
        let port = listen.local_addr().unwrap().port();
        let content = common::pseudo_random(1100);
        let server = fake_download(listen, content.clone(), false);
        let dir = tempfile::tempdir().unwrap();
        let target = format!("both.test:{port}");
        let (code, err) = tftpx(
            &["get", "-v", flag, "--blksize", "1024", &target, "f.bin"],
            dir.path(),
        );
        server.join().expect("fake server");
        assert_eq!(code, Some(0), "{flag}: {err}");
        assert_eq!(common::read_file(&dir.path().join("f.bin")), content);
        let addr = SocketAddr::new(ip, port);
        assert!(
            err.contains(&format!("tftpx: {target} -> {addr} (address 1 of 1)\n")),
            "{flag}: {err}"
        );
    }
    // A name with no address of the family asked for.
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = tftpx(&["get", "-6", "multi.test:6969", "f"], dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("multi.test has no IPv6 address (-6)"), "{err}");
}
