//! Shared single-port downloads driven by the listener itself, batched across transfers.
//!
//! In shared single-port mode ([`crate::ServerBuilder::single_port_shared`]) the listener
//! reads every datagram of the listen socket. A download whose file reads never wait
//! ([`crate::Handler::reads_never_wait`]: a directory's files, read with `pread`) is handed
//! to the listener once its request is accepted and negotiated: from then on the listener
//! runs the transfer's [`Sender`] itself, at the ACK's arrival, and sends the next DATA
//! from the listen socket at once. No task is woken per datagram; one wake-up of the
//! listener serves every ACK queued on the socket, whatever transfer it belongs to. The
//! transfer's task keeps its place (slot, ticket, memory) and waits, without waking, for
//! the result (or its cancellation, which it passes on as [`Control::Abort`]).
//!
//! Timers: one heap for all handed-over transfers, holding at most one entry per transfer
//! in the usual case (an ACK moves a deadline later, which needs no entry: the old one
//! fires, finds the deadline later and is pushed again).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tftpx_proto::transfer::{Sender, Stats};
use tftpx_proto::wire::ErrorCode;
use tokio::io::AsyncRead;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::driver::{self, Tracker};
use crate::endpoint::SharedParts;
use crate::io::Source;
use crate::net::{self, SourceAddr};

/// A download's reader, as the listener holds it.
pub(crate) type BoxReader = Box<dyn AsyncRead + Send + Unpin>;

/// What a handed-over transfer's task gets back when it ends.
pub(crate) struct Done {
    /// The state machine, for its counters.
    pub tx: Sender,
    /// Its events: the negotiation and the result.
    pub tracker: Tracker,
}

/// A download from its task to the listener (see the module's documentation).
pub(crate) struct Handoff {
    /// The transfer's shared link: its peer, where replies leave from, the route's identity
    /// (the listener takes the transfer over only while the peer's route is still this
    /// one, not superseded by a new request meanwhile) and the datagrams the route already
    /// queued for the task.
    pub link: SharedParts,
    pub tx: Sender,
    pub src: Source<BoxReader>,
    /// Called with the counters after every step (the live byte count, the admission's
    /// "heard").
    pub progress: Box<dyn FnMut(&Stats) + Send>,
    pub done: oneshot::Sender<Done>,
}

/// Messages from transfer tasks to the listener.
pub(crate) enum Control {
    /// Take this download over.
    Handoff(Box<Handoff>),
    /// The task was cancelled (server stop, eviction): end the transfer with ERROR 0.
    Abort {
        peer: SocketAddr,
        key: Arc<AtomicUsize>,
    },
}

/// A download the listener runs.
pub(crate) struct Inline {
    key: Arc<AtomicUsize>,
    /// Tells timer heap entries of an earlier transfer with the same peer from this one's.
    seq: u64,
    /// The request's fingerprint (see [`crate::endpoint::Routes::is_repeat`]).
    request: u64,
    wire_peer: SocketAddr,
    source: SourceAddr,
    tx: Sender,
    src: Source<BoxReader>,
    progress: Box<dyn FnMut(&Stats) + Send>,
    done: Option<oneshot::Sender<Done>>,
    tracker: Tracker,
    gso: bool,
    /// The deadline a heap entry is waiting for, if any.
    scheduled: Option<Instant>,
}

impl Inline {
    /// Whether `key` names this transfer's route.
    pub fn is(&self, key: &Arc<AtomicUsize>) -> bool {
        Arc::ptr_eq(&self.key, key)
    }

    /// Feeds one datagram from the peer, then sends what follows.
    pub fn datagram(&mut self, sock: &UdpSocket, now: Instant, from: SocketAddr, d: &[u8]) {
        self.tx.handle_datagram(now, from, d);
        self.drive(sock, now);
    }

    /// Ends the transfer with ERROR 0 (cancelled), sent at once.
    pub fn abort(&mut self, sock: &UdpSocket, now: Instant) {
        self.tx.abort(ErrorCode::NotDefined, driver::CANCELLED);
        self.drive(sock, now);
    }

    /// The request's fingerprint.
    pub fn request(&self) -> u64 {
        self.request
    }

    /// Hands the result to the task (once); a transfer taken over by a new request gets
    /// `superseded` as its result and sends nothing more.
    pub fn complete(mut self, superseded: bool) {
        while let Some(ev) = self.tx.poll_event() {
            self.tracker.record(ev);
        }
        if superseded && !self.tx.is_finished() {
            self.tracker.result = Some(Err(driver::superseded()));
        }
        if let Some(done) = self.done.take() {
            // A task that is gone (its server stopped) has nothing left to report.
            let _ = done.send(Done {
                tx: self.tx,
                tracker: self.tracker,
            });
        }
    }

    /// Fills the blocks the sender asks for, sends what it has queued and records its
    /// events. Reads never wait ([`crate::Handler::reads_never_wait`]); one that would
    /// ends the transfer with ERROR 0 rather than stall every other transfer.
    fn drive(&mut self, sock: &UdpSocket, now: Instant) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(slot) = self.tx.block_to_fill() {
            let r = {
                let fill = std::pin::pin!(self.src.fill(slot));
                fill.poll(&mut cx)
            };
            match r {
                Poll::Ready(Ok(n)) => self.tx.block_filled(n),
                Poll::Ready(Err(e)) => {
                    let (code, msg) = driver::io_error_code(&e);
                    self.tx.abort(code, &msg);
                }
                Poll::Pending => {
                    self.tx.abort(
                        ErrorCode::NotDefined,
                        "Read would wait in shared single-port mode",
                    );
                }
            }
        }
        while let Some(ev) = self.tx.poll_event() {
            self.tracker.record(ev);
        }
        // Before the replies leave (see driver::run_sender).
        (self.progress)(&self.tx.stats());
        let peer = self.tx.peer();
        while let Some(b) =
            self.tx
                .poll_transmit_batch(now, net::GSO_MAX_SEGMENTS, net::GSO_MAX_BYTES)
        {
            let to = if b.destination == peer {
                self.wire_peer
            } else {
                b.destination
            };
            if let Err(e) = net::send_batch_now(sock, &b, to, self.source, &mut self.gso) {
                tracing::debug!(to = %b.destination, "send failed: {e}");
            }
        }
        while let Some(ev) = self.tx.poll_event() {
            self.tracker.record(ev);
        }
    }
}

/// The timers of the handed-over transfers: (deadline, transfer's `seq`, peer), earliest
/// first.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, SocketAddr)>>,
    next_seq: u64,
}

impl Timers {
    /// The earliest entry's deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, ..))| *t)
    }

    /// Makes sure an entry fires no later than `s`'s deadline (none once it is finished).
    pub fn schedule(&mut self, peer: SocketAddr, s: &mut Inline) {
        let Some(due) = s.tx.poll_timeout() else {
            return;
        };
        if s.scheduled.is_some_and(|t| t <= due) {
            // The entry fires first and pushes the later deadline then.
            return;
        }
        s.scheduled = Some(due);
        self.heap.push(Reverse((due, s.seq, peer)));
    }

    /// Pops the entries due at `now`: (deadline, peer, seq) for each.
    pub fn due(&mut self, now: Instant, out: &mut Vec<(Instant, SocketAddr, u64)>) {
        while let Some(Reverse((t, seq, peer))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            out.push((t, peer, seq));
        }
    }

    /// A transfer taken over for the request of fingerprint `request`, with a `seq` of its
    /// own (not yet scheduled).
    pub fn adopt(&mut self, h: Handoff, request: u64) -> Inline {
        self.next_seq += 1;
        Inline {
            key: h.link.key,
            seq: self.next_seq,
            request,
            wire_peer: h.link.wire_peer,
            source: h.link.source,
            tx: h.tx,
            src: h.src,
            progress: h.progress,
            done: Some(h.done),
            tracker: Tracker::default(),
            gso: true,
            scheduled: None,
        }
    }

    /// After a step of `s`: true once it is finished (its result is due to its task),
    /// else its timer is kept (see [`Timers::schedule`]).
    pub fn settle(&mut self, peer: SocketAddr, s: &mut Inline) -> bool {
        if s.tx.is_finished() {
            return true;
        }
        self.schedule(peer, s);
        false
    }

    /// Handles a heap entry of `s` for `at` that fired at `now`: a timeout if its deadline
    /// has come (then [`Timers::settle`] keeps its next one). An entry that is no longer
    /// the one `s` waits for (an earlier one replaced it) is dropped, so entries never pile
    /// up.
    pub fn fire(sock: &UdpSocket, s: &mut Inline, at: Instant, now: Instant) {
        if s.scheduled != Some(at) {
            return;
        }
        s.scheduled = None;
        if s.tx.poll_timeout().is_some_and(|t| t <= now) {
            s.tx.handle_timeout(now);
            s.drive(sock, now);
        }
    }
}

impl Inline {
    /// Starts a transfer just taken over: sends its first datagrams.
    pub fn start(&mut self, sock: &UdpSocket, now: Instant) {
        self.drive(sock, now);
    }

    /// Its `seq` (see [`Timers`]).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}
