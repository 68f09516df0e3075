//! `ServerBuilder::remap`: the handler sees the remapped name, the summary carries both, and
//! a refusing rule answers ERROR 2 without the handler being asked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tftpx::proto::ErrorCode;
use tftpx::{
    Client, ClientError, DirHandler, Handler, HandlerError, Outcome, ReadFile, RemapRules,
    RequestInfo, Server, TransferSummary,
};

/// A [`DirHandler`] that records the names it is asked to open.
#[derive(Clone)]
struct Recording {
    inner: DirHandler,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn saw(&self, req: &RequestInfo<'_>, what: &str) {
        let name = String::from_utf8_lossy(req.filename);
        self.seen.lock().unwrap().push(format!("{what} {name}"));
    }
}

impl Handler for Recording {
    type Reader = <DirHandler as Handler>::Reader;
    type Writer = <DirHandler as Handler>::Writer;

    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Self::Reader>, HandlerError> {
        self.saw(req, "read");
        self.inner.open_read(req).await
    }

    async fn open_write(
        &self,
        req: &RequestInfo<'_>,
        size: Option<u64>,
    ) -> Result<Self::Writer, HandlerError> {
        self.saw(req, "write");
        self.inner.open_write(req, size).await
    }
}

#[tokio::test]
async fn handler_sees_the_remapped_name_and_the_summary_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello, world\n").unwrap();
    std::fs::create_dir(dir.path().join("uploads")).unwrap();
    let handler = Recording {
        inner: DirHandler::new(dir.path()).unwrap().allow_create(true),
        seen: Arc::default(),
    };
    let rules = RemapRules::parse(
        "r ^/tftpboot/\n\
         rP ^in$ uploads/\\0\n\
         a ^deny(.*)$ denied:\\1\n",
    )
    .unwrap();
    let summaries: Arc<Mutex<Vec<TransferSummary>>> = Arc::default();
    let s2 = summaries.clone();
    let server = Server::builder(handler.clone())
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_millis(500))
        .rate_limit(None)
        .remap(rules)
        .on_transfer_end(move |s| s2.lock().unwrap().push(s.clone()))
        .bind()
        .unwrap();
    let addr: SocketAddr = server.local_addrs()[0];
    let token = server.shutdown_token();
    let task = tokio::spawn(server.run());
    let client = Client::builder(addr)
        .timeout(Duration::from_millis(500))
        .build();

    let mut got = Vec::new();
    client
        .get("/tftpboot/hello", &mut got, |_| {})
        .await
        .unwrap();
    assert_eq!(got, b"hello, world\n");

    client
        .put("in", &b"uploaded\n"[..], Some(9), |_| {})
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("uploads/in")).unwrap(),
        b"uploaded\n"
    );
    assert!(!dir.path().join("in").exists());

    // An RRQ of "in" is not remapped (P rules are for uploads): no such file.
    let err = client.get("in", &mut Vec::new(), |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code, .. } if *code == ErrorCode::FileNotFound),
        "{err}"
    );

    let err = client
        .get("deny/me", &mut Vec::new(), |_| {})
        .await
        .unwrap_err();
    match err {
        ClientError::Server { code, message } => {
            assert_eq!(code, ErrorCode::AccessViolation);
            assert_eq!(message, "denied:/me");
        }
        other => panic!("{other}"),
    }

    token.cancel();
    task.await.unwrap();
    // The handler saw only remapped names, and never the refused request.
    assert_eq!(
        *handler.seen.lock().unwrap(),
        ["read hello", "write uploads/in", "read in"]
    );
    // A download's summary may come after the next request's (it is reported when the last
    // ACK arrives): ordered by name and kind.
    let mut summaries = summaries.lock().unwrap().clone();
    summaries.sort_by_key(|s| (s.filename.clone(), s.kind == tftpx::Kind::Rrq));
    let brief: Vec<(&str, tftpx::Kind, Option<&str>)> = summaries
        .iter()
        .map(|s| (s.filename.as_str(), s.kind, s.remapped.as_deref()))
        .collect();
    use tftpx::Kind::{Rrq, Wrq};
    assert_eq!(
        brief,
        [
            ("/tftpboot/hello", Rrq, Some("hello")),
            ("deny/me", Rrq, None),
            ("in", Wrq, Some("uploads/in")),
            ("in", Rrq, None),
        ]
    );
    assert_eq!(summaries[0].outcome, Outcome::Ok);
    assert_eq!(
        summaries[1].outcome,
        Outcome::Refused {
            code: ErrorCode::AccessViolation,
            message: "denied:/me".to_owned()
        }
    );
    assert!(
        summaries[0]
            .to_string()
            .contains("\"/tftpboot/hello\" -> \"hello\" octet: ok, 13 bytes"),
        "{}",
        summaries[0]
    );
}
