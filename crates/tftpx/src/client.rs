//! The TFTP client: downloads into any `AsyncWrite`, uploads from any `AsyncRead`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tftpx_proto::negotiate::{ClientOptions, NegotiateError, Negotiated};
use tftpx_proto::transfer::{Receiver, RequestError, Sender, Stats, TransferConfig, TransferError};
use tftpx_proto::wire::{ErrorCode, Mode, DATA_HEADER_LEN, MAX_BLKSIZE};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::driver::{self, BusyPolls, Tracker, WaitPolicy, DEFAULT_BUSY_POLL};
use crate::endpoint::Link;
use crate::io::{LazyBufReader, Sink, Source};
use crate::net;
use crate::trace::{PacketTrace, Tracer};

/// A download's writes: the blocks are held (at most 4 MiB) and written right after an
/// ACK leaves once this many bytes (64 KiB) are held, so a write overlaps the server's
/// next window instead of holding back an ACK the server waits for. 64 KiB takes about
/// 25 us into the page cache, less than a window of 16 blocks of 1468 bytes takes the
/// server to send. Written where a buffer happened to fill (mid-window), the writes cost
/// a windowsize-64 download from rs-tftpd about 5% of its time on loopback.
const CLIENT_WRITE_BYTES: usize = 64 << 10;

/// An upload's reads: up to this many bytes (256 KiB) are read ahead of the blocks, right
/// after a block leaves, while the server handles it: the read then no longer sits between
/// the server's ACK and the next DATA (a quarter of the client's time in a 65464 lock-step
/// upload on loopback).
const CLIENT_READ_AHEAD: usize = 256 << 10;

/// How far a transfer has come, for progress display. The last one a transfer reports
/// comes after it ended, successfully or not, with its final counters: a failed transfer's
/// retransmissions and timeouts are in it (its [`ClientError`] carries none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Payload bytes moved so far (as they go on the wire).
    pub bytes: u64,
    /// The total in bytes, when known (from `tsize`).
    pub total: Option<u64>,
    /// Counters so far (blocks, retransmissions, timeouts, duplicates, ...).
    pub stats: Stats,
}

/// What a completed transfer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Payload bytes moved (as they went on the wire; netascii counts CR LF as two).
    pub bytes: u64,
    /// From the request to the last ACK, in wall time (dallying excluded).
    pub duration: Duration,
    /// The options in force: what the server accepted, or the RFC 1350 defaults.
    pub negotiated: Negotiated,
    /// Counters (retransmissions, duplicates, ...).
    pub stats: Stats,
    /// What the waits' busy polls did (see [`ClientBuilder::busy_poll`]).
    pub busy_polls: BusyPolls,
}

/// Why a client transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with ERROR.
    #[error("server sent ERROR {code}: {message}")]
    Server {
        /// The server's code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server stopped answering.
    #[error("timed out after {retries} retries")]
    TimedOut {
        /// Retransmissions made.
        retries: u32,
    },
    /// The server's OACK was unacceptable (ERROR 8 was sent to it).
    #[error("option negotiation failed: {0}")]
    Negotiation(NegotiateError),
    /// The server broke the protocol (ERROR 4 was sent to it).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The remote file name is empty or contains NUL.
    #[error("invalid remote file name: {0}")]
    BadFilename(#[from] RequestError),
    /// A local I/O error: the socket, or the local file (the server was sent an ERROR).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The transfer was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// This end ended the transfer and told the server so with ERROR `code` (for example a
    /// local reader that failed mid-upload: the message is the one sent).
    #[error("aborted with ERROR {code}: {message}")]
    Aborted {
        /// The code sent to the server (RFC 1350 section 5).
        code: ErrorCode,
        /// The message sent to the server.
        message: String,
    },
    /// The download ended with a size other than the `tsize` the server announced (the file
    /// changed while it was served): ERROR 0 was sent instead of the final ACK.
    #[error("the server announced {announced} bytes (tsize) but sent {received}")]
    SizeMismatch {
        /// The server's `tsize`, in bytes.
        announced: u64,
        /// Payload bytes received.
        received: u64,
    },
    /// The server sent more data than the `tsize` it announced (RFC 2349): ERROR 3 was sent
    /// to it at the first block that went past, and nothing beyond the announced size was
    /// written.
    #[error("the server sent more than the {announced} bytes (tsize) it announced")]
    TsizeExceeded {
        /// The server's `tsize`, in bytes.
        announced: u64,
    },
    /// The download is larger than [`ClientBuilder::max_size`] (it went past it, or the
    /// server announced a bigger `tsize`): ERROR 3 was sent to the server, and nothing
    /// beyond the limit was written.
    #[error("the file is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

impl ClientError {
    fn from_transfer(e: TransferError) -> Self {
        match e {
            TransferError::TimedOut { retries } => Self::TimedOut { retries },
            TransferError::Peer { code, message } => Self::Server { code, message },
            TransferError::Protocol(p) => Self::Protocol(p),
            TransferError::Negotiation(n) => Self::Negotiation(n),
            TransferError::Aborted { message, .. } if message == driver::CANCELLED => {
                Self::Cancelled
            }
            TransferError::Aborted { code, message } => Self::Aborted { code, message },
            other => Self::Io(io::Error::other(other.to_string())),
        }
    }
}

/// A TFTP client for one server. Cheap to clone; each transfer uses its own socket.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use tftpx::Client;
/// let client = Client::builder("127.0.0.1:6969".parse()?)
///     .blksize(1468)
///     .windowsize(16)
///     .build();
/// let mut image = Vec::new();
/// let report = client.get("boot/kernel.img", &mut image, |_| {}).await?;
/// println!("{} bytes in {:?}", report.bytes, report.duration);
/// client.put("upload/config.txt", &b"hostname sw1\n"[..], Some(13), |_| {}).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    server: SocketAddr,
    local: Option<SocketAddr>,
    mode: Mode,
    blksize: Option<u16>,
    windowsize: Option<u16>,
    negotiate_timeout: Option<u8>,
    tsize: bool,
    max_size: Option<u64>,
    config: TransferConfig,
    cancel: CancellationToken,
    trace: Option<Tracer>,
    blocking_wait: bool,
    busy_poll: Duration,
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    client: Client,
}

impl ClientBuilder {
    /// The local address (and port; 0 lets the OS pick) the client's socket binds to, e.g.
    /// to choose the source address on a multi-homed host. Default: any address of the
    /// server's family.
    pub fn bind(mut self, local: SocketAddr) -> Self {
        self.client.local = Some(local);
        self
    }

    /// Transfer mode (default octet).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.client.mode = mode;
        self
    }

    /// Asks for this block size in bytes (RFC 2348; clamped to 8..=65464). Default: not
    /// asked, so 512.
    pub fn blksize(mut self, n: u16) -> Self {
        self.client.blksize = Some(n.clamp(8, MAX_BLKSIZE));
        self
    }

    /// Asks for this window size in blocks (RFC 7440; 1..=65535). Default: not asked, so 1.
    pub fn windowsize(mut self, n: u16) -> Self {
        self.client.windowsize = Some(n.max(1));
        self
    }

    /// Asks for (RRQ: `tsize 0`) or announces (WRQ: the size) the transfer size (RFC 2349).
    /// Default on.
    pub fn tsize(mut self, yes: bool) -> Self {
        self.client.tsize = yes;
        self
    }

    /// Retransmission timeout (default 1 s). When it is a whole number of seconds in
    /// 1..=255 it is also sent to the server as the `timeout` option (RFC 2349).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.client.config.timeout = t;
        let secs = t.as_secs();
        self.client.negotiate_timeout =
            (t.subsec_nanos() == 0 && (1..=255).contains(&secs)).then_some(secs as u8);
        self
    }

    /// Largest download accepted, in bytes (default: no limit). A download that goes past
    /// it, or whose announced `tsize` is bigger, is stopped with ERROR 3 ("Disk full or
    /// allocation exceeded", RFC 1350) before the first byte beyond the limit is written,
    /// and fails with [`ClientError::TooLarge`]. Whatever this says, a download never takes
    /// more than the `tsize` the server announced ([`ClientError::TsizeExceeded`]).
    pub fn max_size(mut self, bytes: Option<u64>) -> Self {
        self.client.max_size = bytes;
        self
    }

    /// Retransmissions before giving up (default 5).
    pub fn retries(mut self, n: u32) -> Self {
        self.client.config.max_retries = n;
        self
    }

    /// How long a download lingers after its final ACK to answer a repeated final DATA
    /// (RFC 1350 section 6; default 0: none, as curl, busybox and tftp-hpa do). The data is
    /// already written and flushed when the linger starts; [`Client::get`] returns when it
    /// is over (or when the transfer is cancelled).
    pub fn dally(mut self, d: Duration) -> Self {
        self.client.config.dally = d;
        self
    }

    /// A token that cancels running transfers (they send ERROR 0 to the server).
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.client.cancel = token;
        self
    }

    /// Calls `f` for every datagram each transfer sends or receives (its request, DATA,
    /// ACK, OACK, ERROR, and a stranger's datagrams), as tftp-hpa's `trace` prints them;
    /// [`PacketTrace`]'s `Display` is one such line. `f` runs on the transfer's task, once
    /// per datagram, so it should be quick. Default: none, and then nothing is decoded or
    /// timed for it (one `Option` check per datagram).
    pub fn trace(mut self, f: impl Fn(&PacketTrace) + Send + Sync + 'static) -> Self {
        self.client.trace = Some(Tracer::new(std::sync::Arc::new(f)));
        self
    }

    /// Waits for each datagram in the receive system call, on the runtime's thread, instead
    /// of through the runtime's event loop: a lock-step block then costs two system calls
    /// (the send and a blocking receive) instead of four, and no scheduler work, which on
    /// loopback brings `tftpx get` at blksize 512 level with tftp-hpa's and busybox's
    /// clients (measured on loopback, 25 MB: 3% less wall time and 40% of the user CPU of
    /// the event loop). The thread
    /// is blocked up to 100 ms at a time; then the runtime runs its other tasks once (a
    /// signal's handler, say), so cancellation is seen within 100 ms.
    ///
    /// Only for a thread that runs nothing else while the transfer does, such as a
    /// current-thread runtime running one transfer, as the `tftpx` command does: any other
    /// task on that thread waits up to 100 ms at a time. Sends may block while the socket's
    /// send buffer is full. Default false.
    pub fn blocking_wait(mut self, on: bool) -> Self {
        self.client.blocking_wait = on;
        self
    }

    /// How long a wait for the server's next datagram polls the socket before it sleeps
    /// (default [`DEFAULT_BUSY_POLL`], 100 us; `Duration::ZERO` turns it off): a reply
    /// that comes within it is taken without the sleep and wake-up, which on a quiet
    /// (virtual) machine cost more than a lock-step server takes to answer on loopback or a
    /// LAN. Measured on loopback against tftpd-hpa, 25 MB at blksize 512: 2.8x the speed
    /// and less CPU in all. Polls that miss back off, and only a process running at most
    /// half as many transfers as it has CPUs polls: see [`crate::ServerBuilder::busy_poll`],
    /// which works the same. [`Report::busy_polls`] says what the polls did.
    pub fn busy_poll(mut self, budget: Duration) -> Self {
        self.client.busy_poll = budget;
        self
    }

    /// The client.
    pub fn build(self) -> Client {
        self.client
    }
}

impl Client {
    /// Starts building a client for `server` (its well-known port, usually 69).
    pub fn builder(server: SocketAddr) -> ClientBuilder {
        ClientBuilder {
            client: Client {
                server,
                local: None,
                mode: Mode::Octet,
                blksize: None,
                windowsize: None,
                negotiate_timeout: None,
                tsize: true,
                max_size: None,
                config: TransferConfig {
                    dally: Duration::ZERO,
                    ..TransferConfig::default()
                },
                cancel: CancellationToken::new(),
                trace: None,
                blocking_wait: false,
                busy_poll: DEFAULT_BUSY_POLL,
            },
        }
    }

    fn options(&self, tsize: Option<u64>) -> ClientOptions {
        ClientOptions {
            blksize: self.blksize,
            windowsize: self.windowsize,
            timeout: self.negotiate_timeout,
            tsize: if self.tsize { tsize } else { None },
        }
    }

    fn window_bytes(&self) -> usize {
        usize::from(self.blksize.unwrap_or(512)) * usize::from(self.windowsize.unwrap_or(1))
    }

    /// The transfer's link on `sock`, blocking when [`ClientBuilder::blocking_wait`] asks.
    fn link(&self, sock: tokio::net::UdpSocket) -> io::Result<Link> {
        if self.blocking_wait {
            Link::blocking(sock)
        } else {
            Ok(Link::from(sock))
        }
    }

    fn waits(&self) -> WaitPolicy {
        WaitPolicy {
            idle: self.config.timeout * (self.config.max_retries + 2),
            busy_poll: self.busy_poll,
        }
    }

    /// Returns at once: [`Client::get`] finishes its own dally before it returns, so there
    /// is nothing left to wait for. Kept so that code written when the dally ran in the
    /// background still builds; new code need not call it.
    pub async fn finish(&self) {}

    /// Downloads `remote` (RRQ) into `out`: [`Client::get`] without a progress callback.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        out: W,
    ) -> Result<Report, ClientError> {
        self.get(remote, out, |_| {}).await
    }

    /// Uploads `input` as `remote` (WRQ), announcing `size` bytes when given:
    /// [`Client::put`] without a progress callback.
    ///
    /// # Errors
    /// As [`Client::put`].
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        remote: &str,
        input: R,
        size: Option<u64>,
    ) -> Result<Report, ClientError> {
        self.put(remote, input, size, |_| {}).await
    }

    /// Downloads `remote` (RRQ) into `out`, calling `progress` as data arrives. In octet
    /// mode the blocks reach `out` in runs of at least 64 KiB (the last one shorter), each
    /// written right after an ACK left (see `CLIENT_WRITE_BYTES`): `out` needs no buffer of
    /// its own. `out` gets everything received even when the download fails, and is
    /// flushed before the final ACK is sent. Returns once the final ACK is sent and the
    /// [dally](ClientBuilder::dally) (RFC 1350: re-acknowledging a repeated last DATA;
    /// none by default) is over, so nothing runs on after it.
    ///
    /// # Errors
    /// [`ClientError`]: the server's ERROR, a time-out, a bad OACK, or a local I/O error.
    pub async fn get<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        out: W,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Report, ClientError> {
        let start = Instant::now();
        let trace = self.trace.as_ref().map(Tracer::started);
        let sock = net::bind_client(
            self.server,
            self.local,
            self.window_bytes() + DATA_HEADER_LEN,
        )?;
        if self.windowsize.unwrap_or(1) > 1 {
            // A window may arrive as one GSO train: take it in one receive.
            net::enable_gro(&sock);
        }
        let mut link = self.link(sock)?;
        let mut rx = Receiver::client(
            self.server,
            remote.as_bytes(),
            self.mode,
            // tftpd-hpa refuses tsize in a netascii RRQ (ERROR 8), and the size on the wire
            // is not the local size anyway: ask for it in octet mode only.
            self.options((self.mode == Mode::Octet).then_some(0)),
            self.config,
        )?;
        // A lying or broken server cannot make the download bigger than it said (tsize,
        // octet mode only: netascii changes the size) or than the caller allows.
        let cap = Cap::new(self.max_size);
        let octet = self.mode == Mode::Octet;
        let mut sink = Sink::new(
            Capped {
                inner: out,
                cap: &cap,
            },
            self.mode,
        )
        .deferred(CLIENT_WRITE_BYTES);
        let mut tracker = Tracker::default();
        let mut local_error = None;
        driver::run_receiver(
            &mut link,
            &mut rx,
            &mut sink,
            &mut tracker,
            &self.cancel,
            self.waits(),
            // Write-behind (the ACK leaves before the write) only for a block the cap is
            // sure to take: one it refuses gets our ERROR instead of its ACK, and the
            // server sends nothing more. Octet only: a netascii block can write a byte more
            // than it carries (a CR held back from the block before). A write that fails
            // (a full disk) still sends an ERROR, one block later.
            &|accepted, len| octet && cap.fits(accepted, len),
            &mut |st, n| {
                let total = n.and_then(|n| n.tsize);
                if let Some(t) = total.filter(|_| octet) {
                    // Called once the OACK is in, before the next datagram is read.
                    cap.announce(t);
                }
                progress(Progress {
                    bytes: st.bytes,
                    total,
                    stats: *st,
                })
            },
            trace.as_ref(),
        )
        .await;
        let total = tracker.negotiated.and_then(|n| n.tsize);
        let mut mismatch = None;
        if rx.is_complete() {
            let received = rx.stats().bytes;
            if let Some(announced) = total.filter(|&t| t != received && self.mode == Mode::Octet) {
                rx.abort(
                    ErrorCode::NotDefined,
                    "Size differs from the announced tsize",
                );
                mismatch = Some(ClientError::SizeMismatch {
                    announced,
                    received,
                });
                sink.release().await.ok();
            } else if let Err(e) = sink.finish().await {
                let (code, msg) = driver::io_error_code(&e);
                rx.abort(code, &msg);
                local_error = Some(e);
            }
        } else {
            // Failed: what arrived still goes to `out` (a pipe's reader sees it), as it
            // would have without the holding. Its error changes nothing: it failed already.
            sink.release().await.ok();
        }
        let duration = start.elapsed();
        let stats = rx.stats();
        progress(Progress {
            bytes: stats.bytes,
            total,
            stats,
        });
        let outcome = tracker.outcome();
        // The final ACK (or our ERROR) leaves now, then the dally (if any) runs here: a
        // background task would die with a runtime that shuts down when the caller returns.
        driver::flush_receiver(&link, &mut rx, trace.as_ref()).await;
        if outcome.is_ok() && local_error.is_none() && mismatch.is_none() && !rx.is_finished() {
            let mut dally_tracker = Tracker::default();
            driver::finish_receiver(
                &mut link,
                &mut rx,
                &mut dally_tracker,
                &self.cancel,
                self.waits(),
                trace.as_ref(),
            )
            .await;
        }
        if let Some(m) = mismatch {
            return Err(m);
        }
        if let Some(e) = cap.exceeded() {
            // Our ERROR 3 left with the flush above.
            return Err(e);
        }
        match outcome {
            Ok(()) if local_error.is_none() => Ok(Report {
                bytes: stats.bytes,
                duration,
                negotiated: tracker.negotiated.unwrap_or_default(),
                stats,
                busy_polls: tracker.busy_polls,
            }),
            Ok(()) => Err(self.failure(None, local_error)),
            Err(e) => Err(self.failure(Some(e), local_error)),
        }
    }

    /// Why a transfer failed, as the caller should hear it: a local I/O error first (the
    /// server only got our ERROR about it), then cancellation, then the protocol's reason.
    fn failure(&self, e: Option<TransferError>, local: Option<io::Error>) -> ClientError {
        match (local, e) {
            (Some(io), _) => ClientError::Io(io),
            _ if self.cancel.is_cancelled() => ClientError::Cancelled,
            (None, Some(e)) => ClientError::from_transfer(e),
            (None, None) => ClientError::Protocol("transfer ended without a result"),
        }
    }

    /// Uploads `input` as `remote` (WRQ). `size` in bytes, when known, is announced as
    /// `tsize` (with netascii it is left out, since translation changes it). `input` is read
    /// in runs of up to 256 KiB, ahead of the blocks, once the server has answered (nothing
    /// is read before): `input` needs no buffer of its own.
    ///
    /// # Errors
    /// [`ClientError`]: the server's ERROR, a time-out, a bad OACK, or a local I/O error.
    pub async fn put<R: AsyncRead + Unpin>(
        &self,
        remote: &str,
        input: R,
        size: Option<u64>,
        mut progress: impl FnMut(Progress) + Send,
    ) -> Result<Report, ClientError> {
        let start = Instant::now();
        let trace = self.trace.as_ref().map(Tracer::started);
        let sock = net::bind_client(
            self.server,
            self.local,
            self.window_bytes() + DATA_HEADER_LEN,
        )?;
        let size = if self.mode == Mode::Octet { size } else { None };
        let mut tx = Sender::client(
            self.server,
            remote.as_bytes(),
            self.mode,
            self.options(size),
            self.config,
        )?;
        let mut src =
            Source::new(LazyBufReader::new(input, CLIENT_READ_AHEAD), self.mode).read_ahead();
        let tracker = driver::run_sender(
            &mut self.link(sock)?,
            &mut tx,
            &mut src,
            &self.cancel,
            self.waits(),
            &mut |st, _| {
                progress(Progress {
                    bytes: st.bytes,
                    total: size,
                    stats: *st,
                })
            },
            trace.as_ref(),
        )
        .await;
        let stats = tx.stats();
        progress(Progress {
            bytes: stats.bytes,
            total: size,
            stats,
        });
        match tracker.outcome() {
            Ok(()) => Ok(Report {
                bytes: stats.bytes,
                duration: start.elapsed(),
                negotiated: tracker.negotiated.unwrap_or_default(),
                stats,
                busy_polls: tracker.busy_polls,
            }),
            Err(e) => Err(self.failure(Some(e), src.take_error())),
        }
    }
}

/// Why a download was cut, as [`Cap`] records it.
const CUT_NONE: u8 = 0;
const CUT_TSIZE: u8 = 1;
const CUT_LIMIT: u8 = 2;

/// The most a download may write: the caller's limit and the server's `tsize`, the smaller
/// wins. Shared (by reference) between the writer and the progress callback, which learns
/// the `tsize` from the OACK.
#[derive(Debug)]
struct Cap {
    /// [`ClientBuilder::max_size`]; `u64::MAX` for none.
    limit: u64,
    /// The announced `tsize`; `u64::MAX` until one is known.
    tsize: AtomicU64,
    /// `CUT_*`: whether (and why) a write was refused.
    cut: AtomicU8,
    /// Bytes written so far (by [`Capped`]).
    written: AtomicU64,
}

impl Cap {
    fn new(limit: Option<u64>) -> Self {
        Self {
            limit: limit.unwrap_or(u64::MAX),
            tsize: AtomicU64::new(u64::MAX),
            cut: AtomicU8::new(CUT_NONE),
            written: AtomicU64::new(0),
        }
    }

    fn announce(&self, tsize: u64) {
        self.tsize.store(tsize, Ordering::Relaxed);
    }

    /// Why `len` more bytes after `written` would go past the cap (`CUT_*`), `CUT_NONE`
    /// when they stay within it.
    fn check(&self, written: u64, len: usize) -> u8 {
        let after = written.saturating_add(len as u64);
        let tsize = self.tsize.load(Ordering::Relaxed);
        if tsize != u64::MAX && tsize > self.limit {
            // Announced bigger than allowed: stop at the first block.
            CUT_LIMIT
        } else if after > tsize {
            CUT_TSIZE
        } else if after > self.limit {
            CUT_LIMIT
        } else {
            CUT_NONE
        }
    }

    /// Whether `len` more bytes after `written` stay within the cap (nothing recorded).
    fn fits(&self, written: u64, len: usize) -> bool {
        self.check(written, len) == CUT_NONE
    }

    /// Whether `len` more bytes after `written` stay within the cap; records the reason
    /// when they do not.
    fn admits(&self, written: u64, len: usize) -> bool {
        let cut = self.check(written, len);
        if cut != CUT_NONE {
            self.cut.store(cut, Ordering::Relaxed);
        }
        cut == CUT_NONE
    }

    fn exceeded(&self) -> Option<ClientError> {
        match self.cut.load(Ordering::Relaxed) {
            CUT_TSIZE => Some(ClientError::TsizeExceeded {
                announced: self.tsize.load(Ordering::Relaxed),
            }),
            CUT_LIMIT => Some(ClientError::TooLarge { limit: self.limit }),
            _ => None,
        }
    }
}

/// A download's writer that refuses, with [`io::ErrorKind::FileTooLarge`] (sent to the
/// server as ERROR 3), any write that would take it past its [`Cap`].
struct Capped<'a, W> {
    inner: W,
    cap: &'a Cap,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Capped<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = self.cap.written.load(Ordering::Relaxed);
        if !self.cap.admits(written, buf.len()) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "download exceeds its size limit",
            )));
        }
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.cap.written.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_takes_the_smaller_of_tsize_and_limit() {
        let none = Cap::new(None);
        assert!(none.admits(u64::MAX - 10, 10));
        assert!(none.exceeded().is_none());

        let tsize = Cap::new(None);
        tsize.announce(10);
        assert!(tsize.admits(0, 10));
        assert!(!tsize.admits(0, 11));
        assert!(matches!(
            tsize.exceeded(),
            Some(ClientError::TsizeExceeded { announced: 10 })
        ));

        let limit = Cap::new(Some(1000));
        // The check before an early ACK records nothing.
        assert!(!limit.fits(512, 512) && limit.exceeded().is_none());
        assert!(limit.fits(512, 488));
        assert!(limit.admits(512, 488));
        assert!(!limit.admits(512, 512));
        assert!(matches!(
            limit.exceeded(),
            Some(ClientError::TooLarge { limit: 1000 })
        ));

        // A tsize below the limit is the cap; one above it fails at the first block.
        let both = Cap::new(Some(1000));
        both.announce(600);
        assert!(!both.admits(512, 512));
        assert!(matches!(
            both.exceeded(),
            Some(ClientError::TsizeExceeded { announced: 600 })
        ));
        let over = Cap::new(Some(1000));
        over.announce(5000);
        assert!(!over.admits(0, 1));
        assert!(matches!(
            over.exceeded(),
            Some(ClientError::TooLarge { limit: 1000 })
        ));
    }
}
