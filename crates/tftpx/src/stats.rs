//! Live state and counters of a running server, for metrics endpoints and status pages
//! ([`Server::stats`](crate::Server::stats)): the transfers running now with their byte
//! counts, the requests refused before a transfer started, and the ERROR packets sent.
//!
//! What a finished transfer did (bytes, retransmissions, duration, outcome) is in its
//! [`TransferSummary`], given to
//! [`ServerBuilder::on_transfer_end`](crate::ServerBuilder::on_transfer_end).
//!
//! Costs: one relaxed atomic store per driver wake-up for a running transfer's byte count;
//! a mutex taken when a transfer starts and ends, and by [`ServerStats::running`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tftpx_proto::transfer::TransferError;
use tftpx_proto::wire::ErrorCode;

use crate::policy::PolicyStats;
use crate::server::{printable, Kind, Outcome, TransferSummary};

/// Why a request was turned away by admission or policy, before (or instead of) a handler
/// being asked. Every refusal but [`Refusal::Denied`] and a quiet [`Refusal::RateLimited`]
/// is answered with an ERROR (see [`ServerStats::errors_sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The source is denied by the address rules ([`ServerBuilder::acl`]); dropped without
    /// an answer.
    ///
    /// [`ServerBuilder::acl`]: crate::ServerBuilder::acl
    Denied,
    /// Over the per-client request rate ([`ServerBuilder::rate_limit`]); the first of every
    /// 10 s is answered ERROR 0, the others dropped.
    ///
    /// [`ServerBuilder::rate_limit`]: crate::ServerBuilder::rate_limit
    RateLimited,
    /// A WRQ from outside [`ServerBuilder::allow_write_from`]; ERROR 2.
    ///
    /// [`ServerBuilder::allow_write_from`]: crate::ServerBuilder::allow_write_from
    WriteNotAllowed,
    /// The client already runs [`ServerBuilder::max_transfers_per_client`] transfers whose
    /// peers all answered; ERROR 0.
    ///
    /// [`ServerBuilder::max_transfers_per_client`]: crate::ServerBuilder::max_transfers_per_client
    ClientBusy,
    /// [`ServerBuilder::max_transfers`] transfers are running; ERROR 0.
    ///
    /// [`ServerBuilder::max_transfers`]: crate::ServerBuilder::max_transfers
    ServerBusy,
    /// No file descriptor for the transfer's socket or file (EMFILE, ENFILE); ERROR 0.
    OutOfDescriptors,
    /// Every port of [`ServerBuilder::port_range`] is taken; ERROR 0.
    ///
    /// [`ServerBuilder::port_range`]: crate::ServerBuilder::port_range
    PortsExhausted,
    /// The [`ServerBuilder::remap`] rules refused the name (an `e` rule); ERROR 2.
    ///
    /// [`ServerBuilder::remap`]: crate::ServerBuilder::remap
    Remap,
}

impl Refusal {
    /// Every reason, in the order of [`Refusal::name`]'s table.
    pub const ALL: [Refusal; 8] = [
        Refusal::Denied,
        Refusal::RateLimited,
        Refusal::WriteNotAllowed,
        Refusal::ClientBusy,
        Refusal::ServerBusy,
        Refusal::OutOfDescriptors,
        Refusal::PortsExhausted,
        Refusal::Remap,
    ];

    /// A short snake_case name, fit for a metric label: `acl`, `rate_limit`,
    /// `write_not_allowed`, `per_client_limit`, `max_transfers`, `out_of_descriptors`,
    /// `port_range_exhausted`, `remap`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Denied => "acl",
            Refusal::RateLimited => "rate_limit",
            Refusal::WriteNotAllowed => "write_not_allowed",
            Refusal::ClientBusy => "per_client_limit",
            Refusal::ServerBusy => "max_transfers",
            Refusal::OutOfDescriptors => "out_of_descriptors",
            Refusal::PortsExhausted => "port_range_exhausted",
            Refusal::Remap => "remap",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// TFTP error codes the server sends (RFC 1350 section 5, 0..=7; RFC 2347's 8).
const CODES: usize = 9;

/// Counters and live transfers of one server, shared with it; cheap to clone (an `Arc`).
/// Get it from [`Server::stats`](crate::Server::stats).
#[derive(Debug, Clone)]
pub struct ServerStats {
    inner: Arc<Inner>,
    policy: PolicyStats,
}

#[derive(Debug)]
struct Inner {
    refused: [AtomicU64; Refusal::ALL.len()],
    errors_sent: [AtomicU64; CODES],
    running: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    peer: SocketAddr,
    kind: Kind,
    file: String,
    remapped: Option<String>,
    started: SystemTime,
    since: Instant,
    bytes: AtomicU64,
}

/// A transfer running now, as [`ServerStats::running`] saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTransfer {
    /// The client's address and port.
    pub peer: SocketAddr,
    /// RRQ or WRQ.
    pub kind: Kind,
    /// The requested file name, escaped and cut to 256 bytes as in the log
    /// ([`printable`]).
    pub file: String,
    /// The name the remap rules turned it into, when they changed it (escaped and cut
    /// alike).
    pub remapped: Option<String>,
    /// When the request arrived (wall clock).
    pub started: SystemTime,
    /// Time since the request arrived (monotonic clock).
    pub elapsed: Duration,
    /// Payload bytes so far: acknowledged by the client (RRQ) or received (WRQ).
    pub bytes: u64,
}

impl RunningTransfer {
    /// Average rate since the request arrived, in payload bytes per second (0 before any
    /// time has passed).
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        }
    }
}

impl ServerStats {
    pub(crate) fn new(policy: PolicyStats) -> Self {
        Self {
            inner: Arc::new(Inner {
                refused: Default::default(),
                errors_sent: Default::default(),
                running: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
            policy,
        }
    }

    /// Requests refused for `why` since the server was built. [`Refusal::Denied`] counts
    /// datagrams, as [`PolicyStats::denied`] does.
    pub fn refused(&self, why: Refusal) -> u64 {
        match why {
            Refusal::Denied => self.policy.denied(),
            _ => self.inner.refused[why.index()].load(Ordering::Relaxed),
        }
    }

    /// ERROR packets sent with `code` (RFC 1350 section 5; 0..=8, others are never sent):
    /// answers to refused requests, ERRORs that ended transfers (a transfer that times out
    /// tells a peer that had answered, ERROR 0), and ERROR 5 to strangers that wrote to a
    /// transfer's port. Retransmissions of an ERROR are not sent (an ERROR is never
    /// acknowledged).
    pub fn errors_sent(&self, code: u16) -> u64 {
        self.inner
            .errors_sent
            .get(usize::from(code))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Transfers running now: admitted requests from their arrival until their outcome is
    /// known (an upload's dally after its last ACK is not counted).
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    /// The transfers running now, oldest first.
    pub fn running(&self) -> Vec<RunningTransfer> {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        let now = Instant::now();
        let mut out: Vec<RunningTransfer> = entries
            .iter()
            .map(|e| RunningTransfer {
                peer: e.peer,
                kind: e.kind,
                file: e.file.clone(),
                remapped: e.remapped.clone(),
                started: e.started,
                elapsed: now.saturating_duration_since(e.since),
                bytes: e.bytes.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.elapsed));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a refusal; `answer` is the ERROR code it was answered with, if any.
    pub(crate) fn refuse(&self, why: Refusal, answer: Option<ErrorCode>) {
        if why != Refusal::Denied {
            self.inner.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(code) = answer {
            self.error_sent(code, 1);
        }
    }

    /// Counts `n` ERROR packets sent with `code`.
    pub(crate) fn error_sent(&self, code: ErrorCode, n: u64) {
        if let Some(c) = self.inner.errors_sent.get(usize::from(code.to_u16())) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts the ERRORs a finished transfer sent (see [`ServerStats::errors_sent`]).
    pub(crate) fn transfer_ended(&self, s: &TransferSummary) {
        let sent = match &s.outcome {
            Outcome::Ok | Outcome::Failed(TransferError::Peer { .. }) => None,
            Outcome::Refused { code, .. }
            | Outcome::Failed(TransferError::Aborted { code, .. }) => Some(*code),
            Outcome::Failed(TransferError::Protocol(_)) => Some(ErrorCode::IllegalOperation),
            // The state machine tells a peer that had answered (then blocks moved), and no
            // other: an unanswered peer may be a forged address.
            Outcome::Failed(e @ TransferError::TimedOut { .. }) => {
                (s.stats.blocks > 0).then(|| e.code())
            }
            // A client-side failure, which a server never sees.
            Outcome::Failed(TransferError::Negotiation(_)) => None,
            // Other local failures queue an ERROR for the peer.
            Outcome::Failed(e) => Some(e.code()),
        };
        if let Some(code) = sent {
            self.error_sent(code, 1);
        }
        if s.stats.strangers > 0 {
            self.error_sent(ErrorCode::UnknownTid, s.stats.strangers);
        }
    }

    /// Registers a transfer that starts now; it stays listed until [`Live::end`] or the
    /// guard is dropped.
    pub(crate) fn start(
        &self,
        peer: SocketAddr,
        kind: Kind,
        file: &str,
        remapped: Option<&str>,
    ) -> Live {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            peer,
            kind,
            file: printable(file),
            remapped: remapped.map(printable),
            started: SystemTime::now(),
            since: Instant::now(),
            bytes: AtomicU64::new(0),
        });
        self.lock().insert(id, entry.clone());
        Live {
            stats: self.clone(),
            id,
            entry,
        }
    }
}

/// A running transfer's place in [`ServerStats::running`]; removed when dropped.
pub(crate) struct Live {
    stats: ServerStats,
    id: u64,
    entry: Arc<Entry>,
}

impl Live {
    /// Payload bytes so far (acknowledged or received).
    pub(crate) fn bytes(&self, n: u64) {
        self.entry.bytes.store(n, Ordering::Relaxed);
    }

    /// A handle that sets the byte count and can be moved elsewhere (the listener, for a
    /// download it runs itself).
    pub(crate) fn meter(&self) -> Meter {
        Meter(self.entry.clone())
    }

    /// The outcome is known: no longer running (idempotent).
    pub(crate) fn end(&self) {
        self.stats.lock().remove(&self.id);
    }
}

/// See [`Live::meter`].
pub(crate) struct Meter(Arc<Entry>);

impl Meter {
    /// Payload bytes so far.
    pub(crate) fn bytes(&self, n: u64) {
        self.0.bytes.store(n, Ordering::Relaxed);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_transfers_are_listed_until_they_end() {
        let s = ServerStats::new(PolicyStats::default());
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let a = s.start(peer, Kind::Rrq, "a\nb", None);
        let b = s.start(peer, Kind::Wrq, "up", Some("x/up"));
        a.bytes(1000);
        assert_eq!(s.active(), 2);
        let r = s.running();
        let ra = r.iter().find(|t| t.kind == Kind::Rrq).unwrap();
        assert_eq!((ra.file.as_str(), ra.bytes), ("a\\nb", 1000));
        let rb = r.iter().find(|t| t.kind == Kind::Wrq).unwrap();
        assert_eq!(rb.remapped.as_deref(), Some("x/up"));
        b.end();
        assert_eq!(s.active(), 1);
        drop(b);
        drop(a);
        assert!(s.running().is_empty());
    }

    #[test]
    fn refusals_and_errors_are_counted_by_kind_and_code() {
        let s = ServerStats::new(PolicyStats::default());
        s.refuse(Refusal::ServerBusy, Some(ErrorCode::NotDefined));
        s.refuse(Refusal::RateLimited, None);
        s.refuse(Refusal::WriteNotAllowed, Some(ErrorCode::AccessViolation));
        assert_eq!(s.refused(Refusal::ServerBusy), 1);
        assert_eq!(s.refused(Refusal::RateLimited), 1);
        assert_eq!(s.refused(Refusal::Remap), 0);
        assert_eq!(s.errors_sent(0), 1);
        assert_eq!(s.errors_sent(2), 1);
        assert_eq!(s.errors_sent(9), 0);
        let names: Vec<&str> = Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), 8);
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
