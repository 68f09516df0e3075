//! A packet trace, as tftp-hpa's `trace` command prints one: every datagram sent and
//! received, with its opcode, block, size and time since the transfer started. The client
//! hands it to [`ClientBuilder::trace`](crate::ClientBuilder::trace); the server logs it at
//! trace level under the target `tftpx::packet` (`tftpx serve -vv`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tftpx_proto::wire::Packet;

/// Which way a traced datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by this end (the client, or the server).
    Sent,
    /// Received by this end (from the peer, or from a stranger).
    Received,
}

/// One datagram of a client transfer, as seen by [`ClientBuilder::trace`](crate::ClientBuilder::trace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketTrace {
    /// Sent or received.
    pub direction: Direction,
    /// The other end: the server's address (its well-known port for the request) or, for a
    /// received datagram, whoever sent it.
    pub peer: SocketAddr,
    /// The opcode's name (RFC 1350 section 5, RFC 2347): `RRQ`, `WRQ`, `DATA`, `ACK`,
    /// `ERROR`, `OACK`, or `?` for a datagram that does not decode.
    pub opcode: &'static str,
    /// The block number of a DATA or ACK (0..=65535, wrapping); `None` for other packets.
    pub block: Option<u16>,
    /// The ERROR code of an ERROR packet (RFC 1350 section 5; 0..=8); `None` otherwise.
    pub error_code: Option<u16>,
    /// The whole datagram's size in bytes (header included).
    pub size: usize,
    /// Time since the transfer started (the request was built).
    pub elapsed: Duration,
}

impl PacketTrace {
    pub(crate) fn new(
        direction: Direction,
        peer: SocketAddr,
        datagram: &[u8],
        start: Instant,
    ) -> Self {
        let (opcode, block, error_code) = match Packet::decode(datagram) {
            Ok(Packet::Rrq(_)) => ("RRQ", None, None),
            Ok(Packet::Wrq(_)) => ("WRQ", None, None),
            Ok(Packet::Data { block, .. }) => ("DATA", Some(block), None),
            Ok(Packet::Ack { block }) => ("ACK", Some(block), None),
            Ok(Packet::Error { code, .. }) => ("ERROR", None, Some(code.to_u16())),
            Ok(Packet::Oack(_)) => ("OACK", None, None),
            Err(_) => ("?", None, None),
        };
        Self {
            direction,
            peer,
            opcode,
            block,
            error_code,
            size: datagram.len(),
            elapsed: start.elapsed(),
        }
    }
}

/// `sent DATA block 3, 516 bytes, +0.004512 s (to 127.0.0.1:40000)`.
impl fmt::Display for PacketTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (dir, prep) = match self.direction {
            Direction::Sent => ("sent", "to"),
            Direction::Received => ("received", "from"),
        };
        write!(f, "{dir} {}", self.opcode)?;
        if let Some(b) = self.block {
            write!(f, " block {b}")?;
        }
        if let Some(c) = self.error_code {
            write!(f, " code {c}")?;
        }
        write!(
            f,
            ", {} bytes, +{:.6} s ({prep} {})",
            self.size,
            self.elapsed.as_secs_f64(),
            self.peer
        )
    }
}

/// The callback a client calls for every datagram, when one is set. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Tracer {
    pub(crate) f: Arc<dyn Fn(&PacketTrace) + Send + Sync>,
    pub(crate) start: Instant,
}

impl Tracer {
    /// A tracer calling `f`.
    pub(crate) fn new(f: Arc<dyn Fn(&PacketTrace) + Send + Sync>) -> Self {
        Self {
            f,
            start: Instant::now(),
        }
    }

    /// The same callback, timing from now (a transfer's start).
    pub(crate) fn started(&self) -> Self {
        Self::new(self.f.clone())
    }

    /// Reports one datagram.
    pub(crate) fn packet(&self, direction: Direction, peer: SocketAddr, datagram: &[u8]) {
        (self.f)(&PacketTrace::new(direction, peer, datagram, self.start));
    }
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tracer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_formats() {
        let peer: SocketAddr = "127.0.0.1:69".parse().unwrap();
        let start = Instant::now();
        let data = [0, 3, 0, 7, b'x', b'y'];
        let t = PacketTrace::new(Direction::Received, peer, &data, start);
        assert_eq!((t.opcode, t.block, t.size), ("DATA", Some(7), 6));
        let s = t.to_string();
        assert!(s.starts_with("received DATA block 7, 6 bytes, +"), "{s}");
        assert!(s.ends_with(" s (from 127.0.0.1:69)"), "{s}");
        let ack = PacketTrace::new(Direction::Sent, peer, &[0, 4, 1, 0], start);
        assert_eq!((ack.opcode, ack.block), ("ACK", Some(256)));
        let err = PacketTrace::new(Direction::Received, peer, b"\0\x05\0\x01nope\0", start);
        assert_eq!((err.opcode, err.error_code), ("ERROR", Some(1)));
        assert!(err
            .to_string()
            .starts_with("received ERROR code 1, 9 bytes"));
        let junk = PacketTrace::new(Direction::Received, peer, &[9], start);
        assert_eq!(junk.opcode, "?");
    }
}
