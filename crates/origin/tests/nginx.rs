//! `HttpOrigin` and `CachedOrigin` against nginx (Debian's `/usr/sbin/nginx`, with its dav
//! module for PUT; `.ci/install-peers.sh` installs it), started here on 127.0.0.1 with a
//! configuration of its own, served by a real `tftpx::Server` and fetched with the tftpx
//! client. Python's http.server (the other tests) sends no ETag; nginx does, so this is
//! where revalidation by `If-None-Match` meets a real server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tftpx::proto::ErrorCode;
use tftpx_origin::{CachedOrigin, HttpOrigin};

#[path = "support/tftp.rs"]
mod tftp;
use tftp::{client, serve, server_code, settle};

const NGINX: &str = "/usr/sbin/nginx";

/// One request in nginx's access log (the `tftpx` format below).
#[derive(Debug, Clone, PartialEq)]
struct Hit {
    method: String,
    uri: String,
    status: u16,
    /// The request carried `If-None-Match`.
    conditional: bool,
    /// Its `X-TFTP-Client-IP` header.
    client_ip: String,
}

/// nginx serving `www`, killed (by its own PID) when dropped.
struct Nginx {
    child: Child,
    port: u16,
    www: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx (one process, no daemon) serving `files`, with PUT into `/in/`, 403 for
    /// `/forbidden/` and 500 for `/broken`; waits (at most 30 s) until it accepts.
    fn start(files: &[(&str, &[u8])]) -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run `bash .ci/install-peers.sh` (Debian's nginx package)"
        );
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        std::fs::create_dir(&www).unwrap();
        for (name, body) in files {
            let p = www.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let log = dir.path().join("access.log");
        // nginx needs a port number in its configuration: ask the OS for a free one, and
        // try again with another if someone took it in between (bounded).
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let d = dir.path().display();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  log_format tftpx '$request_method\\t$uri\\t$status\\t$http_if_none_match\\t$http_x_tftp_client_ip';\n\
                 access_log {d}/access.log tftpx;\n  client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
                 location /in/ {{ dav_methods PUT; create_full_put_path on; client_max_body_size 0; }}\n\
                 location /forbidden/ {{ return 403; }}\n    location = /broken {{ return 500; }}\n  }}\n}}\n"
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        port,
                        www,
                        log,
                        _dir: dir,
                    };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Every request logged so far (nginx writes a line when it has answered).
    fn hits(&self) -> Vec<Hit> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Hit {
                    method: f[0].to_owned(),
                    uri: f[1].to_owned(),
                    status: f[2].parse().unwrap(),
                    conditional: f[3] != "-",
                    client_ip: f[4].to_owned(),
                }
            })
            .collect()
    }

    /// Requests for `uri` as (method, status, conditional).
    fn hits_for(&self, uri: &str) -> Vec<(String, u16, bool)> {
        self.hits()
            .into_iter()
            .filter(|h| h.uri == uri)
            .map(|h| (h.method, h.status, h.conditional))
            .collect()
    }
}

/// Bytes that differ from block to block (a shifted or repeated block shows).
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1428 + seed) as u8).collect()
}

/// nginx logs a request once it has answered: waits (at most 10 s) until `n` are logged.
async fn logged(ngx: &Nginx, n: usize) -> Vec<Hit> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = ngx.hits();
        if hits.len() >= n || Instant::now() > deadline {
            return hits;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_and_uploads_through_nginx() {
    let image = pattern(300_000, 0);
    let ngx = Nginx::start(&[("boot/image.bin", &image), ("empty.bin", b"")]);
    let (addr, token) = serve(HttpOrigin::new(&ngx.url()).unwrap().allow_write(true));
    let c = client(addr);

    let mut got = Vec::new();
    let report = c.get("/boot/image.bin", &mut got, |_| {}).await.unwrap();
    assert!(got == image, "download differs ({} bytes)", got.len());
    assert_eq!(
        report.negotiated.tsize,
        Some(300_000),
        "tsize: Content-Length"
    );
    let mut got = Vec::new();
    c.get("empty.bin", &mut got, |_| {}).await.unwrap();
    assert!(got.is_empty());
    for (name, code) in [
        ("missing.bin", ErrorCode::FileNotFound),
        ("forbidden/x.bin", ErrorCode::AccessViolation),
        ("broken", ErrorCode::NotDefined),
    ] {
        let e = c.get(name, Vec::new(), |_| {}).await.unwrap_err();
        assert_eq!(server_code(&e), code, "{name}");
    }

    // An upload is one PUT (nginx's dav module) with every byte, after the last block.
    let body = pattern(200_000, 3);
    c.put("in/new.bin", &body[..], Some(body.len() as u64), |_| {})
        .await
        .unwrap();
    assert!(
        std::fs::read(ngx.www.join("in/new.bin")).unwrap() == body,
        "the stored upload differs"
    );
    // A replacement: the whole new content, nothing of the old one.
    let smaller = pattern(5_000, 9);
    c.put("in/new.bin", &smaller[..], Some(5_000), |_| {})
        .await
        .unwrap();
    assert!(std::fs::read(ngx.www.join("in/new.bin")).unwrap() == smaller);
    let hits = logged(&ngx, 7).await;
    assert_eq!(
        ngx.hits_for("/in/new.bin")
            .iter()
            .map(|(m, s, _)| (m.as_str(), *s))
            .collect::<Vec<_>>(),
        [("PUT", 201), ("PUT", 204)],
        "{hits:?}"
    );
    assert!(
        hits.iter().all(|h| h.client_ip == "127.0.0.1"),
        "X-TFTP-Client-IP on every request: {hits:?}"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_revalidates_with_nginx_etags() {
    let v1 = pattern(100_000, 1);
    let ngx = Nginx::start(&[("kernel", &v1)]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cached = CachedOrigin::new(
        HttpOrigin::new(&ngx.url()).unwrap(),
        cache_dir.path(),
        64 << 20,
    )
    .unwrap();
    let (addr, token) = serve(cached.clone());
    let c = client(addr);
    for round in 0..3 {
        let mut got = Vec::new();
        c.get("kernel", &mut got, |_| {}).await.unwrap();
        assert!(got == v1, "round {round} differs");
        settle(&cached).await;
    }
    let hits = logged(&ngx, 3).await;
    assert_eq!(
        ngx.hits_for("/kernel"),
        [
            ("GET".to_owned(), 200, false),
            ("GET".to_owned(), 304, true),
            ("GET".to_owned(), 304, true)
        ],
        "one full GET, then If-None-Match answered 304: {hits:?}"
    );
    let s = cached.stats();
    assert_eq!((s.fetches, s.hits), (1, 2), "{s:?}");

    // The file changes at the origin (new size, new ETag): fetched again, served new.
    let v2 = pattern(150_000, 2);
    std::fs::write(ngx.www.join("kernel"), &v2).unwrap();
    settle(&cached).await;
    let mut got = Vec::new();
    c.get("kernel", &mut got, |_| {}).await.unwrap();
    assert!(got == v2, "the changed file was not fetched again");
    logged(&ngx, 4).await;
    assert_eq!(
        ngx.hits_for("/kernel").last().unwrap(),
        &("GET".to_owned(), 200, true),
        "a conditional GET answered in full"
    );
    token.cancel();
}
