//! Scripted and simulated tests of the state machines: no sockets, no sleeping.

use super::*;
use crate::negotiate::Negotiated;
use crate::wire::{OptionList, Packet};

const MS: Duration = Duration::from_millis(1);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server_addr() -> SocketAddr {
    addr("127.0.0.1:69")
}
fn server_tid() -> SocketAddr {
    addr("127.0.0.1:40000")
}
fn client_tid() -> SocketAddr {
    addr("127.0.0.1:50000")
}

fn neg(blksize: u16, windowsize: u16) -> Negotiated {
    Negotiated {
        blksize,
        windowsize,
        ..Negotiated::default()
    }
}

fn cfg() -> TransferConfig {
    TransferConfig {
        timeout: Duration::from_millis(100),
        max_retries: 3,
        dally: Duration::from_millis(200),
        max_unanswered_retries: 3,
    }
}

/// An owned, decoded copy of a transmitted packet, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum P {
    Rrq(Vec<u8>, Vec<u8>),
    Wrq(Vec<u8>, Vec<u8>),
    Data(u16, Vec<u8>),
    Ack(u16),
    Error(u16),
    Oack(Vec<u8>),
}

fn own(bytes: &[u8]) -> P {
    match Packet::decode(bytes).unwrap() {
        Packet::Rrq(r) => P::Rrq(r.filename.to_vec(), r.options.as_bytes().to_vec()),
        Packet::Wrq(r) => P::Wrq(r.filename.to_vec(), r.options.as_bytes().to_vec()),
        Packet::Data { block, payload } => P::Data(block, payload.to_vec()),
        Packet::Ack { block } => P::Ack(block),
        Packet::Error { code, .. } => P::Error(code.to_u16()),
        Packet::Oack(o) => P::Oack(o.as_bytes().to_vec()),
    }
}

fn enc(p: Packet<'_>) -> Vec<u8> {
    let mut b = vec![0; p.encoded_len()];
    p.encode(&mut b).unwrap();
    b
}

fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    enc(Packet::Data { block, payload })
}
fn ack(block: u16) -> Vec<u8> {
    enc(Packet::Ack { block })
}
fn error(code: u16) -> Vec<u8> {
    enc(Packet::Error {
        code: ErrorCode::from_u16(code),
        message: b"x",
    })
}

fn drain_tx(s: &mut Sender, now: Instant) -> Vec<(SocketAddr, P)> {
    let mut v = Vec::new();
    for _ in 0..100_000 {
        match s.poll_transmit(now) {
            Some(t) => v.push((t.destination, own(t.payload))),
            None => return v,
        }
    }
    panic!("sender transmits forever");
}

fn drain_rx(r: &mut Receiver, now: Instant) -> Vec<(SocketAddr, P)> {
    let mut v = Vec::new();
    for _ in 0..100_000 {
        match r.poll_transmit(now) {
            Some(t) => v.push((t.destination, own(t.payload))),
            None => return v,
        }
    }
    panic!("receiver transmits forever");
}

fn events_s(s: &mut Sender) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}
fn events_r(r: &mut Receiver) -> Vec<Event> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

/// Fills the sender from `file` starting at byte `*pos`.
fn fill(s: &mut Sender, file: &[u8], pos: &mut usize, blksize: usize) {
    while let Some(buf) = s.block_to_fill() {
        let n = (file.len() - *pos).min(blksize).min(buf.len());
        buf[..n].copy_from_slice(&file[*pos..*pos + n]);
        *pos += n;
        s.block_filled(n);
    }
}

fn pkts(v: &[(SocketAddr, P)]) -> Vec<P> {
    v.iter().map(|(_, p)| p.clone()).collect()
}

#[test]
fn lockstep_send_completes_and_ignores_duplicate_acks() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 1), OptionList::empty(), cfg());
    let file = b"0123456789abcdefXYZ"; // 8 + 8 + 3 bytes
    let mut pos = 0;
    fill(&mut s, file, &mut pos, 8);
    assert_eq!(
        pkts(&drain_tx(&mut s, t0)),
        vec![P::Data(1, b"01234567".to_vec())]
    );
    s.handle_datagram(t0, client_tid(), &ack(1));
    fill(&mut s, file, &mut pos, 8);
    assert_eq!(
        pkts(&drain_tx(&mut s, t0)),
        vec![P::Data(2, b"89abcdef".to_vec())]
    );
    // A duplicate ACK 1 (the client's retransmission) must not produce another DATA 2.
    s.handle_datagram(t0, client_tid(), &ack(1));
    assert!(drain_tx(&mut s, t0).is_empty());
    s.handle_datagram(t0, client_tid(), &ack(2));
    fill(&mut s, file, &mut pos, 8);
    assert_eq!(
        pkts(&drain_tx(&mut s, t0)),
        vec![P::Data(3, b"XYZ".to_vec())]
    );
    s.handle_datagram(t0, client_tid(), &ack(3));
    assert!(s.is_finished());
    let ev = events_s(&mut s);
    assert_eq!(ev.last(), Some(&Event::Complete));
    let st = s.stats();
    assert_eq!(
        (st.bytes, st.blocks, st.data_sent, st.duplicates),
        (19, 3, 3, 1)
    );
}

#[test]
fn exact_multiple_ends_with_empty_block_and_empty_file_is_one_empty_block() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 4), OptionList::empty(), cfg());
    let mut pos = 0;
    fill(&mut s, b"01234567", &mut pos, 8);
    assert_eq!(
        pkts(&drain_tx(&mut s, t0)),
        vec![P::Data(1, b"01234567".to_vec()), P::Data(2, vec![])]
    );
    let mut e = Sender::server(client_tid(), neg(512, 1), OptionList::empty(), cfg());
    let mut pos = 0;
    fill(&mut e, b"", &mut pos, 512);
    assert_eq!(pkts(&drain_tx(&mut e, t0)), vec![P::Data(1, vec![])]);
    e.handle_datagram(t0, client_tid(), &ack(1));
    assert!(e.is_finished());
}

#[test]
fn timeout_retransmits_then_gives_up_with_error() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 1), OptionList::empty(), cfg());
    let mut pos = 0;
    fill(&mut s, b"abc", &mut pos, 8);
    assert_eq!(drain_tx(&mut s, t0).len(), 1);
    let mut now = t0;
    // Exponential backoff: 100, 200, 400 ms after each send.
    let mut at = t0;
    for i in 1..=3 {
        // Early wake-ups change nothing.
        s.handle_timeout(now + 50 * MS);
        assert!(drain_tx(&mut s, now + 50 * MS).is_empty());
        now = s.poll_timeout().unwrap();
        at += 100 * MS * (1 << (i - 1));
        assert_eq!(now, at);
        s.handle_timeout(now);
        assert_eq!(
            pkts(&drain_tx(&mut s, now)),
            vec![P::Data(1, b"abc".to_vec())]
        );
    }
    now = s.poll_timeout().unwrap();
    s.handle_timeout(now);
    // The peer never answered (its address may be forged): no closing ERROR either.
    assert!(drain_tx(&mut s, now).is_empty());
    assert!(s.is_finished());
    assert_eq!(s.poll_timeout(), None);
    assert!(matches!(
        events_s(&mut s).last(),
        Some(Event::Failed(TransferError::TimedOut { retries: 3 }))
    ));
    assert_eq!(s.stats().timeouts, 4);
}

#[test]
fn a_peer_that_answered_gets_every_retry_and_a_closing_error() {
    let t0 = Instant::now();
    let config = TransferConfig {
        max_unanswered_retries: 1,
        ..cfg()
    };
    let mut s = Sender::server(client_tid(), neg(8, 1), OptionList::empty(), config);
    let mut pos = 0;
    fill(&mut s, b"0123456789", &mut pos, 8);
    assert_eq!(drain_tx(&mut s, t0).len(), 1);
    s.handle_datagram(t0, client_tid(), &ack(1));
    fill(&mut s, b"0123456789", &mut pos, 8);
    assert_eq!(
        pkts(&drain_tx(&mut s, t0)),
        vec![P::Data(2, b"89".to_vec())]
    );
    let mut sent = Vec::new();
    for _ in 0..10 {
        let Some(now) = s.poll_timeout() else { break };
        s.handle_timeout(now);
        sent.extend(pkts(&drain_tx(&mut s, now)));
    }
    let mut expected = vec![P::Data(2, b"89".to_vec()); 3];
    expected.push(P::Error(0));
    assert_eq!(sent, expected, "max_retries (3), then ERROR 0");
}

#[test]
fn a_peer_that_never_answers_gets_few_retransmissions() {
    // RRQ reflection: the request's source is forged, nobody ever ACKs. Count what the
    // server sends toward that address.
    for (unanswered, oack) in [(0u32, false), (1, false), (2, false), (1, true)] {
        let t0 = Instant::now();
        let config = TransferConfig {
            max_retries: 5,
            max_unanswered_retries: unanswered,
            ..cfg()
        };
        let mut opts = crate::wire::OptionsBuf::new();
        opts.push("blksize", "8").unwrap();
        let list = if oack {
            opts.as_list()
        } else {
            OptionList::empty()
        };
        let mut s = Sender::server(client_tid(), neg(8, 1), list, config);
        let mut pos = 0;
        fill(&mut s, b"0123456789", &mut pos, 8);
        let mut sent = pkts(&drain_tx(&mut s, t0));
        for _ in 0..20 {
            let Some(now) = s.poll_timeout() else { break };
            s.handle_timeout(now);
            sent.extend(pkts(&drain_tx(&mut s, now)));
        }
        assert!(s.is_finished());
        assert_eq!(sent.len(), 1 + unanswered as usize, "{sent:?}");
        assert!(sent.iter().all(|p| if oack {
            matches!(p, P::Oack(_))
        } else {
            *p == P::Data(1, b"01234567".to_vec())
        }));
    }
    // The same for a WRQ's ACK 0.
    let t0 = Instant::now();
    let config = TransferConfig {
        max_unanswered_retries: 1,
        ..cfg()
    };
    let mut r = Receiver::server(client_tid(), neg(512, 1), OptionList::empty(), config);
    let mut sent = pkts(&drain_rx(&mut r, t0));
    for _ in 0..20 {
        let Some(now) = r.poll_timeout() else { break };
        r.handle_timeout(now);
        sent.extend(pkts(&drain_rx(&mut r, now)));
    }
    assert!(r.is_finished());
    assert_eq!(sent, vec![P::Ack(0), P::Ack(0)]);
}

#[test]
fn stranger_gets_error_5_and_transfer_goes_on() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 1), OptionList::empty(), cfg());
    let mut pos = 0;
    let file = b"0123456789";
    fill(&mut s, file, &mut pos, 8);
    drain_tx(&mut s, t0);
    let stranger = addr("127.0.0.1:50001");
    s.handle_datagram(t0, stranger, &ack(1));
    assert_eq!(drain_tx(&mut s, t0), vec![(stranger, P::Error(5))]);
    // An ERROR from a stranger is not answered (no ERROR ping-pong).
    s.handle_datagram(t0, stranger, &error(5));
    assert!(drain_tx(&mut s, t0).is_empty());
    s.handle_datagram(t0, client_tid(), &ack(1));
    fill(&mut s, file, &mut pos, 8);
    assert_eq!(
        drain_tx(&mut s, t0),
        vec![(client_tid(), P::Data(2, b"89".to_vec()))]
    );
    assert_eq!(s.stats().strangers, 2);
}

#[test]
fn oack_then_ack0_then_data_and_error8_after_oack_ends_quietly() {
    let t0 = Instant::now();
    let oack = OptionList::new(b"tsize\x0012\x00").unwrap();
    let mut s = Sender::server(client_tid(), neg(512, 1), oack, cfg());
    let mut pos = 0;
    // Nothing is read (and no buffer allocated) before the OACK is acknowledged.
    assert!(s.block_to_fill().is_none());
    assert_eq!(s.buffer_bytes(), 0);
    assert_eq!(
        pkts(&drain_tx(&mut s, t0)),
        vec![P::Oack(b"tsize\x0012\x00".to_vec())]
    );
    // Lost OACK: resent on timeout.
    let t1 = s.poll_timeout().unwrap();
    s.handle_timeout(t1);
    assert_eq!(
        pkts(&drain_tx(&mut s, t1)),
        vec![P::Oack(b"tsize\x0012\x00".to_vec())]
    );
    s.handle_datagram(t1, client_tid(), &ack(0));
    fill(&mut s, b"hello", &mut pos, 512);
    assert_eq!(
        pkts(&drain_tx(&mut s, t1)),
        vec![P::Data(1, b"hello".to_vec())]
    );

    // A PXE ROM's size probe: ERROR 8 right after the OACK.
    let mut p = Sender::server(client_tid(), neg(512, 1), oack, cfg());
    drain_tx(&mut p, t0);
    p.handle_datagram(t0, client_tid(), &error(8));
    assert!(drain_tx(&mut p, t0).is_empty(), "no reply to an ERROR");
    assert!(p.is_finished());
    assert!(matches!(
        events_s(&mut p).last(),
        Some(Event::Failed(TransferError::Peer {
            code: ErrorCode::OptionNegotiation,
            ..
        }))
    ));
}

#[test]
fn window_gap_resends_from_the_gap_at_once() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 4), OptionList::empty(), cfg());
    let file: Vec<u8> = (0..60u8).collect(); // 7.5 blocks of 8
    let mut pos = 0;
    fill(&mut s, &file, &mut pos, 8);
    let sent = pkts(&drain_tx(&mut s, t0));
    assert_eq!(
        sent.iter()
            .map(|p| match p {
                P::Data(b, _) => *b,
                _ => 0,
            })
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // Block 3 was lost: the receiver ACKs 2.
    s.handle_datagram(t0, client_tid(), &ack(2));
    fill(&mut s, &file, &mut pos, 8);
    let resent: Vec<u16> = pkts(&drain_tx(&mut s, t0))
        .iter()
        .map(|p| match p {
            P::Data(b, _) => *b,
            _ => 0,
        })
        .collect();
    // The loss halved cwnd to 2: the window from the gap leaves in two paced bursts.
    assert_eq!(resent, vec![3, 4]);
    // A repeated ACK 2 (duplicate) changes nothing.
    s.handle_datagram(t0, client_tid(), &ack(2));
    assert!(drain_tx(&mut s, t0).is_empty());
    let t1 = s.poll_timeout().unwrap();
    assert!(
        t1 - t0 >= PACE_MIN && t1 - t0 < cfg().timeout,
        "{:?}",
        t1 - t0
    );
    s.handle_timeout(t1);
    let resent: Vec<u16> = pkts(&drain_tx(&mut s, t1))
        .iter()
        .map(|p| match p {
            P::Data(b, _) => *b,
            _ => 0,
        })
        .collect();
    assert_eq!(resent, vec![5, 6]);
    s.handle_datagram(t0, client_tid(), &ack(6));
    fill(&mut s, &file, &mut pos, 8);
    let rest: Vec<u16> = pkts(&drain_tx(&mut s, t0))
        .iter()
        .map(|p| match p {
            P::Data(b, _) => *b,
            _ => 0,
        })
        .collect();
    assert_eq!(rest, vec![7, 8]);
    s.handle_datagram(t0, client_tid(), &ack(8));
    assert!(s.is_finished());
    assert_eq!(s.stats().bytes, 60);
}

#[test]
fn receiver_acks_windows_reacks_duplicates_and_acks_every_block_beyond_a_gap() {
    let t0 = Instant::now();
    let mut r = Receiver::server(client_tid(), neg(4, 2), OptionList::empty(), cfg());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(0)]);
    assert_eq!(
        r.handle_datagram(t0, client_tid(), &data(1, b"aaaa")),
        Some(&b"aaaa"[..])
    );
    assert!(drain_rx(&mut r, t0).is_empty(), "mid-window: no ACK");
    assert!(r
        .handle_datagram(t0, client_tid(), &data(2, b"bbbb"))
        .is_some());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(2)]);
    // Window 3..4 arrives as 4 only (3 lost): each block beyond the gap draws ACK 2, so a
    // lost gap ACK is repeated (the sender ignores a repeat that comes too soon).
    assert!(r
        .handle_datagram(t0, client_tid(), &data(4, b"dddd"))
        .is_none());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(2)]);
    assert!(r
        .handle_datagram(t0, client_tid(), &data(5, b"eeee"))
        .is_none());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(2)]);
    // A duplicate of the last block in order (our ACK was lost) is re-ACKed, not delivered.
    assert!(r
        .handle_datagram(t0, client_tid(), &data(2, b"bbbb"))
        .is_none());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(2)]);
    assert!(r
        .handle_datagram(t0, client_tid(), &data(1, b"aaaa"))
        .is_none());
    assert!(drain_rx(&mut r, t0).is_empty());
    assert!(r
        .handle_datagram(t0, client_tid(), &data(3, b"cccc"))
        .is_some());
    assert!(r
        .handle_datagram(t0, client_tid(), &data(4, b"dd"))
        .is_some());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(4)]);
    assert!(r.is_complete() && !r.is_finished());
    assert_eq!(events_s_r(&mut r).last(), Some(&Event::Complete));
    assert_eq!(r.stats().bytes, 14);
}

#[test]
fn receiver_timeout_mid_window_acks_the_last_block_in_order() {
    // Found by the `receiver` fuzz target: the timeout re-sent the previous window's ACK, so
    // the sender repeated blocks the receiver had, and ACKs fell ever further behind.
    let t0 = Instant::now();
    let mut r = Receiver::server(client_tid(), neg(4, 4), OptionList::empty(), cfg());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(0)]);
    for (b, p) in [(1, b"aaaa"), (2, b"bbbb")] {
        assert!(r.handle_datagram(t0, client_tid(), &data(b, p)).is_some());
    }
    assert!(drain_rx(&mut r, t0).is_empty(), "mid-window: no ACK");
    let t1 = r.poll_timeout().unwrap();
    r.handle_timeout(t1);
    assert_eq!(pkts(&drain_rx(&mut r, t1)), vec![P::Ack(2)]);
    // Before any DATA, a timeout still repeats ACK 0 (or the OACK).
    let mut r = Receiver::server(client_tid(), neg(4, 4), OptionList::empty(), cfg());
    drain_rx(&mut r, t0);
    let t1 = r.poll_timeout().unwrap();
    r.handle_timeout(t1);
    assert_eq!(pkts(&drain_rx(&mut r, t1)), vec![P::Ack(0)]);
}

fn events_s_r(r: &mut Receiver) -> Vec<Event> {
    events_r(r)
}

#[test]
fn receiver_dallies_and_reacks_the_final_block() {
    let t0 = Instant::now();
    let mut r = Receiver::server(client_tid(), neg(512, 1), OptionList::empty(), cfg());
    drain_rx(&mut r, t0);
    assert!(r
        .handle_datagram(t0, client_tid(), &data(1, b"end"))
        .is_some());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(1)]);
    // The final ACK was lost; the sender repeats the last DATA.
    let t1 = t0 + 100 * MS;
    assert!(r
        .handle_datagram(t1, client_tid(), &data(1, b"end"))
        .is_none());
    assert_eq!(pkts(&drain_rx(&mut r, t1)), vec![P::Ack(1)]);
    let end = r.poll_timeout().unwrap();
    assert_eq!(end, t0 + 200 * MS, "dally lasts as configured");
    r.handle_timeout(end);
    assert!(r.is_finished());
    assert_eq!(events_r(&mut r).last(), Some(&Event::Complete));
}

#[test]
fn receiver_times_out_with_bounded_retries() {
    let t0 = Instant::now();
    let mut r = Receiver::server(client_tid(), neg(512, 1), OptionList::empty(), cfg());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(0)]);
    let mut now;
    for _ in 0..3 {
        now = r.poll_timeout().unwrap();
        r.handle_timeout(now);
        assert_eq!(pkts(&drain_rx(&mut r, now)), vec![P::Ack(0)]);
    }
    now = r.poll_timeout().unwrap();
    r.handle_timeout(now);
    // Nothing ever came from the client: no closing ERROR.
    assert!(drain_rx(&mut r, now).is_empty());
    assert!(r.is_finished());
    assert!(matches!(
        events_r(&mut r).last(),
        Some(Event::Failed(TransferError::TimedOut { .. }))
    ));
}

#[test]
fn receiver_accepts_rollover_to_zero_and_to_one() {
    for wrap_to in [0u16, 1] {
        let t0 = Instant::now();
        let mut r = Receiver::server(client_tid(), neg(8, 1), OptionList::empty(), cfg());
        drain_rx(&mut r, t0);
        let mut wire: u16 = 1;
        let mut delivered = 0u64;
        for i in 0..70_000u64 {
            let payload = [(i % 251) as u8; 8];
            let d = data(wire, &payload);
            let got = r.handle_datagram(t0, client_tid(), &d);
            assert_eq!(got, Some(&payload[..]), "block {i} wire {wire}");
            delivered += 1;
            assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(wire)]);
            wire = if wire == u16::MAX { wrap_to } else { wire + 1 };
        }
        assert!(r
            .handle_datagram(t0, client_tid(), &data(wire, b""))
            .is_some());
        assert!(r.is_complete());
        assert_eq!(delivered, 70_000);
        assert_eq!(r.stats().bytes, 70_000 * 8);
    }
}

#[test]
fn oversized_data_is_a_protocol_error() {
    let t0 = Instant::now();
    let mut r = Receiver::server(client_tid(), neg(8, 1), OptionList::empty(), cfg());
    drain_rx(&mut r, t0);
    assert!(r
        .handle_datagram(t0, client_tid(), &data(1, b"123456789"))
        .is_none());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Error(4)]);
    assert!(r.is_finished());
}

#[test]
fn malformed_datagrams_from_the_peer_are_ignored() {
    let t0 = Instant::now();
    let mut r = Receiver::server(client_tid(), neg(512, 1), OptionList::empty(), cfg());
    drain_rx(&mut r, t0);
    for junk in [&b""[..], b"\x00", b"\x00\x09zz", b"\x00\x03\x00"] {
        assert!(r.handle_datagram(t0, client_tid(), junk).is_none());
    }
    assert!(drain_rx(&mut r, t0).is_empty());
    assert_eq!(r.stats().ignored, 4);
    assert!(r
        .handle_datagram(t0, client_tid(), &data(1, b"ok"))
        .is_some());
}

#[test]
fn client_read_locks_tid_checks_oack_and_acks_zero() {
    let t0 = Instant::now();
    let opts = ClientOptions {
        blksize: Some(1468),
        tsize: Some(0),
        ..ClientOptions::default()
    };
    let mut r = Receiver::client(server_addr(), b"boot.img", Mode::Octet, opts, cfg()).unwrap();
    assert_eq!(
        drain_rx(&mut r, t0),
        vec![(
            server_addr(),
            P::Rrq(
                b"boot.img".to_vec(),
                b"blksize\x001468\x00tsize\x000\x00".to_vec()
            )
        )]
    );
    // A reply from another host is refused; the request is still pending.
    let other = addr("127.0.0.2:40000");
    r.handle_datagram(t0, other, &enc(Packet::Oack(OptionList::empty())));
    assert_eq!(drain_rx(&mut r, t0), vec![(other, P::Error(5))]);
    let oack = enc(Packet::Oack(
        OptionList::new(b"blksize\x001024\x00tsize\x002000\x00").unwrap(),
    ));
    r.handle_datagram(t0, server_tid(), &oack);
    assert_eq!(drain_rx(&mut r, t0), vec![(server_tid(), P::Ack(0))]);
    assert_eq!(r.peer(), server_tid());
    assert_eq!(
        events_r(&mut r),
        vec![Event::Negotiated(Negotiated {
            blksize: 1024,
            windowsize: 1,
            timeout: None,
            tsize: Some(2000)
        })]
    );
    // A second transfer answering the same request (from another port) gets ERROR 5.
    let dup = addr("127.0.0.1:40001");
    r.handle_datagram(t0, dup, &oack);
    assert_eq!(drain_rx(&mut r, t0), vec![(dup, P::Error(5))]);
    // Repeated OACK (our ACK 0 lost): ACK 0 again.
    r.handle_datagram(t0, server_tid(), &oack);
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(0)]);
    let block = vec![7u8; 1024];
    assert!(r
        .handle_datagram(t0, server_tid(), &data(1, &block))
        .is_some());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(1)]);
    assert!(r
        .handle_datagram(t0, server_tid(), &data(2, b"z"))
        .is_some());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(2)]);
    assert!(r.is_complete());
}

#[test]
fn client_read_falls_back_to_rfc1350_and_rejects_bad_oack() {
    let t0 = Instant::now();
    let opts = ClientOptions {
        blksize: Some(1468),
        ..ClientOptions::default()
    };
    let mut r = Receiver::client(server_addr(), b"f", Mode::Octet, opts, cfg()).unwrap();
    drain_rx(&mut r, t0);
    // The server ignores options and sends DATA 1 at 512 bytes.
    assert!(r
        .handle_datagram(t0, server_tid(), &data(1, b"x"))
        .is_some());
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Ack(1)]);
    assert!(r.is_complete());

    let mut r = Receiver::client(server_addr(), b"f", Mode::Octet, opts, cfg()).unwrap();
    drain_rx(&mut r, t0);
    let bad = enc(Packet::Oack(
        OptionList::new(b"blksize\x0065464\x00").unwrap(),
    ));
    r.handle_datagram(t0, server_tid(), &bad);
    assert_eq!(drain_rx(&mut r, t0), vec![(server_tid(), P::Error(8))]);
    assert!(r.is_finished());
}

#[test]
fn client_write_sends_wrq_then_data_after_ack0_or_oack() {
    let t0 = Instant::now();
    let mut s = Sender::client(
        server_addr(),
        b"up.bin",
        Mode::Octet,
        ClientOptions::default(),
        cfg(),
    )
    .unwrap();
    assert!(s.block_to_fill().is_none(), "no block before negotiation");
    assert_eq!(
        drain_tx(&mut s, t0),
        vec![(server_addr(), P::Wrq(b"up.bin".to_vec(), vec![]))]
    );
    let t1 = s.poll_timeout().unwrap();
    s.handle_timeout(t1);
    assert_eq!(
        pkts(&drain_tx(&mut s, t1)),
        vec![P::Wrq(b"up.bin".to_vec(), vec![])]
    );
    s.handle_datagram(t1, server_tid(), &ack(0));
    let mut pos = 0;
    fill(&mut s, b"payload", &mut pos, 512);
    assert_eq!(
        drain_tx(&mut s, t1),
        vec![(server_tid(), P::Data(1, b"payload".to_vec()))]
    );
    s.handle_datagram(t1, server_tid(), &ack(1));
    assert!(s.is_finished());

    let opts = ClientOptions {
        blksize: Some(16),
        windowsize: Some(4),
        tsize: Some(40),
        ..ClientOptions::default()
    };
    let mut s = Sender::client(server_addr(), b"w", Mode::Octet, opts, cfg()).unwrap();
    drain_tx(&mut s, t0);
    let oack = enc(Packet::Oack(
        OptionList::new(b"blksize\x0016\x00windowsize\x002\x00tsize\x0040\x00").unwrap(),
    ));
    s.handle_datagram(t0, server_tid(), &oack);
    let file = [9u8; 40];
    let mut pos = 0;
    fill(&mut s, &file, &mut pos, 16);
    assert_eq!(drain_tx(&mut s, t0).len(), 2, "window of 2 granted");
}

#[test]
fn abort_sends_error_once() {
    let t0 = Instant::now();
    let mut r = Receiver::server(client_tid(), neg(512, 1), OptionList::empty(), cfg());
    drain_rx(&mut r, t0);
    r.abort(ErrorCode::DiskFull, "disk full");
    r.abort(ErrorCode::NotDefined, "again");
    assert_eq!(pkts(&drain_rx(&mut r, t0)), vec![P::Error(3)]);
    assert!(r.is_finished());
}

// ---- Deterministic two-party simulation with seeded faults ----

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Faults {
    loss: u64,
    dup: u64,
    reorder: u64,
}

struct Outcome {
    received: Vec<u8>,
    sender_done: bool,
    receiver_complete: bool,
    data_sent: u64,
}

/// Runs a client RRQ against a server sender over a lossy "network" with a virtual clock.
fn simulate(file: &[u8], blksize: u16, windowsize: u16, faults: Faults, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let mut now = t0;
    let mut rng = Rng(seed | 1);
    let config = TransferConfig {
        timeout: Duration::from_millis(100),
        max_retries: 50,
        dally: Duration::from_millis(200),
        max_unanswered_retries: 50,
    };
    let mut tx = Sender::server(
        client_tid(),
        neg(blksize, windowsize),
        OptionList::empty(),
        config,
    );
    let mut rx = Receiver::server(
        server_tid(),
        neg(blksize, windowsize),
        OptionList::empty(),
        config,
    );
    drain_rx(&mut rx, now); // the would-be ACK 0 of a WRQ; irrelevant here
    let mut pos = 0;
    let mut received = Vec::new();
    // In-flight datagrams: (arrival time, to_receiver, bytes).
    let mut net: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
    for _ in 0..2_000_000 {
        fill(&mut tx, file, &mut pos, blksize as usize);
        let mut out = Vec::new();
        while let Some(t) = tx.poll_transmit(now) {
            out.push((true, t.payload.to_vec()));
        }
        while let Some(t) = rx.poll_transmit(now) {
            out.push((false, t.payload.to_vec()));
        }
        for (to_rx, d) in out {
            if rng.chance(faults.loss) {
                continue;
            }
            let delay = if rng.chance(faults.reorder) { 7 } else { 1 };
            if rng.chance(faults.dup) {
                net.push((now + MS * 2, to_rx, d.clone()));
            }
            net.push((now + MS * delay, to_rx, d));
        }
        if tx.is_finished() && rx.is_finished() {
            break;
        }
        // Advance to the next event: a datagram arrival or a timer.
        let next_net = net.iter().map(|x| x.0).min();
        let next_timer = [tx.poll_timeout(), rx.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = [next_net, next_timer].into_iter().flatten().min() else {
            break;
        };
        now = now.max(next);
        if let Some(i) = net.iter().position(|x| x.0 <= now) {
            let (_, to_rx, d) = net.remove(i);
            if to_rx {
                if let Some(p) = rx.handle_datagram(now, server_tid(), &d) {
                    received.extend_from_slice(p);
                }
            } else {
                tx.handle_datagram(now, client_tid(), &d);
            }
        }
        tx.handle_timeout(now);
        rx.handle_timeout(now);
    }
    Outcome {
        received,
        sender_done: tx.is_finished() && tx.stats().blocks > 0,
        receiver_complete: rx.is_complete(),
        data_sent: tx.stats().data_sent,
    }
}

fn test_file(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

#[test]
fn simulated_transfers_survive_loss_duplication_and_reordering() {
    let cases = [
        (0usize, 512u16, 1u16),
        (511, 512, 1),
        (512, 512, 1),
        (513, 512, 1),
        (20_000, 64, 1),
        (20_000, 64, 4),
        (50_000, 100, 16),
        (8 * 16 * 5, 8, 16),
    ];
    for (i, &(len, blksize, ws)) in cases.iter().enumerate() {
        for seed in 1..6u64 {
            let file = test_file(len, seed * 31 + i as u64);
            let o = simulate(
                &file,
                blksize,
                ws,
                Faults {
                    loss: 10,
                    dup: 10,
                    reorder: 10,
                },
                seed,
            );
            assert!(
                o.receiver_complete && o.sender_done,
                "case {i} seed {seed}: incomplete"
            );
            assert!(o.received == file, "case {i} seed {seed}: corrupt");
        }
    }
}

#[test]
fn clean_network_sends_each_block_once() {
    for ws in [1u16, 4, 16, 64] {
        let file = test_file(100_000, 7);
        let o = simulate(
            &file,
            512,
            ws,
            Faults {
                loss: 0,
                dup: 0,
                reorder: 0,
            },
            1,
        );
        assert!(o.received == file);
        assert_eq!(o.data_sent, 100_000 / 512 + 1, "ws {ws}: no retransmission");
    }
}

#[test]
fn duplicated_acks_never_multiply_data() {
    // Every datagram duplicated: a Sorcerer's Apprentice sender would double its DATA.
    let file = test_file(512 * 200 + 3, 9);
    let o = simulate(
        &file,
        512,
        1,
        Faults {
            loss: 0,
            dup: 100,
            reorder: 0,
        },
        3,
    );
    assert!(o.received == file);
    assert_eq!(o.data_sent, 201);
}

#[test]
fn rollover_past_65535_in_simulation() {
    // 70,000 blocks of 8 bytes: the block number wraps once.
    let file = test_file(8 * 70_000 + 5, 11);
    let o = simulate(
        &file,
        8,
        8,
        Faults {
            loss: 1,
            dup: 1,
            reorder: 1,
        },
        5,
    );
    assert!(o.receiver_complete && o.sender_done);
    assert!(o.received == file);
}

#[test]
fn batches_carry_the_same_datagrams_as_single_transmits() {
    let file: Vec<u8> = (0..200u8).collect();
    for (blksize, windowsize, max) in [(8u16, 8u16, 3usize), (8, 5, 64), (16, 4, 2), (8, 1, 64)] {
        let t0 = Instant::now();
        let mut single = Sender::server(
            client_tid(),
            neg(blksize, windowsize),
            OptionList::empty(),
            cfg(),
        );
        let mut batched = Sender::server(
            client_tid(),
            neg(blksize, windowsize),
            OptionList::empty(),
            cfg(),
        );
        let (mut p1, mut p2) = (0, 0);
        let mut sent1 = Vec::new();
        let mut sent2 = Vec::new();
        let mut max_seen = 0;
        for _ in 0..1000 {
            fill(&mut single, &file, &mut p1, blksize as usize);
            fill(&mut batched, &file, &mut p2, blksize as usize);
            let a = drain_tx(&mut single, t0);
            let mut b = Vec::new();
            while let Some(t) = batched.poll_transmit_batch(t0, max, 65_000) {
                assert!(t.count >= 1 && t.count <= max);
                max_seen = max_seen.max(t.count);
                let parts: Vec<_> = t.datagrams().map(own).collect();
                assert_eq!(parts.len(), t.count);
                b.extend(parts);
            }
            let Some(P::Data(last, _)) = a.last().map(|x| x.1.clone()) else {
                break;
            };
            sent1.extend(pkts(&a));
            sent2.extend(b);
            // ACK the whole window: both move on in step.
            single.handle_datagram(t0, client_tid(), &ack(last));
            batched.handle_datagram(t0, client_tid(), &ack(last));
            if single.is_finished() {
                break;
            }
        }
        assert_eq!(sent1, sent2, "{blksize}x{windowsize} max {max}");
        assert!(batched.is_finished());
        assert_eq!(single.stats().data_sent, batched.stats().data_sent);
        assert!(
            max_seen > 1 || windowsize == 1 || max == 1,
            "batching happened"
        );
    }
}

#[test]
fn retransmission_backs_off_exponentially_up_to_a_cap() {
    assert_eq!(backoff(100 * MS, 0), 100 * MS);
    assert_eq!(backoff(100 * MS, 1), 200 * MS);
    assert_eq!(backoff(100 * MS, 3), 800 * MS);
    assert_eq!(backoff(100 * MS, 9), 800 * MS, "8 x at most");
    let s = Duration::from_secs(1);
    let waits: Vec<_> = (0..6).map(|r| backoff(s, r).as_secs()).collect();
    assert_eq!(
        waits,
        [1, 2, 4, 6, 6, 6],
        "past tftp-hpa's 5 s, 25 s in all"
    );
    assert_eq!(backoff(5 * s, 4), 6 * s);
    assert_eq!(
        backoff(10 * s, 4),
        10 * s,
        "a negotiated timeout over the cap stays"
    );
}

// ---- egress budget, time and memory toward an unproven peer ("safe to expose")

fn server_cfg() -> TransferConfig {
    TransferConfig {
        timeout: Duration::from_millis(100),
        max_retries: 5,
        dally: Duration::from_millis(200),
        max_unanswered_retries: 1,
    }
}

/// Drives `s` by timeouts alone until it finishes (bounded); returns what it sent.
fn run_out(s: &mut Sender, file: &[u8], pos: &mut usize, mut now: Instant) -> Vec<P> {
    let mut sent = Vec::new();
    for _ in 0..100 {
        fill(s, file, pos, usize::MAX);
        sent.extend(pkts(&drain_tx(s, now)));
        if s.is_finished() {
            return sent;
        }
        let Some(t) = s.poll_timeout() else { break };
        now = t;
        s.handle_timeout(now);
    }
    sent.extend(pkts(&drain_tx(s, now)));
    sent
}

#[test]
fn a_forged_option_less_rrq_draws_two_data_and_no_error() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(512, 1), OptionList::empty(), server_cfg());
    let file = vec![7u8; 5000];
    let mut pos = 0;
    let sent = run_out(&mut s, &file, &mut pos, t0);
    assert_eq!(
        sent,
        vec![
            P::Data(1, file[..512].to_vec()),
            P::Data(1, file[..512].to_vec())
        ]
    );
    assert!(matches!(
        events_s(&mut s).last(),
        Some(Event::Failed(TransferError::TimedOut { retries: 1 }))
    ));
}

#[test]
fn a_forged_ack0_to_a_big_window_draws_one_block_twice() {
    // blksize 65464 x windowsize 64, OACK answered by a (forged) ACK 0, then silence.
    let t0 = Instant::now();
    let oack = OptionList::new(b"blksize\x0065464\x00windowsize\x0064\x00").unwrap();
    let mut s = Sender::server(client_tid(), neg(65464, 64), oack, server_cfg());
    let file = vec![1u8; 65464 * 100];
    let mut pos = 0;
    assert_eq!(pkts(&drain_tx(&mut s, t0)).len(), 1, "the OACK");
    assert_eq!(s.buffer_bytes(), 0, "no buffer before ACK 0");
    s.handle_datagram(t0, client_tid(), &ack(0));
    let sent = run_out(&mut s, &file, &mut pos, t0);
    let blocks: Vec<u16> = sent
        .iter()
        .map(|p| match p {
            P::Data(b, _) => *b,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(blocks, vec![1, 1], "one block, resent once, no ERROR");
    assert!(s.stats().data_sent == 2);
}

#[test]
fn a_window_that_fits_the_first_flight_goes_out_whole_and_only_block_one_is_resent() {
    // 1468 x 64 = 94 KB fits FIRST_FLIGHT_BYTES: a legitimate window-64 client is not slowed.
    let t0 = Instant::now();
    let mut s = Sender::server(
        client_tid(),
        neg(1468, 64),
        OptionList::empty(),
        server_cfg(),
    );
    let file = vec![3u8; 1468 * 200];
    let mut pos = 0;
    let sent = run_out(&mut s, &file, &mut pos, t0);
    assert_eq!(
        sent.len(),
        64 + 1,
        "the window, then block 1 once: {:?}",
        sent.len()
    );
    assert_eq!(sent[64], P::Data(1, file[..1468].to_vec()));
}

#[test]
fn a_repeated_ack0_from_an_unproven_peer_gets_block_one_again_within_the_retry_budget() {
    let t0 = Instant::now();
    let oack = OptionList::new(b"blksize\x0065464\x00").unwrap();
    let mut s = Sender::server(client_tid(), neg(65464, 1), oack, server_cfg());
    let file = vec![2u8; 65464 * 3];
    let mut pos = 0;
    drain_tx(&mut s, t0);
    s.handle_datagram(t0, client_tid(), &ack(0));
    fill(&mut s, &file, &mut pos, usize::MAX);
    assert_eq!(pkts(&drain_tx(&mut s, t0)).len(), 1);
    // A copy the network duplicated (at once) draws nothing.
    s.handle_datagram(t0, client_tid(), &ack(0));
    assert!(drain_tx(&mut s, t0).is_empty());
    let mut resent = 0;
    let mut t = t0;
    for _ in 0..20 {
        // The client repeats ACK 0 after a timeout of its own (30 ms >= 100 ms / 4).
        t += 30 * MS;
        s.handle_datagram(t, client_tid(), &ack(0));
        resent += drain_tx(&mut s, t).len();
    }
    assert_eq!(resent, 5, "max_retries resends for 20 repeated ACK 0");
    // The real client got DATA 1 at last: the window opens as usual.
    s.handle_datagram(t0, client_tid(), &ack(1));
    fill(&mut s, &file, &mut pos, usize::MAX);
    assert_eq!(
        pkts(&drain_tx(&mut s, t0)),
        vec![P::Data(2, file[65464..131_072 - 144].to_vec())]
    );
}

#[test]
fn the_negotiated_timeout_applies_only_once_the_peer_acknowledged_data() {
    let t0 = Instant::now();
    let oack = OptionList::new(b"timeout\x00255\x00").unwrap();
    let n = Negotiated {
        timeout: Some(Duration::from_secs(255)),
        ..neg(512, 1)
    };
    let mut s = Sender::server(client_tid(), n, oack, server_cfg());
    drain_tx(&mut s, t0);
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + 100 * MS),
        "OACK: the server's timeout"
    );
    s.handle_datagram(t0, client_tid(), &ack(0));
    let file = vec![0u8; 2000];
    let mut pos = 0;
    fill(&mut s, &file, &mut pos, usize::MAX);
    drain_tx(&mut s, t0);
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + 100 * MS),
        "DATA 1: still the server's"
    );
    s.handle_datagram(t0, client_tid(), &ack(1));
    fill(&mut s, &file, &mut pos, usize::MAX);
    drain_tx(&mut s, t0);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(255)));
}

#[test]
fn an_ack_train_draws_at_most_two_data_per_ack() {
    // A client that acknowledges every block as soon as it can, without reading, in a
    // window of 64: each partial ACK used to resend the rest of the window.
    let t0 = Instant::now();
    let oack = OptionList::new(b"windowsize\x0064\x00").unwrap();
    let mut s = Sender::server(client_tid(), neg(1468, 64), oack, server_cfg());
    let file = vec![9u8; 1468 * 2000];
    let mut pos = 0;
    drain_tx(&mut s, t0);
    let mut acks = 0u64;
    for block in 0..900u16 {
        s.handle_datagram(t0, client_tid(), &ack(block));
        acks += 1;
        fill(&mut s, &file, &mut pos, usize::MAX);
        drain_tx(&mut s, t0);
    }
    let data = s.stats().data_sent;
    eprintln!("ACK train: {data} DATA for {acks} ACKs");
    assert!(data <= 2 * acks, "{data} DATA for {acks} ACKs");
    assert!(s.buffer_bytes() <= 64 * 1472);
}

#[test]
fn the_ring_grows_to_the_window_once_the_peer_acknowledged_data() {
    let t0 = Instant::now();
    let oack = OptionList::new(b"blksize\x0065464\x00windowsize\x0016\x00").unwrap();
    let mut s = Sender::server(client_tid(), neg(65464, 16), oack, server_cfg());
    let file: Vec<u8> = (0..65464 * 40).map(|i| (i % 251) as u8).collect();
    let mut pos = 0;
    drain_tx(&mut s, t0);
    s.handle_datagram(t0, client_tid(), &ack(0));
    fill(&mut s, &file, &mut pos, usize::MAX);
    assert_eq!(
        s.buffer_bytes(),
        65468,
        "one block before the peer proved itself"
    );
    assert_eq!(pkts(&drain_tx(&mut s, t0)).len(), 1);
    s.handle_datagram(t0, client_tid(), &ack(1));
    fill(&mut s, &file, &mut pos, usize::MAX);
    assert_eq!(s.buffer_bytes(), 16 * 65468);
    let sent = pkts(&drain_tx(&mut s, t0));
    assert_eq!(sent.len(), 16);
    for (i, p) in sent.iter().enumerate() {
        let b = i + 2;
        assert_eq!(
            *p,
            P::Data(b as u16, file[(b - 1) * 65464..b * 65464].to_vec())
        );
    }
    // Acknowledge each window's last block until done: the ring is then given back.
    let mut last = 17u16;
    for _ in 0..10 {
        s.handle_datagram(t0, client_tid(), &ack(last));
        fill(&mut s, &file, &mut pos, usize::MAX);
        if let Some(P::Data(b, _)) = pkts(&drain_tx(&mut s, t0)).last() {
            last = *b;
        }
        if s.is_finished() {
            break;
        }
    }
    assert!(s.is_finished());
    assert_eq!(
        s.stats().blocks,
        41,
        "40 full blocks and the empty last one"
    );
    assert_eq!(s.buffer_bytes(), 0);
}

#[test]
fn a_receiver_acknowledges_a_first_window_that_stops_short() {
    // tftpx client, windowsize 16, against a server that sends one block first.
    let t0 = Instant::now();
    let opts = ClientOptions {
        blksize: Some(65464),
        windowsize: Some(16),
        ..ClientOptions::default()
    };
    let mut r = Receiver::client(server_addr(), b"f", Mode::Octet, opts, cfg()).unwrap();
    drain_rx(&mut r, t0);
    let t1 = t0 + MS;
    let oack = enc(Packet::Oack(
        OptionList::new(b"blksize\x0065464\x00windowsize\x0016\x00").unwrap(),
    ));
    r.handle_datagram(t1, server_tid(), &oack);
    assert_eq!(pkts(&drain_rx(&mut r, t1)), vec![P::Ack(0)]);
    let t2 = t1 + MS;
    let block = vec![5u8; 65464];
    assert!(r
        .handle_datagram(t2, server_tid(), &data(1, &block))
        .is_some());
    assert!(drain_rx(&mut r, t2).is_empty());
    // Two round trips (2 ms, at least EARLY_ACK_MIN) later, not at the 100 ms timeout.
    let due = r.poll_timeout().unwrap();
    assert!(due <= t2 + 5 * MS, "{:?}", due - t2);
    r.handle_timeout(due);
    assert_eq!(pkts(&drain_rx(&mut r, due)), vec![P::Ack(1)]);
    assert_eq!(r.stats().timeouts, 0);
    // The next window is a whole one: acknowledged at its end only.
    for b in 2..=17u16 {
        r.handle_datagram(due, server_tid(), &data(b, &block));
        let out = pkts(&drain_rx(&mut r, due));
        if b < 17 {
            assert!(out.is_empty(), "block {b}: {out:?}");
        } else {
            assert_eq!(out, vec![P::Ack(17)]);
        }
    }
}

// ---- loss-adaptive window (issue 14) ----

fn data_blocks(v: &[P]) -> Vec<u16> {
    v.iter()
        .filter_map(|p| match p {
            P::Data(b, _) => Some(*b),
            _ => None,
        })
        .collect()
}

/// Fills and drains `s` at `now`, returning the DATA block numbers sent.
fn send_now(s: &mut Sender, file: &[u8], pos: &mut usize, now: Instant) -> Vec<u16> {
    fill(s, file, pos, usize::MAX);
    data_blocks(&pkts(&drain_tx(s, now)))
}

#[test]
fn cwnd_opens_at_the_first_ack_halves_on_loss_and_grows_on_clean_flights() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 16), OptionList::empty(), cfg());
    let file: Vec<u8> = (0..8 * 400).map(|i| i as u8).collect();
    let mut pos = 0;
    // The first flight (16 blocks of 12 bytes fit in FIRST_FLIGHT_BYTES) is the initial cwnd.
    assert_eq!(s.cwnd, 16);
    assert_eq!(
        send_now(&mut s, &file, &mut pos, t0),
        (1..=16).collect::<Vec<_>>()
    );
    let t1 = t0 + MS;
    s.handle_datagram(t1, client_tid(), &ack(16));
    assert_eq!(s.cwnd, 16, "a clean first window keeps the whole window");
    assert_eq!(
        send_now(&mut s, &file, &mut pos, t1),
        (17..=32).collect::<Vec<_>>()
    );
    // Block 21 lost: the gap ACK halves cwnd and the resend is one burst of 8.
    let t2 = t1 + MS;
    s.handle_datagram(t2, client_tid(), &ack(20));
    assert_eq!(s.cwnd, 8);
    assert_eq!(
        send_now(&mut s, &file, &mut pos, t2),
        (21..=28).collect::<Vec<_>>()
    );
    // The next burst waits for the pace (two of the shortest round trips, 1 ms here)...
    let p = s.poll_timeout().unwrap();
    assert_eq!(p, t2 + 2 * MS);
    s.handle_timeout(p - Duration::from_micros(1));
    assert!(send_now(&mut s, &file, &mut pos, p).is_empty());
    s.handle_timeout(p);
    assert_eq!(
        send_now(&mut s, &file, &mut pos, p),
        (29..=36).collect::<Vec<_>>()
    );
    // ... or for an ACK that moves the window, whichever comes first.
    s.handle_datagram(p, client_tid(), &ack(24));
    assert_eq!(s.cwnd, 4, "another gap: halved again");
    assert_eq!(
        send_now(&mut s, &file, &mut pos, p),
        (25..=28).collect::<Vec<_>>()
    );
    // Timeouts halve it down to 1, never below.
    let mut t = p;
    for want in [2, 1, 1] {
        t = s.deadline.unwrap();
        s.handle_timeout(t);
        assert_eq!(s.cwnd, want);
        assert_eq!(send_now(&mut s, &file, &mut pos, t).len(), want as usize);
    }
    // Clean flights (everything sent acknowledged) grow it by one block, up to the window.
    let mut seen = Vec::new();
    for _ in 0..40 {
        let sent = send_now(&mut s, &file, &mut pos, t);
        if let Some(&last) = sent.last() {
            t += MS;
            s.handle_datagram(t, client_tid(), &ack(last));
            seen.push(s.cwnd);
        } else if let Some(n) = s.poll_timeout() {
            t = n;
            s.handle_timeout(t);
        }
        if s.is_finished() {
            break;
        }
    }
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "{seen:?}"
    );
    assert_eq!(*seen.last().unwrap(), 16, "{seen:?}");
    assert!(seen.iter().all(|&c| (1..=16).contains(&c)));
}

#[test]
fn an_ack_that_moves_back_halves_cwnd_once_per_flight() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 16), OptionList::empty(), cfg());
    let file = vec![5u8; 8 * 100];
    let mut pos = 0;
    send_now(&mut s, &file, &mut pos, t0);
    s.handle_datagram(t0, client_tid(), &ack(16));
    send_now(&mut s, &file, &mut pos, t0);
    s.handle_datagram(t0, client_tid(), &ack(10));
    assert_eq!(s.cwnd, 8);
    s.handle_datagram(t0, client_tid(), &ack(9));
    assert_eq!(s.cwnd, 8, "once per flight");
    assert_eq!(s.stats().data_sent, 32, "an old ACK draws nothing");
}

#[test]
fn a_block_lost_again_is_resent_after_two_late_repeats_of_the_gap_ack() {
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 16), OptionList::empty(), cfg());
    let file = vec![7u8; 8 * 100];
    let mut pos = 0;
    send_now(&mut s, &file, &mut pos, t0);
    s.handle_datagram(t0 + MS, client_tid(), &ack(4)); // 5 lost: go back, cwnd 8
    let t1 = t0 + MS;
    assert_eq!(
        send_now(&mut s, &file, &mut pos, t1),
        (5..=12).collect::<Vec<_>>()
    );
    // A copy of ACK 4 at once, and even a later single copy, draw nothing.
    s.handle_datagram(t1, client_tid(), &ack(4));
    s.handle_datagram(t1 + 10 * MS, client_tid(), &ack(4));
    assert!(send_now(&mut s, &file, &mut pos, t1 + 10 * MS).is_empty());
    // A second late repeat: block 5 was lost again.
    s.handle_datagram(t1 + 11 * MS, client_tid(), &ack(4));
    assert_eq!(s.cwnd, 4);
    assert_eq!(
        send_now(&mut s, &file, &mut pos, t1 + 11 * MS),
        vec![5, 6, 7, 8]
    );
}

#[test]
fn lockstep_never_resends_on_repeated_acks() {
    // RFC 1123 §4.2.3.1 holds as it is at windowsize 1: only the timer resends.
    let t0 = Instant::now();
    let mut s = Sender::server(client_tid(), neg(8, 1), OptionList::empty(), cfg());
    let file = vec![1u8; 8 * 10];
    let mut pos = 0;
    send_now(&mut s, &file, &mut pos, t0);
    s.handle_datagram(t0, client_tid(), &ack(1));
    assert_eq!(send_now(&mut s, &file, &mut pos, t0), vec![2]);
    for i in 1..10 {
        s.handle_datagram(t0 + 10 * i * MS, client_tid(), &ack(1));
    }
    assert!(send_now(&mut s, &file, &mut pos, t0 + 99 * MS).is_empty());
    assert_eq!(s.stats().data_sent, 2);
}

#[test]
fn at_20_percent_loss_a_window_of_64_sends_at_most_3x_the_blocks_deterministically() {
    // 196 blocks of 512 bytes, as in the fault matrix; loss both ways, virtual clock.
    // Before the adaptive window: 2,551-3,531 DATA for these seeds (13-18x).
    let blocks = 196;
    for seed in [1u64, 2, 4, 6, 8] {
        let file = test_file(blocks * 512 - 100, seed);
        let run = || {
            simulate(
                &file,
                512,
                64,
                Faults {
                    loss: 20,
                    dup: 0,
                    reorder: 0,
                },
                seed,
            )
        };
        let o = run();
        assert!(o.received == file && o.sender_done, "seed {seed}");
        assert_eq!(run().data_sent, o.data_sent, "seed {seed}: deterministic");
        assert!(
            o.data_sent <= 3 * blocks as u64,
            "seed {seed}: {} DATA for {blocks} blocks",
            o.data_sent
        );
    }
}
