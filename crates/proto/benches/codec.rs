//! Packet codec micro-benchmarks: decode and encode of the packets a transfer moves most (DATA,
//! ACK) and of a request with options. `cargo bench -p tftpx-proto --bench codec`.

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tftpx_proto::wire::{write_data_header, OptionList, Packet, Request};

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for blksize in [512usize, 1468, 65464] {
        let mut datagram = vec![0xa5u8; 4 + blksize];
        write_data_header(&mut datagram, 4242);
        g.throughput(Throughput::Bytes(blksize as u64));
        g.bench_function(format!("decode DATA {blksize}"), |b| {
            b.iter(|| match Packet::decode(black_box(&datagram)) {
                Ok(Packet::Data { block, payload }) => (block, payload.len()),
                _ => unreachable!(),
            })
        });
        let payload = vec![0x5au8; blksize];
        let mut out = vec![0u8; 4 + blksize];
        g.bench_function(format!("encode DATA {blksize}"), |b| {
            b.iter(|| {
                Packet::Data {
                    block: black_box(4242),
                    payload: black_box(&payload),
                }
                .encode(&mut out)
                .unwrap()
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    let mut ack = [0u8; 4];
    Packet::Ack { block: 7 }.encode(&mut ack).unwrap();
    g.bench_function("decode ACK", |b| {
        b.iter(|| Packet::decode(black_box(&ack)).unwrap())
    });
    g.bench_function("encode ACK", |b| {
        let mut out = [0u8; 4];
        b.iter(|| {
            Packet::Ack {
                block: black_box(7),
            }
            .encode(&mut out)
            .unwrap()
        })
    });
    let opts = b"blksize\x001468\x00windowsize\x0064\x00tsize\x000\x00timeout\x001\x00";
    let rrq = Packet::Rrq(Request {
        filename: b"pxelinux.cfg/01-52-54-00-12-34-56",
        mode: b"octet",
        options: OptionList::new(opts).unwrap(),
    });
    let mut rrq_bytes = vec![0u8; rrq.encoded_len()];
    rrq.encode(&mut rrq_bytes).unwrap();
    g.bench_function("decode RRQ with 4 options", |b| {
        b.iter(|| match Packet::decode(black_box(&rrq_bytes)) {
            Ok(Packet::Rrq(r)) => r.options.iter().count(),
            _ => unreachable!(),
        })
    });
    g.bench_function("encode RRQ with 4 options", |b| {
        let mut out = vec![0u8; rrq.encoded_len()];
        b.iter(|| black_box(&rrq).encode(&mut out).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
