//! A deterministic, seeded, fault-injecting UDP relay for tests (this kernel has no netem).
//!
//! The relay stands between a client and a server and keeps TIDs intact: the client talks to
//! [`Relay::addr`] as if it were the server's well-known port; each port the server answers
//! from gets its own relay port on the client side, so the client still sees one TID per
//! transfer. Every datagram is counted per direction and may be dropped, duplicated or
//! delayed, by seeded rate or by exact index ("drop the 3rd datagram to the client").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
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
    /// DATA packets seen (opcode 3).
    pub data: u64,
    /// ACK packets seen (opcode 4).
    pub acks: u64,
}

struct Shared {
    rng: u64,
    faults: HashMap<Dir, Faults>,
    counts: HashMap<Dir, Counts>,
}

impl Shared {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Decides the fate of one datagram: how many copies, and the delay of each.
    fn fate(&mut self, dir: Dir, datagram: &[u8]) -> Vec<Duration> {
        let f = self.faults.get(&dir).cloned().unwrap_or_default();
        let c = self.counts.entry(dir).or_default();
        c.seen += 1;
        match datagram.get(..2) {
            Some([0, 3]) => c.data += 1,
            Some([0, 4]) => c.acks += 1,
            _ => {}
        }
        let index = c.seen;
        let roll_loss = self.next() % 100;
        let roll_dup = self.next() % 100;
        let roll_reorder = self.next() % 100;
        let c = self.counts.entry(dir).or_default();
        let targeted = match f.only_opcode {
            Some(op) => datagram.get(..2) == Some(&[0, op][..]),
            None => true,
        };
        if f.drop_nth.contains(&index) || (targeted && roll_loss < u64::from(f.loss)) {
            c.dropped += 1;
            return Vec::new();
        }
        let delay = if targeted && roll_reorder < u64::from(f.reorder) {
            f.delay
        } else {
            Duration::ZERO
        };
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
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Starts a relay in front of `server` on 127.0.0.1 (a port the OS picks).
    pub async fn start(
        server: SocketAddr,
        seed: u64,
        to_server: Faults,
        to_client: Faults,
    ) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let mut faults = HashMap::new();
        faults.insert(Dir::ToServer, to_server);
        faults.insert(Dir::ToClient, to_client);
        let shared = Arc::new(Mutex::new(Shared {
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            faults,
            counts: HashMap::new(),
        }));
        let task = tokio::spawn(run(front, server, shared.clone()));
        Self { addr, shared, task }
    }

    /// Where the client should send its request.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far for `dir`.
    pub fn counts(&self, dir: Dir) -> Counts {
        self.shared
            .lock()
            .unwrap()
            .counts
            .get(&dir)
            .cloned()
            .unwrap_or_default()
    }
}

async fn forward(
    shared: &Arc<Mutex<Shared>>,
    dir: Dir,
    out: Arc<UdpSocket>,
    to: SocketAddr,
    datagram: &[u8],
) {
    let delays = shared.lock().unwrap().fate(dir, datagram);
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
async fn run(front: Arc<UdpSocket>, server: SocketAddr, shared: Arc<Mutex<Shared>>) {
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
                    back = Some(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()));
                }
                let b = back.clone().unwrap();
                forward(&shared, Dir::ToServer, b, server, &fbuf[..n]).await;
            }
            r = async { back_sock.as_ref().unwrap().recv_from(&mut bbuf).await }, if back_sock.is_some() => {
                let Ok((n, tid)) = r else { continue };
                let Some(c) = client else { continue };
                let face = match tids.get(&tid) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        tids.insert(tid, s.clone());
                        // Packets the client sends to this face go to the server's TID.
                        let (s2, tx2) = (s.clone(), tx.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 70_000];
                            while let Ok((n, _)) = s2.recv_from(&mut buf).await {
                                if tx2.send((tid, buf[..n].to_vec())).is_err() {
                                    break;
                                }
                            }
                        });
                        s
                    }
                };
                forward(&shared, Dir::ToClient, face, c, &bbuf[..n]).await;
            }
            Some((tid, bytes)) = rx.recv() => {
                if let Some(b) = back.clone() {
                    forward(&shared, Dir::ToServer, b, tid, &bytes).await;
                }
            }
        }
    }
}
