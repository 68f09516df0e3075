//! Sockets: the listener that learns each request's destination address (so replies leave
//! from the address the client asked), and per-transfer sockets sized to their window.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};
use tftpx_proto::transfer::TransmitBatch;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::policy::PortRange;

/// A request as it arrived at a listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub len: usize,
    pub from: SocketAddr,
    /// The local address the datagram was sent to; replies must leave from it.
    pub local: SocketAddr,
}

fn new_socket(addr: &SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Let `0.0.0.0:69` and `[::]:69` be bound side by side.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Binds a listening socket that reports each datagram's destination address
/// (IP_PKTINFO / IPV6_RECVPKTINFO). `v6only: false` makes an IPv6 socket dual-stack: it
/// also receives IPv4, as IPv4-mapped addresses (which [`recv_request`] turns back into
/// IPv4).
pub(crate) fn bind_listener(addr: SocketAddr, v6only: bool) -> io::Result<UdpSocket> {
    let s = new_socket(&addr)?;
    if addr.is_ipv6() && !v6only {
        s.set_only_v6(false)?;
    }
    // Bursts of requests (a PXE boot storm) should queue, not drop.
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&addr.into())?;
    enable_packet_info(&s, &addr)?;
    UdpSocket::from_std(s.into())
}

/// Asks for each datagram's destination address: IP_PKTINFO on IPv4, IPV6_RECVPKTINFO on
/// IPv6 (which on a dual-stack socket reports IPv4 destinations as IPv4-mapped addresses).
fn enable_packet_info(s: &Socket, bound: &SocketAddr) -> io::Result<()> {
    if bound.is_ipv6() {
        setsockopt(s, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)
    } else {
        setsockopt(s, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)
    }
}

/// Makes a socket bound by someone else (systemd socket activation, a parent process) a
/// listener: checks that it is a bound UDP socket of IPv4 or IPv6, makes it non-blocking
/// and asks for each datagram's destination address, as [`bind_listener`] does. Its
/// IPV6_V6ONLY setting is left as it was given.
///
/// # Errors
/// `InvalidInput` naming what the socket is instead (not a datagram socket, not UDP, not
/// bound, not IPv4/IPv6); an OS error from a socket option.
pub(crate) fn adopt_listener(sock: std::net::UdpSocket) -> io::Result<UdpSocket> {
    let s = Socket::from(std::os::fd::OwnedFd::from(sock));
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    match s.r#type() {
        Ok(t) if t == Type::DGRAM => {}
        Ok(t) => return Err(invalid(format!("not a datagram socket ({t:?})"))),
        Err(e) => return Err(invalid(format!("not a socket ({e})"))),
    }
    match s.domain() {
        Ok(d) if d == Domain::IPV4 || d == Domain::IPV6 => {}
        Ok(d) => return Err(invalid(format!("not an IPv4 or IPv6 socket ({d:?})"))),
        Err(e) => return Err(invalid(format!("not a socket ({e})"))),
    }
    match s.protocol() {
        Ok(Some(p)) if p != Protocol::UDP => {
            return Err(invalid(format!("not a UDP socket ({p:?})")))
        }
        _ => {}
    }
    let bound = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .filter(|a| a.port() != 0)
        .ok_or_else(|| invalid("not bound to an address and port".into()))?;
    s.set_nonblocking(true)?;
    let _ = s.set_recv_buffer_size(1 << 20);
    enable_packet_info(&s, &bound)?;
    UdpSocket::from_std(s.into())
}

/// An IPv4 client seen through a dual-stack IPv6 listener (`::ffff:a.b.c.d`) as the IPv4
/// address it is; every other address unchanged.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Receives one datagram on a listener bound to `bound`, with its destination address.
/// `cmsg` is scratch space for control messages, reused across calls.
pub(crate) async fn recv_request(
    sock: &UdpSocket,
    bound: SocketAddr,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<Arrival> {
    sock.async_io(Interest::READABLE, || {
        recv_request_now(sock, bound, buf, cmsg, MsgFlags::empty())
    })
    .await
}

/// [`recv_request`], but with `busy`, first polls the socket for up to the budget it grants (see
/// [`crate::driver::BusyPoll`]) when nothing is queued: for the listener that runs
/// transfers itself ([`crate::inline`]), whose next ACK is usually microseconds away and
/// whose sleep and wake-up would cost more.
pub(crate) async fn recv_request_polling(
    sock: &UdpSocket,
    bound: SocketAddr,
    buf: &mut [u8],
    cmsg: &mut [u8],
    busy: Option<&mut crate::driver::BusyPoll>,
) -> io::Result<Arrival> {
    let Some(busy) = busy else {
        return recv_request(sock, bound, buf, cmsg).await;
    };
    // A poll that hits returns without asking the event loop: this spends the task's
    // budget, so that under steady traffic the listener still yields now and then and its
    // runtime turns its timer and I/O drivers (and its other futures are polled).
    tokio::task::coop::consume_budget().await;
    // The clock is read only when a poll is granted.
    let mut start = None;
    if let Some(budget) = busy.start(0, 1, || {
        start = Some(std::time::Instant::now());
        std::time::Duration::MAX
    }) {
        let until = start.unwrap_or_else(std::time::Instant::now) + budget;
        let polled = busy.spin(until, || {
            match recv_request_now(sock, bound, buf, cmsg, MsgFlags::MSG_DONTWAIT) {
                Ok(a) => Some(Ok(Ok(a))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => Some(Err(Err(e))),
            }
        });
        if let Some(r) = polled {
            return r;
        }
    }
    recv_request(sock, bound, buf, cmsg).await
}

/// One receive of [`recv_request`], with `flags`.
fn recv_request_now(
    sock: &UdpSocket,
    bound: SocketAddr,
    buf: &mut [u8],
    cmsg: &mut [u8],
    flags: MsgFlags,
) -> io::Result<Arrival> {
    let fd = sock.as_raw_fd();
    let mut iov = [IoSliceMut::new(buf)];
    let msg =
        recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), flags).map_err(io::Error::from)?;
    let from = msg
        .address
        .and_then(|a| to_std(&a))
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut local_ip = bound.ip();
    let mut scope = 0;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(info) => {
                    let dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                    let spec = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                    // A broadcast or multicast request is answered from the interface's
                    // own address.
                    local_ip = if dst.is_broadcast() || dst.is_multicast() {
                        IpAddr::V4(spec)
                    } else {
                        IpAddr::V4(dst)
                    };
                }
                ControlMessageOwned::Ipv6PacketInfo(info) => {
                    local_ip = IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                    scope = info.ipi6_ifindex;
                }
                _ => {}
            }
        }
    }
    // A dual-stack listener sees IPv4 as IPv4-mapped IPv6: the transfer talks IPv4
    // (its socket is an IPv4 one), answering from the IPv4 address that was asked.
    let from = unmapped(from);
    if let IpAddr::V6(ip) = local_ip {
        if let Some(v4) = ip.to_ipv4_mapped() {
            // A broadcast or multicast request: let the kernel choose the source.
            local_ip = if v4.is_broadcast() || v4.is_multicast() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(v4)
            };
        } else if from.is_ipv4() {
            local_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        }
    }
    let local = match local_ip {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V4(ip), 0),
        IpAddr::V6(ip) => {
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            SocketAddr::V6(SocketAddrV6::new(
                ip,
                0,
                0,
                if link_local { scope } else { 0 },
            ))
        }
    };
    Ok(Arrival {
        len: msg.bytes,
        from,
        local,
    })
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// Binds a transfer's own socket (its TID) on `local`'s IP and a port the OS picks, or with
/// `range` the first free port of the range from a random start (wrapping round). Size its
/// buffers with [`fit_window`] once the window is negotiated.
///
/// # Errors
/// The OS error; `AddrInUse` when every port of `range` is taken.
pub(crate) fn bind_transfer(local: SocketAddr, range: Option<PortRange>) -> io::Result<UdpSocket> {
    let Some(range) = range else {
        let s = new_socket(&local)?;
        s.bind(&local.into())?;
        return UdpSocket::from_std(s.into());
    };
    // A random start spreads transfers over the range and makes the next TID hard to guess.
    let start = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::time::Instant::now(),
    ) as u32;
    for i in 0..range.len() {
        let mut at = local;
        at.set_port(range.nth_from(start, i));
        let s = new_socket(&at)?;
        match s.bind(&at.into()) {
            Ok(()) => return UdpSocket::from_std(s.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("every port of --port-range {range} is in use"),
    ))
}

/// Makes a listen socket shareable with [`bind_connected`] transfer sockets
/// (SO_REUSEADDR; for a socket already bound, as systemd passes them, it applies from now).
pub(crate) fn allow_connected_shares(sock: &UdpSocket) -> io::Result<()> {
    socket2::SockRef::from(sock).set_reuse_address(true)
}

/// Single-port mode's transfer socket: bound to `local` (the address the request was sent
/// to, with the listen port) beside the listen socket (both SO_REUSEADDR) and connected to
/// `peer`, so the kernel hands it `peer`'s datagrams (a connected socket matches the whole
/// 4-tuple and wins the lookup over the listen socket) and its replies leave from `local`.
///
/// # Errors
/// The OS error (`AddrInUse` when the listen socket does not allow the share).
pub(crate) fn bind_connected(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let s = new_socket(&local)?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    s.connect(&peer.into())?;
    UdpSocket::from_std(s.into())
}

/// Binds a client socket for talking to `server` (on `local`, or any local address and an
/// OS-picked port), with buffers for a window of `window_bytes`.
pub(crate) fn bind_client(
    server: SocketAddr,
    local: Option<SocketAddr>,
    window_bytes: usize,
) -> io::Result<UdpSocket> {
    let local: SocketAddr = match local {
        Some(l) => l,
        None if server.is_ipv6() => (Ipv6Addr::UNSPECIFIED, 0).into(),
        None => (Ipv4Addr::UNSPECIFIED, 0).into(),
    };
    let s = new_socket(&local)?;
    s.bind(&local.into())?;
    let s = UdpSocket::from_std(s.into())?;
    fit_window(&s, window_bytes);
    Ok(s)
}

/// Grows a socket's send and receive buffers to hold a window of `window_bytes` twice (one
/// in flight, one being retransmitted). Only windows past the system default are touched.
/// With CAP_NET_ADMIN (a server on port 69 runs as root) the size is forced past
/// net.core.{r,w}mem_max (SO_RCVBUFFORCE): a 1 MiB window (65464 x 16) overflows the
/// default 208 KiB limit, and every lost window costs a timeout. Otherwise the kernel caps
/// the request at those limits, which only means less headroom.
pub(crate) fn fit_window(sock: &UdpSocket, window_bytes: usize) {
    let want = window_bytes * 2;
    if want <= 64 * 1024 {
        return;
    }
    if setsockopt(sock, sockopt::RcvBufForce, &want).is_err() {
        let _ = socket2::SockRef::from(sock).set_recv_buffer_size(want);
    }
    if setsockopt(sock, sockopt::SndBufForce, &want).is_err() {
        let _ = socket2::SockRef::from(sock).set_send_buffer_size(want);
    }
}

/// Most segments one UDP GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one UDP GSO send may carry: an IP datagram's 64 KiB less headers.
pub(crate) const GSO_MAX_BYTES: usize = 65_000;

/// The source address of datagrams sent on a shared socket (single-port mode): the address
/// the request was sent to, so a multi-homed or anycast host answers from the address the
/// client asked even when the socket is bound to a wildcard address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceAddr {
    /// The socket's own address, or the kernel's choice: no control message.
    Bound,
    /// IP_PKTINFO's `ipi_spec_dst` on an IPv4 socket.
    V4(Ipv4Addr),
    /// IPV6_PKTINFO on an IPv6 socket (an IPv4 source as IPv4-mapped), with the interface
    /// index of a link-local address (0 otherwise).
    V6(Ipv6Addr, u32),
}

impl SourceAddr {
    /// The source for replies to a request that arrived at `local` (from
    /// [`recv_request`]) on a socket bound to `bound`.
    pub fn for_reply(bound: SocketAddr, local: SocketAddr) -> Self {
        if !bound.ip().is_unspecified() || local.ip().is_unspecified() {
            return Self::Bound;
        }
        match (bound, local) {
            (SocketAddr::V4(_), SocketAddr::V4(l)) => Self::V4(*l.ip()),
            (SocketAddr::V6(_), SocketAddr::V4(l)) => Self::V6(l.ip().to_ipv6_mapped(), 0),
            (SocketAddr::V6(_), SocketAddr::V6(l)) => Self::V6(*l.ip(), l.scope_id()),
            (SocketAddr::V4(_), SocketAddr::V6(_)) => Self::Bound,
        }
    }
}

/// `to` as a socket bound to `bound` must name it: IPv4 peers of a dual-stack IPv6 socket as
/// IPv4-mapped IPv6 addresses.
pub(crate) fn wire_address(bound: SocketAddr, to: SocketAddr) -> SocketAddr {
    match (bound, to) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => to,
    }
}

/// One `sendmsg` of `payload` to `to` from `source`, split by the kernel into datagrams of
/// `segment` bytes when given (UDP GSO). Non-blocking: `WouldBlock` when the socket's
/// buffer is full.
fn sendmsg_from(
    sock: &UdpSocket,
    payload: &[u8],
    to: &SockaddrStorage,
    source: SourceAddr,
    segment: Option<u16>,
) -> io::Result<usize> {
    let iov = [IoSlice::new(payload)];
    let v4;
    let v6;
    let mut cmsgs = Vec::with_capacity(2);
    match source {
        SourceAddr::Bound => {}
        SourceAddr::V4(ip) => {
            v4 = nix::libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: nix::libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            cmsgs.push(ControlMessage::Ipv4PacketInfo(&v4));
        }
        SourceAddr::V6(ip, ifindex) => {
            v6 = nix::libc::in6_pktinfo {
                ipi6_addr: nix::libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            cmsgs.push(ControlMessage::Ipv6PacketInfo(&v6));
        }
    }
    let seg;
    if let Some(s) = segment {
        seg = s;
        cmsgs.push(ControlMessage::UdpGsoSegments(&seg));
    }
    sendmsg(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), Some(to)).map_err(io::Error::from)
}

/// Sends one datagram to `to` from `source` (see [`SourceAddr`]).
///
/// # Errors
/// The OS error; the caller treats it as a loss.
pub(crate) async fn send_from(
    sock: &UdpSocket,
    payload: &[u8],
    to: SocketAddr,
    source: SourceAddr,
) -> io::Result<()> {
    if source == SourceAddr::Bound {
        return sock.send_to(payload, to).await.map(|_| ());
    }
    let to = SockaddrStorage::from(to);
    sock.async_io(Interest::WRITABLE, || {
        sendmsg_from(sock, payload, &to, source, None)
    })
    .await
    .map(|_| ())
}

/// Sends a batch of datagrams: with `*gso`, in one `sendmsg` carrying `UDP_SEGMENT` (the
/// kernel splits it, on loopback often not at all until the receiving socket); otherwise,
/// or when the kernel or route refuses GSO (then `*gso` turns off for this socket), one
/// `send_to` per datagram.
///
/// # Errors
/// The first send error; the caller treats it as a loss (the timer recovers).
pub(crate) async fn send_batch(
    sock: &UdpSocket,
    batch: &TransmitBatch<'_>,
    gso: &mut bool,
) -> io::Result<()> {
    send_batch_from(sock, batch, batch.destination, SourceAddr::Bound, gso).await
}

/// [`send_batch`] to `to` (the batch's destination as the socket names it, see
/// [`wire_address`]) from `source`.
///
/// # Errors
/// The first send error; the caller treats it as a loss (the timer recovers).
pub(crate) async fn send_batch_from(
    sock: &UdpSocket,
    batch: &TransmitBatch<'_>,
    to: SocketAddr,
    source: SourceAddr,
    gso: &mut bool,
) -> io::Result<()> {
    if *gso && batch.count > 1 {
        let seg = u16::try_from(batch.segment).unwrap_or(u16::MAX);
        let to = SockaddrStorage::from(to);
        let r = sock
            .async_io(Interest::WRITABLE, || {
                sendmsg_from(sock, batch.payload, &to, source, Some(seg))
            })
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if no_gso(&e) => *gso = false,
            Err(e) => return Err(e),
        }
    }
    for d in batch.datagrams() {
        send_from(sock, d, to, source).await?;
    }
    Ok(())
}

/// [`send_batch_from`] without waiting: for the listener, which runs transfers itself
/// ([`crate::inline`]) and must not wait on one. A datagram the socket has no room for is
/// dropped, as a loss (the transfer's timer recovers).
///
/// # Errors
/// The first send error.
pub(crate) fn send_batch_now(
    sock: &UdpSocket,
    batch: &TransmitBatch<'_>,
    to: SocketAddr,
    source: SourceAddr,
    gso: &mut bool,
) -> io::Result<()> {
    let to = SockaddrStorage::from(to);
    if *gso && batch.count > 1 {
        let seg = u16::try_from(batch.segment).unwrap_or(u16::MAX);
        match sendmsg_from(sock, batch.payload, &to, source, Some(seg)) {
            Ok(_) => return Ok(()),
            Err(e) if no_gso(&e) => *gso = false,
            Err(e) => return Err(e),
        }
    }
    for d in batch.datagrams() {
        sendmsg_from(sock, d, &to, source, None)?;
    }
    Ok(())
}

/// Whether a GSO send failed because there is no GSO on this path (old kernel, a segment
/// over the route's MTU, a device without checksum offload): the datagrams then go one by
/// one from now on.
fn no_gso(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc_errno::EIO | libc_errno::EINVAL | libc_errno::ENOPROTOOPT | libc_errno::EOPNOTSUPP
        )
    )
}

/// The errno values [`send_batch`] falls back on.
mod libc_errno {
    pub const EIO: i32 = nix::errno::Errno::EIO as i32;
    pub const EINVAL: i32 = nix::errno::Errno::EINVAL as i32;
    pub const ENOPROTOOPT: i32 = nix::errno::Errno::ENOPROTOOPT as i32;
    pub const EOPNOTSUPP: i32 = nix::errno::Errno::EOPNOTSUPP as i32;
}

/// Asks the kernel to hand over a train of same-sized datagrams from one sender in a single
/// receive (UDP GRO; a GSO send on loopback arrives whole). Receive with
/// [`recv_segments`]. Returns false where the kernel has no UDP GRO.
pub(crate) fn enable_gro(sock: &UdpSocket) -> bool {
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

/// True when [`enable_gro`] is in force on `sock`: receive buffers must then hold 64 KiB.
pub(crate) fn gro_enabled(sock: &UdpSocket) -> bool {
    nix::sys::socket::getsockopt(sock, sockopt::UdpGroSegment).unwrap_or(false)
}

/// Size of a receive buffer for DATA of `blksize`: one datagram and a byte (to see an
/// oversized one), or a whole GRO train when GRO is on.
pub(crate) fn receive_buffer_len(sock: &UdpSocket, blksize: usize) -> usize {
    let one = blksize + tftpx_proto::wire::DATA_HEADER_LEN + 1;
    if gro_enabled(sock) {
        one.max(64 * 1024)
    } else {
        one
    }
}

/// Room for the one control message [`recv_segments`] reads.
pub(crate) fn segments_cmsg() -> Vec<u8> {
    nix::cmsg_space!(i32)
}

/// One receive: (bytes, source, segment size). Without GRO, or for a single datagram, the
/// segment size is the length; with GRO, `buf[..bytes]` holds several datagrams, each
/// `segment` bytes but the last. Non-blocking: `WouldBlock` when nothing is queued.
pub(crate) fn try_recv_segments(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, SocketAddr, usize)> {
    sock.try_io(Interest::READABLE, || recv_segments_raw(sock, buf, cmsg))
}

/// [`try_recv_segments`], waiting for a datagram.
pub(crate) async fn recv_segments(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, SocketAddr, usize)> {
    sock.async_io(Interest::READABLE, || recv_segments_raw(sock, buf, cmsg))
        .await
}

/// Puts a transfer socket in blocking mode (clears `O_NONBLOCK`; its tokio registration
/// stays, unused for receives) for [`recv_segments_blocking`]. Sends may then block while
/// the socket's send buffer is full.
pub(crate) fn set_blocking(sock: &UdpSocket) -> io::Result<()> {
    socket2::SockRef::from(sock).set_nonblocking(false)
}

/// [`try_recv_segments`] on a socket in blocking mode: waits in `recvmsg(2)` itself, at
/// most `timeout` (at least 1 ms; `SO_RCVTIMEO`, set only when it differs from `current`,
/// the value last set). `WouldBlock` when the time is up, `Interrupted` on a signal.
pub(crate) fn recv_segments_blocking(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
    timeout: std::time::Duration,
    current: &mut Option<std::time::Duration>,
) -> io::Result<(usize, SocketAddr, usize)> {
    // Zero would mean "no timeout".
    let timeout = timeout.max(std::time::Duration::from_millis(1));
    if *current != Some(timeout) {
        socket2::SockRef::from(sock).set_read_timeout(Some(timeout))?;
        *current = Some(timeout);
    }
    recv_segments_raw(sock, buf, cmsg)
}

/// [`try_recv_segments`] straight from the kernel (`MSG_DONTWAIT`), whatever the event
/// loop last saw of the socket's readiness and whether the socket is blocking: what a busy
/// poll calls. `WouldBlock` when nothing is queued. The event loop's view stays right: a
/// datagram that arrives later is a new readiness event.
pub(crate) fn recv_segments_nowait(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, SocketAddr, usize)> {
    recv_segments_flags(sock, buf, cmsg, MsgFlags::MSG_DONTWAIT)
}

fn recv_segments_raw(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<(usize, SocketAddr, usize)> {
    recv_segments_flags(sock, buf, cmsg, MsgFlags::empty())
}

fn recv_segments_flags(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
    flags: MsgFlags,
) -> io::Result<(usize, SocketAddr, usize)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(cmsg), flags)
        .map_err(io::Error::from)?;
    let from = msg
        .address
        .and_then(|a| to_std(&a))
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut segment = msg.bytes;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(s) = c {
                segment = usize::try_from(s).unwrap_or(msg.bytes);
            }
        }
    }
    Ok((msg.bytes, from, segment.max(1)))
}
