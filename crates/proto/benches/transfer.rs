//! An in-memory transfer: a server [`Sender`] hands 16 MiB to a [`Receiver`] through copied
//! datagrams, no sockets, so the state machines' cost per packet shows without the network.
//! `cargo bench -p tftpx-proto --bench transfer`.

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tftpx_proto::negotiate::Negotiated;
use tftpx_proto::transfer::{Receiver, Sender, TransferConfig};
use tftpx_proto::wire::OptionList;

const SIZE: usize = 16 << 20;

/// Moves `file` from a Sender to a Receiver; returns the bytes delivered.
fn transfer(file: &[u8], blksize: u16, windowsize: u16) -> usize {
    let server: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let client: SocketAddr = "127.0.0.1:2000".parse().unwrap();
    let now = Instant::now();
    let n = Negotiated {
        blksize,
        windowsize,
        timeout: None,
        tsize: None,
    };
    let cfg = TransferConfig {
        dally: Duration::ZERO,
        ..TransferConfig::default()
    };
    let mut tx = Sender::server(client, n, OptionList::empty(), cfg);
    let mut rx = Receiver::server(server, n, OptionList::empty(), cfg);
    let _ack0 = rx.poll_transmit(now); // as for a WRQ server: not part of a download
    let mut wire = vec![0u8; 4 + usize::from(blksize)];
    let mut ack = [0u8; 4];
    let (mut offset, mut delivered) = (0, 0);
    while !tx.is_finished() {
        while let Some(slot) = tx.block_to_fill() {
            let len = slot.len().min(file.len() - offset);
            slot[..len].copy_from_slice(&file[offset..offset + len]);
            offset += len;
            tx.block_filled(len);
        }
        while let Some(t) = tx.poll_transmit(now) {
            let len = t.payload.len();
            wire[..len].copy_from_slice(t.payload);
            if let Some(p) = rx.handle_datagram(now, server, &wire[..len]) {
                delivered += black_box(p).len();
            }
        }
        while let Some(t) = rx.poll_transmit(now) {
            let len = t.payload.len();
            ack[..len].copy_from_slice(t.payload);
            tx.handle_datagram(now, client, &ack[..len]);
        }
    }
    delivered
}

fn transfers(c: &mut Criterion) {
    let file: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let mut g = c.benchmark_group("transfer 16 MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE as u64));
    for (blksize, windowsize) in [(512u16, 1u16), (1468, 64), (65464, 16)] {
        assert_eq!(transfer(&file, blksize, windowsize), SIZE);
        g.bench_function(
            format!("blksize {blksize} x windowsize {windowsize}"),
            |b| b.iter(|| transfer(&file, blksize, windowsize)),
        );
    }
    g.finish();
}

criterion_group!(benches, transfers);
criterion_main!(benches);
