//! Every client gets an iPXE script naming its own address (a dynamic handler).
//! `cargo run -p tftpx --example ipxe`, then `curl tftp://127.0.0.1:6969/boot.ipxe`.

#[tokio::main]
async fn main() -> Result<(), tftpx::ServerError> {
    let handler = tftpx::from_fn(|req| {
        let ip = req.peer.ip().to_canonical();
        Ok(format!("#!ipxe\nchain http://boot.example/{ip}/menu.ipxe\n").into_bytes())
    });
    let server = tftpx::Server::builder(handler).listen("127.0.0.1:6969".parse().unwrap());
    server.bind()?.run().await;
    Ok(())
}
