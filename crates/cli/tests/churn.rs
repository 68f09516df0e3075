//! `tftpx serve` under churn: the disk filling up during an upload, a file that shrinks or
//! grows while it is read, clients that vanish or restart, and SIGTERM with transfers
//! running. Every case ends with an ERROR to the peer (or a clean, complete transfer), the
//! old file intact and no temporary file left.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");

use common::{part_files as parts, pseudo_random_seeded as content};

/// The disk fills up during an upload: ERROR 3 to the client, the old file intact, the
/// temporary file removed. A 1 MiB tmpfs in a private mount (and network) namespace.
#[test]
fn disk_full_during_upload_answers_error_3_and_keeps_the_old_file() {
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let old = content(100_000, 1);
    std::fs::write(out.path().join("old.bin"), &old).unwrap();
    std::fs::write(out.path().join("big.bin"), content(3 << 20, 2)).unwrap();
    let script = r#"
        set -u
        ip link set lo up || exit 90
        mount -t tmpfs -o size=1m tmpfs "$ROOT" || exit 91
        cp "$OUT/old.bin" "$ROOT/fw.bin"
        "$BIN" serve "$ROOT" --listen 127.0.0.1:6969 --allow-write --user root 2> "$OUT/serve.log" &
        P=$!
        for i in $(seq 1 50); do
            if "$BIN" get 127.0.0.1:6969 fw.bin -o "$OUT/probe" -q --timeout 100ms --retries 1 --dally 0; then break; fi
            sleep 0.1
        done
        # --no-tsize: the server learns the size only as the disk fills.
        "$BIN" put 127.0.0.1:6969 "$OUT/big.bin" fw.bin --no-tsize --blksize 1468 --timeout 1 2> "$OUT/put.err"
        echo $? > "$OUT/put.rc"
        "$BIN" get 127.0.0.1:6969 fw.bin -o "$OUT/after.bin" -q --dally 0
        ls -a "$ROOT" > "$OUT/ls"
        kill $P
        wait $P
        exit 0
    "#;
    let o = Command::new("unshare")
        .args(["-m", "-n", "sh", "-c", script])
        .env("BIN", BIN)
        .env("ROOT", root.path())
        .env("OUT", out.path())
        .output()
        .expect("unshare (util-linux) is installed");
    let read = |n: &str| std::fs::read_to_string(out.path().join(n)).unwrap_or_default();
    assert!(
        o.status.success(),
        "{:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        read("serve.log")
    );
    assert_eq!(
        read("put.rc").trim(),
        "1",
        "the upload fails: {}",
        read("put.err")
    );
    assert!(
        read("put.err").contains("ERROR 3"),
        "client told disk full: {}",
        read("put.err")
    );
    assert!(
        std::fs::read(out.path().join("after.bin")).unwrap() == old,
        "the old file is intact"
    );
    let ls = read("ls");
    assert!(!ls.contains(".tftpx-part"), "temporary file removed: {ls}");
    assert!(
        read("serve.log").contains("Disk full"),
        "the server logs why: {}",
        read("serve.log")
    );
}

/// `tftpx serve DIR` on 127.0.0.1:0 with short retransmission timers, and its address.
fn serve(dir: &Path, extra: &[&str]) -> (common::Server, SocketAddr) {
    let mut args = vec!["--timeout", "300ms", "--retries", "3"];
    args.extend_from_slice(extra);
    let srv = common::Server::start(dir, &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], srv.port));
    (srv, addr)
}

fn sock() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = s.recv_from(&mut buf).expect("a datagram within 5 s");
    buf.truncate(n);
    (buf, from)
}

fn request(op: u8, name: &str, opts: &str) -> Vec<u8> {
    let mut v = vec![0, op];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"\0octet\0");
    v.extend_from_slice(opts.as_bytes());
    v
}

/// Reads DATA from a raw download, ACKing each, until `stop(block)` or the end; returns
/// the payload received and the last packet (DATA or ERROR).
fn download(s: &UdpSocket, expect: &mut u16, stop: impl Fn(u16) -> bool) -> (Vec<u8>, Vec<u8>) {
    let mut got = Vec::new();
    for _ in 0..100_000 {
        let (p, from) = recv(s);
        if p[..2] == [0, 5] {
            return (got, p);
        }
        let block = u16::from_be_bytes([p[2], p[3]]);
        if block == *expect {
            got.extend_from_slice(&p[4..]);
            *expect = expect.wrapping_add(1);
        }
        s.send_to(&[0, 4, p[2], p[3]], from).unwrap();
        if p.len() < 516 || stop(block) {
            return (got, p);
        }
    }
    panic!("endless download");
}

#[test]
fn a_file_that_shrinks_or_grows_while_read_is_never_served_short_or_torn() {
    let dir = tempfile::tempdir().unwrap();
    let original = content(2 << 20, 3);
    std::fs::write(dir.path().join("shrinks.bin"), &original).unwrap();
    std::fs::write(dir.path().join("grows.bin"), &original).unwrap();
    let (srv, addr) = serve(dir.path(), &[]);

    // Shrinks to 1000 bytes after 100 blocks (51 KB, past the 16 KiB read-ahead).
    let s = sock();
    s.send_to(&request(1, "shrinks.bin", ""), addr).unwrap();
    let mut next = 1;
    let (got, _) = download(&s, &mut next, |b| b == 100);
    assert_eq!(got.len(), 100 * 512);
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("shrinks.bin"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let (_, last) = download(&s, &mut next, |_| false);
    assert_eq!(
        &last[..4],
        b"\x00\x05\x00\x00",
        "ERROR 0, not a short last block"
    );
    let msg = String::from_utf8_lossy(&last[4..]).into_owned();
    assert!(msg.contains("shrank"), "{msg}");

    // Grows (appended to) after 100 blocks: the transfer serves the size it announced.
    let s = sock();
    s.send_to(&request(1, "grows.bin", "tsize\x000\x00"), addr)
        .unwrap();
    let (oack, tid) = recv(&s);
    assert_eq!(&oack[..2], b"\x00\x06");
    assert!(String::from_utf8_lossy(&oack).contains(&format!("{}", original.len())));
    s.send_to(&[0, 4, 0, 0], tid).unwrap();
    let mut next = 1;
    let (mut got, _) = download(&s, &mut next, |b| b == 100);
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("grows.bin"))
        .unwrap()
        .write_all(&content(1 << 20, 4))
        .unwrap();
    let (rest, last) = download(&s, &mut next, |_| false);
    got.extend_from_slice(&rest);
    assert_eq!(&last[..2], b"\x00\x03", "ends with DATA");
    assert_eq!(got.len(), original.len(), "exactly the size announced");
    assert!(got == original, "exactly the file as announced");
    drop(srv);
}

#[test]
fn vanished_and_restarted_clients_end_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(300_000, 5);
    std::fs::write(dir.path().join("f.bin"), &data).unwrap();
    std::fs::write(dir.path().join("up.bin"), b"old").unwrap();
    let (srv, addr) = serve(dir.path(), &["--allow-write"]);

    // A download whose client vanishes after 10 blocks.
    let gone = sock();
    gone.send_to(&request(1, "f.bin", ""), addr).unwrap();
    download(&gone, &mut 1, |b| b == 10);
    // An upload whose client vanishes after 10 blocks.
    let up = sock();
    up.send_to(&request(2, "up.bin", ""), addr).unwrap();
    let (ack0, tid) = recv(&up);
    assert_eq!(ack0, [0, 4, 0, 0]);
    for b in 1..=10u16 {
        let mut d = vec![0, 3];
        d.extend_from_slice(&b.to_be_bytes());
        d.extend_from_slice(&[7u8; 512]);
        up.send_to(&d, tid).unwrap();
        recv(&up);
    }
    drop(gone);
    drop(up);
    // The same download restarted from a new port completes while the first times out.
    let again = sock();
    again.send_to(&request(1, "f.bin", ""), addr).unwrap();
    let (got, _) = download(&again, &mut 1, |_| false);
    assert!(got == data);
    // Both abandoned transfers end within their retry budget (300 ms x 3 retries).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let log = srv.log();
        if log.matches("timed out").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = srv.log();
    assert_eq!(log.matches("timed out").count(), 2, "{log}");
    assert_eq!(std::fs::read(dir.path().join("up.bin")).unwrap(), b"old");
    assert!(parts(dir.path()).is_empty());
}

#[test]
fn sigterm_ends_running_transfers_with_an_error_and_removes_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), content(300_000, 6)).unwrap();
    std::fs::write(dir.path().join("up.bin"), b"old").unwrap();
    let (mut srv, addr) = serve(dir.path(), &["--allow-write"]);
    let down = sock();
    down.send_to(&request(1, "f.bin", ""), addr).unwrap();
    let (_, down_tid) = {
        let (p, from) = recv(&down);
        assert_eq!(&p[..4], b"\x00\x03\x00\x01");
        (p, from)
    };
    let up = sock();
    up.send_to(&request(2, "up.bin", ""), addr).unwrap();
    let (_, up_tid) = recv(&up);
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&[9u8; 512]);
    up.send_to(&d, up_tid).unwrap();
    assert_eq!(recv(&up).0, [0, 4, 0, 1]);
    // The upload is open in the server, under no name in the directory.
    assert_eq!(
        common::uploads_open_in(srv.pid(), dir.path()),
        1,
        "the upload is open"
    );
    assert!(parts(dir.path()).is_empty(), "the upload has no name yet");
    let pid = srv.pid().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Each peer hears ERROR 0 from its transfer (after possibly a retransmission).
    for (s, tid) in [(&down, down_tid), (&up, up_tid)] {
        let mut err = None;
        for _ in 0..10 {
            let (p, from) = recv(s);
            if p[..2] == [0, 5] {
                err = Some((p, from));
                break;
            }
        }
        let (p, from) = err.expect("an ERROR");
        assert_eq!(from, tid);
        assert_eq!(&p[..4], b"\x00\x05\x00\x00");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = srv.try_wait() {
            break st;
        }
        assert!(Instant::now() < deadline, "serve exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(dir.path().join("up.bin")).unwrap(), b"old");
    assert!(parts(dir.path()).is_empty(), "{:?}", parts(dir.path()));
}
