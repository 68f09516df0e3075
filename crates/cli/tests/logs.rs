//! `tftpx serve` logs: `--log-format json` lines carry the transfer's fields, `--log-filter`
//! (over `RUST_LOG`) selects levels, and under systemd (`JOURNAL_STREAM`) lines have no
//! timestamp of ours. Transfers are raw datagrams from 127.0.0.1 to an OS-picked port.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{pseudo_random, wait_until, write_file, Server};
use serde_json::Value;

/// How long one datagram is awaited.
const WAIT: Duration = Duration::from_secs(5);
/// How long the server may take to log a line, or to start.
const LOG_WAIT: Duration = Duration::from_secs(10);
/// A file of two blocks (512 + 188 bytes).
const FILE_LEN: usize = 700;

fn request(opcode: u8, name: &str, mode: &str) -> Vec<u8> {
    let mut p = vec![0, opcode];
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p.extend_from_slice(mode.as_bytes());
    p.push(0);
    p
}

/// What a request came to: the file's bytes, or an ERROR's code.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Data(Vec<u8>),
    Error(u16),
}

/// RRQ `name` (octet, no options) to 127.0.0.1:`port`, ACKing each DATA (at most 16 blocks,
/// each awaited at most 5 s). Returns the client's address and the outcome.
fn rrq(port: u16, name: &str, mode: &str) -> (SocketAddr, Got) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    sock.send_to(&request(1, name, mode), ("127.0.0.1", port))
        .expect("send RRQ");
    let mut data = Vec::new();
    let mut buf = [0u8; 1024];
    for block in 1..=16u16 {
        let (n, from) = sock.recv_from(&mut buf).expect("a reply within 5 s");
        let d = &buf[..n];
        assert!(n >= 4, "short reply {d:?}");
        match d[1] {
            5 => {
                return (
                    sock.local_addr().unwrap(),
                    Got::Error(u16::from_be_bytes([d[2], d[3]])),
                )
            }
            3 => {
                assert_eq!(u16::from_be_bytes([d[2], d[3]]), block, "block number");
                data.extend_from_slice(&d[4..]);
                let mut ack = vec![0, 4];
                ack.extend_from_slice(&block.to_be_bytes());
                sock.send_to(&ack, from).expect("send ACK");
                if n - 4 < 512 {
                    return (sock.local_addr().unwrap(), Got::Data(data));
                }
            }
            op => panic!("unexpected opcode {op} in {d:?}"),
        }
    }
    panic!("more than 16 blocks");
}

/// The log's lines, each parsed as JSON (a line that is not JSON fails the test).
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The JSON lines about `file` with an `outcome` field (the summaries).
fn summaries<'a>(lines: &'a [Value], file: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["file"] == file && v.get("outcome").is_some())
        .collect()
}

#[test]
fn json_lines_carry_the_transfer_fields() {
    let dir = tempfile::tempdir().unwrap();
    let content = pseudo_random(FILE_LEN);
    write_file(&dir.path().join("hello.bin"), &content);
    let server = Server::start(dir.path(), &["--log-format", "json"]);

    let (client, got) = rrq(server.port, "hello.bin", "octet");
    assert_eq!(got, Got::Data(content), "downloaded bytes");
    let (client2, got) = rrq(server.port, "missing.bin", "octet");
    assert_eq!(got, Got::Error(1), "a missing file gets ERROR 1");

    // A 1,000-byte name: its field is cut like the text, and the line stays short.
    let long = "n".repeat(1000);
    assert!(matches!(rrq(server.port, &long, "octet").1, Got::Error(_)));

    let cut = format!("{}…", "n".repeat(256));
    let done = || {
        let lines = json_lines(&server.log());
        summaries(&lines, "hello.bin").len() == 1
            && summaries(&lines, "missing.bin").len() == 1
            && summaries(&lines, &cut).len() == 1
    };
    assert!(
        wait_until(LOG_WAIT, done),
        "no summaries in:\n{}",
        server.log()
    );
    let lines = json_lines(&server.log());
    assert!(lines
        .iter()
        .all(|v| v["level"].is_string() && v["message"].is_string()));

    // The request line: no outcome yet.
    let req = lines
        .iter()
        .find(|v| v["file"] == "hello.bin" && v.get("outcome").is_none())
        .expect("a request line for hello.bin");
    assert_eq!(req["level"], "INFO");
    assert_eq!(req["peer"], client.to_string());
    assert_eq!(req["kind"], "RRQ");
    assert_eq!(req["mode"], "octet");
    assert_eq!(req["options"], "");
    assert!(
        req["message"].as_str().unwrap().contains("RRQ from "),
        "{req}"
    );

    let ok = summaries(&lines, "hello.bin")[0];
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["peer"], client.to_string());
    assert_eq!(ok["kind"], "RRQ");
    assert_eq!(ok["mode"], "octet");
    assert_eq!(ok["bytes"], FILE_LEN as u64);
    assert_eq!(ok["outcome"], "ok");
    assert_eq!(ok["options"], "blksize=512 windowsize=1");
    assert!(ok["duration_ms"].is_u64(), "{ok}");
    assert!(ok.get("error_code").is_none(), "{ok}");
    let text = ok["message"].as_str().unwrap();
    assert!(
        text.contains(": ok, 700 bytes in "),
        "human text kept: {text}"
    );

    let refused = summaries(&lines, "missing.bin")[0];
    assert_eq!(refused["peer"], client2.to_string());
    assert_eq!(refused["kind"], "RRQ");
    assert_eq!(refused["bytes"], 0);
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["error_code"], 1);
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains(": refused with ERROR"));

    let long = summaries(&lines, &cut)[0];
    assert_eq!(long["outcome"], "refused");
    assert!(long["error_code"].is_u64(), "{long}");
    let longest = server.log().lines().map(str::len).max().unwrap();
    assert!(longest <= 1024, "a log line of {longest} bytes");
}

/// An environment variable for the server: name and value.
type Env<'a> = (&'a str, &'a str);

/// A `tftpx serve` started here with its own environment (`Server::start` needs the
/// `serving` line, which a warn filter hides), killed by its handle when dropped.
struct Serve {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(root: &Path, args: &[&str], env: &[Env]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tftpx"));
        cmd.arg("serve")
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--user", "root"])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tftpx serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The UDP port the process listens on, read from /proc (its socket inodes in
    /// /proc/PID/fd matched against /proc/PID/net/udp); waits at most 10 s.
    fn port(&self) -> u16 {
        let pid = self.child.id();
        let mut port = None;
        let found = wait_until(LOG_WAIT, || {
            port = udp_port_of(pid);
            port.is_some()
        });
        assert!(found, "no UDP socket in /proc/{pid}; log:\n{}", self.log());
        port.unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- tftpx serve log ----\n{}", self.log());
        }
    }
}

fn udp_port_of(pid: u32) -> Option<u16> {
    let inodes: HashSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/udp")).ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (local, inode) = (f.get(1)?, f.get(9)?);
        if !inodes.contains(*inode) || !local.starts_with("0100007F:") {
            return None;
        }
        u16::from_str_radix(&local["0100007F:".len()..], 16).ok()
    })
}

/// `--log-filter warn` (and `RUST_LOG=warn` without the flag) log no info line: not the
/// `serving` line, not the request lines, not the ok / file-not-found summaries; a refused
/// request with a bad mode (a warning) still shows, after its own (hidden) request line.
#[test]
fn warn_filter_hides_info_lines() {
    let dir = tempfile::tempdir().unwrap();
    let content = pseudo_random(FILE_LEN);
    write_file(&dir.path().join("hello.bin"), &content);
    let runs: [(&[&str], &[Env]); 2] = [
        // The flag wins over RUST_LOG.
        (&["--log-filter", "warn"], &[("RUST_LOG", "debug")]),
        (&[], &[("RUST_LOG", "warn")]),
    ];
    for (args, env) in runs {
        let server = Serve::start(dir.path(), args, env);
        let port = server.port();
        assert_eq!(
            rrq(port, "hello.bin", "octet").1,
            Got::Data(content.clone())
        );
        assert_eq!(rrq(port, "missing.bin", "octet").1, Got::Error(1));
        assert_eq!(rrq(port, "hello.bin", "bogus").1, Got::Error(4));
        let warned = || server.log().contains("Unsupported mode \"bogus\"");
        assert!(
            wait_until(LOG_WAIT, warned),
            "{args:?} {env:?}: no warning for the bad mode in:\n{}",
            server.log()
        );
        let log = server.log();
        assert!(log.contains(" WARN "), "{log}");
        for hidden in [" INFO ", "serving ", ": ok,", "missing.bin", "DEBUG"] {
            assert!(
                !log.contains(hidden),
                "{args:?} {env:?}: {hidden:?} in:\n{log}"
            );
        }
    }
}

/// Under systemd (JOURNAL_STREAM set), text and JSON lines carry no timestamp; without it
/// they start with one.
#[test]
fn journal_stream_drops_our_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let first_line = |args: &[&str], env: &[Env]| {
        let server = Serve::start(dir.path(), args, env);
        let started = || server.log().contains("serving ");
        assert!(
            wait_until(LOG_WAIT, started),
            "no serving line:\n{}",
            server.log()
        );
        let log = server.log();
        log.lines()
            .find(|l| l.contains("serving "))
            .unwrap()
            .to_owned()
    };
    let timestamped = |l: &str| l.trim_start().starts_with(|c: char| c.is_ascii_digit());

    let before = first_line(&[], &[]);
    assert!(
        timestamped(&before),
        "no timestamp without JOURNAL_STREAM: {before}"
    );
    let after = first_line(&[], &[("JOURNAL_STREAM", "1:1")]);
    assert!(
        !timestamped(&after),
        "a timestamp under JOURNAL_STREAM: {after}"
    );
    assert!(after.trim_start().starts_with("INFO serving "), "{after}");

    let json = first_line(&["--log-format", "json"], &[("JOURNAL_STREAM", "1:1")]);
    let v: Value = serde_json::from_str(&json).expect("JSON");
    assert!(v.get("timestamp").is_none(), "{json}");
    assert_eq!(v["level"], "INFO");
    let json = first_line(&["--log-format", "json"], &[]);
    let v: Value = serde_json::from_str(&json).expect("JSON");
    assert!(v["timestamp"].is_string(), "{json}");
}

/// `-v` logs each request's negotiation (asked, OACK, in force) and refusals; `-vv` adds a
/// per-packet trace (one line per datagram, `sent DATA block N` / `received ACK block N`);
/// without either, none of those lines appear.
#[test]
fn verbose_logs_negotiation_and_very_verbose_every_packet() {
    let dir = tempfile::tempdir().unwrap();
    let content = pseudo_random(FILE_LEN);
    write_file(&dir.path().join("hello.bin"), &content);
    for (args, negotiation, packets) in [
        (&[][..], false, false),
        (&["-v"][..], true, false),
        (&["-vv"][..], true, true),
    ] {
        let server = Serve::start(dir.path(), args, &[]);
        let port = server.port();
        let (client, got) = rrq(port, "hello.bin", "octet");
        assert_eq!(got, Got::Data(content.clone()));
        assert_eq!(rrq(port, "missing.bin", "octet").1, Got::Error(1));
        let ended = || server.log().matches(" outcome=").count() >= 2;
        assert!(wait_until(LOG_WAIT, ended), "{args:?}:\n{}", server.log());
        let log = server.log();
        let negotiated = format!(
            "negotiated with {client}: asked [], OACK [], in force blksize=512 windowsize=1"
        );
        assert_eq!(log.contains(&negotiated), negotiation, "{args:?}:\n{log}");
        assert_eq!(
            log.contains("RRQ \"missing.bin\" refused: ERROR 1 File not found"),
            negotiation,
            "{args:?}:\n{log}"
        );
        // Two blocks (512 + 188 bytes): DATA 1, ACK 1, DATA 2, ACK 2, each traced (more
        // than once only if the machine was so slow that the server retransmitted).
        for line in [
            "sent DATA block 1, 516 bytes",
            "received ACK block 1, 4 bytes",
            "sent DATA block 2, 192 bytes",
            "received ACK block 2, 4 bytes",
        ] {
            let n = log.matches(line).count();
            assert_eq!(n > 0, packets, "{line:?} {n} times {args:?}:\n{log}");
        }
        // The trace names the peer: this client's port.
        if packets {
            assert!(log.contains(&format!("(to {client})")), "{log}");
        }
    }
}
