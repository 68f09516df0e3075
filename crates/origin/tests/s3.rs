//! `S3Origin` against moto's S3 server (PyPI `moto[server]`, installed by
//! `.ci/install-peers.sh` in /opt/tftpx-peers/moto-venv), served by a real `tftpx::Server`
//! on loopback and fetched with the tftpx client. Configuration reaches `S3Origin` the way
//! it does in production: through the AWS environment variables.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tftpx::proto::ErrorCode;
use tftpx::{Client, ClientError, Server};
use tftpx_origin::{CachedOrigin, S3Origin, DEFAULT_CACHE_SIZE};

const MOTO_PYTHON: &str = "/opt/tftpx-peers/moto-venv/bin/python";

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 512) as u8).collect()
}

fn server_code(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Server { code, .. } => *code,
        other => panic!("not a server ERROR: {other}"),
    }
}

async fn serve_and_client<H: tftpx::Handler>(origin: H) -> (Client, tftpx::CancellationToken) {
    let server = Server::builder(origin)
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(1))
        .rate_limit(None)
        .bind()
        .unwrap();
    let addr: SocketAddr = server.local_addrs()[0];
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    let client = Client::builder(addr)
        .timeout(Duration::from_secs(1))
        .tsize(true)
        .blksize(8192)
        .windowsize(4)
        .build();
    (client, token)
}

/// One test: the AWS variables are process-wide, so nothing else runs beside it.
#[test]
fn s3_objects_are_served_with_their_size_and_errors_map() {
    assert!(
        Path::new(MOTO_PYTHON).exists(),
        "{MOTO_PYTHON} missing: run bash .ci/install-peers.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let big = pattern(200_000);
    std::fs::write(dir.path().join("big"), &big).unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    std::fs::write(dir.path().join("secret"), b"secret").unwrap();
    let info = dir.path().join("info.json");
    let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/origin_s3.py");
    let mut moto = Moto(
        Command::new(MOTO_PYTHON)
            .arg(script)
            .arg(&info)
            .arg(format!(
                "tftp/public/big.bin={}",
                dir.path().join("big").display()
            ))
            .arg(format!(
                "tftp/public/empty.bin={}",
                dir.path().join("empty").display()
            ))
            .arg(format!(
                "tftp/private/key.bin={}",
                dir.path().join("secret").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let info: serde_json::Value = loop {
        if let Ok(s) = std::fs::read_to_string(&info) {
            break serde_json::from_str(&s).unwrap();
        }
        if let Some(st) = moto.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap();
            panic!("moto exited ({st}):\n{log}");
        }
        assert!(Instant::now() < deadline, "moto did not start in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let port = info["port"].as_u64().unwrap();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", info["key_id"].as_str().unwrap()),
        ("AWS_SECRET_ACCESS_KEY", info["secret"].as_str().unwrap()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}")),
    ] {
        std::env::set_var(k, v);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // `public` is readable by this key, `private` is not; the prefix is `tftp`.
        let (c, token) = serve_and_client(S3Origin::from_env("images", "/tftp/").unwrap()).await;
        let mut got = Vec::new();
        let report = c.get("/public/big.bin", &mut got, |_| {}).await.unwrap();
        assert!(got == big, "multi-block download differs");
        assert_eq!(report.negotiated.tsize, Some(big.len() as u64), "tsize");
        let mut got = Vec::new();
        let report = c.get("public/empty.bin", &mut got, |_| {}).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(report.negotiated.tsize, Some(0));

        let e = c
            .get("public/missing.bin", Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(
            server_code(&e),
            ErrorCode::FileNotFound,
            "NoSuchKey -> ERROR 1"
        );
        let e = c
            .get("private/key.bin", Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(
            server_code(&e),
            ErrorCode::AccessViolation,
            "AccessDenied -> ERROR 2"
        );
        for name in [
            "../tftp/private/key.bin",
            "public/../private/key.bin",
            "%2e%2e/x",
            "public/big.bin?x=1",
        ] {
            let e = c.get(name, Vec::new(), |_| {}).await.unwrap_err();
            assert_eq!(server_code(&e), ErrorCode::AccessViolation, "{name}");
        }
        token.cancel();

        // Uploads: PutObject for a small file, multipart past 10 MiB, both committed after
        // the last block; an abandoned multipart upload is aborted and leaves no object.
        let origin = S3Origin::from_env("images", "tftp")
            .unwrap()
            .allow_write(true);
        let (c, token) = serve_and_client(origin).await;
        let small = pattern(100_000);
        c.put(
            "incoming/small.bin",
            &small[..],
            Some(small.len() as u64),
            |_| {},
        )
        .await
        .unwrap();
        let large = pattern(12 << 20);
        c.put(
            "incoming/large.bin",
            &large[..],
            Some(large.len() as u64),
            |_| {},
        )
        .await
        .unwrap();
        for (name, body) in [
            ("incoming/small.bin", &small),
            ("incoming/large.bin", &large),
        ] {
            let mut got = Vec::new();
            c.get(name, &mut got, |_| {}).await.unwrap();
            assert!(got == *body, "{name}: stored object differs");
        }
        let e = c
            .put("public/x.bin", &b"x"[..], Some(1), |_| {})
            .await
            .unwrap_err();
        assert_eq!(
            server_code(&e),
            ErrorCode::AccessViolation,
            "PutObject denied -> ERROR 2"
        );
        let e = c
            .put(
                "incoming/abandoned.bin",
                Broken(std::io::Cursor::new(pattern(11 << 20))),
                Some(12 << 20),
                |_| {},
            )
            .await;
        assert!(e.is_err());
        let abort = "DELETE /images/tftp/incoming/abandoned.bin?uploadId=";
        let until = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(dir.path().join("moto.log"))
            .unwrap()
            .contains(abort)
        {
            assert!(
                Instant::now() < until,
                "the multipart upload was not aborted in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = c
            .get("incoming/abandoned.bin", Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(server_code(&e), ErrorCode::FileNotFound, "no object");
        token.cancel();

        // Cached: one GetObject with a body, then one conditional on the ETag that moto
        // answers 304 (its request log says which).
        let moto_log = || std::fs::read_to_string(dir.path().join("moto.log")).unwrap();
        let big_gets = |log: &str, status: &str| {
            log.lines()
                .filter(|l| {
                    // werkzeug colours a 304's request line: no quote right after it.
                    l.contains("GET /images/tftp/public/big.bin HTTP/1.1")
                        && l.contains(&format!("\" {status} "))
                })
                .count()
        };
        let before = moto_log();
        let cache_dir = tempfile::tempdir().unwrap();
        let cached = CachedOrigin::new(
            S3Origin::from_env("images", "tftp").unwrap(),
            cache_dir.path(),
            DEFAULT_CACHE_SIZE,
        )
        .unwrap();
        let (c, token) = serve_and_client(cached.clone()).await;
        for _ in 0..2 {
            let mut got = Vec::new();
            c.get("public/big.bin", &mut got, |_| {}).await.unwrap();
            assert!(got == big, "cached download differs");
            let deadline = Instant::now() + Duration::from_secs(30);
            while cached.fetches_under_way() > 0 {
                assert!(Instant::now() < deadline, "the fetch did not end in 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let s = cached.stats();
        assert_eq!((s.fetches, s.not_modified, s.hits), (1, 1, 1), "{s:?}");
        let after = moto_log();
        assert_eq!(
            (
                big_gets(&after, "200") - big_gets(&before, "200"),
                big_gets(&after, "304") - big_gets(&before, "304")
            ),
            (1, 1),
            "{after}"
        );
        token.cancel();

        // The same store configured by profile files alone (no AWS_* credential, region or
        // endpoint variable): the key in AWS_SHARED_CREDENTIALS_FILE's `[boot]`, the region
        // and endpoint in AWS_CONFIG_FILE's `[profile boot]`; `[default]` holds a wrong key.
        let (creds, config) = (dir.path().join("credentials"), dir.path().join("config"));
        std::fs::write(
            &creds,
            format!(
                "[default]\naws_access_key_id = AKIAWRONGWRONGWRONG1\naws_secret_access_key = x\n\n\
                 [boot]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                info["key_id"].as_str().unwrap(),
                info["secret"].as_str().unwrap()
            ),
        )
        .unwrap();
        std::fs::write(
            &config,
            // Both profiles name the local store: nothing here may reach AWS itself.
            format!(
                "[default]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:{port}\n\n\
                 [profile boot]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:{port}\n"
            ),
        )
        .unwrap();
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
        ] {
            std::env::remove_var(k);
        }
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &creds);
        std::env::set_var("AWS_CONFIG_FILE", &config);
        std::env::set_var("AWS_PROFILE", "boot");
        let (c, token) = serve_and_client(S3Origin::from_env("images", "tftp").unwrap()).await;
        let mut got = Vec::new();
        c.get("public/big.bin", &mut got, |_| {}).await.unwrap();
        assert!(got == big, "download with profile files differs");
        token.cancel();
        // The default profile's key is refused by the store (ERROR 2): the profile chosen is
        // the one used, never silently another identity.
        std::env::remove_var("AWS_PROFILE");
        let (c, token) = serve_and_client(S3Origin::from_env("images", "tftp").unwrap()).await;
        let e = c
            .get("public/big.bin", Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(server_code(&e), ErrorCode::AccessViolation, "{e}");
        token.cancel();

        // The store down: ERROR 0, promptly.
        drop(moto);
        let (c, token) = serve_and_client(S3Origin::from_env("images", "tftp").unwrap()).await;
        let start = Instant::now();
        let e = c
            .get("public/big.bin", Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(server_code(&e), ErrorCode::NotDefined, "{e}");
        assert!(start.elapsed() < Duration::from_secs(60));
        token.cancel();
    });
    // moto's request log: no hostile name reached it.
    let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap();
    let requests: Vec<&str> = log.lines().filter(|l| l.contains("GET /images/")).collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("GET /images/tftp/public/big.bin ")),
        "{log}"
    );
    for l in &requests {
        assert!(
            !l.contains("..") && !l.contains("%2e") && !l.contains("%2E") && !l.contains('?'),
            "{l}"
        );
    }
}

/// A reader that yields its bytes and then fails: an upload abandoned midway.
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
