//! `tftpx serve` on a kernel without `openat2(2)` (before Linux 5.6): start-up fails with one
//! line saying so, instead of answering every request with ERROR 0 later. The missing
//! system call is simulated with a seccomp filter that answers `openat2` with ENOSYS
//! (Debian's `python3-seccomp`, installed by `.ci/install-peers.sh`), then the real binary
//! is executed under it.

use std::process::Command;
use std::time::Duration;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");

/// Loads a filter that makes `openat2` fail with ENOSYS (38), then executes argv[1..].
const NO_OPENAT2: &str = "import os, sys, seccomp
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
f.add_rule(seccomp.ERRNO(38), 'openat2')
f.load()
os.execv(sys.argv[1], sys.argv[1:])";

#[test]
fn without_openat2_serve_refuses_to_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), b"x").unwrap();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", NO_OPENAT2, BIN, "serve"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--user", "root"]);
    let out = common::run_bounded(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'seccomp'"),
        "python3-seccomp is not installed: run `bash .ci/install-peers.sh` as root"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("no openat2") && lines[0].contains("Linux 5.6"),
        "{stderr}"
    );
    // The same binary and directory without the filter start serving.
    let srv = common::Server::start(dir.path(), &[]);
    assert!(srv.port > 0);
}
