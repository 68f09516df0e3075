//! The HTTP test origin (`tests/origin_http.py`, Python's http.server, standard library
//! only) as a process the tests start and stop, shared by the origin test files.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python origin, killed (by its own PID) when dropped.
pub struct Origin {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its access log: one JSON object per line.
    pub log: PathBuf,
    /// Created by a test: bodies held back halfway (`/slow/*`) go on.
    pub release: PathBuf,
    /// While it exists, every body is cut off halfway.
    pub die: PathBuf,
    /// The directory it serves.
    pub www: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Origin {
    /// Starts the origin serving `files`; waits (at most 30 s) until it listens.
    pub fn start(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        for (name, body) in files {
            let p = www.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let (log, port_file, release, die) = (
            dir.path().join("access.log"),
            dir.path().join("port"),
            dir.path().join("release"),
            dir.path().join("die"),
        );
        std::fs::write(&log, b"").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/origin_http.py");
        let child = Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(&www)
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--release")
            .arg(&release)
            .arg("--die")
            .arg(&die)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 must be installed (bash .ci/install-peers.sh)");
        let mut origin = Origin {
            child,
            port: 0,
            log,
            release,
            die,
            www,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                origin.port = p.trim().parse().unwrap();
                return origin;
            }
            if let Some(status) = origin.child.try_wait().unwrap() {
                panic!("the origin exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the origin did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The access log's entries.
    pub fn entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
