//! Where a transfer's datagrams come from and go to: the seam between the transfer drivers
//! and the sockets.
//!
//! - [`Link::Own`]: a socket of the transfer's own, on a new port (its TID, RFC 1350
//!   section 4). The kernel routes the peer's datagrams to it.
//! - [`Link::Blocking`]: a client's socket of its own in blocking mode: it waits in the
//!   receive call itself ([`Link::recv_blocking`]), not through the event loop.
//! - [`Link::Connected`]: single-port mode, as a rule. A socket of the transfer's own, bound
//!   to the listen address and port beside the listen socket (SO_REUSEADDR) and connected
//!   to the peer: the kernel hands it the peer's datagrams (a connected socket matches the
//!   whole 4-tuple), so each transfer keeps its own queue, GRO and wake-ups as with a port
//!   of its own, while its replies leave from the listen address and port. A new request
//!   from the peer that reaches it (the same address and port, another file) ends the
//!   transfer silently and goes to the listener once the socket is closed.
//! - [`Link::Shared`]: single-port mode where such a socket cannot be bound. The transfer
//!   shares the listen socket; the listener reads every datagram and hands those of a
//!   running transfer's peer (address and port) to it through a bounded queue ([`Routes`]);
//!   replies leave from the listen socket, from the address the request was sent to. A
//!   download whose reads never wait is run by the listener itself, at its datagrams and
//!   timers ([`crate::inline`]), instead of through a queue and a task.
//!
//! Both single-port links are what crosses a NAT without a TFTP helper and an ECMP router
//! that hashes on ports.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tftpx_proto::transfer::TransmitBatch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::admission;
use crate::inline::{Control, Handoff, Inline, Timers};
use crate::net::{self, SourceAddr};

/// Datagrams waiting for one transfer in single-port mode, at most: past it they are
/// dropped, as a full socket buffer drops them (the peer retransmits).
const INBOX_DATAGRAMS: usize = 256;

/// Bytes waiting for one transfer in single-port mode, at most (about the default receive
/// buffer of a socket of its own, four times over): bounds what a flood of forged datagrams
/// from a running transfer's peer address can make the server hold.
const INBOX_BYTES: usize = 1 << 20;

/// True for an RRQ or WRQ (opcode 1 or 2, RFC 1350 section 5): what only the listener acts on.
pub(crate) fn is_request(datagram: &[u8]) -> bool {
    matches!(datagram.get(..2), Some([0, 1] | [0, 2]))
}

/// What one receive on a [`Link`] got.
pub(crate) enum Recv {
    /// `len` bytes in the caller's buffer from `from`: one datagram, or (UDP GRO on a socket
    /// of its own) several of `segment` bytes each but the last.
    Datagram {
        len: usize,
        from: SocketAddr,
        segment: usize,
    },
    /// Nothing queued (only from [`Link::try_recv`]).
    Empty,
    /// Single-port mode: the listener no longer routes this peer's datagrams here (a new
    /// request from the same address and port took over, or the server stopped). The
    /// transfer must end without sending anything more: the peer is someone else's now.
    Superseded,
    /// A receive error (ICMP errors surface here); not fatal for UDP.
    Error(io::Error),
}

/// A transfer's way to its peer.
pub(crate) enum Link {
    /// A socket of its own.
    Own(UdpSocket),
    /// A socket of its own in blocking mode ([`Link::blocking`]): waits go through
    /// [`Link::recv_blocking`] only.
    Blocking(UdpSocket),
    /// A socket of its own on the listen address and port, connected to the peer
    /// (single-port mode).
    Connected(ConnectedLink),
    /// The listen socket, shared (single-port mode).
    Shared(SharedLink),
}

/// A request that reached a single-port transfer's connected socket and is not the one it
/// serves: handed to the listener once that socket is closed, as if it had arrived there.
#[derive(Debug)]
pub(crate) struct Forwarded {
    /// The request's bytes.
    pub datagram: Vec<u8>,
    /// Its source.
    pub from: SocketAddr,
    /// The address it was sent to (port 0, as [`net::recv_request`] reports it).
    pub local: SocketAddr,
}

/// A single-port transfer's connected socket (see [`Link::Connected`]).
pub(crate) struct ConnectedLink {
    /// `Some` until dropped: closed before a superseding request is forwarded.
    sock: Option<UdpSocket>,
    /// The request this transfer serves: a repeat of it is folded.
    request: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
    /// A new request from the peer, forwarded to the listener on drop.
    pending: Option<Vec<u8>>,
    forward: mpsc::UnboundedSender<Forwarded>,
    /// Alive while this link is: the listener gives a peer at most one connected socket.
    _alive: Arc<()>,
}

impl ConnectedLink {
    /// Binds and connects the transfer socket (see [`net::bind_connected`]) for `request`
    /// from `peer`, sent to `local` (port 0) on a listen socket bound to port `port`.
    pub fn bind(
        request: &[u8],
        peer: SocketAddr,
        local: SocketAddr,
        port: u16,
        forward: mpsc::UnboundedSender<Forwarded>,
        alive: Arc<()>,
    ) -> io::Result<Self> {
        if local.is_ipv4() != peer.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the local address and the peer are of different families",
            ));
        }
        let mut at = local;
        at.set_port(port);
        let sock = net::bind_connected(at, peer)?;
        Ok(Self {
            sock: Some(sock),
            request: request.to_vec(),
            peer,
            local,
            pending: None,
            forward,
            _alive: alive,
        })
    }

    /// Hands `datagram` from `from` to the listener, as if it had arrived there.
    fn forward(&self, datagram: Vec<u8>, from: SocketAddr) {
        let _ = self.forward.send(Forwarded {
            datagram,
            from,
            local: self.local,
        });
    }

    fn sock(&self) -> &UdpSocket {
        self.sock.as_ref().expect("open until dropped")
    }

    /// What one receive on the connected socket means for the transfer: a repeat of its
    /// request is nothing (`None`: receive again); another request supersedes it.
    fn filter(&mut self, r: io::Result<(usize, SocketAddr, usize)>, buf: &[u8]) -> Option<Recv> {
        match r {
            Ok((len, from, segment)) => {
                let d = &buf[..len];
                if from != self.peer {
                    // Taken between bind() and connect(), when the socket was a second
                    // listener: it was the listener's, and goes there.
                    self.forward(d.to_vec(), from);
                    return None;
                }
                if is_request(d) {
                    if d == self.request.as_slice() {
                        return None;
                    }
                    self.pending = Some(d.to_vec());
                    return Some(Recv::Superseded);
                }
                Some(Recv::Datagram { len, from, segment })
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(Recv::Empty),
            Err(e) => Some(Recv::Error(e)),
        }
    }
}

/// A non-blocking receive's result as a [`Recv`].
fn received(r: io::Result<(usize, SocketAddr, usize)>) -> Recv {
    match r {
        Ok((len, from, segment)) => Recv::Datagram { len, from, segment },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Recv::Empty,
        Err(e) => Recv::Error(e),
    }
}

/// A non-blocking receive of [`net`] (the event loop's or the kernel's view of readiness).
type RecvFn = fn(&UdpSocket, &mut [u8], &mut [u8]) -> io::Result<(usize, SocketAddr, usize)>;

impl ConnectedLink {
    /// The next datagram for the transfer by `recv`, folding repeats of its request.
    fn try_recv_with(&mut self, recv: RecvFn, buf: &mut [u8], cmsg: &mut [u8]) -> Recv {
        // Bounded: each folded repeat is one datagram the peer sent.
        for _ in 0..64 {
            let r = recv(self.sock(), buf, cmsg);
            if let Some(r) = self.filter(r, buf) {
                return r;
            }
        }
        Recv::Empty
    }
}

/// How long a closing single-port transfer socket is read again after its queue first reads
/// empty (see [`ConnectedLink`]'s drop): 50 us, bounded in count by the drain's 64 reads.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_micros(50);

/// Longest request taken from a closing transfer socket's queue (a longer one is dropped:
/// its client sends it again, to the listener).
const QUEUED_REQUEST_MAX: usize = 4096;

impl Drop for ConnectedLink {
    fn drop(&mut self) {
        if let Some(sock) = self.sock.take() {
            // A client that starts its next transfer from the same port as soon as this one
            // is done sends its request here while the socket is still open: take it (the
            // peer's other datagrams are dropped; a stranger's go to the listener) so it is
            // not lost with the socket. Read with a plain (non-blocking) receive: tokio's `try_recv` trusts readiness
            // it may not have seen yet. A peer has one transfer at a time: of several
            // requests queued, the newest is served.
            let sock = sock.into_std();
            if let Ok(sock) = &sock {
                let mut buf = vec![0u8; QUEUED_REQUEST_MAX];
                // A request sent right behind the final ACK may still be on its way when
                // the queue first reads empty (a busy poll takes the ACK within
                // microseconds): look again for up to CLOSE_LINGER before closing. One
                // sent later reaches the listener, as the socket is closed by then.
                let linger_until = std::time::Instant::now() + CLOSE_LINGER;
                let mut taken = 0;
                // Bounded: 64 datagrams at most, and empty reads for CLOSE_LINGER at most.
                while taken < 64 {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            taken += 1;
                            let d = &buf[..n];
                            if from != self.peer {
                                self.forward(d.to_vec(), from);
                            } else if n < buf.len() && is_request(d) {
                                self.pending = Some(d.to_vec());
                            }
                        }
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                && self.pending.is_none()
                                && std::time::Instant::now() < linger_until =>
                        {
                            std::hint::spin_loop();
                        }
                        Err(_) => break,
                    }
                }
            }
            // Closed before the request goes on: its transfer binds the same 4-tuple.
            drop(sock);
        }
        if let Some(datagram) = self.pending.take() {
            self.forward(datagram, self.peer);
        }
    }
}

/// A transfer's share of a listen socket (single-port mode).
pub(crate) struct SharedLink {
    sock: Arc<UdpSocket>,
    /// The peer as the socket names it (IPv4-mapped on a dual-stack IPv6 socket).
    wire_peer: SocketAddr,
    /// The peer as the transfer knows it.
    peer: SocketAddr,
    source: SourceAddr,
    inbox: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    gso: bool,
    /// To the listener: a download to take over, a cancellation (see [`crate::inline`]).
    control: mpsc::UnboundedSender<Control>,
}

/// A shared link's parts, for handing its download over to the listener (see
/// [`Link::take_shared`]).
pub(crate) struct SharedParts {
    pub peer: SocketAddr,
    pub wire_peer: SocketAddr,
    pub source: SourceAddr,
    pub key: Arc<AtomicUsize>,
    pub inbox: mpsc::Receiver<Vec<u8>>,
    pub control: mpsc::UnboundedSender<Control>,
}

impl From<UdpSocket> for Link {
    fn from(sock: UdpSocket) -> Self {
        Link::Own(sock)
    }
}

impl Link {
    /// Sends one datagram to `to`.
    pub async fn send_to(&self, payload: &[u8], to: SocketAddr) -> io::Result<()> {
        match self {
            Link::Own(s) | Link::Blocking(s) => s.send_to(payload, to).await.map(|_| ()),
            Link::Connected(c) => c.sock().send_to(payload, to).await.map(|_| ()),
            Link::Shared(l) => net::send_from(&l.sock, payload, l.wire(to), l.source).await,
        }
    }

    /// Sends a batch (UDP GSO while `*gso` and the kernel agree).
    pub async fn send_batch(
        &mut self,
        batch: &TransmitBatch<'_>,
        gso: &mut bool,
    ) -> io::Result<()> {
        match self {
            Link::Own(s) | Link::Blocking(s) => net::send_batch(s, batch, gso).await,
            Link::Connected(c) => net::send_batch(c.sock(), batch, gso).await,
            Link::Shared(l) => {
                let to = l.wire(batch.destination);
                // The shared socket's GSO state is the transfer's own view of it.
                let mut g = *gso && l.gso;
                let r = net::send_batch_from(&l.sock, batch, to, l.source, &mut g).await;
                l.gso = g;
                *gso = g;
                r
            }
        }
    }

    /// Takes a datagram already waiting, without waiting.
    pub fn try_recv(&mut self, buf: &mut [u8], cmsg: &mut [u8]) -> Recv {
        match self {
            Link::Own(s) => received(net::try_recv_segments(s, buf, cmsg)),
            // A receive on it would wait: its waits are `recv_blocking`.
            Link::Blocking(_) => Recv::Empty,
            Link::Connected(c) => c.try_recv_with(net::try_recv_segments, buf, cmsg),
            Link::Shared(l) => match l.inbox.try_recv() {
                Ok(d) => l.deliver(d, buf),
                Err(mpsc::error::TryRecvError::Empty) => Recv::Empty,
                Err(mpsc::error::TryRecvError::Disconnected) => Recv::Superseded,
            },
        }
    }

    /// A shared link's parts (its queue moved out: the link receives nothing more), for a
    /// download the listener takes over; `None` for any other link.
    pub fn take_shared(&mut self) -> Option<SharedParts> {
        let Link::Shared(l) = self else {
            return None;
        };
        let (_, closed) = mpsc::channel(1);
        Some(SharedParts {
            peer: l.peer,
            wire_peer: l.wire_peer,
            source: l.source,
            key: l.queued.clone(),
            inbox: std::mem::replace(&mut l.inbox, closed),
            control: l.control.clone(),
        })
    }

    /// Whether [`Link::recv_nowait`] can see datagrams: not on a shared listen socket,
    /// whose datagrams come through the listener's task.
    pub fn can_busy_poll(&self) -> bool {
        !matches!(self, Link::Shared(_))
    }

    /// A datagram already in the socket's queue, asked of the kernel itself whatever the
    /// event loop's view of readiness (see [`net::recv_segments_nowait`]): one system call,
    /// never waits. Always `Empty` on a shared link.
    pub fn recv_nowait(&mut self, buf: &mut [u8], cmsg: &mut [u8]) -> Recv {
        match self {
            Link::Own(s) | Link::Blocking(s) => received(net::recv_segments_nowait(s, buf, cmsg)),
            Link::Connected(c) => c.try_recv_with(net::recv_segments_nowait, buf, cmsg),
            Link::Shared(_) => Recv::Empty,
        }
    }

    /// Waits for a datagram. Cancel-safe: a datagram is never lost by dropping the future.
    pub async fn recv(&mut self, buf: &mut [u8], cmsg: &mut [u8]) -> Recv {
        match self {
            Link::Own(s) => match net::recv_segments(s, buf, cmsg).await {
                Ok((len, from, segment)) => Recv::Datagram { len, from, segment },
                Err(e) => Recv::Error(e),
            },
            // Its waits are `recv_blocking`: to the event loop it is never readable (the
            // caller's timer or cancellation ends such a wait, never a busy loop).
            Link::Blocking(_) => std::future::pending().await,
            Link::Connected(c) => loop {
                let r = net::recv_segments(c.sock(), buf, cmsg).await;
                if let Some(r) = c.filter(r, buf) {
                    return r;
                }
            },
            Link::Shared(l) => match l.inbox.recv().await {
                Some(d) => l.deliver(d, buf),
                None => Recv::Superseded,
            },
        }
    }

    /// A link on `sock` put in blocking mode ([`net::set_blocking`]), for a client whose
    /// thread runs nothing else.
    pub fn blocking(sock: UdpSocket) -> io::Result<Self> {
        net::set_blocking(&sock)?;
        Ok(Link::Blocking(sock))
    }

    /// Waits at most `timeout` in the receive system call (see
    /// [`net::recv_segments_blocking`]; `current` is the receive timeout last set).
    /// [`Recv::Empty`] when the time is up or a signal came, or at once for a link that is
    /// not [`Link::Blocking`].
    pub fn recv_blocking(
        &mut self,
        buf: &mut [u8],
        cmsg: &mut [u8],
        timeout: std::time::Duration,
        current: &mut Option<std::time::Duration>,
    ) -> Recv {
        let Link::Blocking(s) = self else {
            return Recv::Empty;
        };
        match net::recv_segments_blocking(s, buf, cmsg, timeout, current) {
            Ok((len, from, segment)) => Recv::Datagram { len, from, segment },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Recv::Empty
            }
            Err(e) => Recv::Error(e),
        }
    }

    /// Sizes the socket's buffers for a window of `window_bytes` (see [`net::fit_window`]).
    /// A shared socket is sized once, at start.
    pub fn fit_window(&self, window_bytes: usize) {
        match self {
            Link::Own(s) | Link::Blocking(s) => net::fit_window(s, window_bytes),
            Link::Connected(c) => net::fit_window(c.sock(), window_bytes),
            Link::Shared(_) => {}
        }
    }

    /// Asks for UDP GRO (see [`net::enable_gro`]); a shared socket hands over datagrams one
    /// by one.
    pub fn enable_gro(&self) {
        match self {
            Link::Own(s) | Link::Blocking(s) => {
                net::enable_gro(s);
            }
            Link::Connected(c) => {
                net::enable_gro(c.sock());
            }
            Link::Shared(_) => {}
        }
    }

    /// The receive buffer for DATA of `blksize` bytes (see [`net::receive_buffer_len`]).
    pub fn receive_buffer_len(&self, blksize: usize) -> usize {
        match self {
            Link::Own(s) | Link::Blocking(s) => net::receive_buffer_len(s, blksize),
            Link::Connected(c) => net::receive_buffer_len(c.sock(), blksize),
            Link::Shared(_) => blksize + tftpx_proto::wire::DATA_HEADER_LEN + 1,
        }
    }
}

impl SharedLink {
    fn wire(&self, to: SocketAddr) -> SocketAddr {
        if to == self.peer {
            self.wire_peer
        } else {
            net::wire_address(self.sock.local_addr().unwrap_or(to), to)
        }
    }

    /// Copies a routed datagram into the caller's buffer (cut to it, as a socket cuts a
    /// datagram longer than the buffer; the buffers are one byte longer than any valid
    /// datagram, so the state machine still sees an oversized one as such).
    fn deliver(&mut self, d: Vec<u8>, buf: &mut [u8]) -> Recv {
        self.queued.fetch_sub(d.len(), Ordering::Relaxed);
        let len = d.len().min(buf.len());
        buf[..len].copy_from_slice(&d[..len]);
        Recv::Datagram {
            len,
            from: self.peer,
            segment: len.max(1),
        }
    }
}

/// The peers that have a connected transfer socket on one listen socket (see
/// [`Link::Connected`]): a peer gets at most one at a time, since two sockets connected to
/// one peer would split its datagrams. Owned by the listener task alone.
#[derive(Default)]
pub(crate) struct ConnectedPeers {
    map: HashMap<SocketAddr, Weak<()>>,
    sweep_at: usize,
}

impl ConnectedPeers {
    /// A token for a new connected socket to `peer`, or `None` while another is alive.
    pub fn claim(&mut self, peer: SocketAddr) -> Option<Arc<()>> {
        if self.map.get(&peer).is_some_and(|w| w.strong_count() > 0) {
            return None;
        }
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(64);
        }
        let alive = Arc::new(());
        self.map.insert(peer, Arc::downgrade(&alive));
        Some(alive)
    }
}

/// The routing table of one shared listen socket: which running transfer each peer
/// (address and port) belongs to. Owned by the listener task alone, so it needs no lock: a
/// transfer that ends drops its end of the queue, and the listener notices at the peer's
/// next datagram or at the next sweep. Downloads handed over to the listener
/// ([`crate::inline`]) are run here, at their datagrams and timers.
pub(crate) struct Routes {
    sock: Arc<UdpSocket>,
    bound: SocketAddr,
    map: HashMap<SocketAddr, Route>,
    /// Sweep closed routes when the table grows past this many.
    sweep_at: usize,
    control: mpsc::UnboundedSender<Control>,
    timers: Timers,
    /// Scratch for [`Routes::on_timers`].
    due: Vec<(std::time::Instant, SocketAddr, u64)>,
    /// Transfers run here ([`Route::Inline`] entries).
    inline: usize,
}

enum Route {
    /// The transfer's task reads its datagrams from a queue.
    Task {
        tx: mpsc::Sender<Vec<u8>>,
        queued: Arc<AtomicUsize>,
        /// The request's fingerprint (see [`Routes::is_repeat`]).
        request: u64,
    },
    /// The listener runs the transfer.
    Inline(Box<Inline>),
}

/// What [`Routes::route`] did with a datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Handed to the peer's transfer (or dropped because its queue was full).
    Delivered,
    /// No running transfer has this peer: the listener handles the datagram.
    NoRoute,
}

impl Routes {
    /// A table for the listen socket `sock`; transfers reach the listener through
    /// `control`.
    pub fn new(sock: Arc<UdpSocket>, control: mpsc::UnboundedSender<Control>) -> Self {
        let bound = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Self {
            sock,
            bound,
            map: HashMap::new(),
            sweep_at: 64,
            control,
            timers: Timers::default(),
            due: Vec::new(),
            inline: 0,
        }
    }

    /// Hands `datagram` from `from` to its transfer, if one is running for that peer.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Routed {
        let Some(r) = self.map.get_mut(&from) else {
            return Routed::NoRoute;
        };
        let (tx, queued) = match r {
            Route::Task { tx, queued, .. } => (tx, queued),
            Route::Inline(s) => {
                s.datagram(&self.sock, std::time::Instant::now(), from, datagram);
                if self.timers.settle(from, s) {
                    self.end(from, false);
                }
                return Routed::Delivered;
            }
        };
        if tx.is_closed() {
            self.map.remove(&from);
            return Routed::NoRoute;
        }
        let before = queued.fetch_add(datagram.len(), Ordering::Relaxed);
        if before + datagram.len() > INBOX_BYTES {
            queued.fetch_sub(datagram.len(), Ordering::Relaxed);
            return Routed::Delivered;
        }
        match tx.try_send(datagram.to_vec()) {
            Ok(()) => Routed::Delivered,
            Err(mpsc::error::TrySendError::Full(d)) => {
                queued.fetch_sub(d.len(), Ordering::Relaxed);
                Routed::Delivered
            }
            Err(mpsc::error::TrySendError::Closed(d)) => {
                queued.fetch_sub(d.len(), Ordering::Relaxed);
                self.map.remove(&from);
                Routed::NoRoute
            }
        }
    }

    /// Takes `peer`'s transfer run here out of the table and hands its result to its task
    /// (`superseded`: see [`Inline::complete`]).
    fn end(&mut self, peer: SocketAddr, superseded: bool) {
        if let Some(Route::Inline(s)) = self.map.remove(&peer) {
            self.inline -= 1;
            s.complete(superseded);
        }
    }

    /// Whether `datagram` is a copy of the request of `peer`'s running transfer: folded
    /// into it, as a connected single-port link folds it, whatever the transfer's progress.
    /// (A client that repeats its request because the answer was slow can have a copy
    /// read here after it has acknowledged DATA: taken as a restart, it would end the
    /// transfer it belongs to.)
    pub fn is_repeat(&self, peer: SocketAddr, datagram: &[u8]) -> bool {
        let running = match self.map.get(&peer) {
            Some(Route::Task { tx, request, .. }) if !tx.is_closed() => *request,
            Some(Route::Inline(s)) => s.request(),
            _ => return false,
        };
        running == admission::fingerprint(datagram)
    }

    /// Whether the listener runs any transfer itself.
    pub fn runs_transfers(&self) -> bool {
        self.inline > 0
    }

    /// Opens a route for a new transfer with `peer`, whose request arrived at `local` (from
    /// [`net::recv_request`]), and returns the transfer's link. A route the peer already
    /// had is replaced: that transfer sees [`Recv::Superseded`] (or, run by the listener,
    /// ends with that result and sends nothing more).
    pub fn open(&mut self, peer: SocketAddr, local: SocketAddr, request: &[u8]) -> Link {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, r| match r {
                Route::Task { tx, .. } => !tx.is_closed(),
                Route::Inline(_) => true,
            });
            self.sweep_at = (self.map.len() * 2).max(64);
        }
        let (tx, inbox) = mpsc::channel(INBOX_DATAGRAMS);
        let queued = Arc::new(AtomicUsize::new(0));
        let old = self.map.insert(
            peer,
            Route::Task {
                tx,
                queued: queued.clone(),
                request: admission::fingerprint(request),
            },
        );
        if let Some(Route::Inline(s)) = old {
            self.inline -= 1;
            s.complete(true);
        }
        Link::Shared(SharedLink {
            sock: self.sock.clone(),
            wire_peer: net::wire_address(self.bound, peer),
            peer,
            source: SourceAddr::for_reply(self.bound, local),
            inbox,
            queued,
            gso: true,
            control: self.control.clone(),
        })
    }

    /// Acts on a message from a transfer's task.
    pub fn control(&mut self, c: Control) {
        let now = std::time::Instant::now();
        match c {
            Control::Handoff(h) => self.adopt(*h, now),
            Control::Abort { peer, key } => {
                if let Some(Route::Inline(s)) = self.map.get_mut(&peer) {
                    if s.is(&key) {
                        s.abort(&self.sock, now);
                        self.end(peer, false);
                    }
                }
            }
        }
    }

    /// Takes a download over from its task, unless its peer's route is no longer its own.
    fn adopt(&mut self, mut h: Handoff, now: std::time::Instant) {
        let peer = h.link.peer;
        let mine = match self.map.get(&peer) {
            Some(Route::Task {
                queued, request, ..
            }) if Arc::ptr_eq(queued, &h.link.key) => Some(*request),
            _ => None,
        };
        let (_, closed) = mpsc::channel(1);
        let mut inbox = std::mem::replace(&mut h.link.inbox, closed);
        let mut s = self.timers.adopt(h, mine.unwrap_or_default());
        if mine.is_none() {
            s.complete(true);
            return;
        }
        s.start(&self.sock, now);
        // Datagrams the route queued for the task before the handover.
        while let Ok(d) = inbox.try_recv() {
            s.datagram(&self.sock, now, peer, &d);
        }
        if self.timers.settle(peer, &mut s) {
            s.complete(false);
            return;
        }
        self.map.insert(peer, Route::Inline(Box::new(s)));
        self.inline += 1;
    }

    /// The earliest timer of a transfer run here.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        self.timers.next()
    }

    /// Runs the timers due at `now`.
    pub fn on_timers(&mut self, now: std::time::Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.timers.due(now, &mut due);
        for (at, peer, seq) in due.drain(..) {
            if let Some(Route::Inline(s)) = self.map.get_mut(&peer) {
                if s.seq() == seq {
                    Timers::fire(&self.sock, s, at, now);
                    if self.timers.settle(peer, s) {
                        self.end(peer, false);
                    }
                }
            }
        }
        self.due = due;
    }

    /// The server stops: every transfer run here ends with ERROR 0 (as a task's does).
    pub fn shutdown(&mut self) {
        let now = std::time::Instant::now();
        for (_, r) in self.map.drain() {
            if let Route::Inline(mut s) = r {
                s.abort(&self.sock, now);
                s.complete(false);
            }
        }
        self.inline = 0;
    }
}
