//! `tftpx serve` under a service manager: sockets passed by socket activation
//! (systemd-socket-activate, from the Debian `systemd` package), Type=notify readiness and
//! shutdown messages, and the units in packaging/systemd checked by `systemd-analyze
//! verify`. Everything listens on 127.0.0.1 (ports picked by the OS) or talks over Unix
//! sockets the test binds; every process started is stopped by its PID.

use std::io::{BufRead, BufReader};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");

/// A started process with its stderr collected; killed by PID when dropped.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends SIGTERM to this process (by its PID, with kill(1)).
    fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {}", self.child.id());
    }

    /// Waits at most `limit` for the process to exit.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log ----\n{}", self.log());
        }
    }
}

/// A port that was free on 127.0.0.1 a moment ago (for systemd-socket-activate, which needs
/// a number; it fails loudly if someone took it meanwhile).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// `len` deterministic bytes.
fn content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Receives one notification (at most `limit`).
fn recv_notification(sock: &UnixDatagram, limit: Duration) -> String {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {limit:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs `tftpx get` (bounded by its own timeout and retries) and returns its exit status.
fn tftpx_get(server: &str, remote: &str, local: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["get", server, remote, "-o"])
        .arg(local)
        .args(["-q", "--timeout", "1s", "--retries", "5", "--dally", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run tftpx get")
}

/// systemd-socket-activate binds 127.0.0.1:PORT, and on the first datagram executes
/// `tftpx serve` with the socket as descriptor 3 (LISTEN_FDS=1, LISTEN_PID its own pid).
/// The server serves that socket (not its --listen), byte-identical, says so in its log,
/// tells NOTIFY_SOCKET READY=1 and, after SIGTERM, STOPPING=1.
#[test]
fn socket_activated_server_serves_the_passed_socket_and_notifies() {
    let root = tempfile::tempdir().unwrap();
    let data = content(200_000);
    std::fs::write(root.path().join("boot.img"), &data).unwrap();
    let work = tempfile::tempdir().unwrap();
    let notify_path = work.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let port = free_udp_port();
    let mut server = Proc::spawn(
        Command::new("systemd-socket-activate")
            .args(["--datagram", "-l", &format!("127.0.0.1:{port}")])
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
            .args([BIN, "serve"])
            .arg(root.path())
            // Given too: the passed socket wins, with a warning.
            .args(["--listen", "127.0.0.2:0", "--user", "root"]),
    );

    let out = work.path().join("boot.img");
    let got = tftpx_get(&format!("127.0.0.1:{port}"), "boot.img", &out);
    assert!(
        got.status.success(),
        "tftpx get: {}\nserver log:\n{}",
        String::from_utf8_lossy(&got.stderr),
        server.log()
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        data,
        "byte-identical download"
    );

    let ready = recv_notification(&notify, Duration::from_secs(10));
    assert!(ready.starts_with("READY=1\nSTATUS=Serving "), "{ready:?}");
    assert!(ready.contains(&format!("127.0.0.1:{port}")), "{ready:?}");
    let log = server.log();
    assert!(
        log.contains(&format!(
            "listening on 127.0.0.1:{port}: socket passed by systemd (descriptor 3"
        )),
        "{log}"
    );
    assert!(
        log.contains("--listen ignored: serving the 1 socket(s) passed by systemd"),
        "{log}"
    );
    assert!(
        log.contains(&format!("on 127.0.0.1:{port} (read-only)")),
        "{log}"
    );
    assert!(
        !log.contains("on 127.0.0.2:"),
        "--listen was not bound: {log}"
    );
    assert_eq!(
        log.matches("INFO serving ").count(),
        1,
        "one listen socket: {log}"
    );

    server.terminate();
    let stopping = recv_notification(&notify, Duration::from_secs(10));
    assert!(stopping.starts_with("STOPPING=1\nSTATUS="), "{stopping:?}");
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", server.log());
}

/// Single-port mode on a socket passed by systemd: the transfer answers from the passed
/// socket's own address and port (a raw UDP client checks every datagram's source), and the
/// file arrives whole.
#[test]
fn socket_activated_single_port_answers_from_the_passed_socket() {
    let root = tempfile::tempdir().unwrap();
    let data = content(5 * 512 + 17);
    std::fs::write(root.path().join("boot.img"), &data).unwrap();
    let port = free_udp_port();
    let mut server = Proc::spawn(
        Command::new("systemd-socket-activate")
            .args(["--datagram", "-l", &format!("127.0.0.1:{port}")])
            .args([BIN, "serve"])
            .arg(root.path())
            .args(["--single-port", "--user", "root"]),
    );
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // systemd-socket-activate binds the port a moment after it starts: repeat the RRQ (as
    // any client does) until the first DATA arrives, at most 10 times 2 s.
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 600];
    let mut first = None;
    for _ in 0..10 {
        c.send_to(b"\x00\x01boot.img\x00octet\x00", listen).unwrap();
        if let Ok(r) = c.recv_from(&mut buf) {
            first = Some(r);
            break;
        }
    }
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut expect = 1u16;
    for _ in 0..100 {
        let (n, from) = match first.take() {
            Some(r) => r,
            None => c
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("no DATA {expect}: {e}\nserver log:\n{}", server.log())),
        };
        assert_eq!(
            from, listen,
            "DATA from the passed socket's address and port"
        );
        assert_eq!(&buf[..2], &[0, 3], "{:?}", &buf[..n]);
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block == expect {
            got.extend_from_slice(&buf[4..n]);
            expect += 1;
        }
        c.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
        if n < 516 {
            break;
        }
    }
    assert_eq!(got, data, "byte-identical download");
    server.terminate();
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", server.log());
}

/// NOTIFY_SOCKET naming an abstract socket (`@NAME`, as systemd itself uses) gets READY=1
/// once the server listens and STOPPING=1 after SIGTERM; the server keeps serving in
/// between (it connected before giving up root and confining itself).
#[test]
fn notify_socket_in_the_abstract_namespace_gets_ready_then_stopping() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("f"), b"notified\n").unwrap();
    let name = format!(
        "tftpx-test-notify-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let notify =
        UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let mut server = Proc::spawn(
        Command::new(BIN)
            .arg("serve")
            .arg(root.path())
            .args(["--listen", "127.0.0.1:0", "--user", "root"])
            .env("NOTIFY_SOCKET", format!("@{name}")),
    );
    let ready = recv_notification(&notify, Duration::from_secs(10));
    assert!(ready.starts_with("READY=1\nSTATUS=Serving "), "{ready:?}");
    // The status names the address: fetch through it.
    let addr = ready
        .split(" on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("STATUS names the address")
        .trim_end_matches(',')
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{ready:?}");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("f");
    let got = tftpx_get(&addr, "f", &out);
    assert!(got.status.success(), "{}", server.log());
    assert_eq!(std::fs::read(&out).unwrap(), b"notified\n");

    server.terminate();
    let stopping = recv_notification(&notify, Duration::from_secs(10));
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert!(server.wait(Duration::from_secs(20)).success());
}

/// A stream socket passed where a datagram socket belongs (ListenStream= for
/// ListenDatagram=) stops start-up with one line that says so, exit 1.
#[test]
fn a_passed_stream_socket_fails_start_up_with_one_clear_line() {
    let root = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let mut server = Proc::spawn(
        Command::new("systemd-socket-activate")
            .args(["-l", &format!("127.0.0.1:{port}"), BIN, "serve"])
            .arg(root.path())
            .args(["--user", "root"]),
    );
    // Executes tftpx on the first connection; retried while it is still binding.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "systemd-socket-activate never listened: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", server.log());
    let log = server.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        vec![
            "error: the service manager passed descriptor 3, which is not a UDP socket \
             (fd 3 is not a valid udp socket): TFTP needs ListenDatagram= in the socket unit"
        ],
        "{log}"
    );
}

/// The units in packaging/systemd pass `systemd-analyze verify`. It insists that ExecStart's
/// binary exists, so the service is checked as a copy whose ExecStart points at the binary
/// just built instead of /usr/bin/tftpx (nothing else changes).
#[test]
fn packaged_units_pass_systemd_analyze_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd");
    let service = std::fs::read_to_string(units.join("tftpx.service")).unwrap();
    let socket = std::fs::read_to_string(units.join("tftpx.socket")).unwrap();
    assert!(service
        .contains("\nExecStart=/usr/bin/tftpx serve /srv/tftp --config /etc/tftpx/tftpx.toml\n"));
    assert!(service.contains("\nType=notify\n"));
    assert!(socket.contains("\nListenDatagram=0.0.0.0:69\nListenDatagram=[::]:69\n"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tftpx.service"),
        service.replace("ExecStart=/usr/bin/tftpx ", &format!("ExecStart={BIN} ")),
    )
    .unwrap();
    std::fs::write(dir.path().join("tftpx.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("tftpx.socket"))
        .arg(dir.path().join("tftpx.service"))
        .stdin(Stdio::null())
        .output()
        .expect("systemd-analyze (Debian package systemd) is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    // It exits 0 on unknown keys and bad values too, warning: none may name our units.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("tftpx")).collect();
    assert!(ours.is_empty(), "warnings about the units: {ours:#?}");
}

/// What tftpx.service grants is enough, and tftpx ends with none of it: in a private network
/// namespace, root limited to the unit's bounding set (CAP_NET_BIND_SERVICE, CAP_SETUID,
/// CAP_SETGID) with no_new_privs, as systemd starts it without the socket unit, binds
/// 127.0.0.1:69 itself, switches to `tftp` with no capability left and serves a file.
#[test]
fn the_units_capabilities_suffice_to_bind_port_69_and_drop_to_tftp() {
    let root = tempfile::tempdir().unwrap();
    // Readable by tftp: root here cannot override permissions (no CAP_DAC_OVERRIDE).
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = content(70_000);
    std::fs::write(root.path().join("f"), &data).unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = r#"
        set -u
        ip link set lo up || exit 90
        setpriv --no-new-privs --inh-caps=-all \
            --bounding-set=-all,+net_bind_service,+setuid,+setgid \
            "$BIN" serve "$ROOT" --listen 127.0.0.1:69 2>"$OUT/log" &
        P=$!
        rc=1
        for i in $(seq 1 100); do
            if "$BIN" get 127.0.0.1 f -o "$OUT/f" -q --timeout 100ms --retries 1 --dally 0; then
                rc=0; break
            fi
            sleep 0.1
        done
        grep -E '^(Uid|CapEff|CapPrm|CapBnd):' /proc/$P/status >"$OUT/status"
        kill $P
        wait $P
        exit $rc
    "#;
    let o = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .env("BIN", BIN)
        .env("ROOT", root.path())
        .env("OUT", out.path())
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux) is installed");
    let log = std::fs::read_to_string(out.path().join("log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{:?}: {}\nserver log:\n{log}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(out.path().join("f")).unwrap(), data);
    let status = std::fs::read_to_string(out.path().join("status")).unwrap();
    let tftp_uid = String::from_utf8(
        Command::new("id")
            .args(["-u", "tftp"])
            .output()
            .expect("id")
            .stdout,
    )
    .unwrap();
    let uid = tftp_uid.trim();
    assert!(!uid.is_empty(), "no tftp account (tftpd-hpa creates it)");
    assert!(
        status.contains(&format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}\n")),
        "{status}"
    );
    assert!(status.contains("CapEff:\t0000000000000000\n"), "{status}");
    assert!(status.contains("CapPrm:\t0000000000000000\n"), "{status}");
    assert!(log.contains("running as user tftp"), "{log}");
}
