//! Byte sources and sinks between files and transfers, with netascii translation.

use std::io;

use tftpx_proto::netascii::{Decoder, Encoder};
use tftpx_proto::wire::Mode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One read from `inner`, bounded by `remaining` (see [`Source::with_len`]); 0 at the end.
async fn read_some<R: AsyncRead + Unpin>(
    inner: &mut R,
    remaining: &mut Option<u64>,
    buf: &mut [u8],
) -> io::Result<usize> {
    let Some(left) = *remaining else {
        return inner.read(buf).await;
    };
    if left == 0 {
        return Ok(0);
    }
    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    let n = inner.read(&mut buf[..want]).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file shrank while being read ({left} bytes missing)"),
        ));
    }
    *remaining = Some(left - n as u64);
    Ok(n)
}

/// Where a sender's blocks come from.
pub(crate) struct Source<R> {
    inner: R,
    netascii: Option<(Encoder, Box<[u8]>, usize, usize)>,
    eof: bool,
    error: Option<io::Error>,
    /// File bytes still to read when the size was fixed at open.
    remaining: Option<u64>,
}

impl<R: AsyncRead + Unpin> Source<R> {
    /// Serves exactly `len` bytes of the file (its size when opened, the `tsize` announced):
    /// a file that grows meanwhile is cut at `len`, one that shrinks fails the transfer
    /// instead of ending it early with a short, silently truncated copy.
    pub(crate) fn with_len(mut self, len: Option<u64>) -> Self {
        self.remaining = len;
        self
    }

    pub(crate) fn new(inner: R, mode: Mode) -> Self {
        let netascii = match mode {
            Mode::Octet => None,
            Mode::Netascii => Some((Encoder::new(), vec![0u8; 8192].into_boxed_slice(), 0, 0)),
        };
        Self {
            inner,
            netascii,
            eof: false,
            error: None,
            remaining: None,
        }
    }

    /// The read error that ended the transfer, if any.
    pub(crate) fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Fills `out` completely unless the data ends; returns the bytes written. A read error
    /// is also kept for [`Source::take_error`].
    pub(crate) async fn fill(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let r = self.fill_inner(out).await;
        if let Err(e) = &r {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        }
        r
    }

    async fn fill_inner(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        match &mut self.netascii {
            None => {
                while n < out.len() && !self.eof {
                    let r = read_some(&mut self.inner, &mut self.remaining, &mut out[n..]).await?;
                    if r == 0 {
                        self.eof = true;
                    }
                    n += r;
                }
            }
            Some((enc, buf, start, end)) => {
                while n < out.len() {
                    if *start == *end && !self.eof {
                        let r = read_some(&mut self.inner, &mut self.remaining, buf).await?;
                        *start = 0;
                        *end = r;
                        if r == 0 {
                            self.eof = true;
                        }
                    }
                    let (used, written) = enc.encode(&buf[*start..*end], &mut out[n..]);
                    *start += used;
                    n += written;
                    if self.eof && *start == *end && !enc.has_pending() {
                        break;
                    }
                }
            }
        }
        Ok(n)
    }
}

/// Where a receiver's payloads go.
pub(crate) struct Sink<W> {
    inner: W,
    netascii: Option<(Decoder, Vec<u8>)>,
    written: u64,
    limit: Option<u64>,
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    pub(crate) fn new(inner: W, mode: Mode) -> Self {
        Self {
            inner,
            netascii: match mode {
                Mode::Octet => None,
                Mode::Netascii => Some((Decoder::new(), Vec::with_capacity(70_000))),
            },
            written: 0,
            limit: None,
        }
    }

    /// Refuses (with [`io::ErrorKind::FileTooLarge`]) to take more than `limit` bytes.
    pub(crate) fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    pub(crate) async fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        self.written += payload.len() as u64;
        if self.limit.is_some_and(|l| self.written > l) {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "upload exceeds the size limit",
            ));
        }
        match &mut self.netascii {
            None => self.inner.write_all(payload).await,
            Some((dec, buf)) => {
                buf.clear();
                dec.decode(payload, buf);
                self.inner.write_all(buf).await
            }
        }
    }

    /// Writes what the translation still holds and flushes; returns the inner writer.
    pub(crate) async fn finish(mut self) -> io::Result<W> {
        if let Some((dec, buf)) = &mut self.netascii {
            buf.clear();
            dec.finish(buf);
            self.inner.write_all(buf).await?;
        }
        self.inner.flush().await?;
        Ok(self.inner)
    }
}
