//! `tftpx serve --config FILE`, `--check-config`, SIGHUP reload and `--drain`, on the real
//! binary over loopback: the file's values take effect and flags win; a bad file is refused
//! naming its line and key; SIGHUP puts a new `deny` and a new map rule in force for new
//! requests while a transfer running across it completes byte-identical, and a broken file
//! keeps the old settings; SIGTERM with `--drain` lets a slow download finish while a new
//! request gets no answer, and without it ends the download with ERROR 0.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{pseudo_random, wait_until};

const TFTPX: &str = env!("CARGO_BIN_EXE_tftpx");
/// How long a process may take to start, a log line to appear, or a process to exit.
const WAIT: Duration = Duration::from_secs(30);
/// How long a test listens to be sure no answer comes (silence can only be observed for a
/// while; a slow machine makes it pass, never fail).
const SILENCE: Duration = Duration::from_millis(1500);

/// A `tftpx serve` started with exactly `args`, killed (by PID) when dropped.
struct Serve {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(TFTPX)
            .arg("serve")
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tftpx serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(at) = line.find(" on 127.0.0.1:") {
                    let digits: String = line[at + 14..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let (Ok(p), Some(tx)) = (digits.parse::<u16>(), tx.take()) {
                        let _ = tx.send(p);
                    }
                }
            }
        });
        let port = match rx.recv_timeout(WAIT) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no `serving ... on 127.0.0.1:PORT` line; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Self { child, port, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    #[track_caller]
    fn wait_log(&self, what: &str) {
        assert!(
            wait_until(WAIT, || self.log().contains(what)),
            "no {what:?} in the log:\n{}",
            self.log()
        );
    }

    fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[track_caller]
    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "still running; log:\n{}", self.log());
            thread::sleep(Duration::from_millis(20));
        }
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

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// `tftpx serve ARGS` that must exit by itself.
fn run(args: &[&str]) -> Output {
    Command::new(TFTPX)
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tftpx serve")
}

fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
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

/// A client socket on `ip` (any 127.0.0.0/8 address is loopback on Linux).
fn client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 66000];
    // A receive with a timeout is never restarted after a signal (EINTR, seen once in CI):
    // that is no answer yet, so wait again (a few times at most).
    let mut tries = 0;
    let (n, from) = loop {
        match s.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && tries < 5 => tries += 1,
            r => break r.expect("an answer"),
        }
    };
    buf.truncate(n);
    (buf, from)
}

/// True when nothing arrives on `s` for [`SILENCE`].
fn silent(s: &UdpSocket) -> bool {
    s.set_read_timeout(Some(SILENCE)).unwrap();
    let mut buf = [0u8; 1024];
    let r = s.recv_from(&mut buf);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match r {
        Ok((n, _)) => {
            eprintln!("unexpected answer: {:?}", &buf[..n]);
            false
        }
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The options of an OACK, as pairs.
fn oack_options(p: &[u8]) -> Vec<(String, String)> {
    assert_eq!(&p[..2], &[0, 6], "expected an OACK: {p:?}");
    let parts: Vec<String> = p[2..]
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    parts
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect()
}

/// A lock-step download of 512-byte blocks, driven one ACK at a time.
struct Download {
    sock: UdpSocket,
    tid: SocketAddr,
    got: Vec<u8>,
    next: u16,
    done: bool,
}

impl Download {
    /// Sends the RRQ and takes DATA 1.
    fn start(port: u16, name: &str) -> Self {
        let sock = client("127.0.0.1");
        sock.send_to(&rrq(name, &[]), ("127.0.0.1", port)).unwrap();
        let mut d = Self {
            sock,
            tid: "0.0.0.0:0".parse().unwrap(),
            got: Vec::new(),
            next: 1,
            done: false,
        };
        let (p, from) = recv(&d.sock);
        d.tid = from;
        d.take(&p);
        d
    }

    fn take(&mut self, p: &[u8]) {
        assert_eq!(&p[..2], &[0, 3], "expected DATA {}: {p:?}", self.next);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), self.next);
        self.got.extend_from_slice(&p[4..]);
        self.done = p.len() < 516;
    }

    /// ACKs the last block and returns the server's next datagram (skipping repeats of the
    /// block just acknowledged, sent when the machine is slow); `None` after the last ACK.
    fn ack(&mut self) -> Option<Vec<u8>> {
        let b = self.next.to_be_bytes();
        self.sock.send_to(&[0, 4, b[0], b[1]], self.tid).unwrap();
        if self.done {
            return None;
        }
        loop {
            let (p, _) = recv(&self.sock);
            if p[..2] == [0, 3] && u16::from_be_bytes([p[2], p[3]]) == self.next {
                continue;
            }
            if p[..2] == [0, 3] {
                self.next += 1;
                self.take(&p);
            }
            return Some(p);
        }
    }

    /// ACKs to the end, pausing `pace` before each ACK.
    fn finish(&mut self, pace: Duration) {
        while !self.done {
            thread::sleep(pace);
            let p = self.ack().expect("more DATA");
            assert_eq!(&p[..2], &[0, 3], "expected DATA, got {p:?}");
        }
        self.ack();
    }
}

/// A served directory and a config file beside it.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    data: Vec<u8>,
}

impl Setup {
    fn new(blocks: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let data = pseudo_random(512 * blocks + 100);
        std::fs::write(root.join("big.bin"), &data).unwrap();
        let config = tmp.path().join("tftpx.toml");
        Self {
            root,
            config,
            data,
            _tmp: tmp,
        }
    }

    /// The config file's first lines: the root, the loopback listener, root kept (tempdirs
    /// are 0700 root: not a test of privileges).
    fn base(&self) -> String {
        format!(
            "root = {:?}\nlisten = [\"127.0.0.1:0\"]\nuser = \"root\"\n",
            self.root.display().to_string()
        )
    }

    fn config_arg(&self) -> String {
        self.config.display().to_string()
    }
}

#[test]
fn config_values_take_effect_and_flags_win() {
    let s = Setup::new(4);
    write(
        &s.config,
        &format!("{}max-blksize = 1024\nrefuse = [\"tsize\"]\n", s.base()),
    );
    let opts = [("blksize", "1400"), ("tsize", "0")];
    // From the file: the root, the listener, blksize capped at 1024, tsize refused.
    let srv = Serve::start(&["--config", &s.config_arg()], &[]);
    let c = client("127.0.0.1");
    c.send_to(&rrq("big.bin", &opts), ("127.0.0.1", srv.port))
        .unwrap();
    let (p, _) = recv(&c);
    assert_eq!(oack_options(&p), [("blksize".into(), "1024".into())]);
    drop(srv);
    // The command line wins: its blksize cap, and its --refuse list replaces the file's.
    let srv = Serve::start(
        &[
            "--config",
            &s.config_arg(),
            "--max-blksize",
            "600",
            "--refuse",
            "blksize",
        ],
        &[],
    );
    let c = client("127.0.0.1");
    c.send_to(&rrq("big.bin", &opts), ("127.0.0.1", srv.port))
        .unwrap();
    let (p, _) = recv(&c);
    let size = s.data.len().to_string();
    assert_eq!(oack_options(&p), [("tsize".into(), size)]);
    drop(srv);
    let srv = Serve::start(&["--config", &s.config_arg(), "--max-blksize", "600"], &[]);
    let c = client("127.0.0.1");
    c.send_to(&rrq("big.bin", &opts), ("127.0.0.1", srv.port))
        .unwrap();
    let (p, _) = recv(&c);
    assert_eq!(oack_options(&p), [("blksize".into(), "600".into())]);
}

#[test]
fn check_config_accepts_good_files_and_names_the_line_of_bad_ones() {
    let s = Setup::new(1);
    // A listener on a port someone else holds: --check-config must not bind it.
    let held = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let good = format!(
        "root = {:?}\nlisten = [\"127.0.0.1:{port}\"]\nallow = [\"10.0.0.0/8\"]\n\
         deny = [\"0.0.0.0/0\"]\ntimeout = \"2s\"\nrefuse = [\"tsize\"]\n",
        s.root.display().to_string()
    );
    write(&s.config, &good);
    let out = run(&["--config", &s.config_arg(), "--check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("configuration OK"), "{stdout}");

    let path = s.config_arg();
    for (text, want) in [
        (
            "allow-create = \"yes\"\n",
            ":5: allow-create: expected true or false, found a string",
        ),
        ("timeout = \"soon\"\n", ":5: timeout: invalid value 'soon'"),
        ("bogus-key = 1\n", ":5: bogus-key: unknown key"),
        ("listen = [true]\n", ":5: listen: expected ADDR:PORT"),
        (
            "refuse = [\"tsize\", \"nope\"]\n",
            ":5: refuse: invalid value 'nope'",
        ),
        (
            "allow = [\"10.0.0.0/33\"]\n",
            ":5: allow: invalid value '10.0.0.0/33'",
        ),
        ("max-blksize = 4\n", ":5: max-blksize: invalid value '4'"),
        ("timeout = \n", ":5: "),
    ] {
        let bad = format!(
            "# a comment\nroot = {:?}\n\nretries = 3\n{text}",
            s.root.display().to_string()
        );
        write(&s.config, &bad);
        let out = run(&["--config", &path, "--check-config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{path}{want}")),
            "{text:?}: expected {want:?} in: {stderr}"
        );
    }
    // What start-up would refuse: a missing root, an unreadable map file.
    write(&s.config, "root = \"/nonexistent/tftpx-root\"\n");
    let out = run(&["--config", &path, "--check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tftpx-root"));
    let map = s.root.join("bad.map");
    write(&map, "r ok\nx [ bad\n");
    write(
        &s.config,
        &format!("{good}map = {:?}\n", map.display().to_string()),
    );
    let out = run(&["--config", &path, "--check-config"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", map.display())),
        "{stderr}"
    );
    drop(held);
}

#[test]
fn shipped_example_config_checks() {
    let s = Setup::new(1);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/tftpx.toml");
    let root = s.root.display().to_string();
    // As shipped (every line commented out).
    let out = run(&["--config", example, "--check-config", &root]);
    assert!(out.status.success(), "{out:?}");
    // Every key it lists, uncommented with the value shown, is valid too (the root, map
    // and account it names need not exist here: the command line's win).
    let text = std::fs::read_to_string(example).unwrap();
    let all: String = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(all.lines().count() >= 30, "{all}");
    write(&s.config, &all);
    let map = s.root.join("remap");
    write(&map, "r ^/ \n");
    let map = map.display().to_string();
    let out = run(&[
        "--config",
        &s.config_arg(),
        "--check-config",
        &root,
        "--user",
        "nobody",
        "--group",
        "nogroup",
        "--map",
        &map,
    ]);
    assert!(out.status.success(), "{all}\n{out:?}");
}

#[test]
fn sighup_reloads_deny_and_map_for_new_requests_and_keeps_running_transfers() {
    let s = Setup::new(30);
    let map = s.root.join("../remap");
    write(&map, "# nothing yet\n");
    let map_line = format!("map = {:?}\n", map.display().to_string());
    write(&s.config, &format!("{}{map_line}", s.base()));
    let srv = Serve::start(&["--config", &s.config_arg()], &[]);
    let port = srv.port;
    // 127.0.0.2 is served before the reload.
    let other = client("127.0.0.2");
    other
        .send_to(&rrq("big.bin", &[]), ("127.0.0.1", port))
        .unwrap();
    let (p, _) = recv(&other);
    assert_eq!(&p[..4], &[0, 3, 0, 1]);
    // A download is under way when the file changes.
    let mut running = Download::start(port, "big.bin");
    for _ in 0..5 {
        running.ack();
    }
    write(
        &s.config,
        &format!("{}{map_line}deny = [\"127.0.0.2\"]\n", s.base()),
    );
    write(&map, "r ^alias$ big.bin\n");
    srv.signal("HUP");
    srv.wait_log("SIGHUP: reloaded");
    // The running transfer goes on to the last byte.
    running.finish(Duration::ZERO);
    assert!(
        running.got == s.data,
        "{} of {} bytes",
        running.got.len(),
        s.data.len()
    );
    // New requests: 127.0.0.2 gets silence (counted in the log), the new map rule applies.
    let other = client("127.0.0.2");
    other
        .send_to(&rrq("big.bin", &[]), ("127.0.0.1", port))
        .unwrap();
    assert!(silent(&other), "a denied client got an answer");
    srv.wait_log("denied by --allow/--deny");
    let mut alias = Download::start(port, "alias");
    alias.finish(Duration::ZERO);
    assert!(alias.got == s.data);
    assert!(
        srv.log().contains("\"alias\" remapped to \"big.bin\""),
        "{}",
        srv.log()
    );

    // A listen address change is reported, not applied.
    write(
        &s.config,
        &format!(
            "{}{map_line}deny = [\"127.0.0.2\"]\n",
            s.base().replace("127.0.0.1:0", "127.0.0.1:6999")
        ),
    );
    srv.signal("HUP");
    srv.wait_log("listen changed");
    assert!(srv.log().contains("needs a restart"), "{}", srv.log());
    // A broken file keeps the settings in force, and the log says why (file:line).
    write(
        &s.config,
        &format!("{}{map_line}deny = [\"127.0.0.2\"\n", s.base()),
    );
    srv.signal("HUP");
    let broken = format!("SIGHUP: {}:5:", s.config.display());
    srv.wait_log(&broken);
    assert!(srv.log().contains("keeping the settings in force"));
    let other = client("127.0.0.2");
    other
        .send_to(&rrq("big.bin", &[]), ("127.0.0.1", port))
        .unwrap();
    assert!(silent(&other), "still denied after a broken reload");
    // A broken map file too.
    write(&s.config, &format!("{}{map_line}", s.base()));
    write(&map, "x [\n");
    srv.signal("HUP");
    srv.wait_log(&format!("SIGHUP: {}:1:", map.display()));
    let other = client("127.0.0.2");
    other
        .send_to(&rrq("big.bin", &[]), ("127.0.0.1", port))
        .unwrap();
    assert!(silent(&other), "still denied after a broken map");
    let mut alias = Download::start(port, "alias");
    alias.finish(Duration::ZERO);
    assert!(alias.got == s.data);
}

/// Reads NOTIFY_SOCKET messages until one contains `what`.
#[track_caller]
fn wait_notify(sock: &UnixDatagram, what: &str) {
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).expect("a notification");
        if String::from_utf8_lossy(&buf[..n]).contains(what) {
            return;
        }
    }
}

#[test]
fn drain_lets_a_slow_download_finish_and_answers_no_new_request() {
    drain_case(&[]);
}

/// The same with one port for everything: the listen socket carries the running download,
/// so it is read on while draining, and only new requests go unanswered.
#[test]
fn drain_in_single_port_mode() {
    drain_case(&["--single-port"]);
}

fn drain_case(extra: &[&str]) {
    let s = Setup::new(12);
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let notify_env = notify_path.display().to_string();
    write(&s.config, &format!("{}drain = \"120s\"\n", s.base()));
    let config = s.config_arg();
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    let mut srv = Serve::start(&args, &[("NOTIFY_SOCKET", &notify_env)]);
    wait_notify(&notify, "READY=1");
    let mut slow = Download::start(srv.port, "big.bin");
    slow.ack();
    srv.signal("TERM");
    wait_notify(&notify, "STOPPING=1");
    srv.wait_log("draining");
    // A new request is not answered while the download goes on.
    let late = client("127.0.0.1");
    late.send_to(&rrq("big.bin", &[]), ("127.0.0.1", srv.port))
        .unwrap();
    assert!(silent(&late), "a request was answered while draining");
    slow.finish(Duration::from_millis(100));
    assert!(
        slow.got == s.data,
        "{} of {} bytes",
        slow.got.len(),
        s.data.len()
    );
    // The server ends by itself once the transfer is over, well before the drain time.
    let status = srv.wait_exit();
    assert!(status.success(), "{status:?}");
    let log = srv.log();
    assert!(!log.contains("drain time"), "{log}");
    assert!(log.contains(": ok, "), "{log}");
}

#[test]
fn no_drain_ends_a_running_download_with_error_0() {
    let s = Setup::new(12);
    write(&s.config, &s.base());
    let mut srv = Serve::start(&["--config", &s.config_arg(), "--drain", "0"], &[]);
    let mut d = Download::start(srv.port, "big.bin");
    d.ack();
    srv.signal("TERM");
    srv.wait_log("shutting down");
    // The next ACK (or the one already sent) draws ERROR 0, not DATA.
    let end = Instant::now() + WAIT;
    let error = loop {
        assert!(Instant::now() < end, "no ERROR after SIGTERM");
        match d.ack() {
            Some(p) if p[..2] == [0, 5] => break p,
            Some(_) => continue,
            None => panic!("the download ended instead of being cancelled"),
        }
    };
    assert_eq!(&error[2..4], &[0, 0], "ERROR 0: {error:?}");
    let status = srv.wait_exit();
    assert!(status.success(), "{status:?}");
}
