//! Test bodies that need a process of their own: a private network namespace (addresses and
//! ports of their own, a spray that must reach nothing else), a lower descriptor limit, or a
//! process-wide log subscriber. The test binary re-executes itself with `--exact NAME` and
//! [`CHILD_ENV`] set (under `unshare -n` for a namespace); the child runs the body.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::process::Command;

/// Set in a re-executed copy of a test binary: the named test does its work there.
pub const CHILD_ENV: &str = "TFTPX_TEST_CHILD";

/// True in the child. In the parent: runs test `name` again in a child process (in a new
/// network namespace when `netns`), shows its output and asserts that it ran and passed.
pub fn in_child(name: &str, netns: bool) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = if netns {
        let mut c = Command::new("unshare");
        // As root (CI) a network namespace is enough; otherwise a user namespace too.
        if !is_root() {
            c.arg("-r");
        }
        c.arg("-n").arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, "1");
    let out = cmd.output().expect("start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- child {name} ---\n{stdout}{stderr}--- end of child ---");
    assert!(out.status.success(), "child {name} failed: {}", out.status);
    assert!(
        stdout.contains("1 passed"),
        "child {name} did not run the test"
    );
    false
}

/// True when the process runs as root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a command (in the child's namespace); panics with its output if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A single-threaded tokio runtime for a child's body.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
