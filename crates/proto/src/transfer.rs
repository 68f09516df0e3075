//! Transfer state machines: [`Sender`] (sends DATA: a server's RRQ, a client's WRQ) and
//! [`Receiver`] (receives DATA: a server's WRQ, a client's RRQ).
//!
//! Neither touches a socket, a file or a clock. The driver feeds them datagrams
//! ([`Sender::handle_datagram`]) and timeouts ([`Sender::handle_timeout`]) with the current
//! time, sends what [`Sender::poll_transmit`] yields, sleeps until [`Sender::poll_timeout`],
//! and reads [`Sender::poll_event`]. The sender is given file blocks through
//! [`Sender::block_to_fill`] / [`Sender::block_filled`]; the receiver hands in-order payloads
//! back from [`Receiver::handle_datagram`].
//!
//! Rules implemented here, each tested below:
//! - RFC 1350: lock-step transfer, a short DATA ends it, block numbers roll over past 65535
//!   (the sender wraps to 0; the receiver accepts a wrap to 0 or to 1).
//! - RFC 1123 §4.2.3.1: retransmit on timeout only; a duplicate ACK never causes a resend
//!   (Sorcerer's Apprentice); retries are bounded.
//! - RFC 7440: windows of `windowsize` blocks; the receiver ACKs the last block of a window,
//!   the last block of the file, or on a gap the last block it has in order; the sender then
//!   resends from the block after the acknowledged one at once.
//! - TIDs (RFC 1350 §4): a datagram from any other address gets ERROR 5 and changes nothing.
//! - The receiver dallies after its final ACK, re-acknowledging a repeated final DATA.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::negotiate::{ClientOptions, NegotiateError, Negotiated};
use crate::wire::{write_data_header, ErrorCode, Mode, OptionList, Packet, Request};
use crate::wire::{DATA_HEADER_LEN, DEFAULT_BLKSIZE};

/// Retransmission policy of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferConfig {
    /// Time without progress before the last packet (or window) is sent again, doubled
    /// after each consecutive timeout up to 8 x or 6 s (exponential backoff). A `timeout`
    /// negotiated with the peer (RFC 2349) replaces it.
    pub timeout: Duration,
    /// Retransmissions of one packet or window before the transfer is abandoned (0 = give
    /// up at the first timeout).
    pub max_retries: u32,
    /// How long a receiver lingers after its final ACK to re-acknowledge a repeated final
    /// DATA (RFC 1350 §6). Zero ends the transfer as soon as the final ACK is sent.
    pub dally: Duration,
    /// Retransmissions allowed, on the server side only ([`Sender::server`],
    /// [`Receiver::server`]), until the peer has proved that it receives what the server
    /// sends: a sender's peer must acknowledge a DATA block (ACK 0 of an OACK proves nothing:
    /// a blind attacker can spray it to every port), a receiver's peer must send DATA. The
    /// request's source address may be forged (a reflection attack aims the server's DATA at
    /// a victim), so until then the peer gets at most this many timer retransmissions (capped
    /// by `max_retries`), only the first block again, no closing ERROR, and `timeout` rather
    /// than the timeout it negotiated. Default 1.
    pub max_unanswered_retries: u32,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            max_retries: 5,
            dally: Duration::from_secs(2),
            max_unanswered_retries: 1,
        }
    }
}

/// Several DATA datagrams to send to one destination, back to back in `payload`: split it
/// every `segment` bytes (the last datagram may be shorter). See
/// [`Sender::poll_transmit_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmitBatch<'a> {
    /// Where to send them.
    pub destination: SocketAddr,
    /// The encoded datagrams, concatenated.
    pub payload: &'a [u8],
    /// Size of each datagram but the last, in bytes.
    pub segment: usize,
    /// Number of datagrams (>= 1).
    pub count: usize,
}

impl TransmitBatch<'_> {
    /// The datagrams one by one.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.payload.chunks(self.segment.max(1))
    }
}

/// A datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The encoded packet.
    pub payload: &'a [u8],
}

/// Counters of a transfer, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Payload bytes delivered (receiver) or acknowledged (sender).
    pub bytes: u64,
    /// DATA blocks delivered or acknowledged.
    pub blocks: u64,
    /// DATA packets sent, retransmissions included (sender only).
    pub data_sent: u64,
    /// Timeouts that led to a retransmission.
    pub timeouts: u64,
    /// Packets sent again (timeouts and gap recovery), DATA and control alike.
    pub retransmits: u64,
    /// Duplicate or stale ACKs (sender) or DATA (receiver) seen and ignored.
    pub duplicates: u64,
    /// Datagrams from other addresses, answered with ERROR 5.
    pub strangers: u64,
    /// Datagrams from the peer that did not decode or did not fit the state; ignored.
    pub ignored: u64,
}

/// Something the driver should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The options in force, once known (at once for a server; after the first reply for a
    /// client).
    Negotiated(Negotiated),
    /// All data moved: the sender's last block was acknowledged, or the receiver got the last
    /// block and sent its ACK (it may still dally; keep driving until
    /// [`Receiver::is_finished`]).
    Complete,
    /// The transfer ended without completing. An ERROR has been queued for the peer when
    /// the failure is local.
    Failed(TransferError),
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The peer stopped answering.
    #[error("timed out after {retries} retries")]
    TimedOut {
        /// Retransmissions made before giving up.
        retries: u32,
    },
    /// The peer sent ERROR.
    #[error("peer sent ERROR {code}: {message}")]
    Peer {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's message (lossy UTF-8).
        message: String,
    },
    /// The peer sent something the protocol forbids (for example a DATA longer than blksize).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The server's OACK was not acceptable (a client answers ERROR 8).
    #[error("option negotiation failed: {0}")]
    Negotiation(#[from] NegotiateError),
    /// The driver aborted the transfer (file error, shutdown, ...).
    #[error("aborted with ERROR {code}: {message}")]
    Aborted {
        /// The code sent to the peer.
        code: ErrorCode,
        /// The message sent to the peer.
        message: String,
    },
}

impl TransferError {
    /// The TFTP error code that reports this failure to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TimedOut { .. } => ErrorCode::NotDefined,
            Self::Peer { code, .. } => *code,
            Self::Protocol(_) => ErrorCode::IllegalOperation,
            Self::Negotiation(e) => e.code(),
            Self::Aborted { code, .. } => *code,
        }
    }
}

/// Longest retransmission interval that backoff reaches (unless the timeout itself is
/// longer): past the 5 s that common clients wait before resending.
const BACKOFF_CAP: Duration = Duration::from_secs(6);

/// The retransmission timeout after `retries` consecutive timeouts: `timeout` doubled each
/// time, at most 8 x and at most [`BACKOFF_CAP`] (or `timeout` if longer); RFC 1123
/// §4.2.3.2 asks TFTP for exponential backoff. A fixed interval never outlasts a peer whose
/// own timer is longer: tftp-hpa's client waits 5 s before it resends a DATA, and every
/// re-ACK it gets meanwhile restarts that wait. At the default 1 s and 5 retries a silent
/// peer is given up after 1 + 2 + 4 + 6 + 6 + 6 = 25 s, as long as tftp-hpa's client waits.
fn backoff(timeout: Duration, retries: u32) -> Duration {
    timeout
        .saturating_mul(1 << retries.min(3))
        .min(timeout.max(BACKOFF_CAP))
}

/// Shortest wait before a first window that stopped short is acknowledged.
const EARLY_ACK_MIN: Duration = Duration::from_millis(2);

/// Longest ERROR message tftpx sends, in bytes.
const MAX_ERROR_MESSAGE: usize = 200;

/// Peer bookkeeping shared by both machines: TID check, the control packet (request, OACK,
/// ACK, ERROR) that a timeout resends, and ERROR 5 to strangers.
struct Link {
    peer: SocketAddr,
    /// False for a client until the first reply fixes the server's TID.
    locked: bool,
    /// True once any datagram came from the peer's TID (after its request, for a server).
    heard: bool,
    /// Server side: the peer's address came from a request and may be forged, so what it
    /// gets before it has proved that it receives our datagrams is capped.
    guarded: bool,
    /// The peer has shown it receives what we send: it acknowledged a DATA block (sender)
    /// or sent DATA (receiver).
    proven: bool,
    ctrl: Vec<u8>,
    ctrl_pending: bool,
    stranger: Option<SocketAddr>,
    stranger_buf: [u8; 32],
    stranger_len: usize,
}

impl Link {
    fn new(peer: SocketAddr, locked: bool) -> Self {
        Self {
            peer,
            locked,
            heard: false,
            guarded: locked,
            proven: false,
            ctrl: Vec::with_capacity(64),
            ctrl_pending: false,
            stranger: None,
            stranger_buf: [0; 32],
            stranger_len: 0,
        }
    }

    /// Classifies a datagram's source. Returns true when it comes from the peer (locking a
    /// client's TID on the first reply), false after queueing ERROR 5 to a stranger.
    fn accept_source(&mut self, from: SocketAddr, datagram: &[u8], stats: &mut Stats) -> bool {
        if from == self.peer {
            self.heard = true;
            return true;
        }
        if !self.locked && from.ip() == self.peer.ip() {
            self.peer = from;
            self.locked = true;
            self.heard = true;
            return true;
        }
        stats.strangers += 1;
        // Never answer an ERROR with an ERROR (two confused peers would loop).
        if !matches!(Packet::decode(datagram), Ok(Packet::Error { .. })) {
            let p = Packet::Error {
                code: ErrorCode::UnknownTid,
                message: b"Unknown transfer ID",
            };
            if let Ok(n) = p.encode(&mut self.stranger_buf) {
                self.stranger_len = n;
                self.stranger = Some(from);
            }
        }
        false
    }

    fn set_ctrl(&mut self, p: &Packet<'_>) {
        self.ctrl.clear();
        self.ctrl.resize(p.encoded_len(), 0);
        // The buffer was sized for the packet; strings come from us and hold no NUL.
        let _ = p.encode(&mut self.ctrl);
        self.ctrl_pending = true;
    }

    fn set_ack(&mut self, block: u16) {
        self.set_ctrl(&Packet::Ack { block });
    }

    fn set_error(&mut self, code: ErrorCode, message: &str) {
        let mut m = message.as_bytes();
        if m.len() > MAX_ERROR_MESSAGE {
            m = &m[..MAX_ERROR_MESSAGE];
        }
        let cleaned: Vec<u8> = m.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
        self.set_ctrl(&Packet::Error {
            code,
            message: &cleaned,
        });
    }

    /// True while the peer's address may be forged: a server's peer that has not yet shown
    /// that it receives our datagrams.
    fn unproven(&self) -> bool {
        self.guarded && !self.proven
    }

    /// The retransmission timeout: the negotiated one, except for an unproven peer (a forged
    /// request must not hold a transfer for 255 s), which gets the server's own.
    fn timeout(&self, config: &TransferConfig, negotiated: Option<Duration>) -> Duration {
        match negotiated {
            Some(t) if !self.unproven() => t,
            _ => config.timeout,
        }
    }

    /// Retransmissions allowed now: `max_retries`, or fewer for a server whose peer has not
    /// proved itself yet (see [`TransferConfig::max_unanswered_retries`]).
    fn retry_budget(&self, config: &TransferConfig) -> u32 {
        if self.unproven() {
            config.max_retries.min(config.max_unanswered_retries)
        } else {
            config.max_retries
        }
    }

    /// The peer stopped answering after `retries` retransmissions: queues ERROR 0 to it,
    /// unless it never answered at all (a client's request nobody took up has no TID to
    /// tell; a server's peer that never answered may be a forged address).
    fn timed_out(&mut self, retries: u32) -> TransferError {
        let e = TransferError::TimedOut { retries };
        if self.locked && self.heard && !self.unproven() {
            self.set_error(e.code(), &e.to_string());
        }
        e
    }

    fn poll_stranger(&mut self) -> Option<Transmit<'_>> {
        let to = self.stranger.take()?;
        Some(Transmit {
            destination: to,
            payload: &self.stranger_buf[..self.stranger_len],
        })
    }

    fn poll_ctrl(&mut self) -> Option<Transmit<'_>> {
        if !self.ctrl_pending {
            return None;
        }
        self.ctrl_pending = false;
        Some(Transmit {
            destination: self.peer,
            payload: &self.ctrl,
        })
    }
}

fn build_request(rrq: bool, filename: &[u8], mode: Mode, options: &ClientOptions) -> Vec<u8> {
    let opts = options.to_options();
    let req = Request {
        filename,
        mode: mode.as_str().as_bytes(),
        options: opts.as_list(),
    };
    let p = if rrq {
        Packet::Rrq(req)
    } else {
        Packet::Wrq(req)
    };
    let mut buf = vec![0; p.encoded_len()];
    // Sized above; the caller checked the filename for NUL.
    let _ = p.encode(&mut buf);
    buf
}

/// Errors building a client transfer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The file name is empty or contains NUL.
    #[error("file name must be non-empty and must not contain NUL")]
    BadFilename,
}

fn check_filename(f: &[u8]) -> Result<(), RequestError> {
    if f.is_empty() || f.contains(&0) {
        Err(RequestError::BadFilename)
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SenderState {
    /// Client: WRQ sent, waiting for OACK or ACK 0.
    Requesting,
    /// Server: OACK sent, waiting for ACK 0.
    OackSent,
    Sending,
    Done,
    Failed,
}

/// DATA bytes (headers included) a server puts in flight to a peer that has not yet
/// acknowledged any DATA block: at least one block, at most this many bytes of the window.
/// The peer's address may be forged, and ACK 0 proves nothing (a blind attacker can spray it
/// to every port), so this bounds what one forged request plus a forged ACK 0 can reflect:
/// about one 64 KiB block, or a whole window of up to 96 KiB. A window larger than this
/// opens in full once the first ACK of DATA has arrived; an RFC 7440 receiver that waits for
/// a full window before acknowledging acknowledges the first flight at its timeout.
pub const FIRST_FLIGHT_BYTES: usize = 96 * 1024;

/// Shortest pause between two bursts of a paced window (see [`Sender`], "Loss-adaptive
/// window"): about a timer tick, so a pause is never shorter than the driver can sleep.
const PACE_MIN: Duration = Duration::from_millis(1);

/// Repeats of the ACK before the window's first block, beyond those the blocks sent before
/// that block's last transmission account for, that make a windowed sender take the block
/// for lost again and resend it at once. Two, so that a network that duplicates every ACK
/// (one copy each) never draws a resend (Sorcerer's Apprentice, RFC 1123 §4.2.3.1).
const LOST_AGAIN_ACKS: u32 = 2;

/// The side that sends DATA: a server answering an RRQ, or a client that sent a WRQ.
///
/// Memory: a ring of at most `windowsize x (4 + blksize)` bytes, allocated when the first
/// block is read (never before a server's OACK is acknowledged) and grown only as far as the
/// window in flight needs: a server's peer that has not acknowledged any DATA gets at most
/// [`FIRST_FLIGHT_BYTES`]. Nothing is allocated per packet.
///
/// Egress (RFC 7440 §4 windows, RFC 1123 §4.2.3.1): an ACK that acknowledges part of what
/// was sent means the receiver lost the next block, and the sender resends from there at
/// once, in a burst of `cwnd` blocks, which each such go-back halves. So an ACK train (ACK
/// 1, 2, 3, ... sent without reading) draws about one and a half DATA per ACK once `cwnd`
/// is down to one or two, and a duplicate ACK draws nothing, except in a window where the
/// ACK before the window comes twice more than the blocks sent before the window's first
/// block was last resent account for: that block was lost again and is resent.
///
/// Loss-adaptive window: a congestion window `cwnd`, in blocks, 1..=windowsize, sizes the
/// bursts in which a window leaves. It starts as the first flight (see
/// [`FIRST_FLIGHT_BYTES`]: the whole window for blocks of up to 1468 bytes at windowsize
/// 64), opens to the whole window at the first ACK of DATA (the peer is proven and nothing
/// was lost: a loss-free transfer is never slowed), is halved (never below 1) on a loss (a
/// partial ACK that sends the sender back, a timeout, an ACK that moves back; once per
/// flight, every timeout), and grows by one block, up to the window, each time an ACK
/// acknowledges everything sent, some of it after the last halving (additive increase:
/// doubling overflowed atftp's default receive buffer again at 65464 x 16).
///
/// While `cwnd` is below the window, the window still goes out whole, but paced: `cwnd`
/// blocks, then a pause of two round trips (the shortest seen, at least 1 ms, at most a
/// quarter of the timeout) or until the next ACK that moves the window, whichever comes
/// first. A window never stops short: RFC 7440 receivers acknowledge the end of the window
/// they expect, counted from their last ACK, or a gap, or at their timeout (atftp and
/// rs-tftpc do, and tftpx's receiver past its first window), so a sub-window would stall
/// them until their timeout. A block lost in a burst draws the receiver's gap ACK before
/// the next burst leaves, and the sender goes back having sent at most `cwnd` blocks past
/// the gap instead of the rest of the window: at 20 % loss and windowsize 64 a window round
/// no longer sends 64 blocks to deliver four. Round trips are timed on blocks sent once
/// (Karn), from the `now` the driver passes in: the machine has no clock of its own and is
/// deterministic.
pub struct Sender {
    link: Link,
    state: SenderState,
    config: TransferConfig,
    client_options: Option<ClientOptions>,
    /// The timeout the peer negotiated, if any (see [`Link::timeout`]).
    negotiated_timeout: Option<Duration>,
    blksize: usize,
    windowsize: u64,
    /// Blocks in flight while the peer is unproven (see [`FIRST_FLIGHT_BYTES`]).
    first_flight: u64,
    /// Oldest block not yet acknowledged (absolute number; the first block is 1).
    base: u64,
    /// Next block to transmit.
    next: u64,
    /// One past the highest block ever sent: an ACK may name any block below it.
    high: u64,
    /// Highest block the driver has filled.
    filled: u64,
    /// The last block of the file, once the driver filled a short one.
    last: Option<u64>,
    /// Resends of the first block answered to a repeated ACK 0 of an unproven peer.
    early_resends: u32,
    /// No block from this one on is sent (an unproven peer's retransmission is one block).
    hold: Option<u64>,
    /// When DATA last left.
    sent_at: Option<Instant>,
    /// Congestion window in blocks, 1..=windowsize: the size of a burst (see "Loss-adaptive
    /// window" above).
    cwnd: u64,
    /// Blocks the current burst may still send while the window is paced.
    burst_left: u64,
    /// When the next burst of a paced window may leave (an ACK that moves the window
    /// releases it sooner).
    pace_at: Option<Instant>,
    /// `high` when `cwnd` was last halved: a loss reported for a block sent before it does
    /// not halve it again, and `cwnd` grows only once a block sent after it is acknowledged.
    cut_mark: u64,
    /// Shortest round trip seen (ACK of a block sent once).
    min_rtt: Option<Duration>,
    /// Repeats of the ACK of `base - 1` since the window last moved (see
    /// [`LOST_AGAIN_ACKS`]).
    dup_acks: u32,
    /// Repeats of the ACK of `base - 1` still expected from blocks sent beyond `base`
    /// before it was last resent: the receiver answers each with that ACK, which says
    /// nothing about the resent block.
    stale_acks: u64,
    /// Ring capacity in blocks (0 until the first block is read); block `b` lives in slot
    /// `b % cap`.
    cap: u64,
    slots: Vec<u8>,
    slot_len: Vec<u32>,
    /// When each slot's block last left, and whether it was sent only once (Karn: a resent
    /// block's ACK does not time a round trip).
    slot_sent: Vec<Option<(Instant, bool)>>,
    deadline: Option<Instant>,
    retries: u32,
    events: VecDeque<Event>,
    stats: Stats,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("peer", &self.link.peer)
            .field("state", &self.state)
            .field("base", &self.base)
            .field("next", &self.next)
            .field("filled", &self.filled)
            .field("cap", &self.cap)
            .field("cwnd", &self.cwnd)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sender {
    fn new(peer: SocketAddr, locked: bool, config: TransferConfig) -> Self {
        Self {
            link: Link::new(peer, locked),
            state: SenderState::Sending,
            config,
            client_options: None,
            negotiated_timeout: None,
            blksize: DEFAULT_BLKSIZE as usize,
            windowsize: 1,
            first_flight: 1,
            base: 1,
            next: 1,
            high: 1,
            filled: 0,
            last: None,
            early_resends: 0,
            hold: None,
            sent_at: None,
            cwnd: 1,
            burst_left: 0,
            pace_at: None,
            cut_mark: 0,
            min_rtt: None,
            dup_acks: 0,
            stale_acks: 0,
            cap: 0,
            slots: Vec::new(),
            slot_len: Vec::new(),
            slot_sent: Vec::new(),
            deadline: None,
            retries: 0,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// A server's sender for an accepted RRQ (RFC 1350 §4, RFC 2347 §2).
    ///
    /// `oack` is the negotiated OACK's option list: when non-empty it is sent first and
    /// DATA 1 follows the client's ACK 0; when empty DATA 1 is sent at once. `negotiated`
    /// gives blksize and windowsize; its `timeout`, when set, replaces `config.timeout` once
    /// the client has acknowledged a DATA block (until then the server's own applies).
    pub fn server(
        peer: SocketAddr,
        negotiated: Negotiated,
        oack: OptionList<'_>,
        config: TransferConfig,
    ) -> Self {
        let mut s = Self::new(peer, true, config);
        s.apply(negotiated);
        if !oack.is_empty() {
            s.state = SenderState::OackSent;
            s.link.set_ctrl(&Packet::Oack(oack));
        }
        s
    }

    /// A client's sender: queues a WRQ for `filename` to `server` (its well-known port). The
    /// server's TID is taken from the first reply from `server`'s IP address.
    ///
    /// # Errors
    /// [`RequestError::BadFilename`] if `filename` is empty or contains NUL.
    pub fn client(
        server: SocketAddr,
        filename: &[u8],
        mode: Mode,
        options: ClientOptions,
        config: TransferConfig,
    ) -> Result<Self, RequestError> {
        check_filename(filename)?;
        let mut s = Self::new(server, false, config);
        s.state = SenderState::Requesting;
        s.link.ctrl = build_request(false, filename, mode, &options);
        s.link.ctrl_pending = true;
        s.client_options = Some(options);
        Ok(s)
    }

    fn apply(&mut self, n: Negotiated) {
        self.blksize = n.blksize as usize;
        self.windowsize = u64::from(n.windowsize.max(1));
        self.negotiated_timeout = n.timeout;
        let stride = (DATA_HEADER_LEN + self.blksize) as u64;
        self.first_flight = (FIRST_FLIGHT_BYTES as u64 / stride).clamp(1, self.windowsize);
        // The first flight is the initial cwnd where the peer's address may be forged; a
        // client's server (its TID answered our request) gets the window at once, as before.
        self.cwnd = if self.link.guarded {
            self.first_flight
        } else {
            self.windowsize
        };
        self.events.push_back(Event::Negotiated(n));
    }

    /// The retransmission timeout in force now.
    fn timeout(&self) -> Duration {
        self.link.timeout(&self.config, self.negotiated_timeout)
    }

    /// Blocks that may be in flight now: the window, or the first flight while the peer is
    /// unproven.
    fn limit(&self) -> u64 {
        if self.link.unproven() {
            self.first_flight
        } else {
            self.windowsize
        }
    }

    /// True while the window leaves in paced bursts of `cwnd` blocks (after a loss).
    fn paced(&self) -> bool {
        self.cwnd < self.limit()
    }

    /// The pause between two bursts of a paced window: two of the shortest round trips
    /// seen, at least [`PACE_MIN`], at most a quarter of the timeout (an eighth before any
    /// round trip was timed).
    fn pace(&self) -> Duration {
        let t = self.timeout();
        match self.min_rtt {
            Some(rtt) => (rtt * 2).min(t / 4).max(PACE_MIN),
            None => (t / 8).max(PACE_MIN),
        }
    }

    /// Sends again from `block` (the oldest not acknowledged, or the one after a partial
    /// ACK): each block already sent beyond it may still draw a repeat of the ACK before it.
    fn go_back(&mut self, block: u64) {
        self.stale_acks = self.next.saturating_sub(block + 1);
        self.dup_acks = 0;
        self.next = block;
    }

    /// A loss: halves `cwnd` (never below 1) and starts the next burst at once.
    fn cut(&mut self) {
        self.cwnd = (self.cwnd / 2).max(1);
        self.cut_mark = self.high;
        self.burst_left = self.cwnd;
        self.pace_at = None;
    }

    /// Bookkeeping after DATA `block` left at `now`: round-trip timing (Karn) and the pace.
    fn note_sent(&mut self, block: u64, now: Instant) {
        let i = self.slot_index(block);
        self.slot_sent[i] = Some((now, block >= self.high));
        if self.paced() {
            self.burst_left = self.burst_left.saturating_sub(1);
            if self.burst_left == 0 {
                self.pace_at = Some(now + self.pace());
            }
        }
    }

    /// The peer's address (the server's TID once a client has seen its first reply).
    pub fn peer(&self) -> SocketAddr {
        self.link.peer
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes the block ring holds now (0 until the first block is read); at most
    /// `windowsize x (4 + blksize)`.
    pub fn buffer_bytes(&self) -> usize {
        self.slots.len()
    }

    /// True once the transfer is over (completed or failed) and nothing is left to send.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, SenderState::Done | SenderState::Failed)
            && !self.link.ctrl_pending
            && self.link.stranger.is_none()
    }

    fn slot_index(&self, block: u64) -> usize {
        (block % self.cap) as usize
    }

    fn slot_range(&self, block: u64) -> std::ops::Range<usize> {
        let slot = DATA_HEADER_LEN + self.blksize;
        let i = self.slot_index(block);
        i * slot..(i + 1) * slot
    }

    /// Grows the ring to `cap` blocks, moving the blocks not yet acknowledged to their new
    /// slots.
    fn grow(&mut self, cap: u64) {
        let stride = DATA_HEADER_LEN + self.blksize;
        let mut slots = vec![0u8; stride * cap as usize];
        let mut slot_len = vec![0u32; cap as usize];
        let mut slot_sent = vec![None; cap as usize];
        if self.cap > 0 {
            for b in self.base..=self.filled {
                let from = self.slot_range(b);
                let j = (b % cap) as usize;
                slots[j * stride..(j + 1) * stride].copy_from_slice(&self.slots[from]);
                slot_len[j] = self.slot_len[self.slot_index(b)];
                slot_sent[j] = self.slot_sent[self.slot_index(b)];
            }
        }
        self.slots = slots;
        self.slot_len = slot_len;
        self.slot_sent = slot_sent;
        self.cap = cap;
    }

    /// The payload area (exactly blksize bytes) of the next block to read from the file, or
    /// `None` while the window in flight is full, before a server's OACK is acknowledged,
    /// or once the last block is in.
    ///
    /// Fill it completely unless the file ends, then call [`Sender::block_filled`] with the
    /// number of bytes written: fewer than blksize (0 included) marks the last block.
    pub fn block_to_fill(&mut self) -> Option<&mut [u8]> {
        if self.state != SenderState::Sending {
            return None;
        }
        let limit = self.limit();
        if self.last.is_some() || self.filled + 1 >= self.base + limit {
            return None;
        }
        if self.cap < limit {
            // Never below what is already in flight (a window only grows).
            self.grow(limit.max(self.filled + 1 - self.base));
        }
        let r = self.slot_range(self.filled + 1);
        Some(&mut self.slots[r.start + DATA_HEADER_LEN..r.end])
    }

    /// Records that the block from [`Sender::block_to_fill`] holds `len` bytes (0..=blksize).
    ///
    /// # Panics
    /// If `len` exceeds blksize, or no block was being filled.
    pub fn block_filled(&mut self, len: usize) {
        assert!(len <= self.blksize, "block longer than blksize");
        assert!(self.last.is_none(), "block filled after the last block");
        assert!(self.cap > 0, "no block was being filled");
        self.filled += 1;
        let block = self.filled;
        let r = self.slot_range(block);
        write_data_header(&mut self.slots[r], block as u16);
        let i = self.slot_index(block);
        self.slot_len[i] = (DATA_HEADER_LEN + len) as u32;
        if len < self.blksize {
            self.last = Some(block);
        }
    }

    /// Ends the transfer now and queues ERROR `code` with `message` (at most 200 bytes are
    /// sent) for the peer. Does nothing if the transfer is already over.
    pub fn abort(&mut self, code: ErrorCode, message: &str) {
        if matches!(self.state, SenderState::Done | SenderState::Failed) {
            return;
        }
        self.fail_local(
            TransferError::Aborted {
                code,
                message: message.to_owned(),
            },
            message,
        );
    }

    fn fail_local(&mut self, err: TransferError, message: &str) {
        self.link.set_error(err.code(), message);
        self.fail_quiet(err);
    }

    fn fail_quiet(&mut self, err: TransferError) {
        self.state = SenderState::Failed;
        self.deadline = None;
        self.release();
        self.events.push_back(Event::Failed(err));
    }

    /// Gives the ring's memory back once no block can be needed again.
    fn release(&mut self) {
        self.slots = Vec::new();
        self.slot_len = Vec::new();
        self.slot_sent = Vec::new();
        self.cap = 0;
        self.pace_at = None;
    }

    /// Feeds a datagram that arrived from `from` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if !self.link.accept_source(from, datagram, &mut self.stats) {
            return;
        }
        let Ok(packet) = Packet::decode(datagram) else {
            self.stats.ignored += 1;
            return;
        };
        match (self.state, packet) {
            (SenderState::Done | SenderState::Failed, _) => self.stats.ignored += 1,
            (_, Packet::Error { code, message }) => {
                self.fail_quiet(TransferError::Peer {
                    code,
                    message: String::from_utf8_lossy(message).into_owned(),
                });
            }
            (SenderState::Requesting, Packet::Oack(list)) => {
                let asked = self.client_options.unwrap_or_default();
                match asked.accept_oack(list) {
                    Ok(n) => self.start_sending(now, n),
                    Err(e) => {
                        let msg = e.to_string();
                        self.fail_local(TransferError::Negotiation(e), &msg);
                    }
                }
            }
            (SenderState::Requesting, Packet::Ack { block: 0 }) => {
                self.start_sending(now, Negotiated::default());
            }
            (SenderState::OackSent, Packet::Ack { block: 0 }) => {
                self.state = SenderState::Sending;
                self.link.ctrl_pending = false;
                self.retries = 0;
                self.deadline = None;
            }
            (SenderState::Sending, Packet::Ack { block }) => self.on_ack(now, block),
            _ => self.stats.ignored += 1,
        }
    }

    fn start_sending(&mut self, _now: Instant, n: Negotiated) {
        self.state = SenderState::Sending;
        self.link.ctrl_pending = false;
        self.retries = 0;
        self.deadline = None;
        self.apply(n);
    }

    fn on_ack(&mut self, now: Instant, wire: u16) {
        // The ACK may name base-1 (nothing new) up to the last block sent.
        let prev = self.base - 1;
        let delta = wire.wrapping_sub(prev as u16);
        if delta == 0 {
            self.stats.duplicates += 1;
            // An unproven peer repeating ACK 0 a while after DATA 1 left is still waiting
            // for it (it was lost, or the peer is a forger spraying ACK 0): one more copy of
            // the first block each time, at most max_retries in all. A copy of ACK 0 that
            // the network duplicated arrives at once and draws nothing, and once the peer
            // has proved itself a duplicate ACK never causes a resend (Sorcerer's
            // Apprentice, RFC 1123 §4.2.3.1).
            let waited = self
                .sent_at
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.timeout / 4);
            if self.link.unproven()
                && prev == 0
                && self.next > self.base
                && waited
                && self.early_resends < self.config.max_retries
            {
                self.early_resends += 1;
                self.stats.retransmits += 1;
                self.next = self.base;
                self.hold = Some(self.base + 1);
                self.deadline = None;
                return;
            }
            // A proven peer repeating its ACK of base - 1 lost block `base` again: the
            // receiver repeats its gap ACK for every block from beyond the gap (tftpx's
            // receiver and rs-tftpc do; windows only, RFC 7440 §4). Repeats drawn by blocks
            // sent before `base` was last resent say nothing and are counted off; two more
            // (one copy of each ACK the network duplicated is not enough) send the sender
            // back to `base` (RFC 1123 §4.2.3.1 still holds: a copy never resends).
            if self.windowsize > 1 && !self.link.unproven() && self.next > self.base {
                // A repeat a round trip (the pace) after `base` last left cannot come from
                // an older block, however many of those were lost.
                let late = self.slot_sent[self.slot_index(self.base)]
                    .is_some_and(|(t, _)| now.saturating_duration_since(t) >= self.pace());
                if self.stale_acks > 0 && !late {
                    self.stale_acks -= 1;
                } else {
                    self.dup_acks += 1;
                }
                if self.dup_acks >= LOST_AGAIN_ACKS {
                    self.stats.retransmits += self.next - self.base;
                    self.go_back(self.base);
                    self.cut();
                }
            }
            return;
        }
        let a = prev + u64::from(delta);
        if delta >= 0x8000 || a >= self.high {
            // An ACK from before the window (moving back), or for a block not sent yet.
            self.stats.duplicates += 1;
            if delta >= 0x8000 && !self.link.unproven() && self.base >= self.cut_mark {
                // Moving back: the network reorders or loses; once per flight.
                self.cut();
            }
            return;
        }
        if let Some((t, true)) = self.slot_sent[self.slot_index(a)] {
            let rtt = now.saturating_duration_since(t);
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        if self.stats.blocks == 0 {
            // The first ACK of DATA: the peer is proven and the window opens whole.
            self.cwnd = self.windowsize;
        } else if a + 1 == self.high && a >= self.cut_mark {
            // Everything sent, some of it after the last loss, is acknowledged.
            self.cwnd = (self.cwnd + 1).min(self.windowsize);
        }
        // An ACK that moves the window releases the next burst.
        self.dup_acks = 0;
        self.stale_acks = 0;
        self.burst_left = self.cwnd;
        self.pace_at = None;
        for b in self.base..=a {
            let i = self.slot_index(b);
            self.stats.bytes += u64::from(self.slot_len[i]) - DATA_HEADER_LEN as u64;
            self.stats.blocks += 1;
        }
        self.base = a + 1;
        self.next = self.next.max(self.base);
        self.retries = 0;
        self.link.proven = true;
        self.hold = None;
        if self.last == Some(a) {
            self.state = SenderState::Done;
            self.deadline = None;
            self.release();
            self.events.push_back(Event::Complete);
            return;
        }
        if a + 1 < self.next {
            // Part of what was sent is acknowledged: the receiver lost block a + 1 (RFC 7440
            // §4). Resend from there at once, in a burst of the halved cwnd: what a go-back
            // costs halves with each one, so a peer that acknowledges block by block (an
            // ACK train sent without reading) soon draws one block per ACK.
            self.stats.retransmits += self.next - (a + 1);
            self.go_back(a + 1);
            self.cut();
        }
        if self.base == self.next {
            self.deadline = None;
        }
    }

    /// Feeds the passage of time; call when [`Sender::poll_timeout`]'s instant is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pace_at.is_some_and(|p| now >= p) {
            self.pace_at = None;
            self.burst_left = self.cwnd;
        }
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        self.deadline = None;
        match self.state {
            SenderState::Requesting | SenderState::OackSent => {
                if self.retry() {
                    self.link.ctrl_pending = true;
                    self.stats.retransmits += 1;
                }
            }
            SenderState::Sending => {
                if self.base < self.next && self.retry() {
                    // Go back to the oldest block not acknowledged; an unproven peer gets
                    // that one block only.
                    let resend = if self.link.unproven() {
                        1
                    } else {
                        self.next - self.base
                    };
                    self.stats.retransmits += resend;
                    self.go_back(self.base);
                    if self.link.unproven() {
                        self.hold = Some(self.base + 1);
                    } else {
                        self.cut();
                    }
                }
            }
            SenderState::Done | SenderState::Failed => {}
        }
    }

    fn retry(&mut self) -> bool {
        self.stats.timeouts += 1;
        if self.retries >= self.link.retry_budget(&self.config) {
            let e = self.link.timed_out(self.retries);
            self.fail_quiet(e);
            return false;
        }
        self.retries += 1;
        true
    }

    /// True when block `self.next` may be sent now.
    fn may_send(&self) -> bool {
        self.state == SenderState::Sending
            && self.next <= self.filled
            && self.next < self.base + self.limit()
            && self.hold.is_none_or(|h| self.next < h)
            && (self.burst_left > 0 || !self.paced())
    }

    /// The next datagram to send, if any. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        if self.link.stranger.is_some() {
            return self.link.poll_stranger();
        }
        if self.link.ctrl_pending {
            if !matches!(self.state, SenderState::Done | SenderState::Failed) {
                self.deadline = Some(now + backoff(self.timeout(), self.retries));
            }
            return self.link.poll_ctrl();
        }
        if !self.may_send() {
            return None;
        }
        let block = self.next;
        self.note_sent(block, now);
        self.next += 1;
        self.high = self.high.max(self.next);
        self.sent_at = Some(now);
        self.stats.data_sent += 1;
        self.deadline = Some(now + backoff(self.timeout(), self.retries));
        let i = self.slot_index(block);
        let r = self.slot_range(block);
        let len = self.slot_len[i] as usize;
        Some(Transmit {
            destination: self.link.peer,
            payload: &self.slots[r.start..r.start + len],
        })
    }

    /// Like [`Sender::poll_transmit`], but hands out several DATA packets at once when they
    /// lie back to back in memory: consecutive blocks of the window, each `segment` bytes
    /// long (4 + blksize) except possibly the last, at most `max_segments` of them and at
    /// most `max_bytes` in all (always at least one). That is the shape one UDP GSO send
    /// (`UDP_SEGMENT`: at most 64 segments within 64 KiB) takes, so a window of N blocks
    /// costs about N / 44 system calls at blksize 1468 instead of N. A control packet
    /// (OACK, ERROR, ERROR 5 to a stranger) comes alone, as a batch of one. Call until it
    /// returns `None`.
    pub fn poll_transmit_batch(
        &mut self,
        now: Instant,
        max_segments: usize,
        max_bytes: usize,
    ) -> Option<TransmitBatch<'_>> {
        let max_segments = max_segments.min(max_bytes / (DATA_HEADER_LEN + self.blksize));
        if self.link.stranger.is_some() || self.link.ctrl_pending || max_segments <= 1 {
            let t = self.poll_transmit(now)?;
            return Some(TransmitBatch {
                destination: t.destination,
                payload: t.payload,
                segment: t.payload.len(),
                count: 1,
            });
        }
        if !self.may_send() {
            return None;
        }
        let stride = DATA_HEADER_LEN + self.blksize;
        let first = self.next;
        let start = self.slot_range(first).start;
        let mut end = start;
        let mut count = 0;
        while count < max_segments && self.may_send() {
            let b = self.next;
            let r = self.slot_range(b);
            if r.start != end {
                break; // the ring wrapped: the next block starts over at slot 0
            }
            let len = self.slot_len[self.slot_index(b)] as usize;
            end = r.start + len;
            self.note_sent(b, now);
            self.next += 1;
            self.high = self.high.max(self.next);
            count += 1;
            if len < stride {
                break; // a short block ends a GSO batch (it can only be the file's last)
            }
        }
        self.high = self.high.max(self.next);
        self.sent_at = Some(now);
        self.stats.data_sent += count as u64;
        self.deadline = Some(now + backoff(self.timeout(), self.retries));
        Some(TransmitBatch {
            destination: self.link.peer,
            payload: &self.slots[start..end],
            segment: stride,
            count,
        })
    }

    /// When the sender next wants [`Sender::handle_timeout`], if ever: the retransmission
    /// timeout, or the end of a pause between two bursts of a paced window.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline, self.pace_at) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReceiverState {
    /// Client: RRQ sent, waiting for OACK or DATA 1.
    Requesting,
    Receiving,
    /// Final ACK sent; re-ACK a repeated final DATA until the dally time is over.
    Dallying,
    Done,
    Failed,
}

/// The side that receives DATA: a server answering a WRQ, or a client that sent an RRQ.
pub struct Receiver {
    link: Link,
    state: ReceiverState,
    config: TransferConfig,
    client_options: Option<ClientOptions>,
    /// The timeout the peer negotiated, if any (see [`Link::timeout`]).
    negotiated_timeout: Option<Duration>,
    blksize: usize,
    windowsize: u32,
    /// When the request or ACK 0 last left, until the first DATA: the round trip it takes
    /// sizes the wait before a first window that stops short is acknowledged.
    ctrl_at: Option<Instant>,
    /// The first window stopped short: acknowledge it early (see [`FIRST_FLIGHT_BYTES`]).
    early_ack: Option<Duration>,
    /// Wire number of the next block expected.
    expected: u16,
    /// Wire number of the last block received in order (0 before any).
    last_wire: u16,
    /// Blocks received in order so far.
    received: u64,
    /// What follows 65535: 0, or 1 once a peer is seen to wrap to 1.
    wrap_to: u16,
    in_window: u32,
    deadline: Option<Instant>,
    retries: u32,
    events: VecDeque<Event>,
    stats: Stats,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("peer", &self.link.peer)
            .field("state", &self.state)
            .field("expected", &self.expected)
            .field("received", &self.received)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    fn new(peer: SocketAddr, locked: bool, config: TransferConfig) -> Self {
        Self {
            link: Link::new(peer, locked),
            state: ReceiverState::Receiving,
            config,
            client_options: None,
            negotiated_timeout: None,
            blksize: DEFAULT_BLKSIZE as usize,
            windowsize: 1,
            ctrl_at: None,
            early_ack: None,
            expected: 1,
            last_wire: 0,
            received: 0,
            wrap_to: 0,
            in_window: 0,
            deadline: None,
            retries: 0,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// A server's receiver for an accepted WRQ: queues the OACK (when `oack` is non-empty) or
    /// ACK 0, then expects DATA 1. `negotiated.timeout`, when set, replaces `config.timeout`.
    pub fn server(
        peer: SocketAddr,
        negotiated: Negotiated,
        oack: OptionList<'_>,
        config: TransferConfig,
    ) -> Self {
        let mut r = Self::new(peer, true, config);
        r.apply(negotiated);
        if oack.is_empty() {
            r.link.set_ack(0);
        } else {
            r.link.set_ctrl(&Packet::Oack(oack));
        }
        r
    }

    /// A client's receiver: queues an RRQ for `filename` to `server` (its well-known port).
    /// The server's TID is taken from the first reply from `server`'s IP address.
    ///
    /// # Errors
    /// [`RequestError::BadFilename`] if `filename` is empty or contains NUL.
    pub fn client(
        server: SocketAddr,
        filename: &[u8],
        mode: Mode,
        options: ClientOptions,
        config: TransferConfig,
    ) -> Result<Self, RequestError> {
        check_filename(filename)?;
        let mut r = Self::new(server, false, config);
        r.state = ReceiverState::Requesting;
        r.link.ctrl = build_request(true, filename, mode, &options);
        r.link.ctrl_pending = true;
        r.client_options = Some(options);
        Ok(r)
    }

    fn apply(&mut self, n: Negotiated) {
        self.blksize = n.blksize as usize;
        self.windowsize = u32::from(n.windowsize.max(1));
        self.negotiated_timeout = n.timeout;
        if let Some(t) = n.timeout {
            // Dally at least as long as the sender waits before repeating its last DATA.
            if !self.config.dally.is_zero() {
                self.config.dally = self.config.dally.max(t);
            }
        }
        self.events.push_back(Event::Negotiated(n));
    }

    /// The peer's address (the server's TID once a client has seen its first reply).
    pub fn peer(&self) -> SocketAddr {
        self.link.peer
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// True once the transfer is over (completed and dallied, or failed) and nothing is left
    /// to send.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, ReceiverState::Done | ReceiverState::Failed)
            && !self.link.ctrl_pending
            && self.link.stranger.is_none()
    }

    /// True once the last block has been received (the receiver may still be dallying).
    pub fn is_complete(&self) -> bool {
        matches!(self.state, ReceiverState::Dallying | ReceiverState::Done)
    }

    /// Ends the transfer now and queues ERROR `code` with `message` for the peer (at most
    /// 200 bytes of it). Does nothing once the transfer is over.
    ///
    /// Called after the last block arrived but before the final ACK went out (a driver
    /// whose file could not be committed), the ERROR replaces that ACK, so the peer learns
    /// the upload failed.
    pub fn abort(&mut self, code: ErrorCode, message: &str) {
        if matches!(self.state, ReceiverState::Done | ReceiverState::Failed) {
            return;
        }
        self.fail_local(
            TransferError::Aborted {
                code,
                message: message.to_owned(),
            },
            message,
        );
    }

    fn fail_local(&mut self, err: TransferError, message: &str) {
        self.link.set_error(err.code(), message);
        self.fail_quiet(err);
    }

    fn fail_quiet(&mut self, err: TransferError) {
        self.state = ReceiverState::Failed;
        self.deadline = None;
        self.events.push_back(Event::Failed(err));
    }

    fn next_wire(&self, w: u16) -> u16 {
        if w == u16::MAX {
            self.wrap_to
        } else {
            w + 1
        }
    }

    /// Feeds a datagram that arrived from `from` at `now`. Returns the payload of a DATA
    /// block that arrived in order, which the driver must write before feeding the next
    /// datagram (it borrows from `datagram`: no copy).
    pub fn handle_datagram<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'d [u8],
    ) -> Option<&'d [u8]> {
        if !self.link.accept_source(from, datagram, &mut self.stats) {
            return None;
        }
        let Ok(packet) = Packet::decode(datagram) else {
            self.stats.ignored += 1;
            return None;
        };
        match (self.state, packet) {
            (ReceiverState::Done | ReceiverState::Failed, _) => {
                self.stats.ignored += 1;
                None
            }
            (ReceiverState::Dallying, Packet::Data { block, .. }) => {
                if block == self.last_wire {
                    self.stats.duplicates += 1;
                    self.link.set_ack(block);
                } else {
                    self.stats.ignored += 1;
                }
                None
            }
            (ReceiverState::Dallying, _) => {
                self.stats.ignored += 1;
                None
            }
            (_, Packet::Error { code, message }) => {
                self.fail_quiet(TransferError::Peer {
                    code,
                    message: String::from_utf8_lossy(message).into_owned(),
                });
                None
            }
            (ReceiverState::Requesting, Packet::Oack(list)) => {
                let asked = self.client_options.unwrap_or_default();
                match asked.accept_oack(list) {
                    Ok(n) => {
                        self.state = ReceiverState::Receiving;
                        self.retries = 0;
                        self.apply(n);
                        self.link.set_ack(0);
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        self.fail_local(TransferError::Negotiation(e), &msg);
                    }
                }
                None
            }
            (ReceiverState::Requesting, Packet::Data { block: 1, payload }) => {
                self.state = ReceiverState::Receiving;
                self.retries = 0;
                self.apply(Negotiated::default());
                self.on_data(now, 1, payload)
            }
            (ReceiverState::Receiving, Packet::Oack(_)) if self.received == 0 => {
                // Our ACK 0 was lost and the server repeated its OACK.
                if self.client_options.is_some() {
                    self.stats.duplicates += 1;
                    self.link.set_ack(0);
                } else {
                    self.stats.ignored += 1;
                }
                None
            }
            (ReceiverState::Receiving, Packet::Data { block, payload }) => {
                self.on_data(now, block, payload)
            }
            _ => {
                self.stats.ignored += 1;
                None
            }
        }
    }

    fn on_data<'d>(&mut self, now: Instant, block: u16, payload: &'d [u8]) -> Option<&'d [u8]> {
        if payload.len() > self.blksize {
            self.fail_local(
                TransferError::Protocol("DATA longer than blksize"),
                "DATA longer than the negotiated blksize",
            );
            return None;
        }
        let in_order = block == self.expected
            || (self.expected == 0 && block == 1 && self.received >= u64::from(u16::MAX));
        if !in_order {
            if block.wrapping_sub(self.expected) < 0x8000 {
                // A block from the future: something in between was lost.
                // Every block from beyond the gap draws an ACK of the last block in order
                // (RFC 7440; rs-tftpc does the same): a lost gap ACK then costs the sender a
                // block, not the rest of the window and a timeout. The sender takes a repeat
                // for a new loss only a round trip after it resent the missing block.
                if self.received > 0 || self.client_options.is_some() {
                    self.in_window = 0;
                    self.link.set_ack(self.last_wire);
                    self.stats.retransmits += 1;
                }
                self.stats.ignored += 1;
            } else {
                self.stats.duplicates += 1;
                // The sender repeated what we already acknowledged: our ACK was lost. Only
                // when that ACK was our last word (nothing new came since): otherwise the
                // sender is resending a window after its timeout, the blocks after this one
                // follow, and an ACK now would make it resend them all once more, and so on
                // for every window to the end of the file.
                if block == self.last_wire && self.received > 0 && self.in_window == 0 {
                    self.in_window = 0;
                    self.link.set_ack(block);
                }
            }
            return None;
        }
        if self.expected == 0 && block == 1 {
            self.wrap_to = 1;
        }
        self.last_wire = block;
        self.expected = self.next_wire(block);
        self.received += 1;
        self.stats.blocks += 1;
        self.stats.bytes += payload.len() as u64;
        self.retries = 0;
        self.in_window += 1;
        self.link.proven = true;
        self.deadline = Some(now + backoff(self.timeout(), self.retries));
        // The first window: a server may send less than a window to a peer it has not heard
        // acknowledge DATA (tftpx sends at most FIRST_FLIGHT_BYTES), and would then wait for
        // our timeout. Acknowledge what came once nothing more arrives for two round trips.
        if self.received == u64::from(self.in_window) && self.in_window < self.windowsize {
            if let Some(sent) = self.ctrl_at.take() {
                let rtt = now.saturating_duration_since(sent);
                self.early_ack = Some((rtt * 2).min(self.timeout() / 2).max(EARLY_ACK_MIN));
            }
            if let Some(wait) = self.early_ack {
                self.deadline = Some(now + wait);
            }
        } else {
            self.early_ack = None;
        }
        if payload.len() < self.blksize {
            self.link.set_ack(block);
            self.state = ReceiverState::Dallying;
            // Set when the final ACK leaves (see poll_transmit).
            self.deadline = None;
            self.events.push_back(Event::Complete);
        } else if self.in_window >= self.windowsize {
            self.in_window = 0;
            self.link.set_ack(block);
        }
        Some(payload)
    }

    /// Feeds the passage of time; call when [`Receiver::poll_timeout`]'s instant is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d {
            return;
        }
        self.deadline = None;
        if self.state == ReceiverState::Receiving && self.early_ack.take().is_some() {
            // Not a loss: the first window stopped short. No retry is counted.
            self.in_window = 0;
            self.link.set_ack(self.last_wire);
            return;
        }
        match self.state {
            ReceiverState::Requesting | ReceiverState::Receiving => {
                self.stats.timeouts += 1;
                if self.retries >= self.link.retry_budget(&self.config) {
                    let e = self.link.timed_out(self.retries);
                    self.fail_quiet(e);
                    return;
                }
                self.retries += 1;
                self.stats.retransmits += 1;
                self.in_window = 0;
                // Resend the request, the OACK / ACK 0, or the ACK of the last block in order.
                // Mid-window the last ACK sent names an older block (the end of the previous
                // window): acknowledge the last block in order, so the sender resends from
                // the gap rather than waiting for its own timeout to resend the window.
                if self.state == ReceiverState::Receiving && self.received > 0 {
                    self.link.set_ack(self.last_wire);
                } else {
                    self.link.ctrl_pending = true;
                }
            }
            ReceiverState::Dallying => self.state = ReceiverState::Done,
            ReceiverState::Done | ReceiverState::Failed => {}
        }
    }

    /// The next datagram to send, if any. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        if self.link.stranger.is_some() {
            return self.link.poll_stranger();
        }
        if self.link.ctrl_pending
            && matches!(
                self.state,
                ReceiverState::Requesting | ReceiverState::Receiving
            )
        {
            self.deadline = Some(now + backoff(self.timeout(), self.retries));
            if self.received == 0 {
                self.ctrl_at = Some(now);
            }
        }
        if self.link.ctrl_pending
            && self.state == ReceiverState::Dallying
            && self.deadline.is_none()
        {
            // The dally counts from the final ACK, not from the last DATA: the driver may
            // spend a while committing the file in between.
            self.deadline = Some(now + self.config.dally);
        }
        self.link.poll_ctrl()
    }

    /// When the receiver next wants [`Receiver::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The retransmission timeout in force now.
    fn timeout(&self) -> Duration {
        self.link.timeout(&self.config, self.negotiated_timeout)
    }

    /// The negotiated block size in bytes (512 until a client learns otherwise).
    pub fn blksize(&self) -> usize {
        self.blksize
    }
}

#[cfg(test)]
mod tests;
