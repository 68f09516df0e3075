//! `tftpx serve` started as root gives root up: it binds, switches to `--user` (default
//! `tftp`, else `nobody`) with no capability, no supplementary group and no_new_privs on
//! every thread, serves files with that account's rights only, and refuses to start on a
//! directory the account cannot use. `--user root` stays root with a warning; an ordinary
//! user cannot ask for another account.
//!
//! These tests need root (CI runs as root): they check what a root-started server gives up.
//! Every server runs on 127.0.0.1 with an OS-picked port and is killed by PID on drop.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::unistd::{Uid, User};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");
/// The longest a command may take before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

fn require_root() {
    assert!(
        Uid::effective().is_root(),
        "these tests check what tftpx serve gives up when started as root: run them as root"
    );
}

/// The account `tftpx serve` switches to by default.
fn default_account() -> User {
    User::from_name("tftp")
        .unwrap()
        .or_else(|| User::from_name("nobody").unwrap())
        .expect("a tftp or nobody account")
}

/// A temporary directory with mode `mode` (root-owned: the tests run as root).
fn dir_with_mode(mode: u32) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// A directory the default account can enter and list, not write in.
fn open_dir() -> tempfile::TempDir {
    dir_with_mode(0o755)
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A running `tftpx serve`, killed by PID on drop.
struct Running {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `bin serve DIR --listen 127.0.0.1:0 ARGS` (as `as_user` when given) and waits,
/// at most 10 s, for its `serving ... on ADDR` line.
fn serve(bin: &Path, dir: &Path, args: &[&str], as_user: Option<&User>) -> Running {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    if let Some(u) = as_user {
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    serve_cmd(&mut cmd)
}

/// Starts `cmd` (a `tftpx serve`) and waits, at most 10 s, for its `serving ... on ADDR`
/// line.
fn serve_cmd(cmd: &mut Command) -> Running {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tftpx serve");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
            if line.contains("serving ") {
                if let Some(addr) = line.split(" on ").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tftpx serve did not start: {}", log.lock().unwrap());
        }
    };
    // The privilege lines follow the serving lines: wait for the log to settle.
    std::thread::sleep(Duration::from_millis(100));
    Running { child, addr, log }
}

/// Runs `bin ARGS` to the end (at most [`LIMIT`]).
fn run(bin: &Path, args: &[&str], as_user: Option<&User>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if let Some(u) = as_user {
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    common::run_bounded(cmd, LIMIT)
}

/// `tftpx get ADDR NAME -o -`: its exit code, stdout and stderr.
fn get(addr: &str, name: &str) -> (Option<i32>, Vec<u8>, String) {
    let o = run(
        Path::new(BIN),
        &["get", addr, name, "-o", "-", "-q", "--dally", "0"],
        None,
    );
    (
        o.status.code(),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// One thread's identity from `/proc/PID/task/TID/status`.
#[derive(Debug)]
struct ThreadIds {
    tid: String,
    uid: Vec<u32>,
    gid: Vec<u32>,
    groups: Vec<u32>,
    cap_eff: String,
    cap_prm: String,
    no_new_privs: String,
}

fn threads_of(pid: u32) -> Vec<ThreadIds> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let e = e.unwrap();
        let Ok(text) = std::fs::read_to_string(e.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
                .trim()
                .to_owned()
        };
        let nums = |k: &str| {
            field(k)
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect::<Vec<u32>>()
        };
        out.push(ThreadIds {
            tid: e.file_name().to_string_lossy().into_owned(),
            uid: nums("Uid"),
            gid: nums("Gid"),
            groups: nums("Groups"),
            cap_eff: field("CapEff"),
            cap_prm: field("CapPrm"),
            no_new_privs: field("NoNewPrivs"),
        });
    }
    out
}

/// Started as root with no `--user`: the server runs as `tftp`/`nobody` on every thread
/// (the runtime's workers and the blocking threads that opened files), with no capability,
/// no supplementary group and no_new_privs; a 0600 root file is refused, a 0644 one served.
#[test]
fn root_start_switches_every_thread_to_the_default_account() {
    require_root();
    let acct = default_account();
    let dir = open_dir();
    write(&dir.path().join("public.txt"), b"for everyone\n", 0o644);
    write(&dir.path().join("secret.txt"), b"root only\n", 0o600);
    let srv = serve(Path::new(BIN), dir.path(), &[], None);

    let (code, out, err) = get(&srv.addr, "public.txt");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, b"for everyone\n");
    let (code, out, err) = get(&srv.addr, "secret.txt");
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("ERROR 2") && err.contains("Permission denied"),
        "{err}"
    );

    let log = srv.log();
    assert!(
        log.contains(&format!("running as user {} (uid {}", acct.name, acct.uid)),
        "{log}"
    );
    let threads = threads_of(srv.pid());
    eprintln!("{} threads of tftpx serve:", threads.len());
    // main, the runtime's workers (one per core) and at least one blocking thread that
    // opened a file.
    assert!(threads.len() >= 3, "{threads:#?}");
    for t in &threads {
        eprintln!("  {t:?}");
        assert_eq!(t.uid, vec![acct.uid.as_raw(); 4], "thread {}", t.tid);
        assert_eq!(t.gid, vec![acct.gid.as_raw(); 4], "thread {}", t.tid);
        assert!(
            t.groups.is_empty() || t.groups == [acct.gid.as_raw()],
            "thread {}: groups {:?}",
            t.tid,
            t.groups
        );
        assert_eq!(t.cap_eff, "0000000000000000", "thread {}", t.tid);
        assert_eq!(t.cap_prm, "0000000000000000", "thread {}", t.tid);
        assert_eq!(t.no_new_privs, "1", "thread {}", t.tid);
    }
    eprintln!("{log}");
}

/// `--user root` keeps uid 0 (and says so with a warning); no_new_privs is still set.
#[test]
fn user_root_keeps_root_and_warns() {
    require_root();
    let dir = dir_with_mode(0o700);
    write(&dir.path().join("secret.txt"), b"root only\n", 0o600);
    let srv = serve(Path::new(BIN), dir.path(), &["--user", "root"], None);
    let (code, out, err) = get(&srv.addr, "secret.txt");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, b"root only\n");
    let log = srv.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("running as root (--user root)")),
        "{log}"
    );
    for t in threads_of(srv.pid()) {
        assert_eq!(t.uid, vec![0; 4], "{t:?}");
        assert_eq!(t.no_new_privs, "1", "{t:?}");
    }
    drop(srv);

    // --no-landlock: said at debug level, and nothing else changes.
    let srv = serve(
        Path::new(BIN),
        dir.path(),
        &["--user", "root", "--no-landlock", "-v"],
        None,
    );
    let (code, out, err) = get(&srv.addr, "secret.txt");
    assert_eq!(
        (code, out.as_slice()),
        (Some(0), &b"root only\n"[..]),
        "{err}"
    );
    let log = srv.log();
    assert!(log.contains("Landlock off (--no-landlock)"), "{log}");
    assert!(!log.contains("confined to"), "{log}");
}

/// A root directory the account cannot read, or (with uploads) cannot write in, fails
/// start-up at once with exit 1 and one line that says how to fix it.
#[test]
fn a_root_the_account_cannot_use_fails_start_up_in_one_line() {
    require_root();
    let acct = default_account();
    let private = dir_with_mode(0o700);
    let d = private.path().display().to_string();
    let o = run(
        Path::new(BIN),
        &["serve", &d, "--listen", "127.0.0.1:0"],
        None,
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert!(
        e.contains(&format!("user {} cannot read it", acct.name)),
        "{e}"
    );
    assert!(
        e.contains("--user NAME") && e.contains(&format!("chmod o+rx {d}")),
        "{e}"
    );

    let readable = open_dir(); // 0755 root: readable, not writable by the account
    let d = readable.path().display().to_string();
    for flag in ["--allow-create", "--allow-write"] {
        let o = run(
            Path::new(BIN),
            &["serve", &d, "--listen", "127.0.0.1:0", flag],
            None,
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flag}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{flag}: one line: {e}");
        assert!(
            e.contains(&format!("user {} cannot write in it", acct.name))
                && e.contains("--user NAME")
                && e.contains(&format!("chown {} {d}", acct.name)),
            "{flag}: {e}"
        );
    }
}

/// The served directory is opened before the switch: a root below a 0700 parent the
/// account cannot search is still served (README's first command in a clone under /root).
/// Uploads into a directory the account owns work under Landlock's write rules, and the
/// new file belongs to the account.
#[test]
fn served_through_the_descriptor_opened_before_the_switch() {
    require_root();
    let acct = default_account();
    let parent = dir_with_mode(0o700);
    let root = parent.path().join("tftproot");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&root.join("boot.img"), b"kernel\n", 0o644);
    chown(&root, Some(acct.uid.as_raw()), Some(acct.gid.as_raw())).unwrap();
    let srv = serve(Path::new(BIN), &root, &["--allow-create"], None);
    let (code, out, err) = get(&srv.addr, "boot.img");
    assert_eq!(code, Some(0), "{err}\n{}", srv.log());
    assert_eq!(out, b"kernel\n");

    let local = tempfile::tempdir().unwrap();
    let up = local.path().join("up.txt");
    std::fs::write(&up, b"uploaded\n").unwrap();
    let o = run(
        Path::new(BIN),
        &["put", &srv.addr, &up.display().to_string(), "new.txt", "-q"],
        None,
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        srv.log()
    );
    let meta = std::fs::metadata(root.join("new.txt")).unwrap();
    assert_eq!(std::fs::read(root.join("new.txt")).unwrap(), b"uploaded\n");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid()),
        (acct.uid.as_raw(), acct.gid.as_raw())
    );
}

/// Started as an ordinary user: `--user` naming anyone else is a usage error ("--user
/// needs root"), and without it the server runs as that user (README's first command as a
/// normal user).
#[test]
fn an_ordinary_user_cannot_ask_for_another_account() {
    require_root();
    let acct = default_account();
    // The test binary's directory may be closed to the account: run a copy from a 0755
    // directory.
    let bin_dir = open_dir();
    let bin: PathBuf = bin_dir.path().join("tftpx");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = open_dir();
    write(&dir.path().join("f.txt"), b"served\n", 0o644);
    let d = dir.path().display().to_string();

    for user in ["root", "0"] {
        let o = run(
            &bin,
            &["serve", &d, "--listen", "127.0.0.1:0", "--user", user],
            Some(&acct),
        );
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains("--user needs root"), "{e}");
    }
    let o = run(
        &bin,
        &["serve", &d, "--listen", "127.0.0.1:0", "--group", "root"],
        Some(&acct),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--group needs root"));

    let own = acct.name.clone();
    let srv = serve(&bin, dir.path(), &["--user", &own], Some(&acct));
    let (code, out, err) = get(&srv.addr, "f.txt");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, b"served\n");
    for t in threads_of(srv.pid()) {
        assert_eq!(t.uid, vec![acct.uid.as_raw(); 4], "{t:?}");
        assert_eq!(t.no_new_privs, "1", "{t:?}");
    }
}

/// The soft descriptor limit is raised to the hard one at start; a hard limit below 4096
/// is logged at info level (it caps concurrent transfers).
#[test]
fn the_descriptor_limit_is_raised_and_a_low_one_is_logged() {
    require_root();
    let dir = open_dir();
    // A shell sets the limits (soft 512, hard 2000) and then becomes the server.
    let script = format!(
        "ulimit -Sn 512 && ulimit -Hn 2000 && exec '{BIN}' serve '{}' --listen 127.0.0.1:0 --user root",
        dir.path().display()
    );
    let srv = serve_cmd(Command::new("sh").args(["-c", &script]));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    eprintln!("{line}");
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["2000", "2000"], "{line}");
    let log = srv.log();
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("descriptor limit 2000")),
        "{log}"
    );
}
