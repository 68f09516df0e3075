//! Drives the sans-I/O state machines with a [`Link`] (a socket of the transfer's own, or
//! a share of the listen socket), a file and the tokio clock.
//! Shared by the server and the client.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tftpx_proto::negotiate::Negotiated;
use tftpx_proto::transfer::{Event, Receiver, Sender, Stats, TransferError};
use tftpx_proto::wire::{ErrorCode, Packet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::endpoint::{Link, Recv};
use crate::io::{Sink, Source};
use crate::net;
use crate::trace::{Direction, Tracer};

/// The ERROR message a transfer ends with when it is cancelled (server shutdown, or the
/// client's cancellation token).
pub(crate) const CANCELLED: &str = "Transfer cancelled";

/// The smallest receive buffer, in bytes: room for an ERROR with a message of up to 1496
/// bytes (RFC 1350 section 5; an Ethernet MTU's datagram), more than the 256 bytes a message
/// is shown with. A receiver's buffer is otherwise sized for DATA (blksize + 4 + 1), which at
/// blksize 8 would cut a server's ERROR message to 9 bytes.
const MIN_RECEIVE_BUFFER: usize = 1500;

/// The receive buffer for a receiver at `blksize`: DATA (with GRO, a train of them) or an
/// ERROR, whichever needs more.
fn receiver_buffer_len(link: &Link, blksize: usize) -> usize {
    link.receive_buffer_len(blksize).max(MIN_RECEIVE_BUFFER)
}

/// What a transfer reported through its events.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub negotiated: Option<Negotiated>,
    pub result: Option<Result<(), TransferError>>,
    /// What the transfer's waits did before they slept.
    pub busy_polls: BusyPolls,
}

impl Tracker {
    pub fn record(&mut self, ev: Event) {
        match ev {
            Event::Negotiated(n) => self.negotiated = Some(n),
            Event::Complete => self.result = Some(Ok(())),
            Event::Failed(e) => self.result = Some(Err(e)),
        }
    }

    /// The final result; a transfer that ended without saying counts as a time-out.
    pub fn outcome(&self) -> Result<(), TransferError> {
        self.result
            .clone()
            .unwrap_or(Err(TransferError::TimedOut { retries: 0 }))
    }
}

/// Maps a local file error to the TFTP error code and message reported to the peer.
pub(crate) fn io_error_code(e: &io::Error) -> (ErrorCode, String) {
    let h = crate::handler::HandlerError::from_io(e);
    (h.code, h.message)
}

/// How a single-port transfer ends when a new request from its peer's address and port
/// takes the peer over: nothing more is sent (the peer is the new transfer's now).
pub(crate) fn superseded() -> TransferError {
    TransferError::Aborted {
        code: ErrorCode::NotDefined,
        message: SUPERSEDED.to_owned(),
    }
}

/// The reason logged for a superseded transfer (never sent).
pub(crate) const SUPERSEDED: &str = "superseded by a new request from the same address and port";

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Sends one datagram; a send failure is logged and otherwise treated as a loss (the
/// retransmission timer recovers).
async fn send(link: &Link, payload: &[u8], to: std::net::SocketAddr) {
    if let Err(e) = link.send_to(payload, to).await {
        tracing::debug!(%to, "send failed: {e}");
    }
}

/// Sends a single ERROR (used before a state machine exists).
pub(crate) async fn send_error(
    link: &Link,
    to: std::net::SocketAddr,
    code: ErrorCode,
    message: &str,
) {
    let mut buf = [0u8; ERROR_BUF];
    if let Some(d) = encode_error(code, message, &mut buf) {
        send(link, d, to).await;
    }
}

/// Room for an ERROR built by [`encode_error`].
pub(crate) const ERROR_BUF: usize = 260;

/// ERROR `code` with the first 200 bytes of `message` (RFC 1350 section 5), in `buf`.
pub(crate) fn encode_error<'b>(
    code: ErrorCode,
    message: &str,
    buf: &'b mut [u8; ERROR_BUF],
) -> Option<&'b [u8]> {
    let msg = &message.as_bytes()[..message.len().min(200)];
    let n = Packet::Error { code, message: msg }.encode(buf).ok()?;
    Some(&buf[..n])
}

enum Wake {
    /// `len` bytes from `from`: one datagram, or (UDP GRO) several of `segment` bytes each
    /// but the last.
    Datagram {
        len: usize,
        from: std::net::SocketAddr,
        segment: usize,
    },
    Timer,
    Cancelled,
    /// Single-port mode: the peer's datagrams go to a newer transfer now; end silently.
    Superseded,
}

/// How a transfer waits for its peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitPolicy {
    /// No datagram and no due timer for this long ends a wait loop (a safety net under the
    /// state machine's own timers).
    pub idle: Duration,
    /// How long a wait may poll the socket before it sleeps (see [`BusyPoll`]); zero: never.
    pub busy_poll: Duration,
}

/// The default busy-poll budget of a wait: 100 microseconds (`tftpx serve`, `tftpx get` and
/// `put`, [`crate::ServerBuilder::busy_poll`], [`crate::ClientBuilder::busy_poll`]).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(100);

/// What a transfer's busy polls did (see [`crate::ServerBuilder::busy_poll`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BusyPolls {
    /// Waits that polled the socket before sleeping.
    pub polls: u64,
    /// Of them, those a datagram ended within the budget (the sleep and wake-up saved).
    pub hits: u64,
}

impl std::ops::AddAssign for BusyPolls {
    fn add_assign(&mut self, o: Self) {
        self.polls += o.polls;
        self.hits += o.hits;
    }
}

/// Transfers alive in this process (one [`Waiter`] each). Their waits busy-poll only while
/// there are at most [`busy_poll_slots`]: a poll holds a CPU, which many transfers at once
/// need for their work (and a busy server has no sleep to save).
static WAITERS: AtomicUsize = AtomicUsize::new(0);

/// Transfers of one process that may busy-poll: half the CPUs, at least one (the other
/// half is left to the peer when it runs on the same machine, and to everything else).
fn busy_poll_slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)))
}

/// Misses in a row after which the skipped waits stop growing: after `n` misses in a row
/// (n <= 6), the next `2^n - 1` waits sleep at once.
const BUSY_POLL_MAX_BACKOFF: u32 = 6;

/// When a wait polls its socket before it sleeps, and for how long.
///
/// A sleep and wake-up per datagram is what bounds a lock-step transfer on a quiet machine
/// (above all a virtual one, where waking a halted CPU takes tens of microseconds): a wait
/// that polls the socket for up to `budget` first gets a reply that comes within it without
/// sleeping at all. A poll that misses costs its budget in CPU, so misses back off: after
/// `n` misses in a row the next `2^n - 1` waits (at most 63) sleep at once, and a peer
/// whose replies take longer than the budget (a far network, a slow device) costs about
/// one budget per 64 waits. A hit resets the back-off.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    budget: Duration,
    misses: u32,
    skip: u32,
    counts: BusyPolls,
}

impl BusyPoll {
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            misses: 0,
            skip: 0,
            counts: BusyPolls::default(),
        }
    }

    /// How long this wait may poll, or `None` to sleep at once: off, backing off, more than
    /// `slots` transfers alive (`waiters`), or no time left before the wait's deadline.
    /// `left` (the time to that deadline) is asked only once the rest allows a poll, so a
    /// wait that does not poll reads no clock.
    pub fn start(
        &mut self,
        waiters: usize,
        slots: usize,
        left: impl FnOnce() -> Duration,
    ) -> Option<Duration> {
        if self.budget.is_zero() || waiters > slots {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let left = left();
        if left.is_zero() {
            return None;
        }
        self.counts.polls += 1;
        Some(self.budget.min(left))
    }

    /// Polls with `attempt` until it ends the poll or `until` (the end of the budget
    /// [`BusyPoll::start`] granted) passes. `attempt` returns `None` for nothing yet,
    /// `Some(Ok(t))` for a datagram (a hit), `Some(Err(t))` for an end without one (an
    /// error: a miss); the poll returns that `t`, or `None` when the budget ran out (a miss).
    pub fn spin<T>(
        &mut self,
        until: std::time::Instant,
        mut attempt: impl FnMut() -> Option<Result<T, T>>,
    ) -> Option<T> {
        // Bounded by `until` (at most the budget, 100 us by default).
        loop {
            match attempt() {
                Some(Ok(t)) => {
                    self.hit();
                    return Some(t);
                }
                Some(Err(t)) => {
                    self.miss();
                    return Some(t);
                }
                None => {}
            }
            if std::time::Instant::now() >= until {
                self.miss();
                return None;
            }
            std::hint::spin_loop();
        }
    }

    /// The poll got a datagram.
    pub fn hit(&mut self) {
        self.counts.hits += 1;
        self.misses = 0;
    }

    /// The poll's budget ran out (or the socket reported an error).
    pub fn miss(&mut self) {
        self.misses = (self.misses + 1).min(BUSY_POLL_MAX_BACKOFF);
        self.skip = (1 << self.misses) - 1;
    }

    pub fn counts(&self) -> BusyPolls {
        self.counts
    }
}

/// Waits for the next datagram, the state machine's timer, or cancellation. One per
/// transfer: its timer and cancellation futures are created once and reused, so a wait costs
/// no allocation and no timer registration churn.
struct Waiter {
    sleep: Pin<Box<tokio::time::Sleep>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    token: CancellationToken,
    /// Control-message room for the GRO segment size.
    cmsg: Vec<u8>,
    /// The link waits in the receive system call ([`Link::Blocking`]).
    blocking: bool,
    /// The receive timeout last set on a blocking link.
    rcvtimeo: Option<Duration>,
    /// Calls of [`Waiter::wait`] so far (wrapping).
    waits: u32,
    busy: BusyPoll,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        WAITERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The longest a blocking wait stays in the receive system call before the runtime runs its
/// other tasks once (a signal handler's, which cancels the transfer): bounds how late a
/// Ctrl-C is seen when the signal lands on another thread.
const BLOCKING_SLICE: Duration = Duration::from_millis(100);

impl Waiter {
    fn new(cancel: &CancellationToken, link: &Link, policy: WaitPolicy) -> Self {
        WAITERS.fetch_add(1, Ordering::Relaxed);
        let budget = if link.can_busy_poll() {
            policy.busy_poll
        } else {
            Duration::ZERO
        };
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            cancelled: Box::pin(cancel.clone().cancelled_owned()),
            token: cancel.clone(),
            cmsg: net::segments_cmsg(),
            blocking: matches!(link, Link::Blocking(_)),
            rcvtimeo: None,
            waits: 0,
            busy: BusyPoll::new(budget),
        }
    }

    /// Polls the socket for up to the busy-poll budget (see [`BusyPoll`]) before the wait
    /// sleeps: `Some` when a datagram came (or the transfer was superseded).
    fn busy_poll(
        &mut self,
        link: &mut Link,
        buf: &mut [u8],
        at: std::time::Instant,
    ) -> Option<Wake> {
        let mut start = at;
        let budget = self
            .busy
            .start(WAITERS.load(Ordering::Relaxed), busy_poll_slots(), || {
                start = std::time::Instant::now();
                at.saturating_duration_since(start)
            })?;
        let cmsg = &mut self.cmsg;
        self.busy
            .spin(start + budget, || match link.recv_nowait(buf, cmsg) {
                Recv::Datagram { len, from, segment } => {
                    Some(Ok(Some(Wake::Datagram { len, from, segment })))
                }
                Recv::Superseded => Some(Err(Some(Wake::Superseded))),
                Recv::Empty => None,
                // The wait's own receive reports it.
                Recv::Error(_) => Some(Err(None)),
            })
            .flatten()
    }

    /// [`Waiter::wait`] on a blocking link: two system calls per lock-step block (the send
    /// and this receive) where the event loop needs four, and no scheduler work per packet.
    async fn wait_blocking(
        &mut self,
        link: &mut Link,
        buf: &mut [u8],
        at: std::time::Instant,
    ) -> Wake {
        // Bounded by the deadline: each pass waits up to BLOCKING_SLICE or returns.
        loop {
            if self.token.is_cancelled() {
                return Wake::Cancelled;
            }
            let now = std::time::Instant::now();
            if at <= now {
                return Wake::Timer;
            }
            let slice = (at - now).min(BLOCKING_SLICE);
            match link.recv_blocking(buf, &mut self.cmsg, slice, &mut self.rcvtimeo) {
                Recv::Datagram { len, from, segment } => {
                    return Wake::Datagram { len, from, segment }
                }
                Recv::Superseded => return Wake::Superseded,
                // Time up or a signal: let the runtime run the others (the signal's task).
                Recv::Empty => tokio::task::yield_now().await,
                Recv::Error(e) => {
                    tracing::debug!("recv failed: {e}");
                    return Wake::Timer;
                }
            }
        }
    }

    /// `now` is the caller's latest clock reading (one per packet is enough).
    async fn wait(
        &mut self,
        link: &mut Link,
        buf: &mut [u8],
        deadline: Option<std::time::Instant>,
        fallback: Duration,
        now: std::time::Instant,
    ) -> Wake {
        // `is_cancelled` takes a lock: look every 32 waits (the first included). A wait that
        // blocks polls the cancellation future below anyway; this bounds how long a peer
        // whose datagrams are always already queued keeps a cancelled transfer going.
        self.waits = self.waits.wrapping_add(1);
        if self.waits % 32 == 1 && self.token.is_cancelled() {
            return Wake::Cancelled;
        }
        let now = Instant::from_std(now);
        let at = match deadline {
            Some(d) => Instant::from_std(d),
            None => now + fallback,
        };
        if at <= now {
            return Wake::Timer;
        }
        if !self.blocking {
            // Fast path: a datagram already queued needs no task wake-up.
            match link.try_recv(buf, &mut self.cmsg) {
                Recv::Datagram { len, from, segment } => {
                    return Wake::Datagram { len, from, segment }
                }
                Recv::Empty => {}
                Recv::Superseded => return Wake::Superseded,
                Recv::Error(e) => {
                    tracing::debug!("recv failed: {e}");
                }
            }
        }
        if let Some(w) = self.busy_poll(link, buf, at.into_std()) {
            return w;
        }
        if self.blocking {
            return self.wait_blocking(link, buf, at.into_std()).await;
        }
        // Deadlines move later with every packet of a healthy transfer. Re-arming the timer
        // each time would touch the timer wheel per packet, so keep an earlier deadline:
        // when it fires early the state machine sees it is not due yet, and it is re-armed.
        if at < self.sleep.deadline() || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(at);
        }
        // The datagram first: a wake-up by it then returns without polling the
        // cancellation future (a lock), which is polled when the others are pending.
        tokio::select! {
            biased;
            r = link.recv(buf, &mut self.cmsg) => match r {
                Recv::Datagram { len, from, segment } => Wake::Datagram { len, from, segment },
                Recv::Superseded => Wake::Superseded,
                Recv::Empty => Wake::Timer,
                Recv::Error(e) => {
                    // ICMP errors surface here on some systems; they are not fatal for UDP.
                    tracing::debug!("recv failed: {e}");
                    Wake::Timer
                }
            },
            _ = self.sleep.as_mut() => Wake::Timer,
            _ = self.cancelled.as_mut() => Wake::Cancelled,
        }
    }

    /// Runs `fut` unless the transfer is cancelled first (then `None`), reusing the one
    /// cancellation future instead of creating one per block.
    async fn unless_cancelled<T>(
        &mut self,
        fut: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        // A ready `fut` (a buffered read) wins without a look at the token (a lock); the
        // next wait sees a cancellation.
        tokio::select! {
            biased;
            r = fut => Some(r),
            _ = self.cancelled.as_mut() => None,
        }
    }
}

/// Runs a sender to the end: fills blocks from `src`, sends, waits for ACKs and timers.
/// `progress` sees the counters after every step; `trace`, when given, every datagram sent
/// and received (one Option check per datagram without it).
pub(crate) async fn run_sender<R: AsyncRead + Unpin>(
    link: &mut Link,
    tx: &mut Sender,
    src: &mut Source<R>,
    cancel: &CancellationToken,
    policy: WaitPolicy,
    progress: &mut (dyn FnMut(&Stats, Option<&Negotiated>) + Send),
    trace: Option<&Tracer>,
) -> Tracker {
    let mut tracker = Tracker::default();
    // A sender only ever receives ACK, OACK and ERROR: small datagrams (a longer ERROR
    // message is cut, which is harmless).
    let mut buf = vec![0u8; MIN_RECEIVE_BUFFER];
    let mut cancelled = false;
    let mut waiter = Waiter::new(cancel, link, policy);
    // UDP GSO for windows, until the kernel says no.
    let mut gso = true;
    loop {
        while let Some(slot) = tx.block_to_fill() {
            // A slow source (a pipe, a stalled disk) must not make the transfer deaf to
            // cancellation.
            match waiter.unless_cancelled(src.fill(slot)).await {
                Some(Ok(n)) => tx.block_filled(n),
                None => {
                    tx.abort(ErrorCode::NotDefined, CANCELLED);
                    cancelled = true;
                    break;
                }
                Some(Err(e)) => {
                    let (code, msg) = io_error_code(&e);
                    tx.abort(code, &msg);
                    break;
                }
            }
        }
        while let Some(ev) = tx.poll_event() {
            tracker.record(ev);
        }
        // Before the replies leave: a server learns here that its peer answered (the
        // admission's "heard"), which must hold before that peer can see the next DATA.
        progress(&tx.stats(), tracker.negotiated.as_ref());
        let t = now();
        while let Some(b) = tx.poll_transmit_batch(t, net::GSO_MAX_SEGMENTS, net::GSO_MAX_BYTES) {
            if let Some(tr) = trace {
                for d in b.datagrams() {
                    tr.packet(Direction::Sent, b.destination, d);
                }
            }
            if let Err(e) = link.send_batch(&b, &mut gso).await {
                tracing::debug!(to = %b.destination, "send failed: {e}");
            }
        }
        while let Some(ev) = tx.poll_event() {
            tracker.record(ev);
        }
        // While the peer handles what just left: the reads the next blocks need.
        src.prefetch();
        if tx.is_finished() || cancelled {
            progress(&tx.stats(), tracker.negotiated.as_ref());
            break;
        }
        let wake = waiter
            .wait(link, &mut buf, tx.poll_timeout(), policy.idle, t)
            .await;
        match wake {
            Wake::Datagram { len, from, segment } => {
                let t = now();
                for d in buf[..len].chunks(segment) {
                    if let Some(tr) = trace {
                        tr.packet(Direction::Received, from, d);
                    }
                    tx.handle_datagram(t, from, d);
                }
            }
            Wake::Timer => tx.handle_timeout(now()),
            Wake::Cancelled => {
                tx.abort(ErrorCode::NotDefined, CANCELLED);
                cancelled = true;
            }
            Wake::Superseded => {
                tracker.result = Some(Err(superseded()));
                break;
            }
        }
    }
    tracker.busy_polls += waiter.busy.counts();
    tracker
}

/// Runs a receiver until the last block is in (its final ACK still unsent, so the caller
/// can commit the data first) or the transfer fails. Payloads go to `sink`.
/// `trace`, when given, sees every datagram sent and received. `write_behind(accepted, len)`
/// says whether the ACK of a block of `len` bytes may leave before the block is written,
/// `accepted` bytes having been taken by `sink` before it (true only when the writer is
/// sure to take it, short of an I/O error; see the loop); such a block a deferred `sink`
/// may hold until its next write point, right after an ACK.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_receiver<W: AsyncWrite + Unpin>(
    link: &mut Link,
    rx: &mut Receiver,
    sink: &mut Sink<W>,
    tracker: &mut Tracker,
    cancel: &CancellationToken,
    policy: WaitPolicy,
    write_behind: &(dyn Fn(u64, usize) -> bool + Sync),
    progress: &mut (dyn FnMut(&Stats, Option<&Negotiated>) + Send),
    trace: Option<&Tracer>,
) {
    let mut buf = vec![0u8; receiver_buffer_len(link, rx.blksize())];
    let mut waiter = Waiter::new(cancel, link, policy);
    // One clock reading per wake-up serves the datagram, the replies and the next wait.
    let mut t = now();
    // The datagram just handled was reported already (the write-behind path reports it
    // before its ACK leaves): one call per datagram, not two.
    let mut reported = false;
    loop {
        while let Some(ev) = rx.poll_event() {
            if let Event::Negotiated(n) = &ev {
                let want = receiver_buffer_len(link, n.blksize as usize);
                if buf.len() != want {
                    buf = vec![0u8; want];
                }
            }
            tracker.record(ev);
        }
        // Before the replies leave (see run_sender), and once more at the end.
        if !std::mem::take(&mut reported) {
            progress(&rx.stats(), tracker.negotiated.as_ref());
        }
        if rx.is_complete() || rx.is_finished() {
            break;
        }
        while let Some(out) = rx.poll_transmit(t) {
            if let Some(tr) = trace {
                tr.packet(Direction::Sent, out.destination, out.payload);
            }
            send(link, out.payload, out.destination).await;
        }
        if rx.is_finished() {
            continue;
        }
        let wake = waiter
            .wait(link, &mut buf, rx.poll_timeout(), policy.idle, t)
            .await;
        t = now();
        match wake {
            Wake::Datagram { len, from, segment } => {
                let mut chunks = buf[..len].chunks(segment).peekable();
                while let Some(d) = chunks.next() {
                    if let Some(tr) = trace {
                        tr.packet(Direction::Received, from, d);
                    }
                    if let Some(payload) = rx.handle_datagram(t, from, d) {
                        // Write-behind (as tftpd-hpa does): the ACK leaves before the block
                        // is written, so the peer sends the next block while we write. Not
                        // the final ACK, which waits for the commit; a write that fails
                        // still ends the transfer with an ERROR, one write later. A block
                        // the writer will refuse (a size cap) gets its ERROR instead.
                        let behind = write_behind(sink.accepted(), payload.len());
                        let mut acked = false;
                        if behind && chunks.peek().is_none() && !rx.is_complete() {
                            progress(&rx.stats(), tracker.negotiated.as_ref());
                            reported = true;
                            acked = flush_receiver(link, rx, trace).await;
                        }
                        let mut r = sink.write(payload, behind).await;
                        if r.is_ok() && acked {
                            r = sink.write_point().await;
                        }
                        if let Err(e) = r {
                            let (code, msg) = io_error_code(&e);
                            rx.abort(code, &msg);
                            break;
                        }
                    }
                }
            }
            Wake::Timer => rx.handle_timeout(t),
            Wake::Cancelled => {
                rx.abort(ErrorCode::NotDefined, CANCELLED);
            }
            Wake::Superseded => {
                while let Some(ev) = rx.poll_event() {
                    tracker.record(ev);
                }
                tracker.result = Some(Err(superseded()));
                tracker.busy_polls += waiter.busy.counts();
                return;
            }
        }
    }
    while let Some(ev) = rx.poll_event() {
        tracker.record(ev);
    }
    tracker.busy_polls += waiter.busy.counts();
}

/// Sends what a receiver has queued (an ACK, its final ACK or an ERROR), without waiting;
/// whether it sent anything. Each datagram is reported to `trace` when there is one.
pub(crate) async fn flush_receiver(link: &Link, rx: &mut Receiver, trace: Option<&Tracer>) -> bool {
    let t = now();
    let mut sent = false;
    while let Some(out) = rx.poll_transmit(t) {
        if let Some(tr) = trace {
            tr.packet(Direction::Sent, out.destination, out.payload);
        }
        send(link, out.payload, out.destination).await;
        sent = true;
    }
    sent
}

/// Sends what a receiver still has to send (its final ACK or an ERROR) and dallies until it
/// is finished, or until cancelled.
pub(crate) async fn finish_receiver(
    link: &mut Link,
    rx: &mut Receiver,
    tracker: &mut Tracker,
    cancel: &CancellationToken,
    policy: WaitPolicy,
    trace: Option<&Tracer>,
) {
    let mut buf = vec![0u8; receiver_buffer_len(link, rx.blksize())];
    // A dally waits for a repeat that should not come: nothing to busy-poll for.
    let dally = WaitPolicy {
        busy_poll: Duration::ZERO,
        ..policy
    };
    let mut waiter = Waiter::new(cancel, link, dally);
    loop {
        flush_receiver(link, rx, trace).await;
        while let Some(ev) = rx.poll_event() {
            tracker.record(ev);
        }
        if rx.is_finished() {
            break;
        }
        let wake = waiter
            .wait(link, &mut buf, rx.poll_timeout(), policy.idle, now())
            .await;
        let t = now();
        match wake {
            Wake::Datagram { len, from, segment } => {
                // Only a repeated final DATA can matter now; nothing is delivered.
                for d in buf[..len].chunks(segment) {
                    if let Some(tr) = trace {
                        tr.packet(Direction::Received, from, d);
                    }
                    let _ = rx.handle_datagram(t, from, d);
                }
            }
            Wake::Timer => rx.handle_timeout(t),
            Wake::Cancelled | Wake::Superseded => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(100);
    const LONG: Duration = Duration::from_secs(1);

    #[test]
    fn busy_poll_is_off_at_zero_and_beyond_the_slots() {
        let mut off = BusyPoll::new(Duration::ZERO);
        assert_eq!(off.start(1, 1, || LONG), None);
        let mut b = BusyPoll::new(BUDGET);
        assert_eq!(b.start(2, 1, || LONG), None, "more transfers than slots");
        assert_eq!(b.start(4, 4, || LONG), Some(BUDGET));
        assert_eq!(b.counts(), BusyPolls { polls: 1, hits: 0 });
    }

    #[test]
    fn busy_poll_never_outlasts_the_wait() {
        let mut b = BusyPoll::new(BUDGET);
        assert_eq!(
            b.start(1, 1, || Duration::from_micros(30)),
            Some(Duration::from_micros(30))
        );
        assert_eq!(b.start(1, 1, || Duration::ZERO), None);
    }

    /// After `n` misses in a row the next `2^n - 1` waits sleep at once (n <= 6); a hit
    /// resets the back-off.
    #[test]
    fn misses_back_off_exponentially_and_a_hit_resets() {
        // Waits whose every poll misses: the waits skipped between two polls.
        let mut b = BusyPoll::new(BUDGET);
        let mut gaps = Vec::new();
        let mut gap = 0;
        for _ in 0..400 {
            if b.start(1, 1, || LONG).is_some() {
                b.miss();
                gaps.push(gap);
                gap = 0;
            } else {
                gap += 1;
            }
        }
        assert_eq!(gaps[..9], [0, 1, 3, 7, 15, 31, 63, 63, 63]);
        assert_eq!(b.counts().hits, 0);
        // A hit: polls again at the next wait.
        let mut b = BusyPoll::new(BUDGET);
        for _ in 0..5 {
            b.miss();
        }
        b.skip = 0;
        assert!(b.start(1, 1, || LONG).is_some());
        b.hit();
        assert_eq!(b.start(1, 1, || LONG), Some(BUDGET));
        b.miss();
        assert_eq!(b.start(1, 1, || LONG), None, "one skipped after one miss");
        assert_eq!(b.start(1, 1, || LONG), Some(BUDGET));
        assert_eq!(b.counts(), BusyPolls { polls: 3, hits: 1 });
    }
}
