//! Sockets: the listener that learns each request's destination address (so replies leave
//! from the address the client asked), and per-transfer sockets sized to their window.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

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
/// (IP_PKTINFO / IPV6_RECVPKTINFO).
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = new_socket(&addr)?;
    // Bursts of requests (a PXE boot storm) should queue, not drop.
    let _ = s.set_recv_buffer_size(1 << 20);
    s.bind(&addr.into())?;
    if addr.is_ipv6() {
        setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
    } else {
        setsockopt(&s, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
    }
    UdpSocket::from_std(s.into())
}

/// Receives one datagram on a listener, with its destination address. `cmsg` is scratch
/// space for control messages, reused across calls.
pub(crate) async fn recv_request(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<Arrival> {
    let bound = sock.local_addr()?;
    sock.async_io(Interest::READABLE, || {
        let fd = sock.as_raw_fd();
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), MsgFlags::empty())
            .map_err(io::Error::from)?;
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
    })
    .await
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// Binds a transfer's own socket (its TID) on `local`'s IP and a port the OS picks. Size
/// its buffers with [`fit_window`] once the window is negotiated.
pub(crate) fn bind_transfer(local: SocketAddr) -> io::Result<UdpSocket> {
    let s = new_socket(&local)?;
    s.bind(&local.into())?;
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
/// in flight, one being retransmitted). Only windows past the system default are touched;
/// the kernel caps the request at net.core.{r,w}mem_max, which only means less headroom.
pub(crate) fn fit_window(sock: &UdpSocket, window_bytes: usize) {
    let want = window_bytes * 2;
    if want <= 64 * 1024 {
        return;
    }
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(want);
    let _ = s.set_send_buffer_size(want);
}
