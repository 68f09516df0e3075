//! The `Handler` API for handlers other than `DirHandler`: a read-only handler names only
//! `NoUpload` and `open_read`, and learns the address the request came to and the options
//! the client asked for; `normalize_name` is `DirHandler`'s name check.

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tftpx::proto::ErrorCode;
use tokio::task::JoinHandle;

use tftpx::{
    normalize_name, CancellationToken, Client, ClientError, Handler, HandlerError, NoUpload,
    ReadFile, RequestInfo, Server,
};

/// What the handler was told: peer, local address, normalised name, options.
type Seen = (SocketAddr, SocketAddr, Vec<u8>, Vec<(String, String)>);

/// Serves a script naming the client, and records what it was told.
#[derive(Clone, Default)]
struct Script(Arc<Mutex<Vec<Seen>>>);

impl Handler for Script {
    type Reader = Cursor<Vec<u8>>;
    type Writer = NoUpload;

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        let name = normalize_name(req.filename)?;
        let options = req
            .options
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        self.0
            .lock()
            .unwrap()
            .push((req.peer, req.local, name.clone(), options));
        let body = format!(
            "#!ipxe\necho {} asked for {}\n",
            req.peer.ip(),
            String::from_utf8_lossy(&name)
        );
        let size = body.len() as u64;
        Ok(ReadFile {
            reader: Cursor::new(body.into_bytes()),
            size: Some(size),
        })
    }
}

/// A server for `handler` on 127.0.0.1 (OS-picked port, 500 ms timeout, no rate limit):
/// its address, shutdown token and task.
fn serve<H: Handler>(handler: H) -> (SocketAddr, CancellationToken, JoinHandle<()>) {
    let server = Server::builder(handler)
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_millis(500))
        .rate_limit(None)
        .bind()
        .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    (addr, token, tokio::spawn(server.run()))
}

#[tokio::test]
async fn read_only_handler_sees_local_address_and_options_and_refuses_writes() {
    let handler = Script::default();
    let (addr, token, task) = serve(handler.clone());
    let client = Client::builder(addr)
        .timeout(Duration::from_millis(500))
        .blksize(1024)
        .tsize(true)
        .build();

    let mut got = Vec::new();
    client
        .get("/boot//menu.ipxe", &mut got, |_| {})
        .await
        .unwrap();
    assert_eq!(got, b"#!ipxe\necho 127.0.0.1 asked for boot/menu.ipxe\n");

    // The default open_write: ERROR 2, and the handler was not asked.
    let err = client
        .put("up.bin", &b"data"[..], Some(4), |_| {})
        .await
        .unwrap_err();
    match err {
        ClientError::Server { code, message } => {
            assert_eq!(code, ErrorCode::AccessViolation);
            assert_eq!(message, "Writing is disabled on this server");
        }
        other => panic!("{other}"),
    }
    // `..` is refused by the shared check before the handler records anything.
    let err = client
        .get("a/../../etc/passwd", &mut Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code, .. } if *code == ErrorCode::AccessViolation),
        "{err}"
    );
    token.cancel();
    task.await.unwrap();

    let seen = handler.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (peer, local, name, options) = &seen[0];
    assert_eq!(peer.ip(), addr.ip());
    assert_eq!(*local, addr, "the address the request was sent to");
    assert_eq!(name, b"boot/menu.ipxe");
    let get = |k: &str| {
        options
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("blksize"), Some("1024"), "{options:?}");
    assert_eq!(get("tsize"), Some("0"), "{options:?}");
}

#[test]
fn normalize_name_is_the_directory_handlers_check() {
    assert_eq!(normalize_name(b"/pxelinux.0").unwrap(), b"pxelinux.0");
    assert_eq!(normalize_name(b"\\Boot\\BCD").unwrap(), b"Boot/BCD");
    assert_eq!(normalize_name(b"./a//b").unwrap(), b"a/b");
    // Nothing is decoded.
    assert_eq!(normalize_name(b"%2e%2e/x").unwrap(), b"%2e%2e/x");
    for bad in [
        &b"../x"[..],
        b"a/..",
        b"a\\..\\..\\b",
        b"/",
        b".",
        b"a\0b",
        b"x.tftpx-part",
    ] {
        assert_eq!(
            normalize_name(bad).unwrap_err().code,
            ErrorCode::AccessViolation,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        normalize_name(b"dir/").unwrap_err(),
        HandlerError::not_found()
    );
    assert!(normalize_name(&[b'a'; 256]).is_err());
    assert!(normalize_name(&[b'a'; 1025]).is_err());
}

/// `from_fn`: a handler that is one function (examples/ipxe.rs): its bytes with tsize, its
/// errors as they are, WRQ refused.
#[tokio::test]
async fn a_handler_made_of_a_function() {
    let handler = tftpx::from_fn(|req| match normalize_name(req.filename)?.as_slice() {
        b"boot.ipxe" => {
            Ok(format!("#!ipxe\nchain http://boot.example/{}\n", req.peer.ip()).into_bytes())
        }
        _ => Err(HandlerError::new(ErrorCode::FileNotFound, "No such script")),
    });
    let (addr, token, task) = serve(handler);
    let client = Client::builder(addr)
        .timeout(Duration::from_millis(500))
        .tsize(true)
        .build();
    let mut got = Vec::new();
    let report = client.get("/boot.ipxe", &mut got, |_| {}).await.unwrap();
    let want = b"#!ipxe\nchain http://boot.example/127.0.0.1\n";
    assert_eq!(got, want);
    assert_eq!(report.negotiated.tsize, Some(want.len() as u64));
    for (result, code, text) in [
        (
            client.get("other", &mut Vec::new(), |_| {}).await,
            ErrorCode::FileNotFound,
            "No such script",
        ),
        (
            client.put("boot.ipxe", &b"x"[..], Some(1), |_| {}).await,
            ErrorCode::AccessViolation,
            "Writing is disabled on this server",
        ),
    ] {
        match result.unwrap_err() {
            ClientError::Server { code: c, message } => {
                assert_eq!((c, message.as_str()), (code, text));
            }
            other => panic!("{other}"),
        }
    }
    token.cancel();
    task.await.unwrap();
}
