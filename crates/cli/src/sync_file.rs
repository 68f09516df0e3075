//! A regular file read and written with plain system calls on the calling thread.
//!
//! tokio's file type hands every read and write to its blocking thread pool: a thread
//! wake-up each way per call, which at blksize 65464 (one 64 KiB read or write per block)
//! costs more than the transfer's own work on a quiet machine. The `tftpx` command runs one
//! transfer on a current-thread runtime that already waits in `recvmsg` (blocking_wait), so
//! a read or write of a local regular file may block that thread as well, as tftp-hpa's and
//! curl's do. Only for regular files: a FIFO or a device could block for as long as its
//! other end likes, so those keep tokio's file type.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A `std::fs::File` as `AsyncRead` / `AsyncWrite` whose calls are the system calls
/// themselves, always ready (see the module docs).
#[derive(Debug)]
pub(crate) struct SyncFile(pub std::fs::File);

impl AsyncRead for SyncFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let f = &mut self.get_mut().0;
        let n = loop {
            match f.read(buf.initialize_unfilled()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SyncFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let f = &mut self.get_mut().0;
        Poll::Ready(loop {
            match f.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r,
            }
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_written_are_read_back_whole() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = SyncFile(tempfile::tempfile().unwrap());
        f.write_all(&data).await.unwrap();
        f.flush().await.unwrap();
        f.0.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
    }
}
