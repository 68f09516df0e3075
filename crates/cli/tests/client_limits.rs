//! `tftpx get` against a hostile server: one that announces `tsize=10` and then sends
//! 512-byte blocks for as long as it is let, or one that ignores options and sends past
//! `--max-size`. The client must stop at the first block beyond the limit with ERROR 3,
//! exit 1 and leave no file; and a remote whose base name is `-` is a file, not stdout.
//!
//! The lying server is a plain UDP socket on 127.0.0.1 (OS-picked ports), bounded in blocks
//! and time.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");
/// The most DATA blocks the liar sends (2 MiB at 512 bytes).
const MAX_BLOCKS: u16 = 4096;
/// The longest the liar runs.
const LIAR_TIME: Duration = Duration::from_secs(20);

/// What the lying server saw.
#[derive(Debug)]
struct LiarReport {
    /// The request it answered.
    request: Vec<u8>,
    /// DATA blocks it sent.
    data_sent: u32,
    /// The client's ERROR (code, message), if one came.
    error: Option<(u16, String)>,
}

fn error_of(d: &[u8]) -> Option<(u16, String)> {
    (d.len() >= 4 && d[..2] == [0, 5]).then(|| {
        let msg = &d[4..];
        let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
        (
            u16::from_be_bytes([d[2], d[3]]),
            String::from_utf8_lossy(&msg[..end]).into_owned(),
        )
    })
}

/// A server on 127.0.0.1 that answers one RRQ: with an OACK announcing `tsize` when given
/// (else with DATA 1 at once, as an RFC 1350 server ignoring options), then DATA blocks of
/// 512 bytes, one after each ACK or after 50 ms without one, until the client sends an
/// ERROR, [`MAX_BLOCKS`] have gone or [`LIAR_TIME`] has passed.
fn liar(tsize: Option<u64>) -> (SocketAddr, JoinHandle<LiarReport>) {
    let listen = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = listen.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let start = Instant::now();
        listen
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let (n, client) = listen.recv_from(&mut buf).expect("an RRQ within 10 s");
        let request = buf[..n].to_vec();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(client).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut report = LiarReport {
            request,
            data_sent: 0,
            error: None,
        };
        if let Some(t) = tsize {
            let mut oack = b"\x00\x06tsize\x00".to_vec();
            oack.extend_from_slice(t.to_string().as_bytes());
            oack.push(0);
            // Until ACK 0 (bounded: 100 x 50 ms).
            let mut acked = false;
            for _ in 0..100 {
                sock.send(&oack).unwrap();
                if let Ok(n) = sock.recv(&mut buf) {
                    if let Some(e) = error_of(&buf[..n]) {
                        report.error = Some(e);
                        return report;
                    }
                    if buf[..n] == [0, 4, 0, 0] {
                        acked = true;
                        break;
                    }
                }
            }
            assert!(acked, "no ACK 0 for the OACK");
        }
        let mut data = vec![0u8; 4 + 512];
        data[1] = 3;
        data[4..].fill(b'x');
        for block in 1..=MAX_BLOCKS {
            if start.elapsed() > LIAR_TIME {
                break;
            }
            data[2..4].copy_from_slice(&block.to_be_bytes());
            sock.send(&data).unwrap();
            report.data_sent += 1;
            // Drain what came back (ACKs, or the ERROR that ends it).
            while let Ok(n) = sock.recv(&mut buf) {
                if let Some(e) = error_of(&buf[..n]) {
                    report.error = Some(e);
                    return report;
                }
                if buf[..n] == [0, 4, (block >> 8) as u8, block as u8] {
                    break;
                }
            }
        }
        report
    });
    (addr, handle)
}

/// Runs `tftpx ARGS` in `cwd` to the end (at most 60 s).
fn run(args: &[&str], cwd: &Path) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(cwd);
    common::run_bounded(cmd, Duration::from_secs(60))
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// One `tftpx get` of `big.bin` from a liar; returns (client output, liar's report).
fn get_from_liar(tsize: Option<u64>, cwd: &Path, extra: &[&str]) -> (Output, LiarReport) {
    let (addr, liar) = liar(tsize);
    let addr = addr.to_string();
    let mut args = vec![
        "get",
        addr.as_str(),
        "big.bin",
        "--timeout",
        "1",
        "--retries",
        "2",
    ];
    args.extend_from_slice(extra);
    let o = run(&args, cwd);
    (o, liar.join().unwrap())
}

/// F13: a server announcing tsize=10 and then sending 512-byte blocks forever. Before,
/// `tftpx get` wrote 19.4 MB; now it stops at the first block, which it does not write.
#[test]
fn a_server_sending_past_its_tsize_gets_error_3_and_nothing_is_kept() {
    let cwd = tempfile::tempdir().unwrap();
    let (o, r) = get_from_liar(Some(10), cwd.path(), &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    eprintln!(
        "tsize=10 liar: sent {} DATA blocks before the client's ERROR {:?}",
        r.data_sent, r.error
    );
    assert!(r.request.windows(6).any(|w| w == b"tsize\0"), "tsize asked");
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("the server sent more than the 10 bytes (tsize) it announced"),
        "{e}"
    );
    let (code, _) = r.error.clone().expect("the client sent an ERROR");
    assert_eq!(code, 3, "ERROR 3 (disk full or allocation exceeded)");
    assert!(r.data_sent <= 2, "stopped at the first block: {r:?}");
    assert!(
        entries(cwd.path()).is_empty(),
        "no file left: {:?}",
        entries(cwd.path())
    );

    // The same to stdout, where every byte written can be counted.
    let (o, r) = get_from_liar(Some(10), cwd.path(), &["-o", "-"]);
    eprintln!(
        "tsize=10 liar, -o -: {} bytes written to stdout, {} DATA blocks sent",
        o.stdout.len(),
        r.data_sent
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.len() <= 10 + 512, "{} bytes", o.stdout.len());
    assert!(o.stdout.is_empty(), "nothing past the tsize is written");
    assert_eq!(r.error.as_ref().map(|e| e.0), Some(3), "{r:?}");
}

/// `--max-size` caps a download without tsize (a server that ignores options), and with
/// one the smaller of the two wins.
#[test]
fn max_size_caps_a_download_with_or_without_tsize() {
    let cwd = tempfile::tempdir().unwrap();
    // No OACK: blocks 1-3 (1,536 bytes) fit, block 4 would make 2,048 > 2,000.
    let (o, r) = get_from_liar(None, cwd.path(), &["--max-size", "2000", "-o", "-"]);
    let e = String::from_utf8_lossy(&o.stderr);
    eprintln!(
        "no tsize, --max-size 2000: {} bytes written, {} DATA blocks sent, ERROR {:?}",
        o.stdout.len(),
        r.data_sent,
        r.error
    );
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("larger than --max-size (2000 bytes)"), "{e}");
    assert_eq!(r.error.as_ref().map(|e| e.0), Some(3), "{r:?}");
    assert!(r.data_sent <= 5, "{r:?}");
    assert_eq!(o.stdout.len(), 1536, "whole blocks up to the limit");

    // To a file: nothing is kept.
    let (o, r) = get_from_liar(None, cwd.path(), &["--max-size", "2000"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(r.error.as_ref().map(|e| e.0), Some(3), "{r:?}");
    assert!(entries(cwd.path()).is_empty(), "{:?}", entries(cwd.path()));

    // A tsize above the limit: refused at the first block, with a suffixed size.
    let (o, r) = get_from_liar(Some(100_000), cwd.path(), &["--max-size", "1K"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("larger than --max-size (1024 bytes)"), "{e}");
    assert_eq!(r.error.as_ref().map(|e| e.0), Some(3), "{r:?}");
    assert!(r.data_sent <= 2, "{r:?}");
    assert!(entries(cwd.path()).is_empty(), "{:?}", entries(cwd.path()));

    // A tsize below the limit: the tsize is the cap.
    let (o, r) = get_from_liar(Some(10), cwd.path(), &["--max-size", "1M"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("more than the 10 bytes (tsize)"), "{e}");
    assert_eq!(r.error.as_ref().map(|e| e.0), Some(3), "{r:?}");
    assert!(entries(cwd.path()).is_empty(), "{:?}", entries(cwd.path()));

    let o = run(&["get", "127.0.0.1", "f", "--max-size", "10X"], cwd.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a size"));
}

/// A remote whose base name is `-` lands in a file named `-`; only `-o -` means stdout.
#[test]
fn a_remote_named_dash_is_a_file_not_stdout() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("-"), b"dash at the root\n").unwrap();
    std::fs::create_dir(root.path().join("d")).unwrap();
    std::fs::write(root.path().join("d").join("-"), b"dash in d\n").unwrap();
    let srv = common::Server::start(root.path(), &[]);
    let addr = format!("127.0.0.1:{}", srv.port);
    let cwd = tempfile::tempdir().unwrap();

    let o = run(&["get", &addr, "-", "-q", "--dally", "0"], cwd.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "nothing on stdout");
    assert_eq!(
        std::fs::read(cwd.path().join("-")).unwrap(),
        b"dash at the root\n"
    );

    std::fs::remove_file(cwd.path().join("-")).unwrap();
    let o = run(&["get", &addr, "d/-", "-q", "--dally", "0"], cwd.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read(cwd.path().join("-")).unwrap(), b"dash in d\n");

    let o = run(
        &["get", &addr, "-", "-o", "-", "-q", "--dally", "0"],
        cwd.path(),
    );
    assert!(o.status.success());
    assert_eq!(o.stdout, b"dash at the root\n");
}
