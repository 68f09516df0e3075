//! A dynamic handler: every client gets an iPXE script naming its own address.
//! `cargo run -p tftpx --example ipxe` then `curl tftp://127.0.0.1:6969/boot.ipxe`.

use std::io::Cursor;
use tftpx::{Handler, HandlerError, NoUpload, ReadFile, RequestInfo, Server};

struct Ipxe;

impl Handler for Ipxe {
    type Reader = Cursor<Vec<u8>>;
    type Writer = NoUpload;
    async fn open_read(
        &self,
        req: &RequestInfo<'_>,
    ) -> Result<ReadFile<Cursor<Vec<u8>>>, HandlerError> {
        let ip = req.peer.ip().to_canonical();
        let script = format!("#!ipxe\nchain http://boot.example/{ip}/menu.ipxe\n").into_bytes();
        Ok(ReadFile {
            size: Some(script.len() as u64),
            reader: Cursor::new(script),
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(Ipxe)
        .listen("127.0.0.1:6969".parse()?)
        .bind()?;
    server.run().await;
    Ok(())
}
