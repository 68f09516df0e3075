//! `tftpx serve http://...`: the binary serves an HTTP origin (the Python origin of
//! crates/origin/tests/origin_http.py, started here on 127.0.0.1) to real clients (curl,
//! tftp-hpa), confined by Landlock to reading /etc and connecting to the origin's port.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{download, http_get, metrics_port, pseudo_random, wait_until, Opts, Peer, Server};

struct HttpOrigin {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for HttpOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_origin(dir: &Path, files: &[(&str, &[u8])]) -> HttpOrigin {
    let www = dir.join("www");
    for (name, body) in files {
        let p = www.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let (log, port_file) = (dir.join("access.log"), dir.join("port"));
    std::fs::write(&log, b"").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../origin/tests/origin_http.py");
    let child = Command::new("python3")
        .arg(script)
        .arg("--dir")
        .arg(&www)
        .arg("--log")
        .arg(&log)
        .arg("--port-file")
        .arg(&port_file)
        .arg("--release")
        .arg(dir.join("release"))
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 must be installed (bash .ci/install-peers.sh)");
    let mut origin = HttpOrigin {
        child,
        port: 0,
        log,
    };
    assert!(
        wait_until(Duration::from_secs(30), || port_file.exists()),
        "the origin did not start in 30 s"
    );
    origin.port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    origin
}

#[test]
fn serve_an_http_origin_to_real_clients_under_landlock() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = pseudo_random(1_500_000);
    let origin = start_origin(dir.path(), &[("boot/vmlinuz", &kernel), ("empty", b"")]);
    let url = format!("http://127.0.0.1:{}/", origin.port);
    let server = Server::start(Path::new(&url), &[]);
    let log = server.log();
    assert!(
        log.contains(&format!("serving {url} on 127.0.0.1:")),
        "{log}"
    );
    if log.contains("Landlock (ABI") {
        assert!(
            log.contains(&format!(
                "file access confined to /etc (read only); no other file, TCP connections \
                 to port(s) {} only",
                origin.port
            )),
            "{log}"
        );
    }

    for peer in [Peer::Curl, Peer::TftpHpa] {
        let out = dir.path().join(format!("vmlinuz.{}", peer.name()));
        download(peer, &server, "/boot/vmlinuz", &out, &Opts::default()).assert_success();
        assert!(
            std::fs::read(&out).unwrap() == kernel,
            "{}: download differs",
            peer.name()
        );
    }
    let out = dir.path().join("missing.out");
    let o = download(Peer::TftpHpa, &server, "nope", &out, &Opts::default());
    common::assert_client_saw_error(Peer::TftpHpa, &o, &[1]);
    let o = download(
        Peer::TftpHpa,
        &server,
        "../etc/passwd",
        &out,
        &Opts::default(),
    );
    common::assert_client_saw_error(Peer::TftpHpa, &o, &[2]);

    // curl sends tsize: the OACK's is the Content-Length, and the summary says so.
    let lines = server.wait_summaries(
        common::Kind::Rrq,
        "/boot/vmlinuz",
        2,
        Duration::from_secs(30),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("tsize={}", kernel.len()))),
        "{lines:?}"
    );
    let access = std::fs::read_to_string(&origin.log).unwrap();
    assert!(!access.contains(".."), "{access}");
    assert_eq!(access.matches("/boot/vmlinuz").count(), 2, "{access}");
}

#[test]
fn uploads_reach_the_origin_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), &[]);
    let url = format!("http://127.0.0.1:{}/", origin.port);
    let body = pseudo_random(300_000);
    let local = dir.path().join("up.bin");
    std::fs::write(&local, &body).unwrap();

    let ro = Server::start(Path::new(&url), &[]);
    let out = common::upload(Peer::TftpHpa, &ro, &local, "in/ro.bin", &Opts::default());
    common::assert_client_saw_error(Peer::TftpHpa, &out, &[2]);
    drop(ro);

    let rw = Server::start(Path::new(&url), &["--allow-create"]);
    assert!(rw
        .log()
        .contains("uploads sent to the origin after their last block"));
    for peer in [Peer::Curl, Peer::TftpHpa] {
        let remote = format!("in/{}.bin", peer.name());
        common::upload(peer, &rw, &local, &remote, &Opts::default()).assert_success();
        let stored = dir.path().join("www").join(&remote);
        assert!(std::fs::read(&stored).unwrap() == body, "{remote} differs");
    }
    let access = std::fs::read_to_string(&origin.log).unwrap();
    assert!(!access.contains("ro.bin"), "{access}");
    assert_eq!(access.matches("\"event\": \"put\"").count(), 2, "{access}");
}

/// Files in a `--cache` directory, sorted (`.tmp-*` are fetches under way).
fn cache_files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| {
                let e = e.unwrap();
                let len = e.metadata().unwrap().len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn cache_serves_a_second_client_after_one_304_under_landlock() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = pseudo_random(700_000);
    let origin = start_origin(dir.path(), &[("boot/vmlinuz", &kernel)]);
    let url = format!("http://127.0.0.1:{}/", origin.port);
    // Created by the server (it does not exist yet).
    let cache = dir.path().join("cache/http");
    let cache_arg = cache.to_str().unwrap().to_owned();
    let server = Server::start(
        Path::new(&url),
        &[
            "--cache",
            &cache_arg,
            "--cache-size",
            "100M",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let log = server.log();
    assert!(
        log.contains(&format!(
            "cache: {cache_arg} (at most 104857600 bytes), revalidated"
        )),
        "{log}"
    );
    let key = "626f6f742f766d6c696e757a"; // hex of "boot/vmlinuz"
    let mut outs = Vec::new();
    for peer in [Peer::Curl, Peer::TftpHpa] {
        let out = dir.path().join(format!("vmlinuz.{}", peer.name()));
        download(peer, &server, "/boot/vmlinuz", &out, &Opts::default()).assert_success();
        assert!(
            std::fs::read(&out).unwrap() == kernel,
            "{}: download differs",
            peer.name()
        );
        outs.push(out);
        // The whole file is renamed into place (4 KiB header + body) once fetched: under
        // Landlock, the server could create, write and rename in --cache.
        assert!(
            wait_until(Duration::from_secs(30), || cache_files(&cache)
                == [(key.to_owned(), 4096 + kernel.len() as u64)]),
            "{:?}",
            cache_files(&cache)
        );
    }
    let access = std::fs::read_to_string(&origin.log).unwrap();
    let requests: Vec<serde_json::Value> = access
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let full = requests
        .iter()
        .filter(|e| e["event"] == "request" && e["inm"].is_null())
        .count();
    let conditional = requests
        .iter()
        .filter(|e| e["event"] == "request" && !e["inm"].is_null())
        .count();
    let not_modified = requests
        .iter()
        .filter(|e| e["event"] == "not-modified")
        .count();
    assert_eq!(
        (full, conditional, not_modified),
        (1, 1, 1),
        "one GET, then one conditional GET answered 304: {access}"
    );
    // The same in --metrics: one fetch, one 304, one hit; the bytes held.
    let (status, _, body) = http_get(metrics_port(&server), "/metrics");
    assert_eq!(status, 200);
    let sample = |name: &str| -> String {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };
    for (name, want) in [
        ("tftpx_cache_fetches_total", "1".to_owned()),
        ("tftpx_cache_not_modified_total", "1".to_owned()),
        ("tftpx_cache_hits_total", "1".to_owned()),
        ("tftpx_cache_shared_total", "0".to_owned()),
        ("tftpx_cache_bytes", (4096 + kernel.len()).to_string()),
    ] {
        assert_eq!(sample(name), want, "{name}");
    }
    drop(server);

    // With a directory root, --cache is ignored with a warning (a shared config may set it).
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tftpx"))
        .args(["serve", ".", "--cache", &cache_arg, "--check-config"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(text.contains("ignored, the root is a directory"), "{text}");
}
