//! The TFTP server: listeners, one task and one socket (TID) per transfer.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tftpx_proto::negotiate::{Direction, Negotiated, ServerLimits};
use tftpx_proto::transfer::{Receiver, Sender, Stats, TransferConfig, TransferError};
use tftpx_proto::wire::{ErrorCode, Mode, Packet, MAX_BLKSIZE, MAX_DATAGRAM};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use crate::admission::RateLimit;
use crate::admission::{Admission, Ticket, Verdict};
use crate::budget::MemoryBudget;
use crate::driver::{self, Tracker};
use crate::handler::{Handler, RequestInfo, Upload};
use crate::io::{LazyBufReader, Sink, Source};
use crate::net;

/// RRQ or WRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A download (read request).
    Rrq,
    /// An upload (write request).
    Wrq,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Rrq => "RRQ",
            Kind::Wrq => "WRQ",
        })
    }
}

/// How a transfer ended, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// All data moved (and, for a WRQ, the file was committed).
    Ok,
    /// The request was refused before any data moved (ERROR sent to the client).
    Refused {
        /// The code sent.
        code: ErrorCode,
        /// The message sent.
        message: String,
    },
    /// The transfer started and failed.
    Failed(TransferError),
}

/// One line's worth of facts about a finished transfer: what the server logs, and what a
/// [`ServerBuilder::on_transfer_end`] hook receives.
#[derive(Debug, Clone)]
pub struct TransferSummary {
    /// The client's address and port.
    pub peer: SocketAddr,
    /// RRQ or WRQ.
    pub kind: Kind,
    /// The requested file name (lossy UTF-8).
    pub filename: String,
    /// The transfer mode, if it was valid.
    pub mode: Option<Mode>,
    /// The options in force, once negotiated.
    pub negotiated: Option<Negotiated>,
    /// Counters (bytes are payload bytes, as they went on the wire).
    pub stats: Stats,
    /// From the request to the end of the transfer (before dallying).
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
    started: Instant,
    reported: bool,
}

impl fmt::Display for TransferSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {} {:?}", self.kind, self.peer, self.filename)?;
        if let Some(m) = self.mode {
            write!(f, " {m}")?;
        }
        match &self.outcome {
            Outcome::Ok => {
                let secs = self.duration.as_secs_f64();
                let rate = if secs > 0.0 {
                    self.stats.bytes as f64 / secs / 1e6
                } else {
                    0.0
                };
                write!(
                    f,
                    ": ok, {} bytes in {:.3} s ({:.1} MB/s)",
                    self.stats.bytes, secs, rate
                )?;
            }
            Outcome::Refused { code, message } => {
                write!(f, ": refused with ERROR {code}: {}", printable(message))?;
            }
            // Routine PXE/UEFI traffic, not a failure: say what happened in those words.
            Outcome::Failed(TransferError::Peer { code, message }) if self.is_size_probe() => {
                write!(
                    f,
                    ": size probe, the client read the OACK and ended the transfer \
                     (ERROR {}: {})",
                    code.to_u16(),
                    printable(message)
                )?;
            }
            Outcome::Failed(e) => {
                write!(
                    f,
                    ": failed after {} bytes in {:.3} s: {}",
                    self.stats.bytes,
                    self.duration.as_secs_f64(),
                    printable(&e.to_string())
                )?;
            }
        }
        if let Some(n) = &self.negotiated {
            write!(f, ", blksize={} windowsize={}", n.blksize, n.windowsize)?;
            if let Some(t) = n.tsize {
                write!(f, " tsize={t}")?;
            }
            if let Some(t) = n.timeout {
                write!(f, " timeout={}ms", t.as_millis())?;
            }
        }
        if self.stats.retransmits > 0 || self.stats.timeouts > 0 {
            write!(
                f,
                ", {} timeouts, {} retransmits",
                self.stats.timeouts, self.stats.retransmits
            )?;
        }
        Ok(())
    }
}

impl TransferSummary {
    /// A client that ended the transfer with ERROR 8 (or 0) right after the OACK, before any
    /// data: PXE ROMs and UEFI read tsize that way, then request the file again.
    fn is_size_probe(&self) -> bool {
        matches!(&self.outcome, Outcome::Failed(TransferError::Peer { code, .. })
            if self.stats.blocks == 0
                && (*code == ErrorCode::OptionNegotiation || *code == ErrorCode::NotDefined))
    }
}

/// `s` with control characters escaped (`\n` -> `\\n`, ESC -> `\\u{1b}`): peers' file names
/// and messages end up in logs and terminals, where they must not inject lines or escapes.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Server settings. Build them with [`Server::builder`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on (RFC 1350's well-known port is 69).
    pub listen: Vec<SocketAddr>,
    /// Retransmission timeout when the client negotiates none (RFC 2349); default 1 s.
    pub timeout: Duration,
    /// Retransmissions before a transfer is abandoned; default 5.
    pub max_retries: u32,
    /// Retransmissions to a peer that has not yet shown it receives what the server sends
    /// (its address may be forged: RRQ reflection); default 1. See
    /// [`TransferConfig::max_unanswered_retries`].
    pub max_unanswered_retries: u32,
    /// Bytes of transfer buffers (block rings, read and write buffers) all transfers may
    /// reserve together; beyond it new transfers are granted a smaller blksize x windowsize
    /// (down to 512-byte lock-step) instead of being refused. Default 256 MiB.
    pub max_memory: usize,
    /// Caps on what clients may negotiate, and the upload size limit.
    pub limits: ServerLimits,
    /// Transfers running at once; requests beyond it get ERROR 0 "server busy". Default 1024.
    pub max_transfers: usize,
    /// Transfers running at once for one client IP address; requests beyond it get ERROR 0.
    /// Default 32; `None`: no limit.
    pub max_transfers_per_client: Option<usize>,
    /// Datagrams accepted per second from one source IP address at the listeners; beyond
    /// it, requests are dropped (the first of every 10 s answered with ERROR 0 and logged).
    /// Default 20 per second with a burst of 40; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_unanswered_retries: 1,
            max_memory: 256 << 20,
            limits: ServerLimits::default(),
            max_transfers: 1024,
            max_transfers_per_client: Some(32),
            rate_limit: RateLimit::per_second(20),
        }
    }
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listen address could not be bound (in use, or a privileged port without root).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// No listen address was given.
    #[error("no listen address given")]
    NoListenAddress,
}

type Hook = Arc<dyn Fn(&TransferSummary) + Send + Sync>;

/// Builds a [`Server`].
pub struct ServerBuilder<H> {
    handler: H,
    config: ServerConfig,
    hook: Option<Hook>,
}

impl<H: Handler> ServerBuilder<H> {
    /// Adds a listen address (repeatable). Port 0 lets the OS pick one; see
    /// [`Server::local_addrs`].
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen.push(addr);
        self
    }

    /// Retransmission timeout used when the client negotiates none (default 1 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.config.timeout = t;
        self
    }

    /// Retransmissions before a transfer is abandoned (default 5).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }

    /// Retransmissions to a peer that has not yet acknowledged DATA (RRQ) or sent DATA
    /// (WRQ) (default 1, never more than [`ServerBuilder::max_retries`]). A forged RRQ thus
    /// draws at most `1 + n` copies of the first DATA (or OACK) toward its victim, and no
    /// closing ERROR.
    pub fn max_unanswered_retries(mut self, n: u32) -> Self {
        self.config.max_unanswered_retries = n;
        self
    }

    /// Longest timeout a client may negotiate (`timeout`/`utimeout`, RFC 2349); options
    /// above it are left out of the OACK. Default 30 s. Until a client has proved itself
    /// (acknowledged DATA or sent DATA) the server's own timeout applies anyway.
    pub fn max_timeout(mut self, t: Duration) -> Self {
        self.config.limits.max_timeout = t;
        self
    }

    /// Bytes of transfer buffers all transfers may reserve together (default 256 MiB).
    /// When it is spent, new transfers get a smaller blksize x windowsize, never a refusal.
    pub fn max_memory(mut self, bytes: usize) -> Self {
        self.config.max_memory = bytes;
        self
    }

    /// Largest blksize granted, in bytes (clamped to 8..=65464; default 65464).
    pub fn max_blksize(mut self, n: u16) -> Self {
        self.config.limits.max_blksize = n.clamp(8, MAX_BLKSIZE);
        self
    }

    /// Largest windowsize granted, in blocks (1..=65535; default 64). Memory per transfer is
    /// about blksize x windowsize bytes.
    pub fn max_windowsize(mut self, n: u16) -> Self {
        self.config.limits.max_windowsize = n.max(1);
        self
    }

    /// Largest upload accepted, in bytes, checked against a WRQ's `tsize` (ERROR 3) and
    /// while receiving. `None` (the default): no limit.
    pub fn max_upload_size(mut self, n: Option<u64>) -> Self {
        self.config.limits.max_upload_size = n;
        self
    }

    /// Transfers running at once (default 1024).
    pub fn max_transfers(mut self, n: usize) -> Self {
        self.config.max_transfers = n.max(1);
        self
    }

    /// Transfers running at once for one client IP address (default 32; `None`: no
    /// limit). A request beyond it gets ERROR 0 "Too many transfers from your address".
    pub fn max_transfers_per_client(mut self, n: Option<usize>) -> Self {
        self.config.max_transfers_per_client = n.map(|n| n.max(1));
        self
    }

    /// Requests per second accepted from one source IP address, with a burst of twice that
    /// (default 20; `None` or 0: no limit). Datagrams beyond it are dropped; the first of
    /// every 10 s gets ERROR 0 and a warning in the log that counts the others. This keeps a
    /// flood from one address (or forged requests aimed at one victim) from costing more than
    /// a few packets per second.
    pub fn rate_limit(mut self, per_second: Option<u32>) -> Self {
        self.config.rate_limit = per_second.and_then(RateLimit::per_second);
        self
    }

    /// Calls `hook` with the summary of every transfer when it ends.
    pub fn on_transfer_end(
        mut self,
        hook: impl Fn(&TransferSummary) + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Binds every listen address.
    ///
    /// # Errors
    /// [`ServerError::Bind`] for the first address that cannot be bound;
    /// [`ServerError::NoListenAddress`] if none was given.
    pub fn bind(self) -> Result<Server<H>, ServerError> {
        if self.config.listen.is_empty() {
            return Err(ServerError::NoListenAddress);
        }
        let mut listeners = Vec::new();
        for &addr in &self.config.listen {
            let s =
                net::bind_listener(addr).map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push(s);
        }
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                handler: self.handler,
                slots: Arc::new(Semaphore::new(self.config.max_transfers)),
                admission: Admission::new(
                    self.config.rate_limit,
                    self.config.max_transfers_per_client,
                ),
                memory: MemoryBudget::new(self.config.max_memory),
                config: self.config,
                hook: self.hook,
            }),
            cancel: CancellationToken::new(),
        })
    }
}

struct Shared<H> {
    handler: H,
    config: ServerConfig,
    slots: Arc<Semaphore>,
    admission: Admission,
    memory: Arc<MemoryBudget>,
    hook: Option<Hook>,
}

/// A bound TFTP server. [`Server::run`] serves until [`Server::shutdown_token`] is
/// cancelled.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use tftpx::{DirHandler, Server};
/// let server = Server::builder(DirHandler::new("/srv/tftp")?)
///     .listen("127.0.0.1:6969".parse()?)
///     .bind()?;
/// server.run().await;
/// # Ok(()) }
/// ```
pub struct Server<H> {
    listeners: Vec<UdpSocket>,
    shared: Arc<Shared<H>>,
    cancel: CancellationToken,
}

impl Server<()> {
    /// Starts building a server that serves `handler`.
    pub fn builder<H: Handler>(handler: H) -> ServerBuilder<H> {
        ServerBuilder {
            handler,
            config: ServerConfig::default(),
            hook: None,
        }
    }
}

impl<H: Handler> Server<H> {
    /// The bound listen addresses (with the OS-picked port where port 0 was asked).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// A token that stops the server when cancelled: listeners stop at once, running
    /// transfers end with ERROR 0 to their peers and uploads in progress are discarded.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Serves until the shutdown token is cancelled, then waits for transfers to end.
    pub async fn run(self) {
        let tracker = TaskTracker::new();
        let mut listeners = Vec::new();
        for sock in self.listeners {
            let shared = self.shared.clone();
            let cancel = self.cancel.clone();
            let t = tracker.clone();
            listeners.push(tokio::spawn(listen(sock, shared, cancel, t)));
        }
        for l in listeners {
            let _ = l.await;
        }
        tracker.close();
        tracker.wait().await;
    }
}

async fn listen<H: Handler>(
    sock: UdpSocket,
    shared: Arc<Shared<H>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = vec![0u8; 256];
    loop {
        let arrival = tokio::select! {
            _ = cancel.cancelled() => return,
            r = net::recv_request(&sock, &mut buf, &mut cmsg) => r,
        };
        let arrival = match arrival {
            Ok(a) => a,
            Err(e) => {
                debug!("listener receive error: {e}");
                continue;
            }
        };
        let datagram = &buf[..arrival.len];
        let now = Instant::now().into_std();
        if let Err(Verdict::RateLimited { notify, refused }) =
            shared.admission.check_rate(arrival.from, now)
        {
            if notify {
                warn!(
                    peer = %arrival.from,
                    "over the request rate limit ({}/s): {refused} request(s) refused; \
                     further ones are dropped for 10 s without an answer",
                    shared.config.rate_limit.map_or(0, |r| r.per_second)
                );
                reply_error(
                    &sock,
                    arrival.from,
                    ErrorCode::NotDefined,
                    "Too many requests from your address, slow down",
                )
                .await;
            }
            continue;
        }
        match Packet::decode(datagram) {
            Ok(Packet::Rrq(_) | Packet::Wrq(_)) => {}
            Ok(Packet::Error { .. }) => continue,
            Ok(p) => {
                debug!(peer = %arrival.from, "{:?} sent to the listen port; answering ERROR 4", p.opcode());
                reply_error(
                    &sock,
                    arrival.from,
                    ErrorCode::IllegalOperation,
                    "Expected RRQ or WRQ",
                )
                .await;
                continue;
            }
            Err(e) => {
                debug!(peer = %arrival.from, "undecodable request dropped: {e}");
                continue;
            }
        }
        let ticket = match shared.admission.admit(arrival.from, datagram, now) {
            Verdict::Admit(t) => t,
            Verdict::Duplicate => {
                debug!(peer = %arrival.from, "repeated request ignored: its transfer is running and retransmits on its own");
                continue;
            }
            Verdict::ClientBusy { running } => {
                warn!(peer = %arrival.from, "{running} transfers already running for this client (--max-transfers-per-client); request refused");
                reply_error(
                    &sock,
                    arrival.from,
                    ErrorCode::NotDefined,
                    "Too many transfers from your address, try again later",
                )
                .await;
                continue;
            }
            Verdict::RateLimited { .. } => continue,
        };
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            warn!(peer = %arrival.from, "too many transfers ({}); request refused", shared.config.max_transfers);
            reply_error(
                &sock,
                arrival.from,
                ErrorCode::NotDefined,
                "Server busy, try again later",
            )
            .await;
            continue;
        };
        let request = datagram.to_vec();
        let shared = shared.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let slot = Slot(std::sync::Mutex::new(Some(permit)));
            transfer(
                shared,
                request,
                arrival.from,
                arrival.local,
                cancel,
                &ticket,
                &slot,
            )
            .await;
            drop(slot);
            drop(ticket);
        });
    }
}

async fn reply_error(sock: &UdpSocket, to: SocketAddr, code: ErrorCode, message: &str) {
    driver::send_error(sock, to, code, message).await;
}

/// A transfer's place among `--max-transfers`, given back early by a dallying upload.
struct Slot(std::sync::Mutex<Option<OwnedSemaphorePermit>>);

impl Slot {
    fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

async fn transfer<H: Handler>(
    shared: Arc<Shared<H>>,
    request: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
    cancel: CancellationToken,
    ticket: &Ticket,
    slot: &Slot,
) {
    let start = Instant::now();
    let Ok(packet) = Packet::decode(&request) else {
        return;
    };
    let (kind, req) = match packet {
        Packet::Rrq(r) => (Kind::Rrq, r),
        Packet::Wrq(r) => (Kind::Wrq, r),
        _ => return,
    };
    let mut summary = TransferSummary {
        peer,
        kind,
        filename: req.filename_lossy().into_owned(),
        mode: Mode::parse(req.mode),
        negotiated: None,
        stats: Stats::default(),
        duration: Duration::ZERO,
        outcome: Outcome::Ok,
        started: start,
        reported: false,
    };
    info!(
        "{kind} from {peer} {:?} {} [{}]",
        summary.filename,
        String::from_utf8_lossy(req.mode).escape_debug(),
        req.options
    );
    let config = &shared.config;
    let sock = match net::bind_transfer(local) {
        Ok(s) => s,
        Err(e) => {
            warn!("{kind} from {peer}: cannot open a transfer socket on {local}: {e}");
            return;
        }
    };
    let timing = TransferConfig {
        timeout: config.timeout,
        max_retries: config.max_retries,
        // Long enough for the client to time out and repeat its final DATA once: tftp-hpa,
        // atftp and curl wait 5 s before they do, whatever our own timeout.
        dally: (config.timeout * 2).max(Duration::from_secs(6)),
        max_unanswered_retries: config.max_unanswered_retries,
    };
    let idle = config.timeout * (config.max_retries + 2);
    match summary.mode {
        None => {
            let msg = format!("Unsupported mode {:?}", String::from_utf8_lossy(req.mode));
            refuse(&sock, peer, &mut summary, ErrorCode::IllegalOperation, msg).await;
        }
        Some(mode) => {
            let info = RequestInfo {
                peer,
                filename: req.filename,
                mode,
            };
            let ctx = Ctx {
                shared: &shared,
                sock: &sock,
                timing,
                idle,
                cancel: &cancel,
                ticket,
                slot,
            };
            match kind {
                Kind::Rrq => ctx.serve_read(&info, req.options, &mut summary).await,
                Kind::Wrq => ctx.serve_write(&info, req.options, &mut summary).await,
            }
        }
    }
    report(&shared, &mut summary);
}

impl<H: Handler> Ctx<'_, H> {
    async fn serve_read(
        &self,
        info: &RequestInfo<'_>,
        options: tftpx_proto::wire::OptionList<'_>,
        summary: &mut TransferSummary,
    ) {
        let Ctx {
            shared,
            sock,
            timing,
            idle,
            cancel,
            ticket,
            ..
        } = *self;
        let file = match shared.handler.open_read(info).await {
            Ok(f) => f,
            Err(e) => {
                refuse(sock, info.peer, summary, e.code, e.message).await;
                return;
            }
        };
        // The size of a netascii transfer is not known without reading the file: no tsize.
        let size = if info.mode == Mode::Octet {
            file.size
        } else {
            None
        };
        let negotiated = shared.memory.negotiate(
            Direction::Read,
            options,
            &shared.config.limits,
            size,
            read_buffer,
        );
        let (neg, _memory) = match negotiated {
            Ok(n) => n,
            Err(e) => {
                refuse(sock, info.peer, summary, e.code(), e.to_string()).await;
                return;
            }
        };
        let n = neg.negotiated;
        net::fit_window(sock, n.window_bytes());
        let mut tx = Sender::server(info.peer, n, neg.oack.as_list(), timing);
        // Small blocks are read through a buffer of about two windows, so lock-step 512
        // does not pay a file read per block; it is allocated at the first read (never for a
        // client that does not acknowledge the OACK). Large blocks are read straight into
        // the sender's ring.
        let reader = LazyBufReader::new(file.reader, read_buffer(n.blksize, n.windowsize));
        let mut src = Source::new(reader, info.mode).with_len(file.size);
        let tracker = driver::run_sender(sock, &mut tx, &mut src, cancel, idle, &mut |stats, _| {
            if stats.blocks > 0 {
                ticket.heard();
            }
        })
        .await;
        finish_summary(summary, &tracker, tx.stats());
    }

    async fn serve_write(
        &self,
        info: &RequestInfo<'_>,
        options: tftpx_proto::wire::OptionList<'_>,
        summary: &mut TransferSummary,
    ) {
        let Ctx {
            shared,
            sock,
            timing,
            idle,
            cancel,
            ticket,
            slot,
        } = *self;
        let limits = &shared.config.limits;
        let negotiated =
            shared
                .memory
                .negotiate(Direction::Write, options, limits, None, |_, _| {
                    crate::handler::UPLOAD_BUFFER
                });
        let (neg, _memory) = match negotiated {
            Ok(n) => n,
            Err(e) => {
                refuse(sock, info.peer, summary, e.code(), e.to_string()).await;
                return;
            }
        };
        let upload = match shared.handler.open_write(info, neg.negotiated.tsize).await {
            Ok(u) => u,
            Err(e) => {
                refuse(sock, info.peer, summary, e.code, e.message).await;
                return;
            }
        };
        net::fit_window(sock, neg.negotiated.window_bytes());
        if neg.negotiated.windowsize > 1 {
            // A window may arrive as one GSO train: take it in one receive.
            net::enable_gro(sock);
        }
        let mut rx = Receiver::server(info.peer, neg.negotiated, neg.oack.as_list(), timing);
        let mut sink = Sink::new(upload, info.mode).with_limit(limits.max_upload_size);
        let mut tracker = Tracker::default();
        driver::run_receiver(
            sock,
            &mut rx,
            &mut sink,
            &mut tracker,
            cancel,
            idle,
            &mut |stats, _| {
                if stats.blocks > 0 {
                    ticket.heard();
                }
            },
        )
        .await;
        if rx.is_complete() {
            // Commit before the final ACK leaves: an ACK means the file is in place.
            let committed = match sink.finish().await {
                Ok(upload) => upload.commit().await,
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                let (code, msg) = driver::io_error_code(&e);
                rx.abort(code, &msg);
            }
        }
        // An upload not committed above is dropped here, which removes its temporary file.
        // The outcome is known now: report it before dallying, which is not part of the
        // transfer's duration.
        while let Some(ev) = rx.poll_event() {
            tracker.record(ev);
        }
        summary.duration = summary.started.elapsed();
        finish_summary(summary, &tracker, rx.stats());
        report(shared, summary);
        // Dallying (re-ACKing a repeated final DATA) counts neither against the client nor
        // against --max-transfers.
        ticket.release();
        slot.release();
        driver::finish_receiver(sock, &mut rx, &mut tracker, cancel, idle).await;
    }
}

/// Bytes of read buffer a download of `blksize` x `windowsize` gets: about two windows for
/// blocks below 8 KiB (8 KiB..=256 KiB), none for larger ones.
fn read_buffer(blksize: u16, windowsize: u16) -> usize {
    if blksize >= 8192 {
        0
    } else {
        (usize::from(blksize) * usize::from(windowsize.max(1)) * 2).clamp(8 << 10, 256 << 10)
    }
}

/// Logs the summary and calls the hook, once per transfer.
fn report<H>(shared: &Shared<H>, summary: &mut TransferSummary) {
    if std::mem::replace(&mut summary.reported, true) {
        return;
    }
    if summary.duration.is_zero() {
        summary.duration = summary.started.elapsed();
    }
    log_summary(summary);
    if let Some(h) = &shared.hook {
        h(summary);
    }
}

/// What every transfer of one request shares.
struct Ctx<'a, H> {
    shared: &'a Shared<H>,
    sock: &'a UdpSocket,
    timing: TransferConfig,
    idle: Duration,
    cancel: &'a CancellationToken,
    /// Told once the client answers, so a repeat of its request counts as a restart.
    ticket: &'a Ticket,
    slot: &'a Slot,
}

impl<H> Clone for Ctx<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H> Copy for Ctx<'_, H> {}

/// Refuses a request: ERROR to the client, and the outcome for the summary.
async fn refuse(
    sock: &UdpSocket,
    peer: SocketAddr,
    summary: &mut TransferSummary,
    code: ErrorCode,
    message: String,
) {
    driver::send_error(sock, peer, code, &message).await;
    summary.outcome = Outcome::Refused { code, message };
}

fn finish_summary(summary: &mut TransferSummary, tracker: &Tracker, stats: Stats) {
    summary.negotiated = tracker.negotiated;
    summary.stats = stats;
    summary.outcome = match tracker.outcome() {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Failed(e),
    };
}

fn log_summary(s: &TransferSummary) {
    match &s.outcome {
        Outcome::Ok => info!("{s}"),
        // Missing files are routine (PXELINUX probes for a dozen config names).
        Outcome::Refused { code, .. } if *code == ErrorCode::FileNotFound => info!("{s}"),
        Outcome::Refused { .. } => warn!("{s}"),
        // A client that ends the transfer after reading the OACK (PXE size probe).
        Outcome::Failed(_) if s.is_size_probe() => info!("{s}"),
        // A client that repeated its request talks to the first transfer and tells this
        // one ERROR 5: routine on a slow first reply, not a failure worth a warning.
        Outcome::Failed(TransferError::Peer { code, .. })
            if *code == ErrorCode::UnknownTid && s.stats.blocks == 0 =>
        {
            info!("{s} (duplicate request: the client continues with another transfer)")
        }
        // Shutdown ends every running transfer: one warning each would flood the log.
        Outcome::Failed(TransferError::Aborted { message, .. }) if message == driver::CANCELLED => {
            info!("{s}")
        }
        Outcome::Failed(_) => warn!("{s}"),
    }
}
