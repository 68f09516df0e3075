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
use tftpx_origin::S3Origin;

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

async fn serve_and_client(origin: S3Origin) -> (Client, tftpx::CancellationToken) {
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
        .blksize(1024)
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
