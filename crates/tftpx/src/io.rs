//! Byte sources and sinks between files and transfers, with netascii translation.

use std::io;
use std::task::{Context, Poll};

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
    /// With [`Source::read_ahead`]: what [`Source::prefetch`] does to `inner`.
    prefetch: Option<fn(&mut R)>,
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
            prefetch: None,
        }
    }

    /// With [`Source::read_ahead`]: reads ahead through the buffer (see
    /// [`LazyBufReader::prefetch`]); else nothing. Call it when the sender has nothing else
    /// to do: after a block left, before the wait for its ACK.
    pub(crate) fn prefetch(&mut self) {
        if let Some(f) = self.prefetch {
            f(&mut self.inner);
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

impl<R: AsyncRead + Unpin> Source<LazyBufReader<R>> {
    /// Has [`Source::prefetch`] read ahead through the buffer, so that the read that
    /// would come when the next block is due (the peer's ACK in) comes while the peer
    /// handles the block just sent instead (a client's uploads).
    pub(crate) fn read_ahead(mut self) -> Self {
        self.prefetch = Some(LazyBufReader::prefetch);
        self
    }
}

/// Payloads a deferred [`Sink`] holds at most (bytes): past it they are written at once,
/// write point or not (only a window bigger than this gets there: 64 x 65464 bytes, say).
const SINK_HOLD_MAX: usize = 4 << 20;

/// Where a receiver's payloads go: to `inner` as they come or, deferred
/// ([`Sink::deferred`]), held and written at the receiver's write points, right after an
/// ACK left.
pub(crate) struct Sink<W> {
    inner: W,
    netascii: Option<(Decoder, Vec<u8>)>,
    /// Bytes accepted so far (written or held).
    written: u64,
    limit: Option<u64>,
    /// Accepted, not yet written (deferred only).
    held: Vec<u8>,
    /// Deferred: a write point writes what is held once it is at least this many bytes;
    /// 0: every payload is written as it comes.
    defer: usize,
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
            held: Vec::new(),
            defer: 0,
        }
    }

    /// Holds the payloads [`Sink::write`] may hold and writes them at a write point
    /// ([`Sink::write_point`]) once `bytes` are held (a client's downloads). A write takes
    /// the receiver away from its socket: made right after an ACK it overlaps the peer's
    /// next window, made in the middle of a window (wherever a buffer happens to fill) it
    /// holds back that window's ACK, the peer waiting all along.
    pub(crate) fn deferred(mut self, bytes: usize) -> Self {
        self.defer = bytes;
        self
    }

    /// Bytes accepted so far, written or held.
    pub(crate) fn accepted(&self) -> u64 {
        self.written
    }

    /// Refuses (with [`io::ErrorKind::FileTooLarge`]) to take more than `limit` bytes.
    pub(crate) fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    /// Takes `payload`: holds it when the sink is deferred and `hold` (the inner writer is
    /// sure to take it), else writes it, after whatever is held.
    pub(crate) async fn write(&mut self, payload: &[u8], hold: bool) -> io::Result<()> {
        self.written += payload.len() as u64;
        if self.limit.is_some_and(|l| self.written > l) {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "upload exceeds the size limit",
            ));
        }
        let data = match &mut self.netascii {
            None => payload,
            Some((dec, buf)) => {
                buf.clear();
                dec.decode(payload, buf);
                &buf[..]
            }
        };
        if hold && self.defer > 0 {
            self.held.extend_from_slice(data);
            if self.held.len() >= SINK_HOLD_MAX {
                return Self::write_held(&mut self.inner, &mut self.held).await;
            }
            return Ok(());
        }
        Self::write_held(&mut self.inner, &mut self.held).await?;
        self.inner.write_all(data).await
    }

    /// A write point (an ACK just left): writes what is held once it is at least the
    /// deferred size.
    pub(crate) async fn write_point(&mut self) -> io::Result<()> {
        if self.defer > 0 && self.held.len() >= self.defer {
            return Self::write_held(&mut self.inner, &mut self.held).await;
        }
        Ok(())
    }

    /// Writes what is held now, write point or not (a transfer that ends without its last
    /// block: what arrived still reaches the writer).
    pub(crate) async fn release(&mut self) -> io::Result<()> {
        Self::write_held(&mut self.inner, &mut self.held).await
    }

    async fn write_held(inner: &mut W, held: &mut Vec<u8>) -> io::Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        let r = inner.write_all(held).await;
        held.clear();
        r
    }

    /// Writes what is held and what the translation still holds, and flushes; returns
    /// the inner writer.
    pub(crate) async fn finish(mut self) -> io::Result<W> {
        Self::write_held(&mut self.inner, &mut self.held).await?;
        if let Some((dec, buf)) = &mut self.netascii {
            buf.clear();
            dec.finish(buf);
            self.inner.write_all(buf).await?;
        }
        self.inner.flush().await?;
        Ok(self.inner)
    }
}

/// A read buffer that takes no memory until the first read (a transfer whose client never
/// acknowledges the OACK never reads), then `capacity` bytes; reads at least that large go
/// straight to the caller's buffer. `capacity` 0: no buffering at all.
pub(crate) struct LazyBufReader<R> {
    inner: R,
    capacity: usize,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// A read ahead found the end of the data.
    eof: bool,
    /// A read ahead failed: the next read returns it.
    error: Option<io::Error>,
}

impl<R> LazyBufReader<R> {
    pub(crate) fn new(inner: R, capacity: usize) -> Self {
        Self {
            inner,
            capacity,
            buf: Box::default(),
            pos: 0,
            end: 0,
            eof: false,
            error: None,
        }
    }

    /// Bytes of buffer held now (0 before the first read).
    #[cfg(test)]
    pub(crate) fn buffer_len(&self) -> usize {
        self.buf.len()
    }
}

impl<R: AsyncRead + Unpin> LazyBufReader<R> {
    /// Once less than half of the buffer is left: reads ahead until it is full, the data
    /// ends, or a read would wait (polled once, never awaited: a pipe's read goes on in the
    /// background and the next read takes it). Nothing before the first read (a request
    /// nobody answered leaves the input unread for the next address to try); a failed read
    /// ahead is the next read's error.
    pub(crate) fn prefetch(&mut self) {
        if self.buf.is_empty() || self.eof || self.error.is_some() {
            return;
        }
        if (self.end - self.pos) * 2 >= self.buf.len() {
            return;
        }
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Bounded: each pass adds at least a byte to a buffer of fixed size, or ends.
        while self.end < self.buf.len() {
            let mut rb = tokio::io::ReadBuf::new(&mut self.buf[self.end..]);
            match std::pin::Pin::new(&mut self.inner).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => self.eof = true,
                Poll::Ready(Ok(())) => {
                    self.end += rb.filled().len();
                    continue;
                }
                Poll::Ready(Err(e)) => self.error = Some(e),
                // Nothing was taken (AsyncRead's contract): the next call or read asks again.
                Poll::Pending => {}
            }
            return;
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LazyBufReader<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.pos == this.end {
            if let Some(e) = this.error.take() {
                return Poll::Ready(Err(e));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if out.remaining() >= this.capacity {
                return std::pin::Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0u8; this.capacity].into_boxed_slice();
            }
            let mut rb = tokio::io::ReadBuf::new(&mut this.buf);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    this.pos = 0;
                    this.end = rb.filled().len();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = (this.end - this.pos).min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A reader that counts its reads, answers Pending while `wait` is set, and fails
    /// from byte `fail_at` on.
    struct TestReader {
        data: Vec<u8>,
        at: usize,
        reads: usize,
        wait: bool,
        fail_at: usize,
    }

    impl AsyncRead for TestReader {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.wait {
                return Poll::Pending;
            }
            if self.at >= self.fail_at {
                return Poll::Ready(Err(io::Error::from_raw_os_error(nix::libc::EIO)));
            }
            self.reads += 1;
            let n = out.remaining().min(self.data.len() - self.at);
            out.put_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn test_reader(len: usize) -> TestReader {
        TestReader {
            data: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            at: 0,
            reads: 0,
            wait: false,
            fail_at: usize::MAX,
        }
    }

    /// Read ahead: blocks come out of what a prefetch read (no read of their own), every
    /// byte in order; a read that would wait leaves the prefetch at once; a failed read
    /// ahead fails the fill that needs it; a file that shrinks is still an error.
    #[tokio::test]
    async fn a_source_reads_ahead_at_prefetch() {
        let mut src =
            Source::new(LazyBufReader::new(test_reader(10_000), 1000), Mode::Octet).read_ahead();
        let mut block = [0u8; 300];
        let mut got = Vec::new();
        src.prefetch();
        assert_eq!(
            src.inner.inner.reads, 0,
            "nothing read before the first block is asked for"
        );
        assert_eq!(src.fill(&mut block).await.unwrap(), 300);
        got.extend_from_slice(&block);
        assert_eq!(
            src.inner.inner.reads, 1,
            "the first block: one read of 1000"
        );
        src.prefetch();
        assert_eq!(src.inner.inner.reads, 1, "700 of 1000 left: nothing to do");
        assert_eq!(src.fill(&mut block).await.unwrap(), 300);
        got.extend_from_slice(&block);
        src.prefetch();
        assert_eq!(src.inner.inner.reads, 2, "400 left: filled up");
        let reads = src.inner.inner.reads;
        assert_eq!(src.fill(&mut block).await.unwrap(), 300);
        got.extend_from_slice(&block);
        assert_eq!(
            src.inner.inner.reads, reads,
            "served from what was read ahead"
        );
        // Through to the end, a prefetch after every block: no fill reads of its own.
        loop {
            src.prefetch();
            let reads = src.inner.inner.reads;
            let n = src.fill(&mut block).await.unwrap();
            assert_eq!(src.inner.inner.reads, reads);
            got.extend_from_slice(&block[..n]);
            if n < block.len() {
                break;
            }
        }
        assert!(got == src.inner.inner.data);

        // A read that would wait: the prefetch returns, the fill gets the data later.
        let mut src =
            Source::new(LazyBufReader::new(test_reader(2000), 1000), Mode::Octet).read_ahead();
        src.fill(&mut block).await.unwrap();
        src.fill(&mut block).await.unwrap();
        src.inner.inner.wait = true;
        src.prefetch();
        src.inner.inner.wait = false;
        assert_eq!(src.fill(&mut block).await.unwrap(), 300);
        assert_eq!(src.fill(&mut block).await.unwrap(), 300, "read when due");

        // A failed read ahead: the blocks read before it still come, then its error.
        let mut r = test_reader(5000);
        r.fail_at = 1000;
        let mut src = Source::new(LazyBufReader::new(r, 1000), Mode::Octet).read_ahead();
        src.fill(&mut block).await.unwrap();
        src.fill(&mut block).await.unwrap();
        src.prefetch();
        assert_eq!(src.fill(&mut block).await.unwrap(), 300);
        let e = src.fill(&mut block).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EIO));
        assert!(src.take_error().is_some());

        // The file shrank under its announced length: an error, not a short copy.
        let mut src = Source::new(LazyBufReader::new(test_reader(500), 1000), Mode::Octet)
            .with_len(Some(800))
            .read_ahead();
        assert_eq!(src.fill(&mut block).await.unwrap(), 300);
        src.prefetch();
        let e = src.fill(&mut block).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A deferred sink holds what it may hold until a write point finds enough of it (or
    /// the hold is full), writes a block it may not hold after what it holds, and lets
    /// nothing go missing: at the end, or when the transfer fails (release).
    #[tokio::test]
    async fn a_deferred_sink_writes_at_write_points_in_order() {
        let mut out = Vec::new();
        let mut s = Sink::new(&mut out, Mode::Octet).deferred(10);
        s.write(b"abcd", true).await.unwrap();
        s.write_point().await.unwrap();
        assert!(s.inner.is_empty(), "4 of 10 bytes: held on");
        s.write(b"efghijk", true).await.unwrap();
        assert!(s.inner.is_empty(), "only a write point writes");
        s.write_point().await.unwrap();
        assert_eq!(&s.inner[..], b"abcdefghijk");
        s.write(b"lm", true).await.unwrap();
        s.write(b"NO", false).await.unwrap();
        assert_eq!(
            &s.inner[..],
            b"abcdefghijklmNO",
            "held first, then the one not held"
        );
        s.write(b"pq", true).await.unwrap();
        assert_eq!(s.accepted(), 17);
        s.release().await.unwrap();
        assert_eq!(&s.inner[..], b"abcdefghijklmNOpq");
        s.write(b"rs", true).await.unwrap();
        let out = s.finish().await.unwrap();
        assert_eq!(&out[..], b"abcdefghijklmNOpqrs");

        // The hold is bounded: at SINK_HOLD_MAX it is written, write point or not.
        let mut out = Vec::new();
        let mut s = Sink::new(&mut out, Mode::Octet).deferred(SINK_HOLD_MAX * 2);
        let block = vec![7u8; 65_464];
        let mut n = 0;
        while s.inner.is_empty() {
            s.write(&block, true).await.unwrap();
            n += block.len();
            assert!(n <= SINK_HOLD_MAX + block.len());
        }
        assert_eq!(s.inner.len(), n);
        assert!(s.held.is_empty());

        // Not deferred: every payload is written as it comes.
        let mut out = Vec::new();
        let mut s = Sink::new(&mut out, Mode::Octet);
        s.write(b"ab", true).await.unwrap();
        assert_eq!(&s.inner[..], b"ab");
    }

    #[tokio::test]
    async fn lazy_buf_reader_allocates_on_first_read_and_returns_every_byte() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut r = LazyBufReader::new(&data[..], 8192);
        assert_eq!(r.buffer_len(), 0);
        let mut out = Vec::new();
        let mut chunk = [0u8; 700];
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(r.buffer_len(), 8192);
        assert_eq!(out, data);
        // Unbuffered: reads pass straight through.
        let mut r = LazyBufReader::new(&data[..], 0);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!((all, r.buffer_len()), (data, 0));
    }
}
