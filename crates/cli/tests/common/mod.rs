//! Helpers shared by the interoperability tests: a `tftpx serve` process and its log, the
//! Debian TFTP clients (tftp-hpa, atftp, curl, busybox) run with a time limit, and
//! deterministic file contents.
//!
//! Every process started here is killed by its PID when its guard is dropped; all network
//! use is on 127.0.0.1 with ports chosen by the OS.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The longest any client command may run before the test kills it and fails.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take to print its `serving ... on ADDR` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often bounded waits poll.
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// `len` bytes of xorshift64* output seeded by `len`: the same size always gives the same
/// bytes, so a failure reproduces.
pub fn pseudo_random(len: usize) -> Vec<u8> {
    pseudo_random_seeded(len, len as u64)
}

/// `len` bytes of xorshift64* output from `seed` (any value; 0 is remapped).
pub fn pseudo_random_seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path`, panicking with the path on failure.
pub fn write_file(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Reads `path`, panicking with the path on failure.
pub fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Asserts that the file at `path` holds exactly `expected`, comparing SHA-256 digests (and
/// naming the first differing offset when they differ).
#[track_caller]
pub fn assert_file_content(path: &Path, expected: &[u8], what: &str) {
    let actual = match fs::read(path) {
        Ok(b) => b,
        Err(e) => panic!("{what}: cannot read {}: {e}", path.display()),
    };
    let (want, got) = (sha256_hex(expected), sha256_hex(&actual));
    if want != got {
        let first_diff = expected
            .iter()
            .zip(&actual)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(actual.len()));
        panic!(
            "{what}: {} differs from the original: expected {} bytes sha256 {want}, \
             got {} bytes sha256 {got}; first difference at offset {first_diff}",
            path.display(),
            expected.len(),
            actual.len(),
        );
    }
}

/// True if `path` does not exist or is an empty file: what a client leaves behind after a
/// refused download (tftp-hpa and atftp create the local file before asking).
pub fn absent_or_empty(path: &Path) -> bool {
    match fs::metadata(path) {
        Ok(m) => m.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The names in `dir` (dot files included).
pub fn list_dir(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The server's temporary upload files (`.NAME.XXXXXX.tftpx-part`) in `dir`.
pub fn part_files(dir: &Path) -> Vec<String> {
    list_dir(dir)
        .into_iter()
        .filter(|n| n.ends_with(".tftpx-part"))
        .collect()
}

/// How many uploads server process `pid` is writing in `dir`: the files it holds open
/// there that have no name (read from `/proc/PID/fd`). The server writes an upload to an
/// anonymous `O_TMPFILE` file, whose link reads `DIR/#INODE (deleted)` (or, on a file system
/// without `O_TMPFILE`, to a `.NAME.XXXXXXXX.tftpx-part` file). This is how a test sees that
/// an upload is under way.
pub fn uploads_open_in(pid: u32, dir: &Path) -> usize {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.parent() == Some(&dir))
        .filter(|target| {
            let name = target.to_string_lossy();
            name.ends_with(" (deleted)") || name.ends_with(".tftpx-part")
        })
        .count()
}

/// A temporary directory laid out as `base/root` (served) and `base/local` (the client's side).
pub struct Layout {
    _tmp: tempfile::TempDir,
    /// The parent of `root`: "outside the root".
    pub base: PathBuf,
    /// The directory the server serves.
    pub root: PathBuf,
    /// Where the clients read and write their local files.
    pub local: PathBuf,
}

impl Layout {
    /// A fresh, empty layout.
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("tftpx-interop-")
            .tempdir()
            .expect("create a temporary directory");
        let base = tmp.path().canonicalize().expect("canonical temp dir");
        let root = base.join("root");
        let local = base.join("local");
        fs::create_dir(&root).expect("create root");
        fs::create_dir(&local).expect("create local");
        Self {
            _tmp: tmp,
            base,
            root,
            local,
        }
    }
}

/// Polls `done` every few milliseconds until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// Request kind, as the server's log names it (`RRQ` / `WRQ`).
pub use tftpx::Kind;

/// A running `tftpx serve DIR --listen 127.0.0.1:0`, killed when dropped. Its stderr is
/// drained into a log for the whole of its life; a test that panics prints that log.
pub struct Server {
    child: Child,
    /// The port the server listens on (chosen by the OS).
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on `root` with `args` after the listen address, and waits (at most
    /// 10 s) for its `serving ... on 127.0.0.1:PORT` line.
    pub fn start(root: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tftpx"))
            .arg("serve")
            .arg(root)
            .args(["--listen", "127.0.0.1:0"])
            // Not a test of privileges: tempdirs are 0700 root, so stay root.
            .args(["--user", "root"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tftpx serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        // Lives as long as the pipe: the server's stderr never fills up.
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(port) = serving_port(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let port = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(port) => port,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                panic!("tftpx serve did not report its port ({e}); its log:\n{log}");
            }
        };
        Self { child, port, log }
    }

    /// The server's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on tftpx serve")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The summary lines logged so far for `kind` requests of exactly `name`.
    pub fn summaries(&self, kind: Kind, name: &str) -> Vec<String> {
        let head = format!("{kind} from ");
        let quoted = format!("{name:?} ");
        self.log()
            .lines()
            .filter(|l| l.contains(&head) && l.contains(&quoted))
            .filter(|l| l.contains(": ok,") || l.contains(": refused") || l.contains(": failed"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (bounded) until `count` summary lines for `kind` `name` are in the log, and
    /// returns them; panics with the log if they do not come.
    #[track_caller]
    pub fn wait_summaries(
        &self,
        kind: Kind,
        name: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        if !wait_until(timeout, || self.summaries(kind, name).len() >= count) {
            panic!(
                "the server logged {} of {count} expected {kind} summaries for {name:?} \
                 within {timeout:?}",
                self.summaries(kind, name).len()
            );
        }
        self.summaries(kind, name)
    }

    /// Waits (bounded) for the first summary line of `kind` `name`.
    #[track_caller]
    pub fn wait_summary(&self, kind: Kind, name: &str, timeout: Duration) -> String {
        self.wait_summaries(kind, name, 1, timeout).remove(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- tftpx serve log (port {}) ----\n{}",
                self.port,
                self.log()
            );
        }
    }
}

/// The port in `... serving DIR on 127.0.0.1:PORT (...)`.
fn serving_port(line: &str) -> Option<u16> {
    if !line.contains("serving ") {
        return None;
    }
    let rest = &line[line.find(" on 127.0.0.1:")? + " on 127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------

/// A TFTP client installed from Debian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `tftp` from tftp-hpa: no options, exits 0 even after an ERROR.
    TftpHpa,
    /// `atftp`: options only when asked.
    Atftp,
    /// `curl tftp://`: always sends tsize, blksize and timeout.
    Curl,
    /// `busybox tftp`: always sends tsize.
    Busybox,
}

impl Peer {
    /// All four clients.
    pub const ALL: [Peer; 4] = [Peer::TftpHpa, Peer::Atftp, Peer::Curl, Peer::Busybox];

    /// The program run.
    pub fn program(self) -> &'static str {
        match self {
            Peer::TftpHpa => "tftp",
            Peer::Atftp => "atftp",
            Peer::Curl => "curl",
            Peer::Busybox => "busybox",
        }
    }

    /// The Debian package that provides [`Peer::program`].
    pub fn package(self) -> &'static str {
        match self {
            Peer::TftpHpa => "tftp-hpa",
            Peer::Atftp => "atftp",
            Peer::Curl => "curl",
            Peer::Busybox => "busybox",
        }
    }

    /// A short name usable in file names.
    pub fn name(self) -> &'static str {
        match self {
            Peer::TftpHpa => "tftp-hpa",
            Peer::Atftp => "atftp",
            Peer::Curl => "curl",
            Peer::Busybox => "busybox",
        }
    }

    /// Whether the client sends `tsize` in its requests (so the server's summary has one).
    pub fn sends_tsize(self, opts: &Opts) -> bool {
        match self {
            Peer::TftpHpa => false,
            Peer::Atftp => opts.blksize.is_some() || opts.windowsize.is_some(),
            Peer::Curl | Peer::Busybox => true,
        }
    }
}

/// Transfer options for a client command.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    /// Ask for this blksize (atftp, curl, busybox).
    pub blksize: Option<u16>,
    /// Ask for this windowsize (atftp only).
    pub windowsize: Option<u16>,
    /// netascii mode (tftp-hpa only).
    pub netascii: bool,
}

fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
        .to_owned()
}

/// The argument list for `peer` to download `remote` into `local`.
pub fn get_args(peer: Peer, port: u16, remote: &str, local: &Path, opts: &Opts) -> Vec<String> {
    transfer_args(peer, port, Direction::Get, remote, local, opts)
}

/// The argument list for `peer` to upload `local` as `remote`.
pub fn put_args(peer: Peer, port: u16, local: &Path, remote: &str, opts: &Opts) -> Vec<String> {
    transfer_args(peer, port, Direction::Put, remote, local, opts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Get,
    Put,
}

fn transfer_args(
    peer: Peer,
    port: u16,
    dir: Direction,
    remote: &str,
    local: &Path,
    opts: &Opts,
) -> Vec<String> {
    let local = path_str(local);
    let port = port.to_string();
    let unsupported = |what: &str| -> ! { panic!("{} cannot be given {what}", peer.name()) };
    if opts.netascii && peer != Peer::TftpHpa {
        unsupported("netascii mode in these tests");
    }
    if opts.windowsize.is_some() && peer != Peer::Atftp {
        unsupported("a windowsize");
    }
    let mut a: Vec<String> = Vec::new();
    match peer {
        Peer::TftpHpa => {
            if opts.blksize.is_some() {
                unsupported("a blksize (tftp-hpa sends no options)");
            }
            let mode = if opts.netascii { "netascii" } else { "binary" };
            a.extend(["-m", mode, "127.0.0.1", &port, "-c"].map(String::from));
            match dir {
                Direction::Get => a.extend(["get".into(), remote.into(), local]),
                Direction::Put => a.extend(["put".into(), local, remote.into()]),
            }
        }
        Peer::Atftp => {
            if let Some(b) = opts.blksize {
                a.extend(["--option".into(), format!("blksize {b}")]);
            }
            if let Some(w) = opts.windowsize {
                a.extend(["--option".into(), format!("windowsize {w}")]);
            }
            if opts.blksize.is_some() || opts.windowsize.is_some() {
                a.extend(["--option".into(), "tsize 0".into()]);
            }
            let flag = if dir == Direction::Get { "-g" } else { "-p" };
            a.extend([flag.into(), "-r".into(), remote.into(), "-l".into(), local]);
            a.extend(["127.0.0.1".into(), port]);
        }
        Peer::Curl => {
            // -sS: no progress meter, but errors on stderr. --path-as-is: send `..` as given.
            a.extend(["-sS", "--max-time", "60", "--path-as-is"].map(String::from));
            if let Some(b) = opts.blksize {
                a.extend(["--tftp-blksize".into(), b.to_string()]);
            }
            let flag = if dir == Direction::Get { "-o" } else { "-T" };
            a.extend([
                flag.into(),
                local,
                format!("tftp://127.0.0.1:{port}/{remote}"),
            ]);
        }
        Peer::Busybox => {
            a.push("tftp".into());
            if let Some(b) = opts.blksize {
                a.extend(["-b".into(), b.to_string()]);
            }
            let flag = if dir == Direction::Get { "-g" } else { "-p" };
            a.extend([flag.into(), "-r".into(), remote.into(), "-l".into(), local]);
            a.extend(["127.0.0.1".into(), port]);
        }
    }
    a
}

/// How a client command ended.
#[derive(Debug)]
pub struct PeerOutput {
    /// The command line, for messages.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl PeerOutput {
    /// stdout and stderr together.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics (showing the output) unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(self.status.success(), "{self}");
    }
}

impl fmt::Display for PeerOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ended with {} after {:.3} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// A client process, killed by its PID if dropped while still running.
pub struct RunningPeer {
    child: Child,
    command: String,
    started: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    reaped: bool,
}

fn drain<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Starts `peer` with `args`; a missing program fails the test naming the package to install.
#[track_caller]
pub fn spawn_peer(peer: Peer, args: &[String]) -> RunningPeer {
    let command = format!("{} {}", peer.program(), args.join(" "));
    let mut child = match Command::new(peer.program())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{}` is not installed: install the Debian package `{}` \
             (apt-get install {}) to run the interoperability tests",
            peer.program(),
            peer.package(),
            peer.package()
        ),
        Err(e) => panic!("cannot start `{command}`: {e}"),
    };
    let out: ChildStdout = child.stdout.take().expect("piped stdout");
    let err: ChildStderr = child.stderr.take().expect("piped stderr");
    RunningPeer {
        child,
        command,
        started: Instant::now(),
        stdout: Some(drain(out)),
        stderr: Some(drain(err)),
        reaped: false,
    }
}

impl RunningPeer {
    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (at most [`PEER_TIMEOUT`]; then kills it and fails).
    #[track_caller]
    pub fn wait(mut self) -> PeerOutput {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() < PEER_TIMEOUT => thread::sleep(POLL),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    self.reaped = true;
                    let out = self.collect(None);
                    panic!("client still running after {PEER_TIMEOUT:?}, killed: {out}");
                }
                Err(e) => panic!("waiting for `{}`: {e}", self.command),
            }
        };
        self.reaped = true;
        self.collect(Some(status))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(mut self) -> PeerOutput {
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap killed client");
        self.reaped = true;
        self.collect(Some(status))
    }

    fn collect(&mut self, status: Option<ExitStatus>) -> PeerOutput {
        let join = |h: Option<JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        let status = match status {
            Some(s) => s,
            None => self.child.wait().expect("reap client"),
        };
        PeerOutput {
            command: self.command.clone(),
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for RunningPeer {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `peer` with `args` to the end (bounded by [`PEER_TIMEOUT`]).
#[track_caller]
pub fn run_peer(peer: Peer, args: &[String]) -> PeerOutput {
    spawn_peer(peer, args).wait()
}

/// Downloads `remote` from `server` into `local` with `peer`.
#[track_caller]
pub fn download(
    peer: Peer,
    server: &Server,
    remote: &str,
    local: &Path,
    opts: &Opts,
) -> PeerOutput {
    run_peer(peer, &get_args(peer, server.port, remote, local, opts))
}

/// Uploads `local` to `server` as `remote` with `peer`.
#[track_caller]
pub fn upload(peer: Peer, server: &Server, local: &Path, remote: &str, opts: &Opts) -> PeerOutput {
    run_peer(peer, &put_args(peer, server.port, local, remote, opts))
}

/// Asserts that `peer` reported a server ERROR with one of `codes`, the way that client does:
/// tftp-hpa prints `Error code N` (and exits 0), busybox prints `server error: (N)` and exits
/// 1, curl exits 68 (ERROR 1), 69 (ERROR 2), 70 (ERROR 3) or 71 (others), atftp exits
/// non-zero (its message carries no code).
#[track_caller]
pub fn assert_client_saw_error(peer: Peer, out: &PeerOutput, codes: &[u16]) {
    match peer {
        Peer::TftpHpa => assert!(
            codes
                .iter()
                .any(|c| out.text().contains(&format!("Error code {c}:"))),
            "tftp-hpa should print `Error code N:` for N in {codes:?}: {out}"
        ),
        Peer::Atftp => assert!(!out.status.success(), "atftp should fail: {out}"),
        Peer::Curl => {
            let exit_codes: Vec<i32> = codes
                .iter()
                .map(|c| match c {
                    1 => 68, // CURLE_TFTP_NOTFOUND
                    2 => 69, // CURLE_TFTP_PERM
                    3 => 70, // CURLE_REMOTE_DISK_FULL
                    _ => 71, // CURLE_TFTP_ILLEGAL
                })
                .collect();
            assert!(
                out.status.code().is_some_and(|c| exit_codes.contains(&c)),
                "curl should exit with one of {exit_codes:?} for ERROR {codes:?}: {out}"
            );
        }
        Peer::Busybox => {
            assert!(!out.status.success(), "busybox should fail: {out}");
            assert!(
                codes
                    .iter()
                    .any(|c| out.text().contains(&format!("server error: ({c})"))),
                "busybox should print `server error: (N)` for N in {codes:?}: {out}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bounded commands
// ---------------------------------------------------------------------------------------

/// Runs `cmd` to the end with stdin closed, collecting its stdout and stderr (read on threads
/// of their own, so a full pipe never blocks it); kills it by its PID and panics if it runs
/// longer than `limit`.
#[track_caller]
pub fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    std::process::Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

/// The port of `metrics at http://127.0.0.1:PORT/metrics ...` in the server's log.
pub fn metrics_port(srv: &Server) -> u16 {
    let needle = "metrics at http://127.0.0.1:";
    assert!(
        wait_until(Duration::from_secs(20), || srv.log().contains(needle)),
        "no metrics line in the log:\n{}",
        srv.log()
    );
    let log = srv.log();
    let rest = &log[log.find(needle).unwrap() + needle.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("metrics port")
}

/// One HTTP/1.1 GET (Connection: close): status code, head, body.
pub fn http_get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    std::io::Write::write_fmt(
        &mut s,
        format_args!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the HTTP response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (status, head.to_owned(), body.to_owned())
}
