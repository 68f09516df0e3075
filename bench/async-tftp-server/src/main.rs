//! `async-tftp-server ADDR:PORT DIR`: serves DIR read-write with async-tftp's `DirHandler` on a
//! tokio runtime, so bench/compare.sh can compare tftpx against it.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: async-tftp-server ADDR:PORT DIR");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse()?;
    let server = async_tftp::server::TftpServerBuilder::with_dir_rw(&dir)?
        .bind(addr)
        .build()
        .await?;
    eprintln!("async-tftp listening on {}", server.listen_addr()?);
    server.serve().await?;
    Ok(())
}
