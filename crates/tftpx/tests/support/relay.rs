//! A deterministic, seeded, fault-injecting UDP relay for tests (this kernel has no netem).
//!
//! The relay stands between one client and a server and keeps TIDs intact: the client talks
//! to [`Relay::addr`] as if it were the server's well-known port; each port the server
//! answers from gets its own relay port on the client side, so the client still sees one TID
//! per transfer. Every datagram is counted per direction and may be dropped, duplicated or
//! delayed, by seeded rate or by exact pick: "the 3rd datagram to the client", "the 3rd
//! DATA", "the last DATA" (shorter than the negotiated blksize, which the relay reads from
//! the OACK), "the ACK of the last DATA", "everything after the 20th datagram"; and the link
//! can stall for a while (a delay spike: every datagram in that direction is held until it
//! ends).
//!
//! The same seed gives the same decisions for the same sequence of datagrams (three rolls
//! per datagram, whatever the faults); timing may still change the sequence itself.

// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

/// TFTP opcodes, for [`Pick::Of`] and [`Faults::only_opcode`].
pub mod op {
    /// Read request.
    pub const RRQ: u8 = 1;
    /// Write request.
    pub const WRQ: u8 = 2;
    /// DATA.
    pub const DATA: u8 = 3;
    /// ACK.
    pub const ACK: u8 = 4;
    /// ERROR.
    pub const ERROR: u8 = 5;
    /// OACK.
    pub const OACK: u8 = 6;
}

/// Selects datagrams of one direction exactly (all counts 1-based, retransmissions
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The n-th datagram.
    Nth(u64),
    /// The n-th datagram with this opcode: `Of(op::DATA, 3)` is the 3rd DATA.
    Of(u8, u64),
    /// Every datagram after the n-th (a link that goes dead).
    After(u64),
    /// The n-th copy of the last DATA (shorter than the negotiated blksize).
    LastData(u64),
    /// Every copy of the last DATA.
    AllLastData,
    /// The n-th ACK of the last DATA's block (the final ACK).
    FinalAck(u64),
    /// Every final ACK.
    AllFinalAcks,
}

/// What happens to datagrams in one direction.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Drop probability, percent.
    pub loss: u32,
    /// Duplication probability, percent.
    pub dup: u32,
    /// Probability (percent) of holding a datagram back by `delay`, which reorders it.
    pub reorder: u32,
    /// How long a reordered datagram is held.
    pub delay: Duration,
    /// Exact 1-based indexes (per direction) of datagrams to drop.
    pub drop_nth: Vec<u64>,
    /// When set, the rates above apply only to packets with this opcode (e.g. 4: ACKs).
    pub only_opcode: Option<u8>,
    /// Datagrams to drop, picked exactly.
    pub drop: Vec<Pick>,
    /// Delay spikes: when a picked datagram arrives, this direction stalls for the duration:
    /// that datagram and every one after it is held until the stall ends.
    pub stall: Vec<(Pick, Duration)>,
    /// Datagrams held back on their own (the others pass): a late duplicate, say.
    pub hold: Vec<(Pick, Duration)>,
}

/// Counters per direction.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Datagrams seen.
    pub seen: u64,
    /// Datagrams dropped.
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Datagrams held back (reordered or stalled).
    pub held: u64,
    /// DATA packets seen (opcode 3), retransmissions included.
    pub data: u64,
    /// Distinct DATA block numbers seen.
    pub data_blocks: u64,
    /// ACK packets seen (opcode 4).
    pub acks: u64,
    /// RRQ and WRQ packets seen.
    pub requests: u64,
    /// OACK packets seen.
    pub oacks: u64,
    /// ERROR packets seen.
    pub errors: u64,
    /// Copies of the last DATA seen.
    pub last_data: u64,
    /// Final ACKs (of the last DATA's block) seen.
    pub final_acks: u64,
}

impl Counts {
    /// DATA packets beyond one per block: the sender's retransmissions (of those that
    /// reached the relay).
    pub fn data_retransmits(&self) -> u64 {
        self.data - self.data_blocks
    }
}

#[derive(Default)]
struct DirState {
    counts: Counts,
    by_opcode: HashMap<u8, u64>,
    blocks: HashSet<u16>,
    stall_until: Option<Instant>,
}

struct Shared {
    rng: u64,
    faults: HashMap<Dir, Faults>,
    dirs: HashMap<Dir, DirState>,
    /// Negotiated blksize, from the OACK (512 without one).
    blksize: usize,
    /// Block number of the last DATA, once seen.
    last_block: Option<u16>,
    /// One line per datagram (see [`Relay::trace`]).
    trace: Vec<String>,
    start: Instant,
}

fn opcode(d: &[u8]) -> Option<u8> {
    match d {
        [0, op, ..] => Some(*op),
        _ => None,
    }
}

fn block(d: &[u8]) -> Option<u16> {
    d.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// The `blksize` value of an OACK, if it has one.
fn oack_blksize(d: &[u8]) -> Option<usize> {
    let mut fields = d.get(2..)?.split(|&b| b == 0);
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        if k.eq_ignore_ascii_case(b"blksize") {
            return std::str::from_utf8(v).ok()?.parse().ok();
        }
    }
    None
}

/// Where one datagram stands, for [`Pick::matches`].
struct Seen {
    index: u64,
    opcode: Option<u8>,
    of_opcode: u64,
    last_data: Option<u64>,
    final_ack: Option<u64>,
}

impl Pick {
    fn matches(self, s: &Seen) -> bool {
        match self {
            Pick::Nth(n) => s.index == n,
            Pick::Of(op, n) => s.opcode == Some(op) && s.of_opcode == n,
            Pick::After(n) => s.index > n,
            Pick::LastData(n) => s.last_data == Some(n),
            Pick::AllLastData => s.last_data.is_some(),
            Pick::FinalAck(n) => s.final_ack == Some(n),
            Pick::AllFinalAcks => s.final_ack.is_some(),
        }
    }
}

impl Shared {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Counts one datagram and says where it stands.
    fn observe(&mut self, dir: Dir, datagram: &[u8]) -> Seen {
        let opcode = opcode(datagram);
        let blksize = self.blksize;
        let mut last_block = self.last_block;
        let st = self.dirs.entry(dir).or_default();
        let c = &mut st.counts;
        c.seen += 1;
        let mut seen = Seen {
            index: c.seen,
            opcode,
            of_opcode: 0,
            last_data: None,
            final_ack: None,
        };
        if let Some(op) = opcode {
            let n = st.by_opcode.entry(op).or_default();
            *n += 1;
            seen.of_opcode = *n;
        }
        match opcode {
            Some(op::DATA) => {
                c.data += 1;
                if let Some(b) = block(datagram) {
                    if st.blocks.insert(b) {
                        c.data_blocks += 1;
                    }
                    if datagram.len() < 4 + blksize {
                        last_block = Some(b);
                        c.last_data += 1;
                        seen.last_data = Some(c.last_data);
                    }
                }
            }
            Some(op::ACK) => {
                c.acks += 1;
                if last_block.is_some() && block(datagram) == last_block {
                    c.final_acks += 1;
                    seen.final_ack = Some(c.final_acks);
                }
            }
            Some(op::RRQ | op::WRQ) => c.requests += 1,
            Some(op::OACK) => {
                c.oacks += 1;
                if let Some(b) = oack_blksize(datagram) {
                    self.blksize = b;
                }
            }
            Some(op::ERROR) => c.errors += 1,
            _ => {}
        }
        self.last_block = last_block;
        seen
    }

    /// Decides the fate of one datagram (how many copies, and the delay of each) and
    /// records it in the trace.
    fn fate(&mut self, dir: Dir, datagram: &[u8], peer: SocketAddr) -> Vec<Duration> {
        let fate = self.decide(dir, datagram);
        let what = match opcode(datagram) {
            Some(op::RRQ) => "RRQ".to_owned(),
            Some(op::WRQ) => "WRQ".to_owned(),
            Some(op::DATA) => format!(
                "DATA {} ({} bytes)",
                block(datagram).unwrap_or(0),
                datagram.len().saturating_sub(4)
            ),
            Some(op::ACK) => format!("ACK {}", block(datagram).unwrap_or(0)),
            Some(op::ERROR) => format!("ERROR {}", block(datagram).unwrap_or(0)),
            Some(op::OACK) => "OACK".to_owned(),
            _ => format!("? ({} bytes)", datagram.len()),
        };
        let verdict = match fate.as_slice() {
            [] => "dropped".to_owned(),
            [d] if d.is_zero() => String::new(),
            [d] => format!("held {} ms", d.as_millis()),
            [d, _] => format!("doubled, held {} ms", d.as_millis()),
            _ => String::new(),
        };
        let arrow = match dir {
            Dir::ToServer => "->",
            Dir::ToClient => "<-",
        };
        let ms = self.start.elapsed().as_millis();
        self.trace.push(format!(
            "{ms:>6} ms {arrow} {:>5} {what} {verdict}",
            peer.port()
        ));
        fate
    }

    fn decide(&mut self, dir: Dir, datagram: &[u8]) -> Vec<Duration> {
        let f = self.faults.get(&dir).cloned().unwrap_or_default();
        let seen = self.observe(dir, datagram);
        let roll_loss = self.next() % 100;
        let roll_dup = self.next() % 100;
        let roll_reorder = self.next() % 100;
        let targeted = match f.only_opcode {
            Some(op) => seen.opcode == Some(op),
            None => true,
        };
        let now = Instant::now();
        let st = self.dirs.entry(dir).or_default();
        for (pick, d) in &f.stall {
            if pick.matches(&seen) {
                let until = now + *d;
                st.stall_until = Some(st.stall_until.map_or(until, |u| u.max(until)));
            }
        }
        let c = &mut st.counts;
        if f.drop_nth.contains(&seen.index)
            || f.drop.iter().any(|p| p.matches(&seen))
            || (targeted && roll_loss < u64::from(f.loss))
        {
            c.dropped += 1;
            return Vec::new();
        }
        let mut delay = if targeted && roll_reorder < u64::from(f.reorder) {
            f.delay
        } else {
            Duration::ZERO
        };
        if let Some(until) = st.stall_until {
            if until > now {
                delay = delay.max(until - now);
            }
        }
        for (pick, d) in &f.hold {
            if pick.matches(&seen) {
                delay = delay.max(*d);
            }
        }
        if !delay.is_zero() {
            c.held += 1;
        }
        if targeted && roll_dup < u64::from(f.dup) {
            c.duplicated += 1;
            vec![delay, delay + Duration::from_millis(1)]
        } else {
            vec![delay]
        }
    }
}

/// A running relay; it stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
    faces: Faces,
}

/// The tasks that read the client-facing sockets, stopped with the relay.
type Faces = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        for t in self.faces.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A UDP socket on 127.0.0.1 (OS-picked port) with buffers for a window of 64 blocks of
/// 65464 bytes (the kernel caps them at net.core.{r,w}mem_max), so the relay itself drops
/// as little as it can beyond what it is told to.
fn bind() -> UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.set_nonblocking(true).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&addr.into()).unwrap();
    UdpSocket::from_std(s.into()).unwrap()
}

impl Relay {
    /// Starts a relay in front of `server` on 127.0.0.1 (a port the OS picks).
    pub async fn start(
        server: SocketAddr,
        seed: u64,
        to_server: Faults,
        to_client: Faults,
    ) -> Self {
        let front = Arc::new(bind());
        let addr = front.local_addr().unwrap();
        let mut faults = HashMap::new();
        faults.insert(Dir::ToServer, to_server);
        faults.insert(Dir::ToClient, to_client);
        let shared = Arc::new(Mutex::new(Shared {
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            faults,
            dirs: HashMap::new(),
            blksize: 512,
            last_block: None,
            trace: Vec::new(),
            start: Instant::now(),
        }));
        let faces = Faces::default();
        let task = tokio::spawn(run(front, server, shared.clone(), faces.clone()));
        Self {
            addr,
            shared,
            task,
            faces,
        }
    }

    /// Where the client should send its request.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every datagram so far, one line each: time since the start, direction (`->` toward
    /// the server, `<-` toward the client), the server-side port (its listen port or a
    /// TID), the packet, and what the relay did with it.
    pub fn trace(&self) -> Vec<String> {
        self.shared.lock().unwrap().trace.clone()
    }

    /// Counters so far for `dir`.
    pub fn counts(&self, dir: Dir) -> Counts {
        self.shared
            .lock()
            .unwrap()
            .dirs
            .get(&dir)
            .map(|d| d.counts.clone())
            .unwrap_or_default()
    }
}

async fn forward(
    shared: &Arc<Mutex<Shared>>,
    dir: Dir,
    out: Arc<UdpSocket>,
    to: SocketAddr,
    from_tid: SocketAddr,
    datagram: &[u8],
) {
    let peer = match dir {
        Dir::ToServer => to,
        Dir::ToClient => from_tid,
    };
    let delays = shared.lock().unwrap().fate(dir, datagram, peer);
    for d in delays {
        if d.is_zero() {
            let _ = out.send_to(datagram, to).await;
        } else {
            let (out, bytes) = (out.clone(), datagram.to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = out.send_to(&bytes, to).await;
            });
        }
    }
}

/// One client-side socket per server TID, plus the front socket for requests.
async fn run(front: Arc<UdpSocket>, server: SocketAddr, shared: Arc<Mutex<Shared>>, faces: Faces) {
    // The relay's server-facing socket for one client; created on the first request.
    let mut back: Option<Arc<UdpSocket>> = None;
    let mut client: Option<SocketAddr> = None;
    // Server TID -> client-facing socket that stands for it.
    let mut tids: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(SocketAddr, Vec<u8>)>();
    let mut fbuf = vec![0u8; 70_000];
    let mut bbuf = vec![0u8; 70_000];
    loop {
        let back_sock = back.clone();
        tokio::select! {
            r = front.recv_from(&mut fbuf) => {
                let Ok((n, from)) = r else { continue };
                client = Some(from);
                if back.is_none() {
                    back = Some(Arc::new(bind()));
                }
                let b = back.clone().unwrap();
                forward(&shared, Dir::ToServer, b, server, server, &fbuf[..n]).await;
            }
            r = async { back_sock.as_ref().unwrap().recv_from(&mut bbuf).await }, if back_sock.is_some() => {
                let Ok((n, tid)) = r else { continue };
                let Some(c) = client else { continue };
                let face = match tids.get(&tid) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(bind());
                        tids.insert(tid, s.clone());
                        // Packets the client sends to this face go to the server's TID.
                        let (s2, tx2) = (s.clone(), tx.clone());
                        let t = tokio::spawn(async move {
                            let mut buf = vec![0u8; 70_000];
                            loop {
                                match s2.recv_from(&mut buf).await {
                                    Ok((n, _)) => {
                                        if tx2.send((tid, buf[..n].to_vec())).is_err() {
                                            break;
                                        }
                                    }
                                    // ICMP port unreachable from a client that has gone:
                                    // not fatal for UDP.
                                    Err(_) if !tx2.is_closed() => {}
                                    Err(_) => break,
                                }
                            }
                        });
                        faces.lock().unwrap().push(t);
                        s
                    }
                };
                forward(&shared, Dir::ToClient, face, c, tid, &bbuf[..n]).await;
            }
            Some((tid, bytes)) = rx.recv() => {
                if let Some(b) = back.clone() {
                    forward(&shared, Dir::ToServer, b, tid, tid, &bytes).await;
                }
            }
        }
    }
}
