//! `HttpOrigin` against a real HTTP server started here (Python's http.server, standard
//! library only: `tests/origin_http.py`), served by a real `tftpx::Server` on loopback and
//! fetched with the tftpx client.

use std::time::{Duration, Instant};

use tftpx::proto::ErrorCode;
use tftpx::ClientError;
use tftpx_origin::HttpOrigin;

#[path = "support/http_origin.rs"]
mod http_origin;
use http_origin::Origin;
#[path = "support/tftp.rs"]
mod tftp;
use tftp::{client, serve, serve_reporting, server_code};

impl Origin {
    fn requested_paths(&self) -> Vec<String> {
        self.entries()
            .iter()
            .filter(|e| e["event"] == "request")
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Bytes that differ from block to block (a shifted or repeated block shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1428) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_byte_identical_with_tsize_and_errors_map() {
    let big = pattern(300_000);
    let origin = Origin::start(&[
        ("boot/big.bin", &big),
        ("empty.bin", b""),
        ("forbidden/x.bin", b"secret"),
    ]);
    let (addr, token) = serve(HttpOrigin::new(&origin.url()).unwrap());
    let c = client(addr);

    let mut got = Vec::new();
    let report = c.get("/boot/big.bin", &mut got, |_| {}).await.unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got == big, "multi-block download differs");
    assert_eq!(
        report.negotiated.tsize,
        Some(big.len() as u64),
        "tsize in the OACK"
    );

    let mut got = Vec::new();
    let report = c.get("empty.bin", &mut got, |_| {}).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(report.negotiated.tsize, Some(0));

    let e = c.get("missing.bin", Vec::new(), |_| {}).await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::FileNotFound, "404 -> ERROR 1");
    let e = c
        .get("forbidden/x.bin", Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        server_code(&e),
        ErrorCode::AccessViolation,
        "403 -> ERROR 2"
    );
    let e = c.get("broken", Vec::new(), |_| {}).await.unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::NotDefined, "500 -> ERROR 0");

    // The X-TFTP-* headers arrived, naming this client.
    let entries = origin.entries();
    let big_req = entries
        .iter()
        .find(|e| e["path"] == "/boot/big.bin")
        .expect("the origin saw the request");
    assert_eq!(big_req["ip"], "127.0.0.1");
    assert_eq!(big_req["file"], "boot/big.bin");
    let port: u16 = big_req["port"].as_str().unwrap().parse().unwrap();
    assert_ne!(port, 0);
    assert_ne!(port, addr.port(), "the client's port, not the server's");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_never_reach_the_origin() {
    let origin = Origin::start(&[("ok.bin", b"ok"), ("etc/passwd", b"x")]);
    let (addr, token) = serve(HttpOrigin::new(&format!("{}sub/", origin.url())).unwrap());
    let c = client(addr);
    for name in [
        "../etc/passwd",
        "a/../../etc/passwd",
        "..\\etc\\passwd",
        "%2e%2e/etc/passwd",
        "%2E%2E%2Fetc%2Fpasswd",
        "ok.bin?x=1",
        "ok.bin#frag",
        "ok.bin%3fx=1",
    ] {
        let e = c.get(name, Vec::new(), |_| {}).await.unwrap_err();
        assert_eq!(server_code(&e), ErrorCode::AccessViolation, "{name}");
    }
    // A name that looks like an authority stays a path below the base.
    let e = c
        .get("//127.0.0.1:1/ok.bin", Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::FileNotFound);
    assert_eq!(origin.requested_paths(), ["/sub/127.0.0.1%3A1/ok.bin"]);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_is_down_is_error_0() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (addr, token) = serve(HttpOrigin::new(&format!("http://127.0.0.1:{port}/")).unwrap());
    let start = Instant::now();
    let e = client(addr)
        .get("x.bin", Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::NotDefined);
    match &e {
        ClientError::Server { message, .. } => assert_eq!(message, "Origin unavailable"),
        _ => unreachable!(),
    }
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "answered, not timed out"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_flows_while_the_origin_is_still_sending() {
    let big = pattern(4 << 20);
    let origin = Origin::start(&[("slow.bin", &big)]);
    let (addr, token) = serve(HttpOrigin::new(&origin.url()).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut got = Vec::new();
        let r = client(addr)
            .get("slow.bin", &mut got, move |p| {
                let _ = tx.send(p.bytes);
            })
            .await;
        (r, got)
    });
    // DATA arrives while the origin holds back its second half (it waits for `release`):
    // the first progress report with bytes (the OACK's reports none).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let bytes = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no DATA within 60 s while the origin paused")
            .expect("the download ended without DATA");
        if bytes > 0 {
            break;
        }
    }
    let events = || -> Vec<String> {
        origin
            .entries()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    };
    // The origin logs "paused" just after its first half; it cannot send "done" before
    // the release below.
    let paused_by = Instant::now() + Duration::from_secs(30);
    while !events().contains(&"paused".to_owned()) && Instant::now() < paused_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = events();
    assert!(seen.contains(&"paused".to_owned()), "{seen:?}");
    assert!(!seen.contains(&"done".to_owned()), "{seen:?}");
    std::fs::write(&origin.release, b"").unwrap();
    let (r, got) = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("the download did not finish in 120 s")
        .unwrap();
    let report = r.unwrap();
    assert!(got == big, "download differs");
    assert_eq!(report.negotiated.tsize, Some(big.len() as u64));
    token.cancel();
}

/// A reader that yields `data` and then fails: an upload abandoned midway.
struct Broken(std::io::Cursor<Vec<u8>>);

impl tokio::io::AsyncRead for Broken {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.0.position() as usize == self.0.get_ref().len() {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk gone")));
        }
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_one_put_after_the_last_block_and_abandoned_ones_none() {
    let origin = Origin::start(&[]);
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let (addr, token) = serve_reporting(
        HttpOrigin::new(&origin.url()).unwrap().allow_write(true),
        move |name| {
            let _ = ended_tx.send(name);
        },
    );
    let c = client(addr);
    let body = pattern(200_000);
    c.put("in/new.bin", &body[..], Some(body.len() as u64), |_| {})
        .await
        .unwrap();
    let stored = origin.www.join("in/new.bin");
    assert!(
        std::fs::read(&stored).unwrap() == body,
        "stored upload differs"
    );
    let e = c
        .put("forbidden/x.bin", &b"x"[..], Some(1), |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        server_code(&e),
        ErrorCode::AccessViolation,
        "403 -> ERROR 2"
    );
    // The client gives up after 50,000 bytes: nothing is PUT.
    let e = c
        .put(
            "in/abandoned.bin",
            Broken(std::io::Cursor::new(pattern(50_000))),
            Some(200_000),
            |_| {},
        )
        .await;
    assert!(e.is_err());
    // Once the server reports the transfer's end, its upload was committed or dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let name = tokio::time::timeout_at(deadline, ended.recv())
            .await
            .expect("the abandoned upload did not end within 60 s")
            .unwrap();
        if name == "in/abandoned.bin" {
            break;
        }
    }
    let puts: Vec<_> = origin
        .entries()
        .into_iter()
        .filter(|e| e["event"] == "put")
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["len"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        puts,
        [
            ("/in/new.bin".to_owned(), 200_000),
            ("/forbidden/x.bin".to_owned(), 1)
        ]
    );
    assert!(!origin.www.join("in/abandoned.bin").exists());
    token.cancel();

    // Without allow_write: ERROR 2, and nothing reaches the origin.
    let (addr, token) = serve(HttpOrigin::new(&origin.url()).unwrap());
    let e = client(addr)
        .put("in/ro.bin", &b"x"[..], Some(1), |_| {})
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), ErrorCode::AccessViolation);
    token.cancel();
}
