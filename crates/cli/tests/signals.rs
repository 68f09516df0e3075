//! `tftpx serve` and the signals a service manager sends: SIGHUP (reload) leaves the server
//! and its running transfers alone; SIGTERM ends it with exit code 0.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::Server;

/// Starts a download of `big.bin` and returns its socket and the server's TID after DATA 1.
fn start_download(port: u16) -> (UdpSocket, std::net::SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"\x00\x01big.bin\x00octet\x00", ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 600];
    let (n, tid) = s.recv_from(&mut buf).expect("DATA 1");
    assert_eq!(&buf[..4], &[0, 3, 0, 1], "{:?}", &buf[..n]);
    (s, tid)
}

/// Sends signal `name` to the server we started, by its PID.
fn signal(pid: u32, name: &str) {
    let st = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn sighup_leaves_the_server_and_a_running_transfer_alone() {
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..512 * 20).map(|i| (i % 249) as u8).collect();
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let mut srv = Server::start(root.path(), &[]);
    let pid = srv.pid();
    let (s, tid) = start_download(srv.port);
    signal(pid, "HUP");
    // The transfer goes on across the signal, to the last byte.
    let mut got = data[..512].to_vec();
    let mut buf = [0u8; 600];
    for block in 1u16..=20 {
        s.send_to(&[0, 4, (block >> 8) as u8, block as u8], tid)
            .unwrap();
        let (n, _) = s.recv_from(&mut buf).expect("the next DATA after SIGHUP");
        assert_eq!(&buf[..2], &[0, 3]);
        got.extend_from_slice(&buf[4..n]);
        if n < 516 {
            s.send_to(&[0, 4, buf[2], buf[3]], tid).unwrap();
            break;
        }
    }
    assert!(got == data, "{} of {} bytes", got.len(), data.len());
    assert!(srv.try_wait().is_none(), "still running after SIGHUP");
    assert!(
        common::wait_until(Duration::from_secs(5), || srv.log().contains("SIGHUP")),
        "{}",
        srv.log()
    );
    // A new request is served too; then SIGTERM ends it cleanly.
    let _ = start_download(srv.port);
    signal(pid, "TERM");
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = srv.try_wait() {
            break st;
        }
        assert!(Instant::now() < end, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
