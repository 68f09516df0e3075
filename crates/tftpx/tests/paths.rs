//! Path attacks against `DirHandler` through the server: nothing outside the root is ever
//! read or written. The root is `<tmp>/root`; `<tmp>/secret.txt` and `<tmp>/outside/` sit
//! beside it and must stay unread and unchanged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tftpx::proto::wire::ErrorCode;
use tftpx::{Client, ClientError, DirHandler, Server};
use tokio::net::UdpSocket;

const SECRET: &[u8] = b"TOP SECRET: outside the root\n";
const INSIDE: &[u8] = b"inside the root\n";

struct Fixture {
    tmp: tempfile::TempDir,
    addr: SocketAddr,
    token: tftpx::CancellationToken,
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
    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }
    fn secret(&self) -> PathBuf {
        self.tmp.path().join("secret.txt")
    }

    fn client(&self) -> Client {
        Client::builder(self.addr)
            .timeout(Duration::from_millis(200))
            .retries(3)
            .dally(Duration::ZERO)
            .build()
    }

    async fn get(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.client().get(name, &mut out, |_| {}).await?;
        Ok(out)
    }

    async fn put(&self, name: &str, data: &[u8]) -> Result<(), ClientError> {
        self.client()
            .put(name, data, Some(data.len() as u64), |_| {})
            .await
            .map(|_| ())
    }

    /// The outside world is as it was.
    fn assert_outside_untouched(&self) {
        assert_eq!(std::fs::read(self.secret()).unwrap(), SECRET);
        assert_eq!(std::fs::read(self.outside().join("f")).unwrap(), SECRET);
        let names: Vec<_> = std::fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("f")],
            "outside/ gained files"
        );
        let mut top: Vec<_> = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["outside", "root", "secret.txt"],
            "files appeared beside the root"
        );
    }
}

async fn fixture(configure: impl FnOnce(DirHandler) -> DirHandler) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("ok.txt"), INSIDE).unwrap();
    std::fs::write(root.join("sub/f"), INSIDE).unwrap();
    std::fs::write(tmp.path().join("secret.txt"), SECRET).unwrap();
    std::fs::create_dir(tmp.path().join("outside")).unwrap();
    std::fs::write(tmp.path().join("outside/f"), SECRET).unwrap();
    let handler = configure(DirHandler::new(&root).unwrap());
    let server = Server::builder(handler)
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_millis(200))
        .max_retries(2)
        .rate_limit(None)
        .bind()
        .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    Fixture { tmp, addr, token }
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected an ERROR from the server, got {other:?}"),
    }
}

#[tokio::test]
async fn dot_dot_backslash_and_encoded_names_stay_inside() {
    let fx = fixture(|h| h.allow_create(true)).await;
    // `..` in every position, with both separators.
    for name in [
        "../secret.txt",
        "..",
        "sub/../../secret.txt",
        "sub/..",
        "./../secret.txt",
        "sub/./../../outside/f",
        "..\\secret.txt",
        "sub\\..\\..\\secret.txt",
        "/../secret.txt",
        "//..//secret.txt",
        "sub/../..",
    ] {
        assert_eq!(
            code(fx.get(name).await),
            ErrorCode::AccessViolation,
            "RRQ {name}"
        );
        assert_eq!(
            code(fx.put(name, b"pwned").await),
            ErrorCode::AccessViolation,
            "WRQ {name}"
        );
    }
    // URL encoding is not TFTP's: `%2e%2e` is a literal (missing) name inside the root.
    for name in [
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        "..%2fsecret.txt",
        "%2e%2e\\secret.txt",
    ] {
        assert_eq!(
            code(fx.get(name).await),
            ErrorCode::FileNotFound,
            "RRQ {name}"
        );
    }
    // Absolute names are relative to the root, whatever they spell.
    let secret = fx.secret().display().to_string();
    assert_eq!(code(fx.get(&secret).await), ErrorCode::FileNotFound);
    assert_eq!(code(fx.get("/etc/passwd").await), ErrorCode::FileNotFound);
    assert_eq!(fx.get("/sub/f").await.unwrap(), INSIDE);
    let abs_inside = fx.root().canonicalize().unwrap().join("ok.txt");
    assert_eq!(
        fx.get(&abs_inside.display().to_string()).await.unwrap(),
        INSIDE
    );
    // Overlong names and components.
    let long = "a/".repeat(600);
    assert_eq!(code(fx.get(&long).await), ErrorCode::AccessViolation);
    assert_eq!(
        code(fx.get(&"b".repeat(256)).await),
        ErrorCode::AccessViolation
    );
    assert_eq!(
        code(fx.put(&"b".repeat(256), b"x").await),
        ErrorCode::AccessViolation
    );
    fx.assert_outside_untouched();
}

#[tokio::test]
async fn nul_inside_the_name_never_opens_a_shorter_name() {
    let fx = fixture(|h| h).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // "ok.txt\0../secret.txt\0octet\0": the name ends at the first NUL, the mode that
    // follows is "../secret.txt": refused as an unknown mode, nothing is opened.
    s.send_to(b"\x00\x01ok.txt\x00../secret.txt\x00octet\x00", fx.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..4], b"\x00\x05\x00\x04", "{:?}", &buf[..n]);
}

#[tokio::test]
async fn symlinks_and_hard_links_leading_outside_are_refused() {
    let fx = fixture(|h| h.allow_create(true)).await;
    let root = fx.root();
    std::os::unix::fs::symlink("../secret.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink(fx.secret(), root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink(fx.outside(), root.join("dir-link")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("rel-dir-link")).unwrap();
    for name in ["rel-link", "abs-link", "dir-link/f", "rel-dir-link/f"] {
        assert_eq!(
            code(fx.get(name).await),
            ErrorCode::AccessViolation,
            "RRQ {name}"
        );
        let c = code(fx.put(name, b"pwned").await);
        assert_eq!(c, ErrorCode::AccessViolation, "WRQ {name}");
    }
    assert_eq!(
        code(fx.put("dir-link/new", b"pwned").await),
        ErrorCode::AccessViolation
    );
    // Links that stay inside are followed, relative or absolute.
    std::os::unix::fs::symlink("sub/f", root.join("in-rel")).unwrap();
    std::os::unix::fs::symlink(
        root.canonicalize().unwrap().join("ok.txt"),
        root.join("in-abs"),
    )
    .unwrap();
    assert_eq!(fx.get("in-rel").await.unwrap(), INSIDE);
    assert_eq!(fx.get("in-abs").await.unwrap(), INSIDE);
    fx.put("in-abs", b"through an inside link").await.unwrap();
    assert_eq!(
        std::fs::read(root.join("ok.txt")).unwrap(),
        b"through an inside link"
    );
    // A hard link to the secret (same file system): refused, unless allowed.
    std::fs::hard_link(fx.secret(), root.join("hard")).unwrap();
    assert_eq!(code(fx.get("hard").await), ErrorCode::AccessViolation);
    // An upload replaces the name inside the root; the other name keeps its content.
    fx.put("hard", b"replaced").await.unwrap();
    assert_eq!(std::fs::read(root.join("hard")).unwrap(), b"replaced");
    fx.assert_outside_untouched();

    let fx2 = fixture(|h| h.allow_hard_links(true)).await;
    std::fs::hard_link(fx2.root().join("ok.txt"), fx2.root().join("hard")).unwrap();
    assert_eq!(fx2.get("hard").await.unwrap(), INSIDE);
}

#[tokio::test]
async fn fifos_and_directories_are_refused_without_waiting() {
    let fx = fixture(|h| h.allow_create(true)).await;
    let fifo = fx.root().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let r = tokio::time::timeout(Duration::from_secs(5), fx.get("pipe"))
        .await
        .expect("a FIFO is refused at once, not waited on");
    assert_eq!(code(r), ErrorCode::AccessViolation);
    assert_eq!(code(fx.put("pipe", b"x").await), ErrorCode::AccessViolation);
    assert_eq!(code(fx.get("sub").await), ErrorCode::AccessViolation);
    assert_eq!(code(fx.put("sub", b"x").await), ErrorCode::AccessViolation);
}

/// Swaps `root/sub` between the real directory and a link to `outside` as fast as it can
/// until `stop`; returns the number of swaps.
fn swapper(root: &Path, outside: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let (root, outside) = (root.to_path_buf(), outside.to_path_buf());
    std::os::unix::fs::symlink(&outside, root.join("sub-link")).unwrap();
    std::thread::spawn(move || {
        let (sub, real, link) = (
            root.join("sub"),
            root.join("sub-real"),
            root.join("sub-link"),
        );
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) && swaps < 10_000_000 {
            std::fs::rename(&sub, &real).unwrap();
            std::fs::rename(&link, &sub).unwrap();
            std::fs::rename(&sub, &link).unwrap();
            std::fs::rename(&real, &sub).unwrap();
            swaps += 1;
        }
        swaps
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_during_requests_never_leads_outside() {
    let fx = fixture(|h| h.allow_write(true)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(&fx.root(), &fx.outside(), stop.clone());
    let (mut served, mut refused, mut uploaded) = (0, 0, 0);
    for i in 0..150 {
        match fx.get("sub/f").await {
            Ok(bytes) => {
                assert_eq!(bytes, INSIDE, "request {i} read outside the root");
                served += 1;
            }
            Err(ClientError::Server { .. }) => refused += 1,
            Err(e) => panic!("request {i}: {e}"),
        }
        // Overwrite the inside file (allow_write): must never land in outside/.
        match fx.put("sub/f", INSIDE).await {
            Ok(()) => uploaded += 1,
            Err(ClientError::Server { .. }) => {}
            Err(e) => panic!("upload {i}: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    eprintln!("{swaps} swaps: {served} downloads served (all inside), {refused} refused, {uploaded} uploads");
    assert!(swaps > 100, "the swapper ran");
    // The swapper leaves sub/ as the real directory.
    assert_eq!(std::fs::read(fx.root().join("sub/f")).unwrap(), INSIDE);
    std::fs::remove_file(fx.root().join("sub-link")).unwrap();
    fx.assert_outside_untouched();
    let leftovers: Vec<_> = std::fs::read_dir(fx.root().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tftpx-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The code and message of a refusal.
fn refusal(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected an ERROR from the server, got {other:?}"),
    }
}

/// F11: a link that leads outside the root answers the same, code and message, whether or
/// not its outside target exists: no existence oracle. Before: ERROR 2 if the target
/// existed, ERROR 1 if not. A dangling link that stays inside is still "File not found".
#[tokio::test]
async fn outside_links_answer_the_same_whether_or_not_the_target_exists() {
    let fx = fixture(|h| h.allow_create(true)).await;
    let root = fx.root();
    let tmp = fx.tmp.path().to_path_buf();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, root.join(name));
    // Pairs: (target exists, target missing).
    link(&fx.secret(), "abs-yes").unwrap();
    link(&tmp.join("missing.txt"), "abs-no").unwrap();
    link(Path::new("../secret.txt"), "rel-yes").unwrap();
    link(Path::new("../missing.txt"), "rel-no").unwrap();
    link(Path::new("sub/../../secret.txt"), "rel2-yes").unwrap();
    link(Path::new("sub/../../missing.txt"), "rel2-no").unwrap();
    link(&fx.outside(), "dir-yes").unwrap();
    link(&tmp.join("missing-dir"), "dir-no").unwrap();
    link(Path::new("/etc/passwd"), "etc-yes").unwrap();
    link(Path::new("/etc/no-such-file-here"), "etc-no").unwrap();
    // A chain: inside link -> inside link -> outside.
    link(Path::new("abs-yes"), "chain-yes").unwrap();
    link(Path::new("abs-no"), "chain-no").unwrap();
    let want = (
        ErrorCode::AccessViolation,
        "Access outside the root refused".to_string(),
    );
    for name in [
        "abs-yes",
        "abs-no",
        "rel-yes",
        "rel-no",
        "rel2-yes",
        "rel2-no",
        "dir-yes/f",
        "dir-yes/nothing",
        "dir-no/f",
        "dir-no",
        "etc-yes",
        "etc-no",
        "chain-yes",
        "chain-no",
        "sub/../abs-no",
    ] {
        assert_eq!(refusal(fx.get(name).await), want, "RRQ {name}");
        assert_eq!(refusal(fx.put(name, b"pwned").await), want, "WRQ {name}");
    }
    // Inside the root, a dangling link is simply a missing file (relative or absolute).
    link(Path::new("nothing-here"), "in-rel-no").unwrap();
    link(
        &root.canonicalize().unwrap().join("sub/nothing"),
        "in-abs-no",
    )
    .unwrap();
    link(
        &root.canonicalize().unwrap().join("nodir/x"),
        "in-abs-nodir",
    )
    .unwrap();
    for name in ["in-rel-no", "in-abs-no", "in-abs-nodir"] {
        assert_eq!(
            refusal(fx.get(name).await).0,
            ErrorCode::FileNotFound,
            "RRQ {name}"
        );
        assert_eq!(
            refusal(fx.put(name, b"x").await).0,
            ErrorCode::FileNotFound,
            "WRQ {name}"
        );
    }
    // A loop is refused, not followed forever.
    link(Path::new("loop-b"), "loop-a").unwrap();
    link(&root.canonicalize().unwrap().join("loop-a"), "loop-b").unwrap();
    assert_eq!(
        refusal(fx.get("loop-a").await).0,
        ErrorCode::AccessViolation
    );
    fx.assert_outside_untouched();
    assert!(!tmp.join("missing.txt").exists() && !tmp.join("missing-dir").exists());
}

/// F14: a name ending in a separator (or in `/.`) names a directory, never the file before
/// it: ERROR 1 on RRQ and WRQ, whatever the file system has. Before: `f.bin/` served
/// `f.bin`.
#[tokio::test]
async fn a_trailing_separator_names_no_file() {
    let fx = fixture(|h| h.allow_create(true)).await;
    std::fs::write(fx.root().join("f.bin"), INSIDE).unwrap();
    assert_eq!(fx.get("f.bin").await.unwrap(), INSIDE);
    for name in [
        "f.bin/", "f.bin\\", "f.bin//", "f.bin/.", "/f.bin/", "sub/f/", "sub/f\\", "sub/",
        "new.bin/", "nodir/",
    ] {
        assert_eq!(
            refusal(fx.get(name).await),
            (ErrorCode::FileNotFound, "File not found".to_string()),
            "RRQ {name}"
        );
        assert_eq!(
            refusal(fx.put(name, b"pwned").await),
            (ErrorCode::FileNotFound, "File not found".to_string()),
            "WRQ {name}"
        );
    }
    assert_eq!(std::fs::read(fx.root().join("f.bin")).unwrap(), INSIDE);
    assert_eq!(std::fs::read(fx.root().join("sub/f")).unwrap(), INSIDE);
    assert!(!fx.root().join("new.bin").exists());
    fx.put("f.bin", b"replaced").await.unwrap();
    assert_eq!(fx.get("f.bin").await.unwrap(), b"replaced");
}

/// A name that goes through a file (`f.bin/x`) names nothing: ERROR 1, not ERROR 0 with the
/// OS text "Not a directory".
#[tokio::test]
async fn a_name_through_a_file_is_not_found() {
    let fx = fixture(|h| h.allow_create(true)).await;
    std::fs::write(fx.root().join("f.bin"), INSIDE).unwrap();
    for name in ["f.bin/x", "f.bin/x/y", "/f.bin/x"] {
        assert_eq!(
            refusal(fx.get(name).await),
            (ErrorCode::FileNotFound, "File not found".to_string()),
            "RRQ {name}"
        );
        assert_eq!(
            refusal(fx.put(name, b"x").await).0,
            ErrorCode::FileNotFound,
            "WRQ {name}"
        );
    }
    assert_eq!(std::fs::read(fx.root().join("f.bin")).unwrap(), INSIDE);
}
