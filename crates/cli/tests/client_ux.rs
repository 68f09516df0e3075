//! `tftpx get` / `tftpx put` as curl and tftp-hpa users expect (issue 11): no extra second
//! after the file is complete, `-o` onto devices, FIFOs, symlinks, directories and existing
//! files, Ctrl-C, several files per command, `http://` and whole server ERROR messages.
//!
//! Fake servers here are plain UDP sockets on 127.0.0.1 with OS-picked ports; every wait is
//! bounded; processes are stopped by their PID.

mod common;

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{list_dir, pseudo_random, read_file, write_file, Layout, Server};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");
/// The longest a command may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `tftpx ARGS` in `cwd` with a time limit (killed by PID past it).
fn tftpx(args: &[&str], cwd: &Path) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tftpx");
    wait_output(child)
}

fn wait_output(mut child: Child) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "tftpx ran past {LIMIT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_status(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tftpx ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(o));
}

/// Our own temporary files (`.tftpx-XXXXXXXX.part`) left in `dir`.
fn our_parts(dir: &Path) -> Vec<String> {
    list_dir(dir)
        .into_iter()
        .filter(|n| n.starts_with(".tftpx-") && n.ends_with(".part"))
        .collect()
}

/// A served layout with `files` in its root.
fn served(files: &[(&str, &[u8])], extra: &[&str]) -> (Layout, Server) {
    let l = Layout::new();
    for (name, bytes) in files {
        let path = l.root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_file(&path, bytes);
    }
    let s = Server::start(&l.root, extra);
    (l, s)
}

fn addr(s: &Server) -> String {
    format!("127.0.0.1:{}", s.port)
}

/// A UDP socket on loopback with a receive time-out, for fake servers.
fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70000];
    let (n, from) = s.recv_from(&mut buf).expect("a datagram within 30 s");
    buf.truncate(n);
    (buf, from)
}

// ---------------------------------------------------------------------------------------
// 1. No extra second
// ---------------------------------------------------------------------------------------

/// Times `runs` runs of a command (whole process), in seconds: (mean, min, max).
fn time_runs(runs: usize, mut cmd: impl FnMut() -> Output) -> (f64, f64, f64) {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let o = cmd();
        t.push(start.elapsed().as_secs_f64());
        assert_ok(&o);
    }
    let mean = t.iter().sum::<f64>() / t.len() as f64;
    let min = t.iter().cloned().fold(f64::MAX, f64::min);
    let max = t.iter().cloned().fold(0.0, f64::max);
    (mean, min, max)
}

/// A 3 KB download, whole command, 20 runs each: tftpx at its default (no dally), with the
/// old default linger (`--dally 1s`), and curl. Figures are printed, not asserted (the
/// machine may be busy); the bytes are checked every time.
#[test]
fn small_download_ends_when_the_file_is_in_place() {
    let data = pseudo_random(3 * 1024);
    let (l, s) = served(&[("f", &data)], &[]);
    let a = addr(&s);
    let runs = 20;
    let now = time_runs(runs, || {
        let o = tftpx(&["get", "-q", &a, "f", "-o", "now"], &l.local);
        assert_eq!(read_file(&l.local.join("now")), data);
        o
    });
    let old = time_runs(5, || {
        let o = tftpx(
            &["get", "-q", &a, "f", "-o", "old", "--dally", "1s"],
            &l.local,
        );
        assert_eq!(read_file(&l.local.join("old")), data);
        o
    });
    eprintln!(
        "3 KB download, whole command: tftpx default {:.1} ms mean ({:.1}..{:.1}, {runs} runs); \
         --dally 1s (the old default) {:.1} ms mean (5 runs)",
        now.0 * 1e3,
        now.1 * 1e3,
        now.2 * 1e3,
        old.0 * 1e3
    );
    let curl = Command::new("curl").arg("--version").output();
    if curl.map(|o| o.status.success()).unwrap_or(false) {
        let url = format!("tftp://{a}/f");
        let c = time_runs(runs, || {
            let o = Command::new("curl")
                .args(["-s", "-o", "c", &url])
                .current_dir(&l.local)
                .output()
                .expect("curl");
            assert_eq!(read_file(&l.local.join("c")), data);
            o
        });
        eprintln!(
            "3 KB download, whole command: curl {:.1} ms mean ({:.1}..{:.1}, {runs} runs)",
            c.0 * 1e3,
            c.1 * 1e3,
            c.2 * 1e3
        );
    } else {
        eprintln!("curl is not installed: no comparison");
    }
}

/// A fake server for one tiny download: answers the RRQ with DATA 1 (3 bytes, the last
/// block), takes the ACK, then repeats DATA 1 at once (as a server that missed the ACK
/// does). Returns the ACKs it got, all read after the client `child` has exited.
fn repeat_last_data(args: &[&str], cwd: &Path) -> (ExitStatus, Vec<Vec<u8>>) {
    let listen = udp();
    let port = listen.local_addr().unwrap().port();
    let mut full = vec!["get".to_owned(), format!("127.0.0.1:{port}"), "f".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    let mut child = Command::new(BIN)
        .args(&full)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (rrq, client) = recv(&listen);
    assert_eq!(&rrq[..2], b"\x00\x01");
    let tid = udp();
    tid.send_to(b"\x00\x03\x00\x01end", client).unwrap();
    let (ack, _) = recv(&tid);
    assert_eq!(ack, b"\x00\x04\x00\x01");
    tid.send_to(b"\x00\x03\x00\x01end", client).unwrap();
    let status = wait_status(&mut child);
    // The client has exited: whatever it sent is queued here now.
    tid.set_nonblocking(true).unwrap();
    let mut acks = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok((n, _)) = tid.recv_from(&mut buf) {
        acks.push(buf[..n].to_vec());
    }
    (status, acks)
}

#[test]
fn no_dally_by_default_and_dally_on_request() {
    let l = Layout::new();
    // Default: the command ends with the final ACK; a repeated last DATA is not answered.
    let (st, acks) = repeat_last_data(&["-o", "a"], &l.local);
    assert!(st.success());
    assert!(acks.is_empty(), "no dally by default, got {acks:?}");
    assert_eq!(read_file(&l.local.join("a")), b"end");
    for zero in ["0", "0s", "0ms"] {
        let (st, acks) = repeat_last_data(&["-o", "z", "--dally", zero], &l.local);
        assert!(st.success(), "--dally {zero}");
        assert!(acks.is_empty(), "--dally {zero}: {acks:?}");
    }
    // --dally 2s: the repeat is acknowledged again (RFC 1350 section 6).
    let (st, acks) = repeat_last_data(&["-o", "d", "--dally", "2s"], &l.local);
    assert!(st.success());
    assert_eq!(
        acks,
        vec![b"\x00\x04\x00\x01".to_vec()],
        "re-ACK in the dally"
    );
    assert_eq!(read_file(&l.local.join("d")), b"end");
    let o = tftpx(&["get", "127.0.0.1:9", "f", "--dally", "-1"], &l.local);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------
// 2. -o
// ---------------------------------------------------------------------------------------

#[test]
fn output_to_a_device_node_writes_it_and_keeps_the_node() {
    let data = pseudo_random(5000);
    let (l, s) = served(&[("f", &data)], &[]);
    // Our own null device (1,3) in the test's directory, never the machine's /dev/null.
    let node = l.local.join("null");
    let st = Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod (the tests run as root)");
    let o = tftpx(&["get", &addr(&s), "f", "-o", "null"], &l.local);
    assert_ok(&o);
    let m = fs::symlink_metadata(&node).unwrap();
    assert!(m.file_type().is_char_device(), "still a device node");
    assert_eq!(m.rdev(), fs::metadata("/dev/null").unwrap().rdev());
    assert!(our_parts(&l.local).is_empty());
    assert!(stderr(&o).contains("received 5000 bytes"), "{}", stderr(&o));
}

#[test]
fn output_to_a_fifo_streams_into_it() {
    let data = pseudo_random(200_000);
    let (l, s) = served(&[("f", &data)], &[]);
    let fifo = l.local.join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            fs::File::open(&fifo)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            got
        })
    };
    let o = tftpx(&["get", &addr(&s), "f", "-o", "pipe"], &l.local);
    assert_ok(&o);
    assert_eq!(reader.join().unwrap(), data);
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(our_parts(&l.local).is_empty());
}

#[test]
fn output_to_dev_stdout_and_stderr_writes_the_open_descriptors() {
    let data = pseudo_random(3000);
    let (l, s) = served(&[("f", &data)], &[]);
    let o = tftpx(&["get", &addr(&s), "f", "-o", "/dev/stdout"], &l.local);
    assert_ok(&o);
    assert_eq!(o.stdout, data);
    // The process's other descriptors are written as they are, here a pipe.
    let o = tftpx(
        &["get", "-q", &addr(&s), "f", "-o", "/dev/stderr"],
        &l.local,
    );
    assert_ok(&o);
    assert_eq!(o.stderr, data);
    let o = tftpx(
        &["get", "-q", &addr(&s), "f", "-o", "/proc/self/fd/2"],
        &l.local,
    );
    assert_ok(&o);
    assert_eq!(o.stderr, data);
    assert!(our_parts(&l.local).is_empty());
}

#[test]
fn output_through_a_symlink_writes_its_target_and_keeps_the_link() {
    let data = pseudo_random(4000);
    let (l, s) = served(&[("f", &data)], &[]);
    let real = l.local.join("real");
    fs::create_dir(&real).unwrap();
    write_file(&real.join("target.bin"), b"old");
    std::os::unix::fs::symlink("real/target.bin", l.local.join("link")).unwrap();
    // A dangling link: its target is created.
    std::os::unix::fs::symlink("real/new.bin", l.local.join("dangling")).unwrap();
    assert_ok(&tftpx(&["get", &addr(&s), "f", "-o", "link"], &l.local));
    assert_ok(&tftpx(&["get", &addr(&s), "f", "-o", "dangling"], &l.local));
    for (link, target) in [("link", "real/target.bin"), ("dangling", "real/new.bin")] {
        let p = l.local.join(link);
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_link(&p).unwrap(), Path::new(target));
        assert_eq!(read_file(&l.local.join(target)), data);
    }
    assert!(our_parts(&l.local).is_empty() && our_parts(&real).is_empty());
}

#[test]
fn an_existing_file_keeps_its_mode_and_owner_a_new_one_gets_the_umask() {
    let data = pseudo_random(2000);
    let (l, s) = served(&[("f", &data)], &[]);
    let old = l.local.join("old.bin");
    write_file(&old, b"previous contents");
    std::os::unix::fs::chown(&old, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o640)).unwrap();
    assert_ok(&tftpx(&["get", &addr(&s), "f", "-o", "old.bin"], &l.local));
    let m = fs::metadata(&old).unwrap();
    assert_eq!(read_file(&old), data);
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o640, 1234, 5678),
        "mode and owner kept"
    );
    // New files: 0666 less the umask, as any program's new file.
    for (umask, want) in [("027", 0o640), ("022", 0o644), ("0", 0o666)] {
        let name = format!("new-{umask}.bin");
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(["get", &addr(&s), "f", "-o", &name])
            .current_dir(&l.local)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert_ok(&wait_output(o));
        let m = fs::metadata(l.local.join(&name)).unwrap();
        assert_eq!(m.mode() & 0o7777, want, "umask {umask}");
        assert_eq!(read_file(&l.local.join(&name)), data);
    }
}

#[test]
fn output_to_a_directory_puts_the_file_inside() {
    let data = pseudo_random(1000);
    let (l, s) = served(&[("sub/boot.img", &data)], &[]);
    fs::create_dir(l.local.join("dl")).unwrap();
    assert_ok(&tftpx(
        &["get", &addr(&s), "sub/boot.img", "-o", "dl"],
        &l.local,
    ));
    assert_eq!(read_file(&l.local.join("dl/boot.img")), data);
    // The directory itself was not replaced.
    assert!(l.local.join("dl").is_dir());
}

/// An unwritable destination is refused before anything is sent, with the user's name for
/// it and no temporary file's name.
#[test]
fn an_unwritable_destination_fails_before_the_transfer() {
    let l = Layout::new();
    write_file(&l.local.join("plain"), b"x");
    let fake = udp();
    let a = format!("127.0.0.1:{}", fake.local_addr().unwrap().port());
    for dest in ["missing/dir/f", "plain/f"] {
        let o = tftpx(&["get", &a, "f", "-o", dest], &l.local);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{dest}: {err}");
        assert!(err.contains(&format!("cannot write {dest}")), "{err}");
        assert!(!err.contains(".tftpx-") && !err.contains(".part"), "{err}");
    }
    // The commands have exited: a request would be queued by now.
    fake.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 600];
    assert!(
        fake.recv_from(&mut buf).is_err(),
        "no request was sent for an unwritable destination"
    );
}

/// `put` reads regular files only: a FIFO without a writer (which a blocking open would
/// wait on forever) and a directory are refused at once, before any request is sent.
#[test]
fn put_refuses_a_fifo_and_a_directory_before_the_transfer() {
    let l = Layout::new();
    nix::unistd::mkfifo(
        &l.local.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::create_dir(l.local.join("dir")).unwrap();
    let fake = udp();
    let a = format!("127.0.0.1:{}", fake.local_addr().unwrap().port());
    for local in ["pipe", "dir"] {
        let o = tftpx(&["put", &a, local, "remote"], &l.local);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{local}: {err}");
        assert!(
            err.contains(&format!("{local} is not a regular file")),
            "{err}"
        );
    }
    fake.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 600];
    assert!(fake.recv_from(&mut buf).is_err(), "no request was sent");
}

// ---------------------------------------------------------------------------------------
// 3. Ctrl-C
// ---------------------------------------------------------------------------------------

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// A download from a fake server that sends a 512-byte DATA every 200 ms: once two blocks
/// are in (the temporary file exists), `sig` is sent to the client by PID. The server must
/// get ERROR 0 at once, the temporary file must be gone, the exit code 128 + the signal.
fn interrupted_download(sig: &str, code: i32) {
    let l = Layout::new();
    let listen = udp();
    let port = listen.local_addr().unwrap().port();
    let mut child = Command::new(BIN)
        .args(["get", &format!("127.0.0.1:{port}"), "big.bin", "--no-tsize"])
        .current_dir(&l.local)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (rrq, client) = recv(&listen);
    assert_eq!(&rrq[..2], b"\x00\x01");
    let tid = udp();
    let block = [b'x'; 512];
    let mut error = None;
    for n in 1u16..=100 {
        let mut d = vec![0, 3];
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&block);
        tid.send_to(&d, client).unwrap();
        let (p, _) = recv(&tid);
        if p[..2] == [0, 5] {
            error = Some(p);
            break;
        }
        assert_eq!(p, [&[0u8, 4][..], &n.to_be_bytes()].concat(), "ACK {n}");
        if n == 2 {
            assert_eq!(our_parts(&l.local).len(), 1, "the download is under way");
            signal(child.id(), sig);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let error = error.expect("an ERROR after the signal");
    assert_eq!(&error[..4], b"\x00\x05\x00\x00", "ERROR 0: {error:?}");
    let status = wait_status(&mut child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(code), "{err}");
    assert!(our_parts(&l.local).is_empty(), "temporary file removed");
    assert!(!l.local.join("big.bin").exists());
}

#[test]
fn sigint_during_a_download_tells_the_server_and_exits_130() {
    interrupted_download("INT", 130);
}

#[test]
fn sigterm_during_a_download_tells_the_server_and_exits_143() {
    interrupted_download("TERM", 143);
}

/// An upload to a fake server that ACKs every 200 ms, interrupted after two blocks.
#[test]
fn sigint_during_an_upload_tells_the_server_and_exits_130() {
    let l = Layout::new();
    write_file(&l.local.join("up.bin"), &pseudo_random(100 * 512));
    let listen = udp();
    let port = listen.local_addr().unwrap().port();
    let mut child = Command::new(BIN)
        .args(["put", &format!("127.0.0.1:{port}"), "up.bin", "--no-tsize"])
        .current_dir(&l.local)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (wrq, client) = recv(&listen);
    assert_eq!(&wrq[..2], b"\x00\x02");
    let tid = udp();
    tid.send_to(b"\x00\x04\x00\x00", client).unwrap();
    let mut error = None;
    for n in 1u16..=100 {
        let (p, _) = recv(&tid);
        if p[..2] == [0, 5] {
            error = Some(p);
            break;
        }
        assert_eq!(
            &p[..4],
            [&[0u8, 3][..], &n.to_be_bytes()].concat(),
            "DATA {n}"
        );
        if n == 2 {
            signal(child.id(), "INT");
        }
        std::thread::sleep(Duration::from_millis(200));
        tid.send_to(&[&[0u8, 4][..], &n.to_be_bytes()].concat(), client)
            .unwrap();
    }
    let error = error.expect("an ERROR after the signal");
    assert_eq!(&error[..4], b"\x00\x05\x00\x00", "ERROR 0: {error:?}");
    assert_eq!(wait_status(&mut child).code(), Some(130));
}

// ---------------------------------------------------------------------------------------
// 4. Several files
// ---------------------------------------------------------------------------------------

#[test]
fn get_several_files_one_failure_does_not_stop_the_others() {
    let a = pseudo_random(700);
    let b = pseudo_random(1300);
    let (l, s) = served(&[("a.bin", &a), ("d/b.bin", &b)], &[]);
    let o = tftpx(
        &["get", &addr(&s), "a.bin", "missing.bin", "d/b.bin"],
        &l.local,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(read_file(&l.local.join("a.bin")), a);
    assert_eq!(read_file(&l.local.join("b.bin")), b);
    assert!(!l.local.join("missing.bin").exists());
    let failures: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(failures.len(), 1, "{err}");
    assert!(
        failures[0].starts_with("error: missing.bin: ") && failures[0].contains("ERROR 1"),
        "{err}"
    );
    // Into a directory with -o; -o naming anything else is a usage error.
    fs::create_dir(l.local.join("into")).unwrap();
    assert_ok(&tftpx(
        &["get", &addr(&s), "a.bin", "d/b.bin", "-o", "into"],
        &l.local,
    ));
    assert_eq!(read_file(&l.local.join("into/a.bin")), a);
    assert_eq!(read_file(&l.local.join("into/b.bin")), b);
    let o = tftpx(
        &["get", &addr(&s), "a.bin", "d/b.bin", "-o", "x.bin"],
        &l.local,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("directory"));
    // All good: exit 0.
    assert_ok(&tftpx(&["get", &addr(&s), "a.bin", "d/b.bin"], &l.local));
}

#[test]
fn put_several_files_each_under_its_own_name() {
    let (l, s) = served(&[], &["--allow-create"]);
    let files: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|i| (format!("f{i}.bin"), pseudo_random(500 * i)))
        .collect();
    for (n, d) in &files {
        write_file(&l.local.join(n), d);
    }
    // Three or more: each LOCAL under its base name; a missing one fails alone.
    let o = tftpx(
        &["put", &addr(&s), "f1.bin", "nope.bin", "f2.bin", "f3.bin"],
        &l.local,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for (n, d) in &files {
        assert_eq!(&read_file(&l.root.join(n)), d, "{n}");
    }
    let failures: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(failures.len(), 1, "{err}");
    assert!(failures[0].starts_with("error: nope.bin: "), "{err}");
    // Exactly two: LOCAL REMOTE, as before.
    assert_ok(&tftpx(
        &["put", &addr(&s), "f1.bin", "renamed.bin"],
        &l.local,
    ));
    assert_eq!(read_file(&l.root.join("renamed.bin")), files[0].1);
    // --each: two LOCALs.
    fs::remove_file(l.root.join("f1.bin")).unwrap();
    fs::remove_file(l.root.join("f2.bin")).unwrap();
    assert_ok(&tftpx(
        &["put", &addr(&s), "--each", "f1.bin", "f2.bin"],
        &l.local,
    ));
    assert_eq!(read_file(&l.root.join("f1.bin")), files[0].1);
    assert_eq!(read_file(&l.root.join("f2.bin")), files[1].1);
}

// ---------------------------------------------------------------------------------------
// 5. Small ones
// ---------------------------------------------------------------------------------------

#[test]
fn an_http_url_is_pointed_to_tftp() {
    let l = Layout::new();
    for url in ["http://127.0.0.1/f", "HTTPS://host/f"] {
        let o = tftpx(&["get", url], &l.local);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("tftpx speaks TFTP: use tftp://HOST/PATH"),
            "{}",
            stderr(&o)
        );
    }
}

/// The receive buffer was sized for DATA: once blksize 8 was negotiated, a server's ERROR
/// was cut to 9 bytes ("Access vi").
#[test]
fn a_server_error_is_printed_whole_at_blksize_8() {
    let l = Layout::new();
    let listen = udp();
    let port = listen.local_addr().unwrap().port();
    let message = "Access violation: this is a long explanation from the server, \
                   well past eight bytes, and it must reach the user whole";
    let child = Command::new(BIN)
        .args([
            "get",
            &format!("127.0.0.1:{port}"),
            "f",
            "--blksize",
            "8",
            "--no-tsize",
        ])
        .current_dir(&l.local)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (rrq, client) = recv(&listen);
    assert_eq!(rrq, b"\x00\x01f\x00octet\x00blksize\x008\x00");
    let tid = udp();
    tid.send_to(b"\x00\x06blksize\x008\x00", client).unwrap();
    let (ack, _) = recv(&tid);
    assert_eq!(ack, b"\x00\x04\x00\x00", "ACK 0: blksize 8 is in force");
    let mut e = b"\x00\x05\x00\x02".to_vec();
    e.extend_from_slice(message.as_bytes());
    e.push(0);
    tid.send_to(&e, client).unwrap();
    let o = wait_output(child);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(message), "{}", stderr(&o));
    assert!(our_parts(&l.local).is_empty());
}
