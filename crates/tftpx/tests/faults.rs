//! tftpx client <-> tftpx server through the seeded fault-injecting relay: loss,
//! duplication, reordering and exact drops complete byte-identical, and duplicate ACKs never
//! multiply DATA. (The full fault matrix and the real peers behind the relay are issue 4.)

#[path = "support/data.rs"]
mod data;
use data::content;

#[path = "support/relay.rs"]
mod relay;

use std::time::Duration;

use relay::{Dir, Faults, Relay};
use tftpx::{Client, DirHandler, Server};

struct Srv {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    token: tftpx::CancellationToken,
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn server() -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::builder(DirHandler::new(dir.path()).unwrap().allow_create(true))
        .listen("127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_millis(100))
        .max_retries(10)
        .bind()
        .unwrap();
    let addr = s.local_addrs()[0];
    let token = s.shutdown_token();
    tokio::spawn(s.run());
    Srv { addr, dir, token }
}

fn client(addr: std::net::SocketAddr, blksize: u16, windowsize: u16) -> Client {
    Client::builder(addr)
        .blksize(blksize)
        .windowsize(windowsize)
        .timeout(Duration::from_millis(100))
        .retries(10)
        .dally(Duration::from_millis(300))
        .build()
}

fn lossy(loss: u32) -> Faults {
    Faults {
        loss,
        dup: 5,
        reorder: 5,
        delay: Duration::from_millis(3),
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_duplication_and_reordering_both_directions() {
    let srv = server().await;
    let mut dropped = 0;
    for (i, (blksize, ws)) in [(512u16, 1u16), (1468, 16), (8192, 4)]
        .into_iter()
        .enumerate()
    {
        for seed in 1..=2u64 {
            let data = content(150_000 + i * 777, seed);
            let name = format!("f{i}-{seed}.bin");
            let relay = Relay::start(srv.addr, seed * 10 + i as u64, lossy(5), lossy(5)).await;
            let c = client(relay.addr(), blksize, ws);
            c.put(&name, &data[..], Some(data.len() as u64), |_| {})
                .await
                .unwrap_or_else(|e| panic!("put {name} via relay: {e}"));
            assert!(std::fs::read(srv.dir.path().join(&name)).unwrap() == data);
            let relay = Relay::start(srv.addr, seed * 10 + i as u64 + 5, lossy(5), lossy(5)).await;
            let c = client(relay.addr(), blksize, ws);
            let mut back = Vec::new();
            c.get(&name, &mut back, |_| {})
                .await
                .unwrap_or_else(|e| panic!("get {name} via relay: {e}"));
            assert!(back == data, "{name}: bytes differ");
            dropped += relay.counts(Dir::ToClient).dropped + relay.counts(Dir::ToServer).dropped;
            c.finish().await;
        }
    }
    assert!(dropped > 10, "faults were injected: {dropped} drops");
}

#[tokio::test]
async fn lost_request_oack_ack0_and_final_ack_are_recovered() {
    let srv = server().await;
    let data = content(5000, 7);
    std::fs::write(srv.dir.path().join("x.bin"), &data).unwrap();
    // get with options: to server #1 = RRQ, #2 = ACK 0; to client #1 = OACK.
    for (to_server, to_client) in [(vec![1], vec![]), (vec![], vec![1]), (vec![2], vec![])] {
        let relay = Relay::start(
            srv.addr,
            1,
            Faults {
                drop_nth: to_server.clone(),
                ..Faults::default()
            },
            Faults {
                drop_nth: to_client.clone(),
                ..Faults::default()
            },
        )
        .await;
        let c = client(relay.addr(), 1024, 1);
        let mut back = Vec::new();
        c.get("x.bin", &mut back, |_| {}).await.unwrap();
        assert!(back == data, "drop {to_server:?}/{to_client:?}");
        assert_eq!(
            relay.counts(Dir::ToServer).dropped + relay.counts(Dir::ToClient).dropped,
            1
        );
        c.finish().await;
    }
    // The final ACK of a download (5000 / 1024: DATA 1..5, so to server #7 = ACK 5): the
    // server retransmits DATA 5 and the dallying client answers it.
    let relay = Relay::start(
        srv.addr,
        2,
        Faults {
            drop_nth: vec![7],
            ..Faults::default()
        },
        Faults::default(),
    )
    .await;
    let c = client(relay.addr(), 1024, 1);
    let mut back = Vec::new();
    c.get("x.bin", &mut back, |_| {}).await.unwrap();
    assert!(back == data);
    c.finish().await;
    let to_client = relay.counts(Dir::ToClient);
    assert_eq!(to_client.data, 6, "DATA 5 sent twice: {to_client:?}");
    assert_eq!(
        relay.counts(Dir::ToServer).acks,
        7,
        "ACK 0..5 plus the re-ACK of 5"
    );
}

#[tokio::test]
async fn duplicated_acks_never_multiply_data() {
    let srv = server().await;
    let data = content(512 * 100 + 1, 3);
    std::fs::write(srv.dir.path().join("d.bin"), &data).unwrap();
    let every_ack_twice = Faults {
        dup: 100,
        only_opcode: Some(4),
        ..Faults::default()
    };
    let relay = Relay::start(srv.addr, 3, every_ack_twice, Faults::default()).await;
    let c = Client::builder(relay.addr())
        .tsize(false)
        .timeout(Duration::from_secs(1))
        .dally(Duration::ZERO)
        .build();
    let mut back = Vec::new();
    c.get("d.bin", &mut back, |_| {}).await.unwrap();
    assert!(back == data);
    // 101 blocks: a Sorcerer's Apprentice server would send about twice that.
    assert_eq!(relay.counts(Dir::ToClient).data, 101);
    assert_eq!(
        relay.counts(Dir::ToServer).duplicated,
        101,
        "every ACK doubled"
    );
}
