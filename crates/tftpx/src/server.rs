//! The TFTP server: listeners, one task and one socket (TID) per transfer.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tftpx_proto::negotiate::{
    Direction, Negotiated, RefusedOptions, ServerLimits, ServerNegotiation,
};
use tftpx_proto::transfer::{Receiver, Sender, Stats, TransferConfig, TransferError};
use tftpx_proto::wire::{ErrorCode, Mode, OptionList, Packet, MAX_BLKSIZE, MAX_DATAGRAM};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use crate::admission::RateLimit;
use crate::admission::{Admission, ClientPrefix, Proof, Ticket, Verdict};
use crate::budget::MemoryBudget;
use crate::driver::{self, BusyPolls, Tracker, WaitPolicy, DEFAULT_BUSY_POLL};
use crate::endpoint::{
    self, ConnectedLink, ConnectedPeers, Forwarded, Link, Routed, Routes, SharedParts,
};
use crate::handler::{Handler, HandlerError, RequestInfo, Upload};
use crate::inline::{BoxReader, Control, Handoff};
use crate::io::{LazyBufReader, Sink, Source};
use crate::net::{self, SourceAddr};
use crate::policy::{Acl, Cidr, PolicyStats, PortRange, RefusalLog, Throttle};
use crate::reload::{LiveSettings, Reloader};
use crate::remap::{RemapRules, Remapped};
use crate::stats::{Live, Refusal, ServerStats};
use crate::trace::{PacketTrace, Tracer};

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
    /// The requested file name (lossy UTF-8), whole: the [`Display`](fmt::Display) form (the
    /// log line) escapes it and cuts it to 256 bytes.
    pub filename: String,
    /// The name the [`ServerBuilder::remap`] rules turned it into (lossy UTF-8), when they
    /// changed it: the name the handler opened.
    pub remapped: Option<String>,
    /// The transfer mode, if it was valid.
    pub mode: Option<Mode>,
    /// The options in force, once negotiated.
    pub negotiated: Option<Negotiated>,
    /// Counters (bytes are payload bytes, as they went on the wire).
    pub stats: Stats,
    /// What the transfer's waits did before they slept (see [`ServerBuilder::busy_poll`]).
    pub busy_polls: BusyPolls,
    /// From the request to the end of the transfer (before dallying).
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
    started: Instant,
    reported: bool,
    /// The transfer's admission: told when the peer has answered (its rate token is given
    /// back), and whether it was evicted.
    proof: Option<Proof>,
}

/// One line of at most about 1 KiB: the file name and any peer message are escaped and cut to
/// 256 bytes (see [`printable`]).
impl fmt::Display for TransferSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} from {} {}",
            self.kind,
            self.peer,
            quoted(&self.filename)
        )?;
        if let Some(r) = &self.remapped {
            write!(f, " -> {}", quoted(r))?;
        }
        if let Some(m) = self.mode {
            write!(f, " {m}")?;
        }
        match &self.outcome {
            Outcome::Failed(_) if self.proof.as_ref().is_some_and(Proof::evicted) => {
                f.write_str(
                    ": evicted: its peer never answered and a newer request of the same \
                     client needed the slot",
                )?;
            }
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
            write!(f, ", {}", negotiated_for_log(n))?;
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
    /// How it ended, in one word: the `outcome` field of the log line. `ok`; `refused` (an
    /// ERROR answered the request); `size-probe` (the client ended it after the OACK, see
    /// [`Outcome::Failed`]); `duplicate` (ERROR 5 from a client that repeated its request
    /// and continues with another transfer); `evicted` (its peer never answered and a newer
    /// request of the same client took the slot); `cancelled` (the server stopped);
    /// `failed` (anything else).
    pub fn outcome_name(&self) -> &'static str {
        match &self.outcome {
            Outcome::Failed(_) if self.proof.as_ref().is_some_and(Proof::evicted) => "evicted",
            Outcome::Ok => "ok",
            Outcome::Refused { .. } => "refused",
            Outcome::Failed(_) if self.is_size_probe() => "size-probe",
            Outcome::Failed(_) if self.is_duplicate() => "duplicate",
            Outcome::Failed(TransferError::Aborted { message, .. })
                if message == driver::CANCELLED =>
            {
                "cancelled"
            }
            Outcome::Failed(_) => "failed",
        }
    }

    /// The TFTP error code (RFC 1350 section 5, 0..=8) of the ERROR that ended the transfer,
    /// sent or received; `None` when it succeeded or timed out (no ERROR was exchanged).
    pub fn error_code(&self) -> Option<u16> {
        match &self.outcome {
            Outcome::Ok | Outcome::Failed(TransferError::TimedOut { .. }) => None,
            Outcome::Refused { code, .. } => Some(code.to_u16()),
            Outcome::Failed(e) => Some(e.code().to_u16()),
        }
    }

    /// ERROR 5 from a client before any data: it repeated its request and talks to the
    /// first transfer.
    fn is_duplicate(&self) -> bool {
        matches!(&self.outcome, Outcome::Failed(TransferError::Peer { code, .. })
            if *code == ErrorCode::UnknownTid && self.stats.blocks == 0)
    }

    /// A client that ended the transfer with ERROR 8 (or 0) right after the OACK, before any
    /// data: PXE ROMs and UEFI read tsize that way, then request the file again.
    fn is_size_probe(&self) -> bool {
        matches!(&self.outcome, Outcome::Failed(TransferError::Peer { code, .. })
            if self.stats.blocks == 0
                && (*code == ErrorCode::OptionNegotiation || *code == ErrorCode::NotDefined))
    }
}

/// Longest escaped text, in bytes, that a log line shows of one peer-supplied field (file
/// name, mode, message, the options together); longer text is cut and ends with `…`.
const LOG_FIELD_MAX: usize = 256;

/// `s` with control and other invisible characters escaped (`\n` -> `\\n`, ESC ->
/// `\\u{1b}`, U+202E -> `\\u{202e}`), cut to 256 bytes followed by `…` when longer: peers'
/// file names and messages end up in logs and terminals, where they must not inject lines
/// or escapes, nor cost more than a bounded number of bytes.
pub fn printable(s: &str) -> String {
    let mut out = String::new();
    push_escaped(&mut out, s, LOG_FIELD_MAX, false);
    out
}

/// `s` escaped as by [`str::escape_debug`] (double quotes and backslashes too) and cut to
/// 256 bytes as by [`printable`], between double quotes.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    push_escaped(&mut out, s, LOG_FIELD_MAX + 1, true);
    out.push('"');
    out
}

/// Peer bytes (lossy UTF-8) escaped as by [`quoted`], without the quotes.
fn escaped(b: &[u8]) -> String {
    let mut out = String::new();
    push_escaped(&mut out, &lossy_head(b), LOG_FIELD_MAX, true);
    out
}

/// Appends `s` to `out` with every character escaped that is not plainly visible (with
/// `debug`: double quotes and backslashes too), stopping before `out` would pass `limit` bytes;
/// then appends `…` and returns false.
fn push_escaped(out: &mut String, s: &str, limit: usize, debug: bool) -> bool {
    for c in s.chars() {
        let start = out.len();
        // escape_debug leaves visible characters alone (quotes and backslashes aside).
        let visible = c.escape_debug().nth(1).is_none() || matches!(c, '"' | '\'' | '\\');
        if debug && c != '\'' {
            out.extend(c.escape_debug());
        } else if visible {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
        if out.len() > limit {
            out.truncate(start);
            out.push('…');
            return false;
        }
    }
    true
}

/// The start of peer bytes as text: enough to fill [`LOG_FIELD_MAX`] escaped bytes (every
/// input byte shows as at least one), so a 65,000-byte field is never converted whole.
fn lossy_head(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(&b[..b.len().min(LOG_FIELD_MAX + 4)])
}

/// A request's options for the log: `name=value` pairs, escaped, cut to 256 bytes in all,
/// with the count of those left out.
fn options_for_log(options: OptionList<'_>) -> String {
    let mut out = String::new();
    for (shown, (n, v)) in options.iter().enumerate() {
        let before = out.len();
        if shown > 0 {
            out.push(' ');
        }
        let fits = push_escaped(&mut out, &lossy_head(n), LOG_FIELD_MAX, true) && {
            out.push('=');
            push_escaped(&mut out, &lossy_head(v), LOG_FIELD_MAX, true)
        };
        if !fits {
            if shown > 0 {
                // Whole options only, unless the first is already too long (then it is cut).
                out.truncate(before);
                out.push_str(" …");
            }
            let total = options.iter().count();
            let _ = write!(out, " ({shown} of {total} options shown in full)");
            return out;
        }
    }
    out
}

/// Server settings. Build them with [`Server::builder`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on (RFC 1350's well-known port is 69). `[::]:PORT` is bound
    /// dual-stack (IPv4 too) unless an IPv4 address with the same port is in the list; every
    /// other IPv6 address is IPv6 only (IPV6_V6ONLY).
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
    /// Transfers running at once for one client (see `client_prefix_v4`/`_v6`). At the
    /// limit, the client's oldest transfer whose peer never answered is ended to make room;
    /// when all have answered, the request gets ERROR 0. Default 32; `None`: no limit.
    pub max_transfers_per_client: Option<usize>,
    /// Datagrams accepted per second from one client at the listeners; beyond it, requests
    /// are dropped (the first of every 10 s answered with ERROR 0 and logged). A request
    /// whose peer answers (ACKs our DATA or sends DATA) gives its token back, so only
    /// unanswered (possibly forged) requests use it up. Default 20 per second with a burst
    /// of 40; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// IPv4 addresses sharing this many leading bits are one client for the per-client
    /// limits (0..=32; default 32).
    pub client_prefix_v4: u8,
    /// IPv6 addresses sharing this many leading bits are one client for the per-client
    /// limits (0..=128; default 64, a subnet a single host may hold whole). IPv4-mapped
    /// IPv6 addresses count as IPv4.
    pub client_prefix_v6: u8,
    /// Address rules (first match wins, default allow): datagrams from a denied source are
    /// dropped at the listener without an answer, before the rate limiter counts them.
    /// Default: empty (everyone allowed). The rules at start: [`Server::reloader`] swaps
    /// them (with `write_from`, the remap rules and the refused options) while it runs.
    pub acl: Acl,
    /// When set, WRQs only from these blocks; others get ERROR 2. Default `None`: uploads
    /// from anyone the handler lets write.
    pub write_from: Option<Vec<Cidr>>,
    /// Ports for transfer sockets (TIDs); `None` (default): ports the OS picks. Unused in
    /// single-port mode.
    pub port_range: Option<PortRange>,
    /// Single-port mode: every transfer of a listen address shares its socket, datagrams are
    /// routed to transfers by the peer's address and port, and replies leave from the listen
    /// address and port (crosses NATs without a TFTP helper and ECMP routers that hash on
    /// ports). Default false: a socket and port (TID) per transfer, as RFC 1350 section 4
    /// describes.
    pub single_port: bool,
    /// In single-port mode, route every datagram through the listen socket instead of
    /// giving each transfer a connected socket of its own on the listen address and port.
    /// Default false. See [`ServerBuilder::single_port_shared`].
    pub single_port_shared: bool,
    /// How long a transfer waiting for its client polls its socket before it sleeps; zero:
    /// never. Default [`DEFAULT_BUSY_POLL`] (100 us). See [`ServerBuilder::busy_poll`].
    pub busy_poll: Duration,
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
            client_prefix_v4: ClientPrefix::default().v4,
            client_prefix_v6: ClientPrefix::default().v6,
            acl: Acl::default(),
            write_from: None,
            port_range: None,
            single_port: false,
            single_port_shared: false,
            busy_poll: DEFAULT_BUSY_POLL,
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
    /// No listen address or socket was given.
    #[error("no listen address given")]
    NoListenAddress,
    /// A socket given to [`ServerBuilder::listen_socket`] cannot serve: not a bound UDP
    /// socket of IPv4 or IPv6 (the message says what it is), or a socket option failed.
    #[error("cannot listen on the socket given{}: {source}", .addr.map(|a| format!(" ({a})")).unwrap_or_default())]
    Adopt {
        /// The socket's local address, when it has one.
        addr: Option<SocketAddr>,
        /// What is wrong with it.
        source: io::Error,
    },
}

type Hook = Arc<dyn Fn(&TransferSummary) + Send + Sync>;

/// Builds a [`Server`].
pub struct ServerBuilder<H> {
    handler: H,
    config: ServerConfig,
    hook: Option<Hook>,
    remap: Option<Arc<RemapRules>>,
    /// Sockets bound by someone else, served besides `config.listen`.
    sockets: Vec<std::net::UdpSocket>,
}

impl<H: Handler> ServerBuilder<H> {
    /// Adds a listen address (repeatable). Port 0 lets the OS pick one; see
    /// [`Server::local_addrs`]. The unspecified IPv6 address (`[::]:PORT`) also receives
    /// IPv4 (dual-stack, IPV6_V6ONLY off) unless an IPv4 address with the same port is
    /// listened on too, so `0.0.0.0:69` and `[::]:69` can be bound side by side; any other
    /// IPv6 address receives IPv6 only. IPv4 clients that arrive on a dual-stack socket are
    /// served and reported as IPv4 addresses.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen.push(addr);
        self
    }

    /// Adds a listen socket bound by someone else (repeatable): one passed by systemd
    /// socket activation (`LISTEN_FDS`), or bound by a parent before it dropped privileges.
    /// It must be a bound UDP socket of IPv4 or IPv6; [`ServerBuilder::bind`] makes it
    /// non-blocking and turns on IP_PKTINFO / IPV6_RECVPKTINFO so that every transfer still
    /// answers from the address its request was sent to. Its IPV6_V6ONLY setting is kept
    /// (a dual-stack socket serves IPv4 clients as IPv4).
    pub fn listen_socket(mut self, sock: std::net::UdpSocket) -> Self {
        self.sockets.push(sock);
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

    /// How long a transfer waiting for its client's next datagram polls its socket before it
    /// sleeps (default [`DEFAULT_BUSY_POLL`], 100 us; `Duration::ZERO` turns it off).
    ///
    /// A lock-step transfer (windowsize 1, what PXE ROMs, GRUB and U-Boot use) sleeps and
    /// wakes once per block; on a quiet machine, above all a virtual one, waking a halted
    /// CPU takes tens of microseconds, more than the client takes to answer on a LAN or
    /// loopback. A reply that comes within the budget is taken without sleeping: measured on
    /// loopback (2-vCPU VM, busybox client, blksize 512), 3-6x the speed and less server CPU
    /// per byte, since the sleep and wake-up cost more than the poll. It applies only
    /// while the process runs at most half as many transfers as it has CPUs (at least one): a
    /// busy server has no sleep to save and needs its CPUs. A poll that misses (a client
    /// slower than the budget) backs off: after `n` misses in a row the next `2^n - 1` waits
    /// (at most 63) sleep at once, so a far or slow client costs about one budget per 64
    /// blocks. Not in shared single-port mode ([`ServerBuilder::single_port_shared`]), whose
    /// datagrams reach a transfer through the listener's task.
    pub fn busy_poll(mut self, budget: Duration) -> Self {
        self.config.busy_poll = budget;
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

    /// Options ignored in every request, as if the client had not sent them, so they never
    /// appear in an OACK (`--refuse`; RFC 2347 lets a server leave out any option). For boot
    /// ROMs that mishandle one (e.g. an OACK with `tsize` or `blksize`). Default: none.
    pub fn refuse_options(mut self, options: RefusedOptions) -> Self {
        self.config.limits.refused = options;
        self
    }

    /// Transfers running at once (default 1024).
    pub fn max_transfers(mut self, n: usize) -> Self {
        self.config.max_transfers = n.max(1);
        self
    }

    /// Transfers running at once for one client (default 32; `None`: no limit; a client is
    /// an address prefix, see [`ServerBuilder::client_prefix_v6`]). At the limit, the
    /// client's oldest transfer whose peer has not answered yet is ended to make room (so
    /// forged requests from a victim's address cannot hold its slots); when every one has
    /// answered, the request gets ERROR 0 "Too many transfers from your address".
    pub fn max_transfers_per_client(mut self, n: Option<usize>) -> Self {
        self.config.max_transfers_per_client = n.map(|n| n.max(1));
        self
    }

    /// Requests per second accepted from one client, with a burst of twice that (default
    /// 20; `None` or 0: no limit). Datagrams beyond it are dropped; the first of every 10 s
    /// gets ERROR 0 and a warning in the log that counts the others. This keeps a flood from
    /// one client (or forged requests aimed at one victim) from costing more than a few
    /// packets per second. A request whose peer answers from its port (it ACKs our DATA or
    /// sends DATA, so it is not forged) gives its token back: a real client fetching file
    /// after file is never refused.
    pub fn rate_limit(mut self, per_second: Option<u32>) -> Self {
        self.config.rate_limit = per_second.and_then(RateLimit::per_second);
        self
    }

    /// IPv4 addresses that share their first `bits` bits (0..=32, clamped; default 32) are
    /// one client for [`ServerBuilder::rate_limit`] and
    /// [`ServerBuilder::max_transfers_per_client`].
    pub fn client_prefix_v4(mut self, bits: u8) -> Self {
        self.config.client_prefix_v4 = bits.min(32);
        self
    }

    /// IPv6 addresses that share their first `bits` bits (0..=128, clamped; default 64) are
    /// one client for [`ServerBuilder::rate_limit`] and
    /// [`ServerBuilder::max_transfers_per_client`]: a host usually holds a whole /64 and can
    /// send from any of its 2^64 addresses. Use 128 where every address is its own host and
    /// many clients share one /64 (a provisioning LAN), or raise the limits. IPv4-mapped
    /// IPv6 addresses count as IPv4.
    pub fn client_prefix_v6(mut self, bits: u8) -> Self {
        self.config.client_prefix_v6 = bits.min(128);
        self
    }

    /// Remaps every requested file name with tftp-hpa's rules (`in.tftpd --map-file`; see
    /// [`crate::remap`]) before the handler sees it: [`RequestInfo::filename`] is the
    /// remapped name, the log and [`TransferSummary::remapped`] show both. A request the
    /// rules refuse gets ERROR 2 (RFC 1350 section 5) with in.tftpd's message
    /// ([`Refusal::message`](crate::remap::Refusal::message)). Checked after the mode, as
    /// in.tftpd does.
    pub fn remap(mut self, rules: RemapRules) -> Self {
        self.remap = Some(Arc::new(rules));
        self
    }

    /// Address rules (`--allow`/`--deny`; first match wins, default allow, IPv4-mapped IPv6
    /// clients match IPv4 rules). Every datagram from a denied source is dropped at the
    /// listener without an answer (any answer could be reflected at a forged source), before
    /// the rate limiter or anything else spends on it; it is counted
    /// ([`PolicyStats::denied`]) and logged once per client prefix (see
    /// [`ServerBuilder::client_prefix_v6`]) per 10 s with a count.
    pub fn acl(mut self, acl: Acl) -> Self {
        self.config.acl = acl;
        self
    }

    /// Accept WRQs only from these address blocks (`--allow-write-from`, repeatable; an
    /// empty list refuses every upload). Others are answered ERROR 2 (access violation, RFC
    /// 1350 section 5) "Uploads are not accepted from your address" from the listen port, as
    /// tftpd-hpa answers a refused write with ERROR 2,
    /// after the rate limiter (so the answer cannot be used to reflect more than one small
    /// packet per rate token); counted ([`PolicyStats::write_refused`]) and logged once
    /// per client prefix per 10 s.
    pub fn allow_write_from(mut self, blocks: Vec<Cidr>) -> Self {
        self.config.write_from = Some(blocks);
        self
    }

    /// Transfer sockets (TIDs) bind a port in `range` (`--port-range`, for firewalls): a
    /// random start, then the next free port, wrapping. With every port taken the request
    /// gets ERROR 0 "Server busy, try again later" from the listen port.
    pub fn port_range(mut self, range: PortRange) -> Self {
        self.config.port_range = Some(range);
        self
    }

    /// Single-port mode (default off): every transfer answers from the listen socket's own
    /// address and port instead of a new port (TID) of its own; the listener routes each
    /// datagram to the transfer of its peer (address and port). Every rule holds as in the
    /// socket-per-transfer mode: a repeated request is folded into its transfer, a datagram
    /// from a peer with no transfer that is not a request is answered with ERROR 5 (within
    /// the rate limit), the budgets are the same. A new, different request from the address
    /// and port of a running transfer takes the peer over; the old transfer ends without
    /// sending anything more. Up to 256 datagrams or 1 MiB wait for one transfer; past that
    /// they are dropped, as a full socket buffer drops them.
    pub fn single_port(mut self, on: bool) -> Self {
        self.config.single_port = on;
        self
    }

    /// How single-port transfers get their datagrams (default false). By default each
    /// transfer has a socket of its own bound to the listen address and port beside the
    /// listen socket (both SO_REUSEADDR) and connected to its peer: the kernel delivers the
    /// peer's datagrams to it, so transfers keep their own queues and wake-ups and a busy
    /// transfer never delays the listener's requests. With `true` (or where such a socket
    /// cannot be bound) every datagram is read by the listener and routed to its transfer
    /// through a bounded queue: no SO_REUSEADDR on the listen socket (which lets another
    /// socket of any user bind the same address and port), at the cost of one queue for
    /// all. Replies leave from the listen address and port either way.
    ///
    /// With `true`, the listener runs on a thread of its own and runs the downloads of a
    /// handler whose reads never wait ([`Handler::reads_never_wait`]) itself, batched
    /// across transfers: at an ACK's arrival it reads the next block and sends it, with
    /// no task woken per datagram, polling the socket for up to
    /// [`ServerBuilder::busy_poll`] before it sleeps while it runs any. Uploads and other
    /// downloads keep tasks of their own. Server CPU in a storm of 1,000 lock-step
    /// downloads: about 0.8x the connected sockets' (README "--shared-socket").
    pub fn single_port_shared(mut self, on: bool) -> Self {
        self.config.single_port_shared = on;
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

    /// Binds every listen address and takes over every listen socket given.
    ///
    /// # Errors
    /// [`ServerError::Adopt`] for the first socket given that cannot serve;
    /// [`ServerError::Bind`] for the first address that cannot be bound;
    /// [`ServerError::NoListenAddress`] if neither addresses nor sockets were given.
    pub fn bind(self) -> Result<Server<H>, ServerError> {
        if self.config.listen.is_empty() && self.sockets.is_empty() {
            return Err(ServerError::NoListenAddress);
        }
        let mut listeners = Vec::new();
        for sock in self.sockets {
            let addr = sock.local_addr().ok().filter(|a| a.port() != 0);
            let s =
                net::adopt_listener(sock).map_err(|source| ServerError::Adopt { addr, source })?;
            listeners.push(s);
        }
        for &addr in &self.config.listen {
            // `[::]:P` alone serves IPv4 too; beside an IPv4 address on port P it cannot.
            let v6only = !addr.ip().is_unspecified()
                || self
                    .config
                    .listen
                    .iter()
                    .any(|a| a.is_ipv4() && a.port() == addr.port());
            let s = net::bind_listener(addr, v6only)
                .map_err(|source| ServerError::Bind { addr, source })?;
            listeners.push(s);
        }
        let policy = PolicyStats::default();
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                handler: self.handler,
                slots: Arc::new(Semaphore::new(self.config.max_transfers)),
                admission: Admission::new(
                    self.config.rate_limit,
                    self.config.max_transfers_per_client,
                    ClientPrefix {
                        v4: self.config.client_prefix_v4,
                        v6: self.config.client_prefix_v6,
                    },
                ),
                memory: MemoryBudget::new(self.config.max_memory),
                out_of_descriptors: Mutex::new(Throttle::default()),
                stats: ServerStats::new(policy.clone()),
                policy,
                client_prefix: ClientPrefix {
                    v4: self.config.client_prefix_v4,
                    v6: self.config.client_prefix_v6,
                },
                refusals: RefusalLog::default(),
                ports_exhausted: Mutex::new(Throttle::default()),
                drain: CancellationToken::new(),
                live: Reloader::new(LiveSettings {
                    acl: self.config.acl.clone(),
                    write_from: self.config.write_from.clone(),
                    remap: self.remap,
                    refused: self.config.limits.refused,
                }),
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
    /// The address rules, upload sources, remap rules and refused options: read through
    /// [`Shared::live`] only, swapped by a [`Reloader`]. (`config` keeps their values at
    /// start.)
    live: Reloader,
    /// Cancelled: no more requests are taken ([`Server::drain_token`]).
    drain: CancellationToken,
    /// Requests answered "Server busy" for want of a file descriptor, logged once per 10 s.
    out_of_descriptors: Mutex<Throttle>,
    /// Datagrams the address rules turned away.
    policy: PolicyStats,
    /// Refusals, ERRORs sent and running transfers, for metrics.
    stats: ServerStats,
    /// How sources are grouped in refusal log lines (as for the per-client limits).
    client_prefix: ClientPrefix,
    /// Their log lines, once per client prefix per 10 s.
    refusals: RefusalLog,
    /// Requests answered "Server busy" because every port of the range was taken, logged
    /// once per 10 s.
    ports_exhausted: Mutex<Throttle>,
}

/// [`RefusalLog`] kinds.
const DENIED: u8 = 0;
const WRITE_REFUSED: u8 = 1;

/// The ERROR 0 message for a request refused for want of resources (transfer slots, file
/// descriptors): the client may try again later. Never the OS's own text.
pub(crate) const SERVER_BUSY: &str = "Server busy, try again later";

/// How often a warning about running out of descriptors is logged.
const OUT_OF_DESCRIPTORS_EVERY: Duration = Duration::from_secs(10);

impl<H> Shared<H> {
    /// The reloadable settings in force now; a request reads them once and keeps them.
    fn live(&self) -> Arc<LiveSettings> {
        self.live.current()
    }

    /// Counts a request refused for want of a file descriptor; warns once per 10 s.
    fn out_of_descriptors(&self, what: &dyn fmt::Display) {
        self.stats.refuse(Refusal::OutOfDescriptors, None);
        let n = self
            .out_of_descriptors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hit(std::time::Instant::now(), OUT_OF_DESCRIPTORS_EVERY);
        if let Some(n) = n {
            warn!(
                "out of file descriptors ({what}): {n} request(s) answered \"{SERVER_BUSY}\" \
                 since the last warning (at most one per {} s); raise the descriptor limit \
                 (ulimit -n, LimitNOFILE=) or lower --max-transfers",
                OUT_OF_DESCRIPTORS_EVERY.as_secs()
            );
        }
    }
}

/// True for EMFILE and ENFILE: the process or the system is out of file descriptors.
pub(crate) fn no_descriptors(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}

/// What a client is told when file descriptors run out: ERROR 0 [`SERVER_BUSY`].
pub(crate) fn busy_error() -> HandlerError {
    HandlerError::new(ErrorCode::NotDefined, SERVER_BUSY)
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
            remap: None,
            sockets: Vec::new(),
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

    /// Counters of what the address rules ([`ServerBuilder::acl`],
    /// [`ServerBuilder::allow_write_from`]) turned away; the handle stays live while the
    /// server runs.
    pub fn policy_stats(&self) -> PolicyStats {
        self.shared.policy.clone()
    }

    /// Live counters: refusals by reason, ERRORs sent by code, and the transfers running
    /// now with their byte counts (for a metrics endpoint); the handle stays live while the
    /// server runs. Finished transfers are reported to [`ServerBuilder::on_transfer_end`].
    pub fn stats(&self) -> ServerStats {
        self.shared.stats.clone()
    }

    /// A token that stops the server when cancelled: listeners stop at once, running
    /// transfers end with ERROR 0 to their peers and uploads in progress are discarded.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// A token that stops taking requests when cancelled (a graceful stop): the listen
    /// sockets are no longer read, so a new request gets no answer, while running transfers
    /// go on; [`Server::run`] returns once the last one has ended. Cancel
    /// [`Server::shutdown_token`] too to end the rest with ERROR 0 (e.g. after a grace
    /// period: `tftpx serve --drain DURATION`).
    pub fn drain_token(&self) -> CancellationToken {
        self.shared.drain.clone()
    }

    /// A handle that swaps the address rules, upload sources, remap rules and refused
    /// options of this server while it runs (see [`crate::reload`]); the handle stays live
    /// while the server runs.
    pub fn reloader(&self) -> Reloader {
        self.shared.live.clone()
    }

    /// Serves until the shutdown token is cancelled, then waits for transfers to end; or
    /// until the drain token is cancelled and every running transfer has ended.
    pub async fn run(self) {
        let tracker = TaskTracker::new();
        let mut listeners = Vec::new();
        for sock in self.listeners {
            let shared = self.shared.clone();
            let cancel = self.cancel.clone();
            let t = tracker.clone();
            let drain = self.shared.drain.clone();
            let single_port = self.shared.config.single_port;
            let running = tracker.clone();
            let stop = async move {
                drain.cancelled().await;
                if single_port {
                    // The transfers' datagrams arrive at this socket: read on (the listener
                    // drops everything else) until they have ended.
                    running.close();
                    running.wait().await;
                }
            };
            let main = tokio::runtime::Handle::current();
            let dedicated = single_port && self.shared.config.single_port_shared;
            let tasks = tracker.clone();
            let run = async move |sock: UdpSocket| {
                // Dropping the listener stops reading its socket (transfers keep their own).
                // Drain first: once it is cancelled, the listener is not polled again.
                tokio::select! {
                    biased;
                    _ = stop => {}
                    _ = listen(sock, shared, cancel, t, main) => {}
                }
            };
            if !dedicated {
                listeners.push(tokio::spawn(run(sock)));
                continue;
            }
            // Shared single-port mode: the listener runs downloads itself (crate::inline),
            // on a thread of its own with a single-threaded runtime, so that its wake-ups
            // never bounce between the server's worker threads; transfer tasks stay on the
            // server's runtime. The socket moves to the listener's runtime.
            let (ended, done) = tokio::sync::oneshot::channel::<()>();
            let thread = sock.into_std().and_then(|std_sock| {
                std::thread::Builder::new()
                    .name("tftpx-listener".into())
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                tracing::error!("single-port listener: no runtime: {e}");
                                return;
                            }
                        };
                        rt.block_on(async move {
                            match UdpSocket::from_std(std_sock) {
                                Ok(sock) => run(sock).await,
                                Err(e) => tracing::error!("single-port listener: {e}"),
                            }
                        });
                        drop(ended);
                        // The listen socket belongs to this runtime: keep it turning until
                        // the transfer tasks (which send from that socket: ERROR 0 on a
                        // stop) have ended, for at most 30 s (a server whose runtime was
                        // dropped has no tasks left to end).
                        rt.block_on(async {
                            let until = Instant::now() + Duration::from_secs(30);
                            while !tasks.is_empty() && Instant::now() < until {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        });
                    })
            });
            match thread {
                Ok(_) => listeners.push(tokio::spawn(async move {
                    let _ = done.await;
                })),
                Err(e) => tracing::error!("single-port listener: cannot start its thread: {e}"),
            }
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
    runtime: tokio::runtime::Handle,
) {
    if shared.config.single_port {
        // Every transfer's datagrams queue here: room for windows of many transfers.
        net::fit_window(&sock, 4 << 20);
    }
    // Shared with the transfers, which answer from it when they cannot open their own (or
    // always, in single-port mode).
    let sock = Arc::new(sock);
    let bound = sock
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    // Shared single-port downloads the listener runs itself reach it here (crate::inline).
    let (control, mut controls) = tokio::sync::mpsc::unbounded_channel::<Control>();
    let mut routes = shared
        .config
        .single_port
        .then(|| Routes::new(sock.clone(), control));
    // Single-port transfers get connected sockets of their own on the listen address and
    // port where the listen socket allows the share; the routes are the fall-back.
    let connected = match shared.config.single_port && !shared.config.single_port_shared {
        false => false,
        true => match net::allow_connected_shares(&sock) {
            Ok(()) => true,
            Err(e) => {
                warn!("single-port: {e} (SO_REUSEADDR); every transfer shares the listen socket");
                false
            }
        },
    };
    let mut connected_peers = ConnectedPeers::default();
    // Requests that reached a single-port transfer's socket and belong to a new transfer.
    let (forward, mut forwarded) = tokio::sync::mpsc::unbounded_channel::<Forwarded>();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = vec![0u8; 256];
    // One future each for the whole loop, not one per datagram.
    let mut stopped = std::pin::pin!(cancel.cancelled());
    let mut timer = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed: Option<std::time::Instant> = None;
    let mut busy = driver::BusyPoll::new(shared.config.busy_poll);
    loop {
        // The timers of the transfers the listener runs (crate::inline): those due now run
        // here, whatever the timer future says (under steady traffic the runtime turns its
        // timer driver only now and then).
        let mut next = routes.as_ref().and_then(Routes::next_deadline);
        if let (Some(r), Some(t)) = (routes.as_mut(), next) {
            let now = std::time::Instant::now();
            if t <= now {
                r.on_timers(now);
                next = r.next_deadline();
            }
        }
        if next != armed {
            if let Some(t) = next {
                timer.as_mut().reset(Instant::from_std(t));
            }
            armed = next;
        }
        // The listener polls its socket before it sleeps while it runs transfers itself.
        let polling = routes.as_ref().is_some_and(Routes::runs_transfers);
        let arrival = tokio::select! {
            // The socket last: a busy poll there must not pass the others by.
            biased;
            () = &mut stopped => {
                if let Some(r) = routes.as_mut() {
                    // Downloads handed over meanwhile end like the others: ERROR 0.
                    while let Ok(c) = controls.try_recv() {
                        r.control(c);
                    }
                    r.shutdown();
                }
                return;
            }
            Some(f) = forwarded.recv() => {
                let len = f.datagram.len().min(buf.len());
                buf[..len].copy_from_slice(&f.datagram[..len]);
                Ok(net::Arrival { len, from: f.from, local: f.local })
            }
            Some(c) = controls.recv() => {
                if let Some(r) = routes.as_mut() {
                    r.control(c);
                }
                continue;
            }
            () = &mut timer, if armed.is_some() => {
                armed = None;
                if let Some(r) = routes.as_mut() {
                    r.on_timers(std::time::Instant::now());
                }
                continue;
            }
            r = net::recv_request_polling(
                &sock, bound, &mut buf, &mut cmsg, polling.then_some(&mut busy)
            ) => r,
        };
        let arrival = match arrival {
            Ok(a) => a,
            Err(e) => {
                debug!("listener receive error: {e}");
                continue;
            }
        };
        let datagram = &buf[..arrival.len];
        // Single-port mode: a running transfer's datagrams go to it (requests go on to
        // admission, which folds a repeated one and lets a new one take the peer over).
        let is_request = endpoint::is_request(datagram);
        if let Some(routes) = routes.as_mut() {
            if !is_request && routes.route(arrival.from, datagram) == Routed::Delivered {
                continue;
            }
            if is_request && routes.is_repeat(arrival.from, datagram) {
                debug!(peer = %arrival.from, "repeated request folded into its running transfer");
                continue;
            }
        }
        // Draining (single-port mode reads on for the running transfers): nothing else is
        // answered.
        if shared.drain.is_cancelled() {
            continue;
        }
        let reply = Reply {
            sock: &sock,
            to: arrival.from,
            wire_to: net::wire_address(bound, arrival.from),
            source: SourceAddr::for_reply(bound, arrival.local),
        };
        let now = Instant::now().into_std();
        let settings = shared.live();
        // Denied sources cost nothing more: no answer (it would reflect), no rate token.
        if !settings.acl.allows(arrival.from.ip()) {
            debug!(peer = %arrival.from, "denied by --allow/--deny: dropped without an answer");
            shared.policy.count_denied();
            let client = shared.client_prefix.client_of(arrival.from.ip());
            if let Some(n) = shared.refusals.hit(DENIED, client, now) {
                warn!(
                    peer = %arrival.from,
                    "denied by --allow/--deny: {n} datagram(s) from {client} dropped without \
                     an answer since the last warning (at most one per 10 s)"
                );
            }
            continue;
        }
        if let Err(Verdict::RateLimited { notify, refused }) =
            shared.admission.check_rate(arrival.from, now)
        {
            debug!(peer = %arrival.from, "over the request rate limit: dropped");
            let answer = notify.then_some(ErrorCode::NotDefined);
            shared.stats.refuse(Refusal::RateLimited, answer);
            if notify {
                warn!(
                    peer = %arrival.from,
                    "over the request rate limit ({}/s): {refused} request(s) refused; \
                     further ones are dropped for 10 s without an answer",
                    shared.config.rate_limit.map_or(0, |r| r.per_second)
                );
                reply
                    .error(
                        ErrorCode::NotDefined,
                        "Too many requests from your address, slow down",
                    )
                    .await;
            }
            continue;
        }
        match Packet::decode(datagram) {
            Ok(Packet::Wrq(_))
                if settings
                    .write_from
                    .as_ref()
                    .is_some_and(|w| !w.iter().any(|c| c.contains(arrival.from.ip()))) =>
            {
                shared.policy.count_write_refused();
                shared
                    .stats
                    .refuse(Refusal::WriteNotAllowed, Some(ErrorCode::AccessViolation));
                let client = shared.client_prefix.client_of(arrival.from.ip());
                if let Some(n) = shared.refusals.hit(WRITE_REFUSED, client, now) {
                    warn!(
                        peer = %arrival.from,
                        "WRQ refused by --allow-write-from: {n} upload request(s) from {client} \
                         answered ERROR 2 since the last warning (at most one per 10 s)"
                    );
                }
                reply
                    .error(
                        ErrorCode::AccessViolation,
                        "Uploads are not accepted from your address",
                    )
                    .await;
                continue;
            }
            Ok(Packet::Rrq(_) | Packet::Wrq(_)) => {}
            Ok(Packet::Error { .. }) => continue,
            Ok(p) if routes.is_some() => {
                debug!(peer = %arrival.from, "{:?} from a peer with no transfer; answering ERROR 5", p.opcode());
                shared.stats.error_sent(ErrorCode::UnknownTid, 1);
                reply
                    .error(ErrorCode::UnknownTid, "Unknown transfer ID")
                    .await;
                continue;
            }
            Ok(p) => {
                debug!(peer = %arrival.from, "{:?} sent to the listen port; answering ERROR 4", p.opcode());
                shared.stats.error_sent(ErrorCode::IllegalOperation, 1);
                reply
                    .error(ErrorCode::IllegalOperation, "Expected RRQ or WRQ")
                    .await;
                continue;
            }
            Err(e) => {
                debug!(peer = %arrival.from, "undecodable request dropped: {e}");
                continue;
            }
        }
        let ticket = match shared.admission.admit(arrival.from, datagram, now, &cancel) {
            Verdict::Admit(t) => t,
            Verdict::Duplicate => {
                debug!(peer = %arrival.from, "repeated request ignored: its transfer is running and retransmits on its own");
                continue;
            }
            Verdict::ClientBusy { running } => {
                warn!(peer = %arrival.from, "{running} transfers already running for this client (--max-transfers-per-client); request refused");
                shared
                    .stats
                    .refuse(Refusal::ClientBusy, Some(ErrorCode::NotDefined));
                reply
                    .error(
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
            shared
                .stats
                .refuse(Refusal::ServerBusy, Some(ErrorCode::NotDefined));
            reply.error(ErrorCode::NotDefined, SERVER_BUSY).await;
            continue;
        };
        let request = datagram.to_vec();
        let shared = shared.clone();
        let listener = sock.clone();
        let link = match routes.as_mut() {
            Some(r) => {
                // A peer whose previous transfer still holds its connected socket (it is
                // being superseded) shares the listen socket for this one.
                let own = connected
                    .then(|| connected_peers.claim(arrival.from))
                    .flatten()
                    .map(|alive| {
                        ConnectedLink::bind(
                            &request,
                            arrival.from,
                            arrival.local,
                            bound.port(),
                            forward.clone(),
                            alive,
                        )
                    })
                    .map(|c| {
                        c.inspect_err(|e| {
                            debug!(peer = %arrival.from, "single-port: no socket of its own ({e}); sharing the listen socket");
                        })
                    });
                match own {
                    Some(Ok(c)) => LinkSpec::Ready(Link::Connected(c)),
                    _ => LinkSpec::Ready(r.open(arrival.from, arrival.local, &request)),
                }
            }
            None => LinkSpec::Bind(arrival.local),
        };
        // On the server's runtime (the listener may run on a thread of its own).
        tracker.spawn_on(
            async move {
                let slot = Slot(std::sync::Mutex::new(Some(permit)));
                transfer(
                    shared,
                    request,
                    arrival.from,
                    link,
                    &listener,
                    &ticket,
                    &slot,
                )
                .await;
                drop(slot);
                drop(ticket);
            },
            &runtime,
        );
    }
}

/// Where the listener's answers to one datagram go, and from which address.
struct Reply<'a> {
    sock: &'a UdpSocket,
    /// The peer as the transfer knows it.
    to: SocketAddr,
    /// The peer as the listen socket names it.
    wire_to: SocketAddr,
    source: SourceAddr,
}

impl Reply<'_> {
    /// Sends ERROR `code` with `message` (at most 200 bytes of it) to the peer, from the
    /// address its datagram was sent to.
    async fn error(&self, code: ErrorCode, message: &str) {
        let mut buf = [0u8; driver::ERROR_BUF];
        if let Some(d) = driver::encode_error(code, message, &mut buf) {
            if let Err(e) = net::send_from(self.sock, d, self.wire_to, self.source).await {
                debug!(to = %self.to, "send failed: {e}");
            }
        }
    }
}

/// How a transfer reaches its peer: a socket of its own to bind, or a share of the listen
/// socket already routed to it.
enum LinkSpec {
    /// Bind a socket of its own on this address (the one the request was sent to).
    Bind(SocketAddr),
    /// Single-port mode.
    Ready(Link),
}

/// A transfer's place among `--max-transfers`, given back early by a dallying upload.
struct Slot(std::sync::Mutex<Option<OwnedSemaphorePermit>>);

impl Slot {
    fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Serves one admitted request on a socket of its own, bound to the address the request
/// was sent to (`listener` answers when that socket cannot be opened), or on the listen
/// socket in single-port mode.
async fn transfer<H: Handler>(
    shared: Arc<Shared<H>>,
    request: Vec<u8>,
    peer: SocketAddr,
    link: LinkSpec,
    listener: &UdpSocket,
    ticket: &Ticket,
    slot: &Slot,
) {
    // Cancelled when the server stops, or when the transfer is evicted.
    let cancel = ticket.cancel_token().clone();
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
        remapped: None,
        mode: Mode::parse(req.mode),
        negotiated: None,
        stats: Stats::default(),
        busy_polls: BusyPolls::default(),
        duration: Duration::ZERO,
        outcome: Outcome::Ok,
        started: start,
        reported: false,
        proof: Some(ticket.proof()),
    };
    // One snapshot of the reloadable settings for the whole transfer.
    let settings = shared.live();
    // Remapping (tftp-hpa rules) happens before the handler sees the name.
    let remapped = settings
        .remap
        .as_ref()
        .map(|r| r.apply(req.filename, peer.ip(), kind));
    let remap_note = match &remapped {
        Some(Remapped::Name(n)) if n.as_slice() != req.filename => {
            let name = String::from_utf8_lossy(n).into_owned();
            let note = format!(" remapped to {}", quoted(&name));
            summary.remapped = Some(name);
            note
        }
        Some(Remapped::Refused(r)) => format!(" ({r})"),
        _ => String::new(),
    };
    let refused = match &remapped {
        Some(Remapped::Refused(r)) => Some(r.message()),
        _ => None,
    };
    // Peer-supplied fields are escaped and cut: a 65,000-byte request logs under 1 KiB.
    // The same text as fields (for --log-format json), escaped and cut alike; the request
    // line has no `outcome` field, the summary line has one.
    let (mut file, mut mode, mut options) = (
        printable(&summary.filename),
        escaped(req.mode),
        options_for_log(req.options),
    );
    let message = format!(
        "{kind} from {peer} {}{remap_note} {mode} [{options}]",
        quoted(&summary.filename)
    );
    let mut remapped_to = summary
        .remapped
        .as_deref()
        .map(printable)
        .unwrap_or_default();
    fit_fields(
        message.len(),
        &mut [&mut file, &mut remapped_to, &mut mode, &mut options],
    );
    info!(
        peer = %peer,
        kind = %kind,
        file = file.as_str(),
        remapped = summary.remapped.as_ref().map(|_| remapped_to.as_str()),
        mode = mode.as_str(),
        options = options.as_str(),
        "{message}"
    );
    // Listed as running (for metrics) until its outcome is known, or this task ends.
    let live = shared
        .stats
        .start(peer, kind, &summary.filename, summary.remapped.as_deref());
    let config = &shared.config;
    let local = match &link {
        LinkSpec::Bind(local) => *local,
        LinkSpec::Ready(_) => listener.local_addr().unwrap_or(peer),
    };
    let bound = match link {
        LinkSpec::Ready(l) => Ok(l),
        LinkSpec::Bind(local) => net::bind_transfer(local, config.port_range).map(Link::from),
    };
    let mut link = match bound {
        Ok(l) => l,
        Err(e) => {
            // Answered from the listen port, with no OS text: the client may retry.
            let listen = listener.local_addr().unwrap_or(local);
            Reply {
                sock: listener,
                to: peer,
                wire_to: net::wire_address(listen, peer),
                source: SourceAddr::for_reply(listen, local),
            }
            .error(ErrorCode::NotDefined, SERVER_BUSY)
            .await;
            if no_descriptors(&e) {
                shared.out_of_descriptors(&format_args!("transfer socket: {e}"));
            } else if config.port_range.is_some() && e.kind() == io::ErrorKind::AddrInUse {
                shared.stats.refuse(Refusal::PortsExhausted, None);
                // A full range under load: one line per 10 s, not one per request.
                let n = shared
                    .ports_exhausted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .hit(std::time::Instant::now(), OUT_OF_DESCRIPTORS_EVERY);
                if let Some(n) = n {
                    warn!(
                        "{e}: {n} request(s) answered \"{SERVER_BUSY}\" since the last \
                         warning (at most one per 10 s); widen --port-range or lower \
                         --max-transfers"
                    );
                }
            } else {
                warn!("{kind} from {peer}: cannot open a transfer socket on {local}: {e}");
            }
            summary.outcome = Outcome::Refused {
                code: ErrorCode::NotDefined,
                message: SERVER_BUSY.to_owned(),
            };
            report(&shared, &mut summary);
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
    let waits = WaitPolicy {
        idle: config.timeout * (config.max_retries + 2),
        busy_poll: config.busy_poll,
    };
    match summary.mode {
        None => {
            let msg = format!("Unsupported mode \"{}\"", escaped(req.mode));
            refuse(&link, peer, &mut summary, ErrorCode::IllegalOperation, msg).await;
        }
        Some(_) if refused.is_some() => {
            shared.stats.refuse(Refusal::Remap, None);
            let msg = refused.unwrap_or_default();
            refuse(&link, peer, &mut summary, ErrorCode::AccessViolation, msg).await;
        }
        Some(mode) => {
            let filename = match &remapped {
                Some(Remapped::Name(n)) => n.as_slice(),
                _ => req.filename,
            };
            // `local` carries the address only (port 0, to bind the transfer's socket).
            let mut to = local;
            to.set_port(listener.local_addr().map_or(0, |a| a.port()));
            let info = RequestInfo::new(peer, to, filename, mode).with_options(req.options);
            let limits = ServerLimits {
                refused: settings.refused,
                ..config.limits
            };
            let ctx = Ctx {
                shared: &shared,
                limits: &limits,
                timing,
                waits,
                cancel: &cancel,
                ticket,
                slot,
                live: &live,
            };
            match kind {
                Kind::Rrq => {
                    ctx.serve_read(&mut link, &info, req.options, &mut summary)
                        .await
                }
                Kind::Wrq => {
                    ctx.serve_write(&mut link, &info, req.options, &mut summary)
                        .await
                }
            }
        }
    }
    // Opening the file ran out of descriptors (HandlerError::from_io answers "Server
    // busy"): counted, and warned about once per 10 s.
    if matches!(&summary.outcome, Outcome::Refused { code: ErrorCode::NotDefined, message }
        if message == SERVER_BUSY)
    {
        shared.out_of_descriptors(&"opening a file");
    }
    report(&shared, &mut summary);
}

impl<H: Handler> Ctx<'_, H> {
    async fn serve_read(
        &self,
        link: &mut Link,
        info: &RequestInfo<'_>,
        options: tftpx_proto::wire::OptionList<'_>,
        summary: &mut TransferSummary,
    ) {
        let Ctx {
            shared,
            timing,
            waits,
            cancel,
            ticket,
            live,
            ..
        } = *self;
        let file = match shared.handler.open_read(info).await {
            Ok(f) => f,
            Err(e) => {
                refuse(link, info.peer, summary, e.code, e.message).await;
                return;
            }
        };
        // The size of a netascii transfer is not known without reading the file: no tsize.
        let size = if info.mode == Mode::Octet {
            file.size
        } else {
            None
        };
        let negotiated =
            shared
                .memory
                .negotiate(Direction::Read, options, self.limits, size, read_buffer);
        let (neg, _memory) = match negotiated {
            Ok(n) => n,
            Err(e) => {
                refuse(link, info.peer, summary, e.code(), e.to_string()).await;
                return;
            }
        };
        let n = neg.negotiated;
        log_negotiation(info.peer, options, &neg);
        link.fit_window(n.window_bytes());
        let mut tx = Sender::server(info.peer, n, neg.oack.as_list(), timing);
        let trace = packet_tracer();
        if trace.is_none() && shared.handler.reads_never_wait() {
            if let Some(parts) = link.take_shared() {
                let reader = LazyBufReader::new(file.reader, read_buffer(n.blksize, n.windowsize));
                let src = Source::new(Box::new(reader) as BoxReader, info.mode).with_len(file.size);
                let (tracker, stats) = self.hand_off(parts, tx, src).await;
                finish_summary(summary, &tracker, stats);
                return;
            }
        }
        // Small blocks are read through a buffer of about two windows, so lock-step 512
        // does not pay a file read per block; it is allocated at the first read (never for a
        // client that does not acknowledge the OACK). Large blocks are read straight into
        // the sender's ring.
        let reader = LazyBufReader::new(file.reader, read_buffer(n.blksize, n.windowsize));
        let mut src = Source::new(reader, info.mode).with_len(file.size);
        let mut heard = |stats: &Stats, _: Option<&Negotiated>| {
            live.bytes(stats.bytes);
            if stats.blocks > 0 {
                ticket.heard();
            }
        };
        let tracker = driver::run_sender(
            link,
            &mut tx,
            &mut src,
            cancel,
            waits,
            &mut heard,
            trace.as_ref(),
        )
        .await;
        finish_summary(summary, &tracker, tx.stats());
    }

    /// Has the listener run this shared single-port download ([`crate::inline`]) and waits
    /// for its result, passing a cancellation on. Returns its events and counters.
    async fn hand_off(
        &self,
        parts: SharedParts,
        tx: Sender,
        src: Source<BoxReader>,
    ) -> (Tracker, Stats) {
        let meter = self.live.meter();
        let proof = self.ticket.proof();
        let progress = Box::new(move |stats: &Stats| {
            meter.bytes(stats.bytes);
            if stats.blocks > 0 {
                proof.heard();
            }
        });
        let (done_tx, mut done) = tokio::sync::oneshot::channel();
        let (peer, key, control) = (parts.peer, parts.key.clone(), parts.control.clone());
        let handoff = Handoff {
            link: parts,
            tx,
            src,
            progress,
            done: done_tx,
        };
        let gone = || {
            let t = Tracker {
                result: Some(Err(TransferError::Aborted {
                    code: ErrorCode::NotDefined,
                    message: driver::CANCELLED.to_owned(),
                })),
                ..Tracker::default()
            };
            (t, Stats::default())
        };
        if control.send(Control::Handoff(Box::new(handoff))).is_err() {
            return gone();
        }
        let done = tokio::select! {
            r = &mut done => r,
            () = self.cancel.cancelled() => {
                let _ = control.send(Control::Abort { peer, key });
                done.await
            }
        };
        match done {
            Ok(d) => (d.tracker, d.tx.stats()),
            // The listener stopped first (the server is stopping).
            Err(_) => gone(),
        }
    }

    async fn serve_write(
        &self,
        link: &mut Link,
        info: &RequestInfo<'_>,
        options: tftpx_proto::wire::OptionList<'_>,
        summary: &mut TransferSummary,
    ) {
        let Ctx {
            shared,
            timing,
            waits,
            cancel,
            ticket,
            slot,
            limits,
            live,
        } = *self;
        let negotiated =
            shared
                .memory
                .negotiate(Direction::Write, options, limits, None, |_, _| {
                    crate::handler::UPLOAD_BUFFER
                });
        let (neg, _memory) = match negotiated {
            Ok(n) => n,
            Err(e) => {
                refuse(link, info.peer, summary, e.code(), e.to_string()).await;
                return;
            }
        };
        log_negotiation(info.peer, options, &neg);
        let upload = match shared.handler.open_write(info, neg.negotiated.tsize).await {
            Ok(u) => u,
            Err(e) => {
                refuse(link, info.peer, summary, e.code, e.message).await;
                return;
            }
        };
        link.fit_window(neg.negotiated.window_bytes());
        if neg.negotiated.windowsize > 1 {
            // A window may arrive as one GSO train: take it in one receive.
            link.enable_gro();
        }
        let mut rx = Receiver::server(info.peer, neg.negotiated, neg.oack.as_list(), timing);
        let trace = packet_tracer();
        let mut sink = Sink::new(upload, info.mode).with_limit(limits.max_upload_size);
        let mut tracker = Tracker::default();
        driver::run_receiver(
            link,
            &mut rx,
            &mut sink,
            &mut tracker,
            cancel,
            waits,
            // Uploads: the ACK leaves before the write (the final one after the commit).
            &|_, _| true,
            &mut |stats, _| {
                live.bytes(stats.bytes);
                if stats.blocks > 0 {
                    ticket.heard();
                }
            },
            trace.as_ref(),
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
        live.end();
        // Dallying (re-ACKing a repeated final DATA) counts neither against the client nor
        // against --max-transfers.
        ticket.release();
        slot.release();
        driver::finish_receiver(link, &mut rx, &mut tracker, cancel, waits, trace.as_ref()).await;
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
    // A peer that ACKed DATA, sent DATA or sent an ERROR to the transfer's port received
    // our reply: it is not forged, and its request's rate token goes back (a one-block
    // upload ends before the progress callback sees a block).
    let answered = summary.stats.blocks > 0
        || matches!(summary.outcome, Outcome::Failed(TransferError::Peer { .. }));
    if answered {
        if let Some(p) = &summary.proof {
            p.heard();
        }
    }
    if summary.duration.is_zero() {
        summary.duration = summary.started.elapsed();
    }
    log_summary(summary);
    shared.stats.transfer_ended(summary);
    if let Some(h) = &shared.hook {
        h(summary);
    }
}

/// What every transfer of one request shares.
struct Ctx<'a, H> {
    shared: &'a Shared<H>,
    /// `config.limits` with the refused options of the transfer's [`LiveSettings`].
    limits: &'a ServerLimits,
    timing: TransferConfig,
    waits: WaitPolicy,
    cancel: &'a CancellationToken,
    /// Told once the client answers, so a repeat of its request counts as a restart.
    ticket: &'a Ticket,
    slot: &'a Slot,
    /// Its entry among the running transfers: bytes so far.
    live: &'a Live,
}

impl<H> Clone for Ctx<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<H> Copy for Ctx<'_, H> {}

/// Refuses a request: ERROR to the client, and the outcome for the summary.
async fn refuse(
    link: &Link,
    peer: SocketAddr,
    summary: &mut TransferSummary,
    code: ErrorCode,
    message: String,
) {
    debug!(peer = %peer, "{} {} refused: ERROR {} {}", summary.kind, quoted(&summary.filename), code.to_u16(), printable(&message));
    driver::send_error(link, peer, code, &message).await;
    summary.outcome = Outcome::Refused { code, message };
}

fn finish_summary(summary: &mut TransferSummary, tracker: &Tracker, stats: Stats) {
    summary.negotiated = tracker.negotiated;
    summary.stats = stats;
    summary.busy_polls = tracker.busy_polls;
    summary.outcome = match tracker.outcome() {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Failed(e),
    };
}

/// Logs `s` at its level, with the facts as structured fields beside the human text: `peer`,
/// `kind`, `file` (and `remapped`), `mode`, `options` (those in force), `bytes`,
/// `duration_ms`, `outcome` ([`TransferSummary::outcome_name`]) and `error_code` when an
/// ERROR ended it. Text fields are escaped and cut like the message (see [`printable`]), and
/// further by [`fit_fields`].
fn log_summary(s: &TransferSummary) {
    // (warning?, what the text adds to the summary)
    let (warning, note) = match &s.outcome {
        Outcome::Ok => (false, ""),
        // Missing files are routine (PXELINUX probes for a dozen config names).
        Outcome::Refused { code, .. } if *code == ErrorCode::FileNotFound => (false, ""),
        // Out of descriptors: one warning per 10 s with a count (Shared::out_of_descriptors).
        Outcome::Refused { code, message }
            if *code == ErrorCode::NotDefined && message == SERVER_BUSY =>
        {
            (false, "")
        }
        Outcome::Refused { .. } => (true, ""),
        // A client that ends the transfer after reading the OACK (PXE size probe).
        Outcome::Failed(_) if s.is_size_probe() => (false, ""),
        // A client that repeated its request talks to the first transfer and tells this
        // one ERROR 5: routine on a slow first reply, not a failure worth a warning.
        Outcome::Failed(_) if s.is_duplicate() => (
            false,
            " (duplicate request: the client continues with another transfer)",
        ),
        // Shutdown ends every running transfer: one warning each would flood the log.
        Outcome::Failed(TransferError::Aborted { message, .. }) if message == driver::CANCELLED => {
            (false, "")
        }
        Outcome::Failed(_) => (true, ""),
    };
    let message = format!("{s}{note}");
    let mut file = printable(&s.filename);
    let mut remapped = s.remapped.as_deref().map(printable).unwrap_or_default();
    let mut options = s
        .negotiated
        .as_ref()
        .map(negotiated_for_log)
        .unwrap_or_default();
    fit_fields(message.len(), &mut [&mut file, &mut remapped, &mut options]);
    let remapped = s.remapped.as_ref().map(|_| remapped.as_str());
    let duration_ms = u64::try_from(s.duration.as_millis()).unwrap_or(u64::MAX);
    let outcome = s.outcome_name();
    let error_code = s.error_code();
    macro_rules! emit {
        ($level:ident) => {
            $level!(
                peer = %s.peer,
                kind = %s.kind,
                file = file.as_str(),
                remapped,
                mode = s.mode.map(tracing::field::display),
                options = options.as_str(),
                bytes = s.stats.bytes,
                duration_ms,
                outcome,
                error_code,
                "{message}"
            )
        };
    }
    if warning {
        emit!(warn);
    } else {
        emit!(info);
    }
}

/// Longest log line, in bytes, that one transfer event may cost with a plain text formatter
/// (message and fields together): a hostile request must not double it by repeating its long
/// name, mode and options in the fields.
const LOG_LINE_MAX: usize = 1024;
/// Room in [`LOG_LINE_MAX`] kept for what a formatter adds (timestamp, level, target, spans)
/// and for the short fields (peer, kind, bytes, duration_ms, outcome, error_code).
const LOG_LINE_OVERHEAD: usize = 320;

/// Cuts the peer-supplied text fields of a log event whose message is `message_len` bytes
/// long, longest first, by halves ending in `…`, until all of them, as a formatter prints
/// them (Debug-quoted, `name="..." `), fit in what [`LOG_LINE_MAX`] leaves. Fields of an
/// ordinary request (short message) are left whole: the cut only bites on hostile lengths.
fn fit_fields(message_len: usize, fields: &mut [&mut String]) {
    let budget = LOG_LINE_MAX.saturating_sub(LOG_LINE_OVERHEAD + message_len);
    // name, `=`, quotes and a separator.
    let cost = |f: &[&mut String]| -> usize {
        f.iter()
            .map(|s| s.escape_debug().to_string().len() + 16)
            .sum()
    };
    // Each halving shortens one field; 64 rounds cut 4 fields of 256 bytes to `…`.
    for _ in 0..64 {
        if cost(fields) <= budget {
            return;
        }
        let Some(longest) = fields.iter_mut().max_by_key(|s| s.len()) else {
            return;
        };
        let text = longest.strip_suffix('…').unwrap_or(longest);
        if text.is_empty() {
            return;
        }
        let mut at = text.len() / 2;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        longest.truncate(at);
        longest.push('…');
    }
}

/// The options in force as the summary line shows them: `blksize=N windowsize=N`, then
/// `tsize=N` and `timeout=Nms` when negotiated.
/// The target of the server's per-packet trace (`-vv`, or `--log-filter tftpx::packet=trace`).
pub(crate) const PACKET_TARGET: &str = "tftpx::packet";

/// A per-packet trace for one transfer, when trace events of [`PACKET_TARGET`] are on
/// (checked once per transfer; nothing is done per packet otherwise).
fn packet_tracer() -> Option<Tracer> {
    if !tracing::enabled!(target: PACKET_TARGET, tracing::Level::TRACE) {
        return None;
    }
    Some(Tracer::new(Arc::new(|p: &PacketTrace| {
        tracing::trace!(target: PACKET_TARGET, peer = %p.peer, "{p}");
    })))
}

/// `-v`: what the client asked for and what it was granted (the OACK), or that it asked for
/// nothing and the transfer is plain RFC 1350.
fn log_negotiation(peer: SocketAddr, asked: OptionList<'_>, neg: &ServerNegotiation) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let granted = options_for_log(neg.oack.as_list());
    debug!(
        peer = %peer,
        "negotiated with {peer}: asked [{}], OACK [{granted}], in force {}",
        options_for_log(asked),
        negotiated_for_log(&neg.negotiated)
    );
}

fn negotiated_for_log(n: &Negotiated) -> String {
    let mut out = format!("blksize={} windowsize={}", n.blksize, n.windowsize);
    if let Some(t) = n.tsize {
        let _ = write!(out, " tsize={t}");
    }
    if let Some(t) = n.timeout {
        let _ = write!(out, " timeout={}ms", t.as_millis());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_fields_leaves_ordinary_fields_whole_and_cuts_hostile_ones() {
        // An ordinary request: nothing changes.
        let (mut file, mut mode) = ("pxelinux.cfg/default".to_owned(), "octet".to_owned());
        fit_fields(80, &mut [&mut file, &mut mode]);
        assert_eq!(
            (file.as_str(), mode.as_str()),
            ("pxelinux.cfg/default", "octet")
        );
        // A 256-byte name and mode beside a 600-byte message: cut to fit 1024 bytes.
        let mut file = printable(&"\\n".repeat(200));
        let mut mode = printable(&"m".repeat(300));
        assert!(file.len() > 250 && mode.len() > 250);
        fit_fields(600, &mut [&mut file, &mut mode]);
        let printed: usize = [&file, &mode]
            .iter()
            .map(|s| s.escape_debug().to_string().len() + 16)
            .sum();
        assert!(
            600 + LOG_LINE_OVERHEAD + printed <= LOG_LINE_MAX,
            "{printed}"
        );
        assert!(file.ends_with('…') && mode.ends_with('…'), "{file} {mode}");
        assert!(
            file.starts_with(r"\n\n") && mode.starts_with("mmm"),
            "{file:?} {mode:?}"
        );
        // A message that leaves no room: every field ends as `…` alone.
        let mut file = "x".repeat(256);
        fit_fields(2000, &mut [&mut file]);
        assert_eq!(file, "…");
    }

    #[test]
    fn printable_escapes_and_cuts() {
        assert_eq!(
            printable("a\nb\x1b[31m\u{202e}é\"'\\"),
            "a\\nb\\u{1b}[31m\\u{202e}é\"'\\"
        );
        let long = "é".repeat(1000);
        let p = printable(&long);
        assert!(p.ends_with('…'));
        assert_eq!(p.len(), 256 + '…'.len_utf8(), "128 é of 2 bytes, then …");
        // An escape is never split: 256 bytes hold 42 "\u{1b}" (6 bytes) and no part of
        // the 43rd.
        let p = printable(&"\x1b".repeat(100));
        assert_eq!(p, format!("{}…", "\\u{1b}".repeat(42)));
        assert_eq!(printable(&"x".repeat(256)), "x".repeat(256));
        assert_eq!(printable(&"x".repeat(257)), format!("{}…", "x".repeat(256)));
    }

    #[test]
    fn quoted_names_read_as_before_and_are_cut() {
        for name in ["pxelinux.cfg/01-aa-bb", "it's", "a\"b\\c\td\n"] {
            assert_eq!(quoted(name), format!("{name:?}"));
        }
        let q = quoted(&"\u{e9}/".repeat(10_000));
        assert!(q.len() <= 256 + 2 + 3 && q.ends_with("…\""), "{}", q.len());
        // Peer bytes: invalid UTF-8 shows as U+FFFD; a 65,000-byte field is cut.
        assert_eq!(escaped(b"oc\xfftet"), "oc\u{fffd}tet");
        let e = escaped(&[b'm'; 65_000]);
        assert_eq!(e, format!("{}…", "m".repeat(256)));
    }

    #[test]
    fn options_are_cut_to_whole_pairs_with_a_count() {
        let raw = b"blksize\x001468\x00tsize\x000\x00";
        let list = OptionList::new(raw).unwrap();
        assert_eq!(options_for_log(list), "blksize=1468 tsize=0");
        let mut raw = Vec::new();
        for i in 0..3000 {
            raw.extend_from_slice(format!("o{i}\0\n{i}\0").as_bytes());
        }
        let s = options_for_log(OptionList::new(&raw).unwrap());
        assert!(s.starts_with("o0=\\n0 o1=\\n1 "), "{s}");
        assert!(s.ends_with(" options shown in full)"), "{s}");
        assert!(s.contains(" … ("), "{s}");
        assert!(s.contains(" of 3000 "), "{s}");
        assert!(s.len() < 320, "{}", s.len());
        // One option longer than the limit by itself: cut.
        let mut raw = b"x\0".to_vec();
        raw.extend(std::iter::repeat_n(b'9', 60_000));
        raw.push(0);
        let s = options_for_log(OptionList::new(&raw).unwrap());
        assert!(s.starts_with("x=999"), "{s}");
        assert!(s.ends_with("… (0 of 1 options shown in full)"), "{s}");
        assert!(s.len() < 320, "{}", s.len());
    }
}
