//! A TFTP server backed by an origin: `cargo run -p tftpx-origin --example origin --
//! http://127.0.0.1:8000/` (or `s3://BUCKET/PREFIX` with the AWS variables set), then
//! `curl tftp://127.0.0.1:6969/NAME` fetches `NAME` from there, streamed.

use tftpx::Server;
use tftpx_origin::Origin;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args()
        .nth(1)
        .ok_or("usage: origin http://HOST/PATH/ | s3://BUCKET/PREFIX")?;
    let server = Server::builder(Origin::parse(&root)?)
        .listen("127.0.0.1:6969".parse()?)
        .bind()?;
    server.run().await;
    Ok(())
}
