//! Where a transfer's datagrams come from and go to: the seam between the transfer drivers
//! and the sockets.
//!
//! - [`Link::Own`]: a socket of the transfer's own, on a new port (its TID, RFC 1350
//!   section 4). The kernel routes the peer's datagrams to it.
//! - [`Link::Shared`]: single-port mode. Every transfer of a listen address shares the
//!   listen socket; the listener reads every datagram and hands those of a running
//!   transfer's peer (address and port) to it through a bounded queue ([`Routes`]); replies
//!   leave from the listen socket, from the address the request was sent to. This is what
//!   crosses a NAT without a TFTP helper and an ECMP router that hashes on ports.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tftpx_proto::transfer::TransmitBatch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::net::{self, SourceAddr};

/// Datagrams waiting for one transfer in single-port mode, at most: past it they are
/// dropped, as a full socket buffer drops them (the peer retransmits).
const INBOX_DATAGRAMS: usize = 256;

/// Bytes waiting for one transfer in single-port mode, at most (about the default receive
/// buffer of a socket of its own, four times over): bounds what a flood of forged datagrams
/// from a running transfer's peer address can make the server hold.
const INBOX_BYTES: usize = 1 << 20;

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
    /// The listen socket, shared (single-port mode).
    Shared(SharedLink),
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
            Link::Own(s) => s.send_to(payload, to).await.map(|_| ()),
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
            Link::Own(s) => net::send_batch(s, batch, gso).await,
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
            Link::Own(s) => match net::try_recv_segments(s, buf, cmsg) {
                Ok((len, from, segment)) => Recv::Datagram { len, from, segment },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Recv::Empty,
                Err(e) => Recv::Error(e),
            },
            Link::Shared(l) => match l.inbox.try_recv() {
                Ok(d) => l.deliver(d, buf),
                Err(mpsc::error::TryRecvError::Empty) => Recv::Empty,
                Err(mpsc::error::TryRecvError::Disconnected) => Recv::Superseded,
            },
        }
    }

    /// Waits for a datagram. Cancel-safe: a datagram is never lost by dropping the future.
    pub async fn recv(&mut self, buf: &mut [u8], cmsg: &mut [u8]) -> Recv {
        match self {
            Link::Own(s) => match net::recv_segments(s, buf, cmsg).await {
                Ok((len, from, segment)) => Recv::Datagram { len, from, segment },
                Err(e) => Recv::Error(e),
            },
            Link::Shared(l) => match l.inbox.recv().await {
                Some(d) => l.deliver(d, buf),
                None => Recv::Superseded,
            },
        }
    }

    /// Sizes the socket's buffers for a window of `window_bytes` (see [`net::fit_window`]).
    /// A shared socket is sized once, at start.
    pub fn fit_window(&self, window_bytes: usize) {
        if let Link::Own(s) = self {
            net::fit_window(s, window_bytes);
        }
    }

    /// Asks for UDP GRO (see [`net::enable_gro`]); a shared socket hands over datagrams one
    /// by one.
    pub fn enable_gro(&self) {
        if let Link::Own(s) = self {
            net::enable_gro(s);
        }
    }

    /// The receive buffer for DATA of `blksize` bytes (see [`net::receive_buffer_len`]).
    pub fn receive_buffer_len(&self, blksize: usize) -> usize {
        match self {
            Link::Own(s) => net::receive_buffer_len(s, blksize),
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

/// The routing table of one shared listen socket: which running transfer each peer
/// (address and port) belongs to. Owned by the listener task alone, so it needs no lock: a
/// transfer that ends drops its end of the queue, and the listener notices at the peer's
/// next datagram or at the next sweep.
pub(crate) struct Routes {
    sock: Arc<UdpSocket>,
    bound: SocketAddr,
    map: HashMap<SocketAddr, Route>,
    /// Sweep closed routes when the table grows past this many.
    sweep_at: usize,
}

struct Route {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
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
    /// A table for the listen socket `sock`.
    pub fn new(sock: Arc<UdpSocket>) -> Self {
        let bound = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Self {
            sock,
            bound,
            map: HashMap::new(),
            sweep_at: 64,
        }
    }

    /// Hands `datagram` from `from` to its transfer, if one is running for that peer.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Routed {
        let Some(r) = self.map.get(&from) else {
            return Routed::NoRoute;
        };
        if r.tx.is_closed() {
            self.map.remove(&from);
            return Routed::NoRoute;
        }
        let before = r.queued.fetch_add(datagram.len(), Ordering::Relaxed);
        if before + datagram.len() > INBOX_BYTES {
            r.queued.fetch_sub(datagram.len(), Ordering::Relaxed);
            return Routed::Delivered;
        }
        match r.tx.try_send(datagram.to_vec()) {
            Ok(()) => Routed::Delivered,
            Err(mpsc::error::TrySendError::Full(d)) => {
                r.queued.fetch_sub(d.len(), Ordering::Relaxed);
                Routed::Delivered
            }
            Err(mpsc::error::TrySendError::Closed(d)) => {
                r.queued.fetch_sub(d.len(), Ordering::Relaxed);
                self.map.remove(&from);
                Routed::NoRoute
            }
        }
    }

    /// Opens a route for a new transfer with `peer`, whose request arrived at `local` (from
    /// [`net::recv_request`]), and returns the transfer's link. A route the peer already
    /// had is replaced: that transfer sees [`Recv::Superseded`].
    pub fn open(&mut self, peer: SocketAddr, local: SocketAddr) -> Link {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, r| !r.tx.is_closed());
            self.sweep_at = (self.map.len() * 2).max(64);
        }
        let (tx, inbox) = mpsc::channel(INBOX_DATAGRAMS);
        let queued = Arc::new(AtomicUsize::new(0));
        self.map.insert(
            peer,
            Route {
                tx,
                queued: queued.clone(),
            },
        );
        Link::Shared(SharedLink {
            sock: self.sock.clone(),
            wire_peer: net::wire_address(self.bound, peer),
            peer,
            source: SourceAddr::for_reply(self.bound, local),
            inbox,
            queued,
            gso: true,
        })
    }
}
