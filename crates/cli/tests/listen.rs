//! `tftpx serve --listen` forms: `:PORT` and `PORT` (both families), `[::]:PORT` alone
//! (IPv4 too), `HOST:PORT` (resolved), an address alone (port 69), and clear errors for
//! nonsense. Wildcard addresses are bound only inside a private network namespace: the
//! test re-executes itself under `unshare -n` (root), where fixed ports are free.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");
/// Set in the child that runs inside the private network namespace.
const IN_NETNS: &str = "TFTPX_LISTEN_TEST_NETNS";

/// Re-runs test `name` of this binary in a new network namespace; true in that child (which
/// then does the work), false in the parent once the child passed.
fn in_private_netns(name: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip (iproute2) is installed");
        assert!(up.success(), "ip link set lo up");
        return true;
    }
    let out = Command::new("unshare")
        .arg("-n")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .output()
        .expect("unshare (util-linux) is installed");
    assert!(
        out.status.success(),
        "in the namespace: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// `tftpx serve` with its stderr collected; killed by PID when dropped.
struct Serve {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `tftpx serve DIR --user root ARGS` and waits (at most 10 s) for `lines`
    /// `serving ... on ADDR` lines; returns the addresses they name.
    fn start(dir: &Path, args: &[&str], lines: usize) -> (Self, Vec<String>) {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg(dir)
            .args(["--user", "root"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tftpx serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let s = Self { child, log };
        let start = Instant::now();
        loop {
            let addrs = s.serving();
            if addrs.len() >= lines {
                return (s, addrs);
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{args:?}: {} of {lines} serving lines in 10 s:\n{}",
                addrs.len(),
                s.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The addresses of the `serving DIR on ADDR (...)` lines.
    fn serving(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" serving "))
            .filter_map(|l| l.rsplit(" on ").next()?.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Downloads `f` from `server` with `tftpx get` and asserts the bytes.
#[track_caller]
fn fetch(server: &str, want: &[u8], log: &dyn Fn() -> String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    let o = Command::new(BIN)
        .args(["get", server, "f", "-o"])
        .arg(&out)
        .args(["-q", "--timeout", "1s", "--retries", "3", "--dally", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("run tftpx get");
    assert!(
        o.status.success(),
        "get from {server}: {}\nserver log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        log()
    );
    assert_eq!(std::fs::read(&out).unwrap(), want, "from {server}");
}

fn root_with_file() -> (tempfile::TempDir, Vec<u8>) {
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(root.path().join("f"), &data).unwrap();
    (root, data)
}

#[test]
fn port_alone_listens_on_every_address_of_both_families() {
    if !in_private_netns("port_alone_listens_on_every_address_of_both_families") {
        return;
    }
    let (root, data) = root_with_file();
    for (arg, port) in [(":6969", 6969), ("6970", 6970)] {
        let (s, addrs) = Serve::start(root.path(), &["--listen", arg], 2);
        assert_eq!(
            addrs,
            [format!("0.0.0.0:{port}"), format!("[::]:{port}")],
            "--listen {arg}"
        );
        let log = || s.log();
        fetch(&format!("127.0.0.1:{port}"), &data, &log);
        fetch(&format!("[::1]:{port}"), &data, &log);
    }
}

/// `[::]:PORT` as the only listen address serves IPv4 clients too (dual-stack).
#[test]
fn ipv6_wildcard_alone_serves_ipv4_too() {
    if !in_private_netns("ipv6_wildcard_alone_serves_ipv4_too") {
        return;
    }
    let (root, data) = root_with_file();
    let (s, addrs) = Serve::start(root.path(), &["--listen", "[::]:6971"], 1);
    assert_eq!(addrs, ["[::]:6971"]);
    let log = || s.log();
    fetch("127.0.0.1:6971", &data, &log);
    fetch("[::1]:6971", &data, &log);
    // The IPv4 client is logged as IPv4, not ::ffff:127.0.0.1.
    assert!(s.log().contains("RRQ from 127.0.0.1:"), "{}", s.log());
    assert!(!s.log().contains("::ffff:"), "{}", s.log());
}

/// `HOST:PORT` binds what the name resolves to (localhost: 127.0.0.1, and ::1 where
/// /etc/hosts says so); an address alone gets port 69.
#[test]
fn host_names_resolve_and_a_bare_address_gets_port_69() {
    if !in_private_netns("host_names_resolve_and_a_bare_address_gets_port_69") {
        return;
    }
    let (root, data) = root_with_file();
    {
        let (s, addrs) = Serve::start(root.path(), &["--listen", "localhost:6972"], 1);
        assert!(addrs.contains(&"127.0.0.1:6972".to_owned()), "{addrs:?}");
        assert!(
            addrs
                .iter()
                .all(|a| a == "127.0.0.1:6972" || a == "[::1]:6972"),
            "{addrs:?}"
        );
        fetch("127.0.0.1:6972", &data, &|| s.log());
    }
    let (s, addrs) = Serve::start(root.path(), &["--listen", "127.0.0.1"], 1);
    assert_eq!(addrs, ["127.0.0.1:69"]);
    fetch("127.0.0.1", &data, &|| s.log());

    // A name that does not resolve: exit 1, one line naming it.
    let o = run_serve(root.path(), &["--listen", "no-such-host.invalid:69"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("error: cannot resolve --listen no-such-host.invalid"),
        "{err}"
    );
}

/// Runs `tftpx serve` to its (quick) failure; bounded at 30 s.
fn run_serve(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg(dir)
        .args(["--user", "root"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tftpx serve");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("tftpx serve {args:?} still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn nonsense_listen_values_are_usage_errors_that_say_what_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    for (arg, says) in [
        ("foo:bar", r#""bar" is not a port number (0-65535)"#),
        ("70000", r#""70000" is not a port number (0-65535)"#),
        (":", r#""" is not a port number"#),
        ("[::1", "missing ']'"),
        ("[nope]:69", r#""nope" is not an IPv6 address"#),
        ("[::1]69", "expected [IPV6]:PORT"),
        ("a b:69", r#""a b" is neither an address nor a host name"#),
        ("1.2.3.4.5:69x", r#""69x" is not a port number"#),
        ("", "empty"),
        (
            "nonsense",
            r#""nonsense" is not an address; a host name needs its port"#,
        ),
    ] {
        let o = run_serve(root.path(), &["--listen", arg]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--listen {arg:?}: {err}");
        assert!(err.contains(says), "--listen {arg:?}: {err}");
        assert!(
            err.contains("--listen <ADDR:PORT>"),
            "--listen {arg:?}: {err}"
        );
    }
}
