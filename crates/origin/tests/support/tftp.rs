//! The TFTP side of the origin tests: a real `tftpx::Server` in front of a handler on
//! 127.0.0.1 (OS-picked port), the tftpx client the tests fetch with, and helpers shared by
//! the origin test files.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tftpx::proto::ErrorCode;
use tftpx::{CancellationToken, Client, ClientError, Server};
use tftpx_origin::{CachedOrigin, HttpOrigin};

/// A TFTP server in front of `handler` (no rate or per-client limit: the tests are one
/// address).
pub fn serve<H: tftpx::Handler>(handler: H) -> (SocketAddr, CancellationToken) {
    serve_reporting(handler, |_| {})
}

/// [`serve`], calling `ended` with each finished transfer's file name.
pub fn serve_reporting<H: tftpx::Handler>(
    handler: H,
    ended: impl Fn(String) + Send + Sync + 'static,
) -> (SocketAddr, CancellationToken) {
    let server = Server::builder(handler)
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(1))
        .rate_limit(None)
        .max_transfers_per_client(None)
        .on_transfer_end(move |s| ended(s.filename.clone()))
        .bind()
        .unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    (addr, token)
}

/// The tftpx client for `addr`: tsize, blksize 1428, a 2 s timeout.
pub fn client(addr: SocketAddr) -> Client {
    Client::builder(addr)
        .timeout(Duration::from_secs(2))
        .tsize(true)
        .blksize(1428)
        .build()
}

/// The code of a server's ERROR (panics on any other failure).
pub fn server_code(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Server { code, .. } => *code,
        other => panic!("not a server ERROR: {other}"),
    }
}

/// Waits (at most 30 s) until no origin request of `cache` is under way (a request that
/// comes while one is joins it instead of asking the origin; the last block can reach the
/// client just before the fetch renames its file into place).
pub async fn settle(cache: &CachedOrigin<HttpOrigin>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.fetches_under_way() > 0 {
        assert!(Instant::now() < deadline, "a fetch did not end in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
