#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/<target>/seed-*.

Seeds are named after what they exercise; the byte layouts are documented in
crates/proto/src/fuzzing.rs. Rerun after changing a layout: `python3 fuzz/make-seeds.py`.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def u8(v): return struct.pack(">B", v)
def u16(v): return struct.pack(">H", v)
def u32(v): return struct.pack(">I", v)
def u64(v): return struct.pack(">Q", v)


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def opts(*pairs):
    return b"".join(n + b"\0" + v + b"\0" for n, v in pairs)


def rrq(name, mode=b"octet", options=b"", op=1):
    return u16(op) + name + b"\0" + mode + b"\0" + options


# --- datagrams: well-formed, and the malformed requests of issue 4 -----------------------
huge_list = b"".join(b"opt%d\0%d\0" % (i, i) for i in range(400))
dup = opts((b"blksize", b"1024"), (b"BLKSIZE", b"8"), (b"blksize", b"65464"),
           (b"windowsize", b"4"), (b"WindowSize", b"64"), (b"tsize", b"0"), (b"tsize", b"99"))
over_512 = opts((b"blksize", b"1468"), (b"tsize", b"0")) + opts((b"x" * 200, b"y" * 200))
over_512 += opts((b"windowsize", b"16"))  # a valid option beyond byte 512
DATAGRAMS = {
    "rrq-plain": rrq(b"pxelinux.0"),
    "rrq-all-options": rrq(b"boot/kernel.img", options=opts(
        (b"blksize", b"1468"), (b"windowsize", b"16"), (b"timeout", b"3"),
        (b"utimeout", b"500000"), (b"tsize", b"0"))),
    "wrq-tsize": rrq(b"upload.bin", options=opts((b"tsize", b"123456789"), (b"blksize", b"8")), op=2),
    "wrq-netascii": rrq(b"a/b.txt", mode=b"NETASCII", op=2),
    "rrq-mail-mode": rrq(b"root", mode=b"mail"),
    "rrq-truncated-opcode": b"\0",
    "rrq-truncated-name": u16(1) + b"pxeli",
    "rrq-no-nul": u16(1) + b"file",
    "rrq-no-mode": u16(1) + b"file\0",
    "rrq-mode-without-nul": u16(1) + b"file\0octet",
    "rrq-empty-name": u16(1) + b"\0octet\0",
    "rrq-empty-mode": u16(1) + b"file\0\0",
    "rrq-dangling-option": rrq(b"f", options=opts((b"tsize", b"0")) + b"blksize"),
    "rrq-option-without-value-nul": rrq(b"f", options=b"blksize\0512"),
    "rrq-padding-nuls": rrq(b"f", options=opts((b"tsize", b"0")) + b"\0" * 20),
    "rrq-huge-option-list": rrq(b"f", options=huge_list),
    "rrq-duplicate-options": rrq(b"f", options=dup),
    "rrq-options-over-512-bytes": rrq(b"f", options=over_512),
    "rrq-overlong-name": rrq(b"a/" * 1000 + b"x"),
    "rrq-name-dotdot": rrq(b"../../etc/passwd"),
    "rrq-bad-values": rrq(b"f", options=opts(
        (b"blksize", b"7"), (b"blksize", b"99999999999999999999999"), (b"windowsize", b"0"),
        (b"timeout", b"256"), (b"utimeout", b"999"), (b"tsize", b"-1"), (b"tsize", b"+5"))),
    "rrq-huge-values": rrq(b"f", options=opts(
        (b"blksize", b"18446744073709551615"), (b"windowsize", b"18446744073709551616"),
        (b"tsize", b"00000000000000000001"))),
    "data-1": u16(3) + u16(1) + b"hello",
    "data-65535-empty": u16(3) + u16(65535),
    "data-truncated": u16(3) + b"\0",
    "ack-0": u16(4) + u16(0),
    "ack-trailing": u16(4) + u16(1) + b"\0",
    "error-no-nul": u16(5) + u16(2) + b"denied",
    "error-control-chars": u16(5) + u16(0) + b"\x1b[31mred\r\n\0",
    "oack": u16(6) + opts((b"blksize", b"1024"), (b"tsize", b"5")),
    "oack-empty": u16(6),
    "oack-option-without-value": u16(6) + b"blksize\0",
    "oack-unknown-and-case": u16(6) + opts((b"BlkSize", b"512"), (b"multicast", b"")),
    "unknown-opcode": u16(9) + b"x",
}
for name, d in DATAGRAMS.items():
    write("decode", name, d)

# --- netascii: [count][sizes...] text --------------------------------------------------
NETASCII = {
    "crlf-across-boundaries": u8(2) + bytes([1, 2, 3]) + b"a\nb\rc\r\n\r\0\n",
    "lone-cr-at-end": u8(0) + bytes([5]) + b"line\r",
    "empty-calls": u8(3) + bytes([0, 1, 0, 7]) + b"\r\r\r\n\n\n\0\0",
    "one-byte-buffers": u8(0) + bytes([0]) + b"x\r\ny\n" * 20,
    "binary": u8(7) + bytes(range(8)) + bytes(range(256)),
}
for name, d in NETASCII.items():
    write("netascii", name, d)


# --- negotiate: limits, file size, client options, datagram ---------------------------
def limits(blk=65464, win=64, upload=None):
    return u16(blk) + u16(win) + (u8(1) + u64(upload) if upload is not None else u8(0))


def client(blk=None, win=None, timeout=None, tsize=None):
    flags = (blk is not None) | (win is not None) << 1 | (timeout is not None) << 2 | (tsize is not None) << 3
    return u8(flags) + u16(blk or 0) + u16(win or 0) + u8(timeout or 0) + u64(tsize or 0)


def fsize(v):
    return u8(1) + u64(v) if v is not None else u8(0)


NEG_HEADERS = {
    "default": limits() + fsize(1234) + client(1468, 16, 3, 0),
    "tight": limits(512, 1, 1000) + fsize(None) + client(65464, 65535, 255, 5000),
    "tiny-limits": limits(0, 0, 0) + fsize(0) + client(8, 1, 1, 1),
}
for h, header in NEG_HEADERS.items():
    for name in ["rrq-all-options", "wrq-tsize", "rrq-duplicate-options", "rrq-bad-values",
                 "rrq-huge-values", "rrq-options-over-512-bytes", "rrq-huge-option-list",
                 "rrq-dangling-option", "oack", "oack-unknown-and-case", "oack-empty"]:
        write("negotiate", f"{h}-{name}", header + DATAGRAMS[name])

# --- sender / receiver: setup, then operations ----------------------------------------
def config(timeout=100, retries=3, dally=200, unanswered=2):
    return u16(timeout) + u8(retries | unanswered << 3) + u16(dally)


PEER = u8(4)  # source byte meaning "the peer"


def s_ack(block): return u8(1) + PEER + u16(block)
def s_ack_last(back=0): return u8(2) + u8(back)
def s_good_oack(): return u8(4) + limits(65464, 64) + fsize(None)
def s_error(): return u8(5) + PEER + u16(0) + u8(4) + b"gone"
def s_time(ms): return u8(6) + u16(ms)
def s_deadline(): return u8(7)
def s_abort(): return u8(8) + u16(3) + u16(9) + b"disk full"
def s_run(k): return u8(9) + u8(k)
def s_long_run(k2): return u8(249) + u16(k2)  # 2 x k2 steps
def s_stranger_ack(src): return u8(1) + u8(src) + u16(1)


def sender_server(file_len, blk=512, win=1, cfg=config()):
    return u8(0) + cfg + u32(file_len) + limits() + client(blk, win, None, 0)


def sender_client(file_len, blk=None, win=None, name=b"upload.bin", cfg=config()):
    return u8(1) + cfg + u32(file_len) + client(blk, win, None, file_len) + u8(len(name)) + name


SENDER = {
    "server-lockstep": sender_server(1300) + s_ack(0) + s_run(10),
    "server-plain-no-oack": u8(0) + config() + u32(1024) + limits() + client() + s_run(5),
    "server-window-16": sender_server(100_000, 1024, 16) + s_ack(0) + s_run(100),
    "server-rollover-blksize-8": sender_server(600_000, 8, 1) + s_ack(0) + s_long_run(40000),
    "server-rollover-window-4": sender_server(1_100_000, 8, 4) + s_ack(0) + s_long_run(40000),
    "server-gap-acks": sender_server(50_000, 512, 8) + s_ack(0) + s_run(2) + s_ack_last(3) + s_ack_last(1) + s_run(50),
    "server-timeouts-then-silence": sender_server(5000, 512, 4) + s_ack(0) + s_deadline() + s_deadline(),
    "server-strangers": sender_server(600) + s_stranger_ack(0) + s_stranger_ack(1) + s_stranger_ack(2) + s_ack(0) + s_run(3),
    "server-peer-error": sender_server(600) + s_ack(0) + s_error(),
    "server-abort": sender_server(600) + s_ack(0) + s_abort(),
    "server-empty-file": sender_server(0) + s_ack(0) + s_run(2),
    "server-gso-batches-64k": u8(4 | 8) + config() + u32(300_000) + limits() + client(1468, 64, None, 0)
    + u8(64) + s_ack(0) + s_run(10),
    "server-small-batches-wrapping-ring": u8(4) + config() + u32(50_000) + limits() + client(512, 5, None, 0)
    + u8(3) + u16(1600) + s_ack(0) + s_ack_last(2) + s_run(30),
    "server-silent-forged-peer": sender_server(5000, cfg=config(50, 7, 0, 1)) + s_time(60000),
    "client-oack": sender_client(20_000, 1468, 8) + s_good_oack() + s_run(40),
    "client-ack0": sender_client(3000) + s_ack(0) + s_run(10),
    "client-bad-oack": sender_client(3000, 1024) + u8(3) + PEER + u8(14) + b"blksize\x004096\x00",
    "client-empty-name": u8(1) + config() + u32(10) + client() + u8(0),
    "client-silent-server": sender_client(3000, cfg=config(50, 7, 0)) + s_time(60000),
}
for name, d in SENDER.items():
    write("sender", name, d)


def r_data_next(kind=0): return u8(2) + u8(1) + u8(kind)
def r_data_near(delta): return u8(3) + u8(delta) + u8(0)
def r_good_oack(): return u8(5) + limits(65464, 64) + fsize(777)
def r_error(): return u8(6) + PEER + u16(1) + u8(4) + b"gone"
def r_deadline(): return u8(8)
def r_abort(): return u8(9) + u16(3) + u16(4) + b"full"
def r_run(k, short=1): return u8(10) + u8(k) + u8(short)
def r_long_run(k2, short=1): return u8(250) + u16(k2) + u8(short)


def receiver_server(blk=512, win=1, setup=0, cfg=config()):
    return u8(setup) + cfg + limits() + client(blk, win, None, 100_000)


def receiver_client(blk=None, win=None, setup=1, name=b"pxelinux.0", cfg=config()):
    return u8(setup) + cfg + client(blk, win, None, 0) + u8(len(name)) + name


RECEIVER = {
    "server-lockstep": receiver_server() + r_run(20),
    "server-plain-ack0": u8(0) + config() + limits() + client() + r_run(3),
    "server-window-8-gaps": receiver_server(1024, 8) + r_data_next() + r_data_near(6) + r_data_near(5) + r_deadline() + r_run(30),
    "server-rollover-to-0": receiver_server(8, 1, setup=4) + r_long_run(40000),
    "server-rollover-to-1": receiver_server(8, 1, setup=0) + r_long_run(40000),
    "server-rollover-window-16": receiver_server(8, 16, setup=4) + r_long_run(40000),
    "server-too-long-data": receiver_server(512) + r_data_next(3),
    "server-dally-duplicate": receiver_server(512) + r_run(3) + r_data_near(3) + r_data_near(3) + r_deadline(),
    "server-peer-error": receiver_server() + r_data_next() + r_error(),
    "server-abort-while-dallying": receiver_server() + r_run(2) + r_abort(),
    "client-oack": receiver_client(1468, 16) + r_good_oack() + r_run(50),
    "client-data1-no-oack": receiver_client(1468) + r_data_next() + r_run(5),
    "client-repeated-oack": receiver_client(1024, 4) + r_good_oack() + r_good_oack() + r_run(10),
    "client-silent-server": receiver_client(cfg=config(50, 7, 0)) + r_deadline() + r_deadline(),
    "client-empty-name": u8(1) + config() + client() + u8(0),
    "client-netascii": receiver_client(setup=3) + r_run(4),
}
for name, d in RECEIVER.items():
    write("receiver", name, d)

# --- resolve: requested file names --------------------------------------------------------
RESOLVE = {
    "plain": b"pxelinux.0",
    "leading-slash": b"/pxelinux.0",
    "dotdot": b"../../etc/passwd",
    "dotdot-backslash": b"a\\..\\..\\etc\\passwd",
    "dotdot-inside": b"a/b/../c",
    "dots": b"./a/./b/.../....",
    "root-prefix": b"/tmp/tftpx-fuzz-resolve/boot/x",
    "root-prefix-dotdot": b"/tmp/tftpx-fuzz-resolve/../x",
    "root-itself": b"/tmp/tftpx-fuzz-resolve",
    "root-prefix-lookalike": b"/tmp/tftpx-fuzz-resolve-evil/x",
    "only-separators": b"//\\/",
    "empty": b"",
    "nul": b"a\0b",
    "overlong-name": b"a/" * 600,
    "overlong-component": b"d/" + b"x" * 256,
    "component-255": b"x" * 255,
    "non-utf8": b"\xff\xfe/\xc0\xaf..",
}
for name, d in RESOLVE.items():
    write("resolve", name, d)
