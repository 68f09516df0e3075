//! # tftpx-proto: the TFTP protocol with no I/O
//!
//! This crate is the protocol core of tftpx. It implements RFC 1350 (TFTP revision 2), the
//! option extension (RFC 2347) with `blksize` (RFC 2348), `timeout` and `tsize` (RFC 2349)
//! and `windowsize` (RFC 7440), netascii translation, and block-number rollover past 65535,
//! without touching a socket, a file or a clock:
//!
//! | module | role |
//! | --- | --- |
//! | [`wire`] | packet codec: decode borrows from the datagram, encode writes into your buffer |
//! | [`negotiate`] | option negotiation, server side (request + limits -> OACK) and client side (OACK check) |
//! | [`netascii`] | streaming CR LF / CR NUL translation that survives block boundaries |
//! | [`transfer`] | [`Sender`](transfer::Sender) and [`Receiver`](transfer::Receiver) state machines |
//!
//! ## The driving contract
//! A driver owns the socket, the file and the clock. For each transfer it:
//! 1. sends every datagram `poll_transmit(now)` yields;
//! 2. reads `poll_event()` (negotiated options, completion, failure);
//! 3. for a [`Sender`](transfer::Sender), fills blocks while `block_to_fill()` offers one;
//! 4. waits for a datagram (`handle_datagram(now, from, bytes)`) or for the instant of
//!    `poll_timeout()` (`handle_timeout(now)`), and loops until `is_finished()`.
//!
//! ```
//! use std::time::Instant;
//! use tftpx_proto::negotiate::Negotiated;
//! use tftpx_proto::transfer::{Receiver, Sender, TransferConfig};
//! use tftpx_proto::wire::OptionList;
//!
//! let (a, b) = ("127.0.0.1:1000".parse().unwrap(), "127.0.0.1:2000".parse().unwrap());
//! let now = Instant::now();
//! let n = Negotiated::default();
//! let cfg = TransferConfig::default();
//! // A server sending to a client at `b`, and a receiver for the data from `a`.
//! let mut tx = Sender::server(b, n, OptionList::empty(), cfg);
//! let mut rx = Receiver::server(a, n, OptionList::empty(), cfg);
//! let _ack0 = rx.poll_transmit(now); // a WRQ server would send ACK 0; skip it here
//! let file = b"hello, world";
//! let mut out = Vec::new();
//! let buf = tx.block_to_fill().unwrap();
//! buf[..file.len()].copy_from_slice(file);
//! tx.block_filled(file.len());
//! while !tx.is_finished() {
//!     while let Some(t) = tx.poll_transmit(now) {
//!         let d = t.payload.to_vec();
//!         if let Some(p) = rx.handle_datagram(now, a, &d) { out.extend_from_slice(p); }
//!     }
//!     while let Some(t) = rx.poll_transmit(now) {
//!         let d = t.payload.to_vec();
//!         tx.handle_datagram(now, b, &d);
//!     }
//! }
//! assert_eq!(out, file);
//! ```

pub mod negotiate;
pub mod netascii;
pub mod transfer;
pub mod wire;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use wire::{ErrorCode, Mode, Packet};
