//! The `tftpx` command as a user drives it: argument errors, exit codes, stdout/stdin, and
//! no partial or clobbered file when a download fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");

/// A `tftpx serve` process, killed (by PID) on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Serve {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        // Not a test of privileges: tempdirs are 0700 root, so stay root.
        .args(["--user", "root"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tftpx serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" on ").nth(1) {
                if line.contains("serving ") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server announces its address");
    Serve {
        child,
        addr: addr.parse().expect("address"),
    }
}

/// Runs the binary with a bounded wait; returns its output.
fn run(args: &[&str], cwd: &Path, stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tftpx");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(input).unwrap();
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).map(|_| v)
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).map(|_| v)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("tftpx {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap().unwrap(),
        stderr: t_err.join().unwrap().unwrap(),
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2_and_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["get"], "<SERVER>"),
        (&["get", "127.0.0.1"], "missing REMOTE"),
        (&["get", "127.0.0.1:0", "f"], "invalid port"),
        (&["get", "127.0.0.1", "f", "--blksize", "4"], "--blksize"),
        (&["get", "127.0.0.1", "f", "--timeout", "0s"], "positive"),
        (
            &["get", "127.0.0.1", "f", "--mode", "mail"],
            "octet or netascii",
        ),
        (&["get", "tftp://127.0.0.1/a", "b"], "not both"),
        (&["get", "127.0.0.1", "dir/"], "-o LOCAL"),
        (&["put", "127.0.0.1", "-"], "needs a REMOTE"),
        (&["serve", "--listen", "nonsense"], "--listen"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let o = run(args, dir.path(), None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn serve_fails_clearly_on_a_missing_dir_or_a_busy_port() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        &["serve", "/nonexistent/tftp-root", "--listen", "127.0.0.1:0"],
        dir.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("error: cannot serve /nonexistent/tftp-root"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");

    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = run(&["serve", ".", "--listen", &addr], dir.path(), None);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains(&format!("cannot listen on {addr}")), "{e}");
    assert!(e.contains("in use"), "{e}");
}

#[test]
fn get_to_stdout_and_put_from_stdin() {
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.path().join("d.bin"), &data).unwrap();
    let srv = serve(root.path(), &["--allow-create"]);
    let cwd = tempfile::tempdir().unwrap();
    let a = srv.addr.to_string();
    let o = run(&["get", &a, "d.bin", "-o", "-", "-q"], cwd.path(), None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout == data, "stdout carries exactly the file");
    assert!(o.stderr.is_empty(), "-q is silent: {}", stderr(&o));

    let o = run(&["put", &a, "-", "in.bin"], cwd.path(), Some(&data));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read(root.path().join("in.bin")).unwrap() == data);
    assert!(stderr(&o).contains("sent 100000 bytes"), "{}", stderr(&o));

    // Default LOCAL is the remote base name; the URL form and the pull alias work.
    let url = format!("tftp://{a}/d.bin");
    let o = run(
        &["pull", &url, "--blksize", "1468", "--windowsize", "8"],
        cwd.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read(cwd.path().join("d.bin")).unwrap() == data);
    assert!(
        stderr(&o).contains("received 100000 bytes")
            && stderr(&o).contains("blksize 1468 windowsize 8"),
        "{}",
        stderr(&o)
    );
    // push alias, REMOTE defaulting to LOCAL's base name.
    let o = run(&["push", &a, "d.bin"], cwd.path(), None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn failed_download_leaves_no_partial_file_and_keeps_an_existing_one() {
    let root = tempfile::tempdir().unwrap();
    let srv = serve(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    let a = srv.addr.to_string();
    let o = run(&["get", &a, "missing.bin"], cwd.path(), None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("server sent ERROR 1 (file not found): File not found"),
        "{}",
        stderr(&o)
    );
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing written: {left:?}");

    std::fs::write(cwd.path().join("keep.bin"), b"old").unwrap();
    let o = run(
        &["get", &a, "missing.bin", "-o", "keep.bin"],
        cwd.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(cwd.path().join("keep.bin")).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 1);

    // A read-only server refuses uploads: exit 1 with the server's reason.
    std::fs::write(cwd.path().join("up.bin"), b"data").unwrap();
    let o = run(&["put", &a, "up.bin"], cwd.path(), None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("ERROR 2 (access violation)"),
        "{}",
        stderr(&o)
    );
    assert!(!root.path().join("up.bin").exists());
}

#[test]
fn silent_server_times_out_with_exit_1() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = silent.local_addr().unwrap().to_string();
    let cwd = tempfile::tempdir().unwrap();
    let o = run(
        &["get", &a, "x", "--timeout", "100ms", "--retries", "2"],
        cwd.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("timed out after 2 retries"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
}

/// A multi-homed host answers from the address the client asked: with the server on
/// 0.0.0.0, requests to 127.0.0.2 and 127.0.0.3 get replies from those addresses (the
/// client refuses replies from any other address, so a completed download proves it).
/// Runs in a private network namespace (root), so the wildcard listener is reachable from
/// nowhere else.
#[test]
fn replies_leave_from_the_address_the_request_was_sent_to() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("f.txt"), b"multi-homed\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = r#"
        set -u
        ip link set lo up || exit 90
        "$BIN" serve "$ROOT" --listen 0.0.0.0:6969 --listen '[::]:6969' -q &
        P=$!
        rc=1
        for i in $(seq 1 50); do
            if "$BIN" get 127.0.0.1:6969 f.txt -o "$OUT/probe" -q --timeout 100ms --retries 1; then rc=0; break; fi
            sleep 0.1
        done
        if [ $rc -eq 0 ]; then
            for dst in 127.0.0.2 127.0.0.3 '[::1]'; do
                "$BIN" get "$dst:6969" f.txt -o "$OUT/from-$dst" -q --timeout 200ms --retries 2 || rc=1
            done
        fi
        kill $P
        wait $P 2>/dev/null
        exit $rc
    "#;
    let o = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .env("BIN", BIN)
        .env("ROOT", root.path())
        .env("OUT", out.path())
        .output()
        .expect("unshare (util-linux) is installed");
    assert!(
        o.status.success(),
        "status {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    for dst in ["127.0.0.2", "127.0.0.3", "[::1]"] {
        let got = std::fs::read(out.path().join(format!("from-{dst}"))).unwrap();
        assert_eq!(got, b"multi-homed\n", "{dst}");
    }
}
