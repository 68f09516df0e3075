//! Hostile uploads against `DirHandler` through the server (issue 10, items 4 and 10):
//! special permission bits never survive an upload (F5), an upload in progress has no name
//! that a request could reach, and nothing is left behind by an abandoned upload or a killed
//! server (F10). Raw datagrams stand in for the attacker; the tftpx `Client` for honest
//! clients. Tests that change ownership or drop privileges need root (CI runs as root) and
//! say so when skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tftpx::proto::wire::{ErrorCode, Mode};
use tftpx::{
    Client, ClientError, DirHandler, Handler, Outcome, RequestInfo, Server, TransferSummary, Upload,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const OLD: &[u8] = b"the administrator's file\n";

struct Fixture {
    tmp: tempfile::TempDir,
    addr: SocketAddr,
    token: tftpx::CancellationToken,
    ended: mpsc::UnboundedReceiver<TransferSummary>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Fixture {
    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn client(&self) -> Client {
        Client::builder(self.addr)
            .timeout(Duration::from_millis(200))
            .retries(3)
            .dally(Duration::ZERO)
            .build()
    }

    async fn put(&self, name: &str, data: &[u8]) -> Result<(), ClientError> {
        self.client()
            .put(name, data, Some(data.len() as u64), |_| {})
            .await
            .map(|_| ())
    }

    async fn get(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.client().get(name, &mut out, |_| {}).await?;
        Ok(out)
    }

    /// The summary of the next transfer to end whose name is `name` (bounded wait).
    async fn ended(&mut self, name: &str) -> TransferSummary {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let s = tokio::time::timeout(left, self.ended.recv())
                .await
                .unwrap_or_else(|_| panic!("the transfer of {name} never ended"))
                .expect("the server is running");
            if s.filename == name {
                return s;
            }
        }
    }
}

/// A server on 127.0.0.1 that may create files in `<tmp>/root`, which holds `ok.txt` (OLD)
/// and `sub/f` (OLD). Short timers: a silent peer is given up after ~0.6 s.
async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("ok.txt"), OLD).unwrap();
    std::fs::write(root.join("sub/f"), OLD).unwrap();
    let (tx, ended) = mpsc::unbounded_channel();
    let handler = DirHandler::new(&root).unwrap().allow_create(true);
    let server = Server::builder(handler)
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_millis(200))
        .max_retries(2)
        .rate_limit(None)
        .on_transfer_end(move |s| {
            let _ = tx.send(s.clone());
        })
        .bind()
        .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    Fixture {
        tmp,
        addr,
        token,
        ended,
    }
}

/// Everything below `dir`: relative name -> (permission bits and type, content or link).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let body = if meta.is_dir() {
                walk(base, &path, out);
                Vec::new()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            out.insert(rel, (meta.mode(), body));
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

fn wrq(name: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 2];
    p.extend_from_slice(name);
    p.extend_from_slice(b"\0octet\0");
    p
}

fn rrq(name: &[u8]) -> Vec<u8> {
    let mut p = wrq(name);
    p[1] = 1;
    p
}

fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0, 3];
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("the server answers within 5 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// Receives until a datagram that is not a retransmitted ACK below `block` (bounded).
async fn recv_ack(s: &UdpSocket, block: u16) -> SocketAddr {
    for _ in 0..10 {
        let (p, from) = recv(s).await;
        assert_eq!(&p[..2], b"\x00\x04", "expected an ACK, got {p:?}");
        let got = u16::from_be_bytes([p[2], p[3]]);
        if got == block {
            return from;
        }
        assert!(got < block, "ACK {got} while waiting for {block}");
    }
    panic!("no ACK {block}");
}

/// Starts an upload of `name` by hand: WRQ, then `blocks` full DATA blocks of `fill`, each
/// acknowledged. Returns the socket and the transfer's address.
async fn start_upload(
    addr: SocketAddr,
    name: &[u8],
    blocks: u16,
    fill: u8,
) -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&wrq(name), addr).await.unwrap();
    let tid = recv_ack(&s, 0).await;
    for b in 1..=blocks {
        s.send_to(&data(b, &[fill; 512]), tid).await.unwrap();
        recv_ack(&s, b).await;
    }
    (s, tid)
}

fn assert_error(p: &[u8], code: ErrorCode, what: &str) {
    assert!(
        p.len() >= 5 && p[..2] == [0, 5] && u16::from_be_bytes([p[2], p[3]]) == code.to_u16(),
        "{what}: expected ERROR {code:?}, got {:?}",
        String::from_utf8_lossy(p)
    );
    assert_eq!(p.last(), Some(&0), "{what}: NUL-terminated message");
}

/// F5: WRQ over a setuid (04755, uid 1000) file. Before: the file kept 04755, now owned by
/// root, with the attacker's content. Now: content replaced, mode 0755.
#[tokio::test]
async fn uploads_never_keep_setuid_setgid_or_sticky_bits() {
    if !is_root() {
        eprintln!("skipped: chown to uid 1000 needs root (CI runs as root)");
        return;
    }
    let fx = fixture().await;
    let root = fx.root();
    // (old mode, mode after the upload): special bits dropped, the rest kept exactly (no
    // group or other write bit the old file did not have).
    let cases = [
        (0o4755, 0o755),
        (0o2755, 0o755),
        (0o1755, 0o755),
        (0o7777, 0o777),
        (0o6711, 0o711),
        (0o640, 0o640),
        (0o600, 0o600),
        (0o664, 0o664),
    ];
    for (old, new) in cases {
        let name = format!("f-{old:o}.bin");
        let path = root.join(&name);
        std::fs::write(&path, OLD).unwrap();
        std::os::unix::fs::chown(&path, Some(1000), Some(1000)).unwrap();
        // chmod after chown: chown clears setuid and setgid.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(old)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, old);
        let attack = format!("#!/bin/sh\n# uploaded over {old:o}\n").into_bytes();
        fx.put(&name, &attack).await.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            attack,
            "{name}: content replaced"
        );
        assert_eq!(
            meta.mode() & 0o7777,
            new,
            "{name}: {:o} after the upload over {old:o}",
            meta.mode() & 0o7777
        );
        assert_eq!(meta.nlink(), 1);
    }
    // A new file: 0644 less the umask, as DirHandler has always created them.
    fx.put("brand-new.bin", b"new").await.unwrap();
    let meta = std::fs::metadata(root.join("brand-new.bin")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o644 & !umask());
    assert_eq!(std::fs::read(root.join("brand-new.bin")).unwrap(), b"new");
}

/// F10: while an upload runs, its data has no name in the directory (so no request can
/// name it); names that look like tftpx temporary files are refused (ERROR 2) on RRQ and
/// WRQ alike; the victim's upload completes with the victim's content.
#[tokio::test]
async fn an_upload_in_progress_has_no_name_and_temporary_names_are_refused() {
    let mut fx = fixture().await;
    let before = snapshot(&fx.root());
    let (victim, tid) = start_upload(fx.addr, b"fw.bin", 3, b'V').await;
    assert_eq!(
        snapshot(&fx.root()),
        before,
        "an upload in progress shows no new name"
    );
    // The attacker guesses names, with both separators and any case.
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for name in [
        &b".fw.bin.1234abcd.tftpx-part"[..],
        b".x.bin.1234abcd.tftpx-part",
        b"sub/.x.tftpx-part",
        b"sub\\.x.tftpx-part",
        b"/sub/.f.0badcafe.tftpx-part",
        b".FW.BIN.1234ABCD.TFTPX-PART",
        b".tftpx-part",
        b"dir.tftpx-part/x",
    ] {
        let shown = String::from_utf8_lossy(name).into_owned();
        for (kind, req) in [("RRQ", rrq(name)), ("WRQ", wrq(name))] {
            attacker.send_to(&req, fx.addr).await.unwrap();
            let (p, _) = recv(&attacker).await;
            assert_error(&p, ErrorCode::AccessViolation, &format!("{kind} {shown}"));
        }
    }
    // Through the client too (code and message).
    match fx.put(".fw.bin.00000000.tftpx-part", b"pwned").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::AccessViolation),
        other => panic!("WRQ for a temporary name: {other:?}"),
    }
    match fx.get("sub/.f.00000000.tftpx-part").await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::AccessViolation),
        other => panic!("RRQ for a temporary name: {other:?}"),
    }
    assert_eq!(snapshot(&fx.root()), before, "still nothing named");
    // The victim finishes: its own bytes, nothing else.
    victim.send_to(&data(4, b"end"), tid).await.unwrap();
    recv_ack(&victim, 4).await;
    let s = fx.ended("fw.bin").await;
    assert_eq!(s.outcome, Outcome::Ok);
    let mut want = vec![b'V'; 3 * 512];
    want.extend_from_slice(b"end");
    assert_eq!(std::fs::read(fx.root().join("fw.bin")).unwrap(), want);
    let mut after = snapshot(&fx.root());
    let (mode, body) = after.remove(Path::new("fw.bin")).unwrap();
    assert_eq!(body, want);
    assert_eq!(mode & 0o7777, 0o644 & !umask());
    assert_eq!(after, before, "only fw.bin was added");
}

/// An upload whose client falls silent mid-way, over a new name and over an existing file:
/// once the server gives up, the directory is exactly as before.
#[tokio::test]
async fn an_abandoned_upload_leaves_the_directory_as_it_was() {
    let mut fx = fixture().await;
    std::fs::set_permissions(fx.root().join("ok.txt"), PermissionsExt::from_mode(0o640)).unwrap();
    let before = snapshot(&fx.root());
    for name in ["new.bin", "ok.txt", "sub/f", "sub/new"] {
        let (_silent, _) = start_upload(fx.addr, name.as_bytes(), 5, b'A').await;
        assert_eq!(snapshot(&fx.root()), before, "{name}: in progress");
        // Stay silent: the server retransmits its ACK and gives up.
        let s = fx.ended(name).await;
        assert!(
            matches!(s.outcome, Outcome::Failed(_)),
            "{name}: {:?}",
            s.outcome
        );
        assert_eq!(snapshot(&fx.root()), before, "{name}: after");
    }
}

/// Temporary files leave nothing behind after a crash: a `tftpx` server process killed
/// (SIGKILL) in the middle of uploads leaves the directory exactly as before. The server
/// is this test binary re-executed (`UPLOADS_CHILD_ROOT` set), so it can be killed.
#[test]
fn a_killed_server_leaves_nothing_behind() {
    if let Some(root) = std::env::var_os("UPLOADS_CHILD_ROOT") {
        return child_server(Path::new(&root));
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("ok.txt"), OLD).unwrap();
    let before = snapshot(&root);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_server_leaves_nothing_behind",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("UPLOADS_CHILD_ROOT", &root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("the child prints its address").unwrap();
        // libtest prints "test NAME ... " before it, on the same line.
        if let Some((_, a)) = line.split_once("LISTENING ") {
            break a.trim().parse().unwrap();
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _a = start_upload(addr, b"new.bin", 4, b'K').await;
        let _b = start_upload(addr, b"ok.txt", 4, b'K').await;
        let _c = start_upload(addr, b"sub/new", 4, b'K').await;
        assert_eq!(snapshot(&root), before);
        // SIGKILL the server we started, by its PID, with the three uploads open.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child {pid} was killed: {status:?}");
    });
    assert_eq!(snapshot(&root), before, "nothing left after SIGKILL");
}

/// The killed server: serves `root` with uploads allowed, prints its address, and waits
/// (at most 60 s) to be killed.
fn child_server(root: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handler = DirHandler::new(root).unwrap().allow_create(true);
        let server = Server::builder(handler)
            .listen("127.0.0.1:0".parse().unwrap())
            .timeout(Duration::from_secs(30))
            .rate_limit(None)
            .bind()
            .unwrap();
        println!("LISTENING {}", server.local_addrs()[0]);
        let token = server.shutdown_token();
        tokio::spawn(server.run());
        tokio::time::sleep(Duration::from_secs(60)).await;
        token.cancel();
    });
    panic!("not killed within 60 s");
}

/// The commit links the anonymous upload into its directory through
/// `/proc/self/fd/N` (`linkat(AT_SYMLINK_FOLLOW)`), which needs no capability: checked in a
/// process that dropped root the way a server does (setgroups, setgid, setuid to nobody,
/// 65534, in the process itself): it then has no capability at all and is not dumpable
/// (`/proc/self/fd` belongs to root). That process is this test binary re-executed with
/// `UPLOADS_UNPRIV_ROOT` set.
#[test]
fn uploads_commit_without_any_capability() {
    if let Some(root) = std::env::var_os("UPLOADS_UNPRIV_ROOT") {
        return unprivileged_uploads(Path::new(&root));
    }
    if !is_root() {
        eprintln!("skipped: needs root to drop to nobody (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), PermissionsExt::from_mode(0o711)).unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("old.bin"), OLD).unwrap();
    std::fs::set_permissions(root.join("old.bin"), PermissionsExt::from_mode(0o664)).unwrap();
    for p in [&root, &root.join("old.bin")] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "uploads_commit_without_any_capability",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("UPLOADS_UNPRIV_ROOT", &root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("UNPRIVILEGED UPLOADS OK"),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(root.join("new.bin")).unwrap(),
        b"created by nobody"
    );
    assert_eq!(
        std::fs::read(root.join("old.bin")).unwrap(),
        b"replaced by nobody"
    );
    let new = std::fs::metadata(root.join("new.bin")).unwrap();
    assert_eq!((new.uid(), new.gid()), (65534, 65534));
    let old = std::fs::metadata(root.join("old.bin")).unwrap();
    assert_eq!(old.mode() & 0o7777, 0o664);
}

/// The unprivileged side of [`uploads_commit_without_any_capability`].
fn unprivileged_uploads(root: &Path) {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    setgroups(&[]).unwrap();
    setgid(Gid::from_raw(65534)).unwrap();
    setuid(Uid::from_raw(65534)).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
            .trim()
            .to_owned()
    };
    assert!(field("Uid:").split_whitespace().all(|u| u == "65534"));
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(
        std::fs::metadata("/proc/self/fd").unwrap().uid(),
        0,
        "the process is not dumpable (its /proc entries belong to root)"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = DirHandler::new(root).unwrap().allow_create(true);
        for (name, body) in [
            ("new.bin", &b"created by nobody"[..]),
            ("old.bin", b"replaced by nobody"),
        ] {
            let req = RequestInfo::new(
                "127.0.0.1:9".parse().unwrap(),
                "127.0.0.1:69".parse().unwrap(),
                name.as_bytes(),
                Mode::Octet,
            );
            let before = snapshot(root);
            let mut up = h.open_write(&req, None).await.unwrap();
            up.write_all(body).await.unwrap();
            up.flush().await.unwrap();
            assert_eq!(snapshot(root), before, "{name}: no name before the commit");
            up.commit().await.unwrap();
        }
    });
    println!("UNPRIVILEGED UPLOADS OK");
}
