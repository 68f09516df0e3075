//! TFTP across a real network path, built by the test from private network namespaces and
//! veth pairs (TEST-NET addresses only): a client behind a NAT router, and three nodes that
//! share one anycast address behind an ECMP router.
//!
//! NAT: `client 198.51.100.2 -- router (masquerade) -- server 203.0.113.2`. The router
//! masquerades with nftables and assigns no conntrack helper, so only replies from the port
//! the request went to cross it: `--single-port` downloads (curl, tftp-hpa, the tftpx client)
//! and uploads succeed byte-identical; in multi-port mode the request arrives but every client
//! gets nothing.
//!
//! Anycast: `client 198.51.100.2 -- router -- node i 192.0.2.(4i+2)`, each node holding
//! 203.0.113.10/32 on its loopback and listening on `0.0.0.0:69`; the router's multipath route
//! hashes flows by L4 ports (`fib_multipath_hash_policy=1`). With `--single-port` downloads from
//! new source ports are all byte-identical and spread over the nodes; withdrawing one nexthop
//! (what BGP does when a node dies) moves new requests to the others, and a transfer in flight
//! to the withdrawn node gets ERROR 5 from the node its ACK now reaches (a hand-driven client
//! in Python, so the test decides when the route changes). In multi-port mode the client's
//! ACKs to a transfer's new port are hashed to any node, so most transfers fail.
//!
//! Needs root, iproute2, nftables, curl, tftp-hpa and python3 (`.ci/install-peers.sh`); a
//! missing tool fails the test. Every namespace is deleted and every process killed (by PID) when its
//! guard drops, also on failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{
    absent_or_empty, assert_file_content, pseudo_random, run_bounded, wait_until, Layout,
};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");
const INSTALL: &str = "run `bash .ci/install-peers.sh` as root";
/// Longest a set-up command (`ip`, `nft`, `sysctl`) may take.
const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// Longest a download or upload that should succeed may take (slow CI machines).
const CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// How long a server may take to print its `serving` line, and its log to catch up.
const LOG_WAIT: Duration = Duration::from_secs(20);
/// The anycast address every fleet node holds.
const ANYCAST: &str = "203.0.113.10";

// ---------------------------------------------------------------------------------------
// Namespaces and commands
// ---------------------------------------------------------------------------------------

/// Panics naming the package unless `program` runs.
fn require(program: &str, version_arg: &str, package: &str) {
    match Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!("`{program}` is not runnable ({e}): install `{package}`: {INSTALL}"),
    }
}

/// Runs `program args` to the end (bounded) and panics with its stderr unless it succeeds.
#[track_caller]
fn must(program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let o = run_bounded(cmd, SETUP_LIMIT);
    assert!(
        o.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A network namespace of our own (`ip netns add`), deleted when dropped; the veth ends
/// inside it go with it.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("tfx-fl{}-{n}-{tag}", std::process::id());
        must("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS args`.
    #[track_caller]
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        must("ip", &all);
    }

    /// `ip netns exec NS args` run to the end (bounded), success required.
    #[track_caller]
    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.0];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it: the
    /// child's PID is the program's).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair `a` (in `na`, address `addr_a`) -- `b` (in `nb`, address `addr_b`), both up.
fn veth(na: &Netns, a: &str, addr_a: &str, nb: &Netns, b: &str, addr_b: &str) {
    must(
        "ip",
        &[
            "link", "add", a, "netns", &na.0, "type", "veth", "peer", "name", b, "netns", &nb.0,
        ],
    );
    na.ip(&["addr", "add", addr_a, "dev", a]);
    na.ip(&["link", "set", a, "up"]);
    nb.ip(&["addr", "add", addr_b, "dev", b]);
    nb.ip(&["link", "set", b, "up"]);
}

// ---------------------------------------------------------------------------------------
// The server inside a namespace
// ---------------------------------------------------------------------------------------

/// `tftpx serve` inside a namespace, killed by its PID when dropped; its stderr is collected
/// for the whole of its life.
struct NsServer {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl NsServer {
    fn start(ns: &Netns, root: &Path, listen: &str, extra: &[&str]) -> NsServer {
        let mut child = ns
            .command(BIN)
            .arg("serve")
            .arg(root)
            .args(["--listen", listen, "--user", "root"])
            // Every request of these tests comes from one client address.
            .args(["--rate-limit", "0", "--max-transfers-per-client", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tftpx serve in a namespace");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let serving = line.contains("serving ");
                {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if serving {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let server = NsServer { child, log };
        if rx.recv_timeout(LOG_WAIT).is_err() {
            panic!("tftpx serve did not start; its log:\n{}", server.log());
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Log lines for requests of `name` from `client` (any port) that contain `what`.
    fn count(&self, client: &str, name: &str, what: &str) -> usize {
        let head = format!("RRQ from {client}:");
        let quoted = format!(" {name:?} ");
        self.log()
            .lines()
            .filter(|l| l.contains(&head) && l.contains(&quoted) && l.contains(what))
            .count()
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// Runs `program args` inside `ns` (bounded by `limit`; exit status not checked).
fn run_in(ns: &Netns, program: &str, args: &[&str], limit: Duration) -> Output {
    let mut cmd = ns.command(program);
    cmd.args(args);
    run_bounded(cmd, limit)
}

fn show(o: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn curl_get(ns: &Netns, server: &str, remote: &str, local: &Path, max_time: u32) -> Output {
    let url = format!("tftp://{server}/{remote}");
    let max = max_time.to_string();
    run_in(
        ns,
        "curl",
        &["-sS", "--max-time", &max, "-o", s(local), &url],
        CLIENT_LIMIT,
    )
}

fn hpa_get(ns: &Netns, server: &str, remote: &str, local: &Path) -> Output {
    run_in(
        ns,
        "tftp",
        &["-m", "binary", server, "69", "-c", "get", remote, s(local)],
        CLIENT_LIMIT,
    )
}

/// tftp-hpa with its total timeout cut to `secs` (its default is 25 s): commands on stdin,
/// as `-c` takes one command only.
fn hpa_get_short(ns: &Netns, server: &str, remote: &str, local: &Path, secs: u32) -> Output {
    let script = format!(
        "printf 'binary\\nrexmt 1\\ntimeout {secs}\\nget {remote} {}\\nquit\\n' | tftp {server} 69",
        s(local)
    );
    run_in(ns, "sh", &["-c", &script], CLIENT_LIMIT)
}

fn tftpx_get(ns: &Netns, server: &str, remote: &str, local: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["get", server, remote, "-o", s(local)];
    args.extend_from_slice(extra);
    run_in(ns, BIN, &args, CLIENT_LIMIT)
}

// ---------------------------------------------------------------------------------------
// NAT
// ---------------------------------------------------------------------------------------

/// `client 198.51.100.2/24 -- 198.51.100.1 router 203.0.113.1 -- 203.0.113.2/24 server`; the
/// router masquerades what leaves towards the server. The server has no route to the
/// client's network: it sees and answers the router's address only.
struct Nat {
    // Dropped in this order: namespaces last.
    client: Netns,
    _router: Netns,
    server: Netns,
}

const NAT_SERVER: &str = "203.0.113.2";
const NAT_PUBLIC: &str = "203.0.113.1";

fn nat() -> Nat {
    require("ip", "-V", "iproute2");
    require("nft", "--version", "nftables");
    let client = Netns::new("natc");
    let router = Netns::new("natr");
    let server = Netns::new("nats");
    veth(
        &client,
        "c0",
        "198.51.100.2/24",
        &router,
        "r0",
        "198.51.100.1/24",
    );
    veth(
        &server,
        "s0",
        "203.0.113.2/24",
        &router,
        "r1",
        "203.0.113.1/24",
    );
    client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Masquerade, no `ct helper` rule: the kernel's TFTP helper is never assigned (and
    // automatic helper assignment is off), as on a NAT without a TFTP ALG.
    router.exec(&["nft", "add", "table", "ip", "nat"]);
    router.exec(&[
        "nft",
        "add chain ip nat post { type nat hook postrouting priority srcnat; policy accept; }",
    ]);
    router.exec(&[
        "nft",
        "add",
        "rule",
        "ip",
        "nat",
        "post",
        "oifname",
        "r1",
        "masquerade",
    ]);
    Nat {
        client,
        _router: router,
        server,
    }
}

#[test]
fn nat_single_port_downloads_and_uploads_cross_masquerade() {
    require("curl", "--version", "curl");
    require("tftp", "-V", "tftp-hpa");
    let net = nat();
    let layout = Layout::new();
    let data = pseudo_random(300_000);
    common::write_file(&layout.root.join("image.bin"), &data);
    let server = NsServer::start(
        &net.server,
        &layout.root,
        &format!("{NAT_SERVER}:69"),
        &["--single-port", "--allow-create"],
    );

    let out = layout.local.join("curl.bin");
    let o = curl_get(&net.client, NAT_SERVER, "image.bin", &out, 60);
    assert!(o.status.success(), "curl through the NAT: {}", show(&o));
    assert_file_content(&out, &data, "curl download through the NAT");

    let out = layout.local.join("hpa.bin");
    let o = hpa_get(&net.client, NAT_SERVER, "image.bin", &out);
    assert!(o.status.success(), "tftp-hpa through the NAT: {}", show(&o));
    assert_file_content(&out, &data, "tftp-hpa download through the NAT");

    let out = layout.local.join("tftpx.bin");
    let o = tftpx_get(&net.client, NAT_SERVER, "image.bin", &out, &[]);
    assert!(
        o.status.success(),
        "tftpx get through the NAT: {}",
        show(&o)
    );
    assert_file_content(&out, &data, "tftpx download through the NAT");

    // A windowed download too: a window of DATA from the one port.
    let out = layout.local.join("tftpx-window.bin");
    let opts = ["--blksize", "1400", "--windowsize", "16"];
    let o = tftpx_get(&net.client, NAT_SERVER, "image.bin", &out, &opts);
    assert!(o.status.success(), "windowed tftpx get: {}", show(&o));
    assert_file_content(&out, &data, "windowed tftpx download through the NAT");

    // Uploads: the tftpx client and tftp-hpa.
    let up = pseudo_random(200_001);
    let src = layout.local.join("up.bin");
    common::write_file(&src, &up);
    let o = run_in(
        &net.client,
        BIN,
        &["put", NAT_SERVER, s(&src), "up-tftpx.bin"],
        CLIENT_LIMIT,
    );
    assert!(
        o.status.success(),
        "tftpx put through the NAT: {}",
        show(&o)
    );
    assert_file_content(&layout.root.join("up-tftpx.bin"), &up, "tftpx upload");
    let o = run_in(
        &net.client,
        "tftp",
        &[
            "-m",
            "binary",
            NAT_SERVER,
            "69",
            "-c",
            "put",
            s(&src),
            "up-hpa.bin",
        ],
        CLIENT_LIMIT,
    );
    assert!(
        o.status.success(),
        "tftp-hpa put through the NAT: {}",
        show(&o)
    );
    assert_file_content(&layout.root.join("up-hpa.bin"), &up, "tftp-hpa upload");

    // The server saw the router's public address, never the client's: the path crossed the
    // NAT. Four downloads, each summarised ok.
    let log = server.log();
    assert!(
        wait_until(LOG_WAIT, || server.count(NAT_PUBLIC, "image.bin", ": ok,")
            == 4),
        "four downloads from {NAT_PUBLIC} logged ok:\n{}",
        server.log()
    );
    assert!(
        !log.contains("198.51.100."),
        "the server saw the client's own address:\n{log}"
    );
}

#[test]
fn nat_multi_port_downloads_get_nothing() {
    require("curl", "--version", "curl");
    require("tftp", "-V", "tftp-hpa");
    let net = nat();
    let layout = Layout::new();
    let data = pseudo_random(10_000);
    common::write_file(&layout.root.join("image.bin"), &data);
    // Classic mode: each transfer answers from a new port, which the NAT has no mapping for.
    let server = NsServer::start(
        &net.server,
        &layout.root,
        &format!("{NAT_SERVER}:69"),
        &["--retries", "1"],
    );

    // The three clients at once, with short timeouts: this costs seconds.
    let (c, r, l) = (&net.client, &layout.local, NAT_SERVER);
    let (curl, hpa, tftpx) = thread::scope(|sc| {
        let curl = sc.spawn(|| curl_get(c, l, "image.bin", &r.join("curl.bin"), 5));
        let hpa = sc.spawn(|| hpa_get_short(c, l, "image.bin", &r.join("hpa.bin"), 4));
        let tftpx = sc.spawn(|| {
            let opts = ["--timeout", "1s", "--retries", "2"];
            tftpx_get(c, l, "image.bin", &r.join("tftpx.bin"), &opts)
        });
        (
            curl.join().expect("curl thread"),
            hpa.join().expect("tftp-hpa thread"),
            tftpx.join().expect("tftpx thread"),
        )
    });
    assert!(!curl.status.success(), "curl should fail: {}", show(&curl));
    // curl: 28 (operation timed out).
    assert_eq!(curl.status.code(), Some(28), "curl: {}", show(&curl));
    assert!(absent_or_empty(&r.join("curl.bin")), "curl got data");
    // tftp-hpa exits 0 whatever happens: it says it timed out and wrote nothing.
    assert!(
        String::from_utf8_lossy(&hpa.stdout).contains("Transfer timed out")
            || String::from_utf8_lossy(&hpa.stderr).contains("Transfer timed out"),
        "tftp-hpa should time out: {}",
        show(&hpa)
    );
    assert!(absent_or_empty(&r.join("hpa.bin")), "tftp-hpa got data");
    assert_eq!(tftpx.status.code(), Some(1), "tftpx get: {}", show(&tftpx));
    assert!(
        String::from_utf8_lossy(&tftpx.stderr).contains("timed out"),
        "tftpx get should time out: {}",
        show(&tftpx)
    );
    assert!(!r.join("tftpx.bin").exists(), "tftpx left a file");

    // The requests did cross the NAT (from its public address); the replies did not come back.
    assert!(
        wait_until(LOG_WAIT, || server.count(
            NAT_PUBLIC,
            "image.bin",
            "octet ["
        ) >= 3),
        "the three requests should reach the server from {NAT_PUBLIC}:\n{}",
        server.log()
    );
    assert_eq!(
        server.count(NAT_PUBLIC, "image.bin", ": ok,"),
        0,
        "no download may succeed in multi-port mode:\n{}",
        server.log()
    );
}

// ---------------------------------------------------------------------------------------
// Anycast
// ---------------------------------------------------------------------------------------

/// `client 198.51.100.2 -- router -- node i (192.0.2.(4i+2)/30, lo 203.0.113.10/32)`, the
/// router's route to 203.0.113.10 multipath over the nodes, hashed by L4 ports.
struct Fleet {
    servers: Vec<NsServer>,
    client: Netns,
    router: Netns,
    _nodes: Vec<Netns>,
    layout: Layout,
    data: Vec<u8>,
}

const FLEET_CLIENT: &str = "198.51.100.2";
const NODES: usize = 3;

fn node_addr(i: usize) -> String {
    format!("192.0.2.{}", 4 * i + 2)
}

fn fleet(extra: &[&str]) -> Fleet {
    require("ip", "-V", "iproute2");
    let client = Netns::new("anyc");
    let router = Netns::new("anyr");
    veth(
        &client,
        "c0",
        "198.51.100.2/24",
        &router,
        "r0",
        "198.51.100.1/24",
    );
    client.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    router.exec(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"]);
    let layout = Layout::new();
    let data = pseudo_random(100_000);
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=NODES {
        let node = Netns::new(&format!("anyn{i}"));
        let r = format!("r{i}");
        veth(
            &router,
            &r,
            &format!("192.0.2.{}/30", 4 * i + 1),
            &node,
            "n0",
            &format!("{}/30", node_addr(i)),
        );
        node.ip(&["addr", "add", &format!("{ANYCAST}/32"), "dev", "lo"]);
        node.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("192.0.2.{}", 4 * i + 1),
        ]);
        // Each node serves its own copy of the same bytes, as nodes with their own disks.
        let root = layout.base.join(format!("node{i}"));
        std::fs::create_dir(&root).expect("node root");
        common::write_file(&root.join("image.bin"), &data);
        servers.push(NsServer::start(&node, &root, "0.0.0.0:69", extra));
        nodes.push(node);
    }
    let f = Fleet {
        servers,
        client,
        router,
        _nodes: nodes,
        layout,
        data,
    };
    f.route(&(1..=NODES).collect::<Vec<_>>());
    f
}

impl Fleet {
    /// Points the router's anycast route at `nodes` (1-based), one nexthop each.
    fn route(&self, nodes: &[usize]) {
        let dst = format!("{ANYCAST}/32");
        let mut args: Vec<String> = ["route", "replace", &dst].map(String::from).to_vec();
        for &i in nodes {
            args.extend(
                ["nexthop", "via", &node_addr(i), "dev", &format!("r{i}")].map(String::from),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.router.ip(&args);
    }

    /// Downloads served ok per node (from each node's log).
    fn served(&self) -> Vec<usize> {
        self.servers
            .iter()
            .map(|s| s.count(FLEET_CLIENT, "image.bin", ": ok,"))
            .collect()
    }

    /// Requests received per node (the line each request's transfer starts with).
    fn requests(&self) -> Vec<usize> {
        self.servers
            .iter()
            .map(|s| s.count(FLEET_CLIENT, "image.bin", "octet ["))
            .collect()
    }

    fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- node {} ---\n{}", i + 1, s.log()))
            .collect()
    }

    /// `count` downloads of image.bin from the anycast address, each a new client process
    /// (so a new source port, a new flow for the router's hash), alternating the tftpx client
    /// and curl; every one must succeed byte-identical. `tag` keeps the local names apart.
    fn storm(&self, count: usize, tag: &str) {
        for n in 0..count {
            let out = self.layout.local.join(format!("{tag}-{n}.bin"));
            let o = if n % 2 == 0 {
                tftpx_get(&self.client, ANYCAST, "image.bin", &out, &[])
            } else {
                curl_get(&self.client, ANYCAST, "image.bin", &out, 60)
            };
            assert!(
                o.status.success(),
                "download {tag} {n}: {}\n{}",
                show(&o),
                self.logs()
            );
            assert_file_content(&out, &self.data, &format!("anycast download {tag} {n}"));
            std::fs::remove_file(&out).expect("remove the downloaded copy");
        }
    }

    /// Waits (bounded) until the nodes have logged `total` successful downloads.
    fn wait_served(&self, total: usize) -> Vec<usize> {
        let ok = wait_until(LOG_WAIT, || self.served().iter().sum::<usize>() >= total);
        assert!(ok, "{total} downloads logged ok:\n{}", self.logs());
        self.served()
    }
}

#[test]
fn anycast_single_port_spreads_and_survives_a_withdrawn_node() {
    require("curl", "--version", "curl");
    let f = fleet(&["--single-port"]);

    // 60 downloads, each from a new source port: all byte-identical (the clients accept
    // replies from the anycast address only: a reply from a node's own address would be a
    // stranger to them), spread over at least two nodes.
    f.storm(60, "all");
    let served = f.wait_served(60);
    assert_eq!(
        served.iter().sum::<usize>(),
        60,
        "served per node {served:?}"
    );
    let serving = served.iter().filter(|&&n| n > 0).count();
    assert!(serving >= 2, "only {serving} node(s) served: {served:?}");
    eprintln!("60 downloads, served per node: {served:?}");

    // Node 1 dies: its nexthop is withdrawn. New requests go to the others only.
    let before = f.requests();
    f.route(&[2, 3]);
    f.storm(30, "withdrawn");
    let after_served = f.wait_served(90);
    let after = f.requests();
    eprintln!("after withdrawing node 1, served per node: {after_served:?}");
    assert_eq!(
        after[0],
        before[0],
        "the withdrawn node got new requests: {before:?} -> {after:?}\n{}",
        f.logs()
    );
    assert_eq!(
        after_served[1] + after_served[2],
        served[1] + served[2] + 30,
        "the other nodes served the 30 new downloads: {served:?} -> {after_served:?}"
    );
}

#[test]
fn anycast_multi_port_loses_transfers_to_other_nodes() {
    require("curl", "--version", "curl");
    // Classic mode: a transfer answers from a new port; the client's ACKs to that port are a
    // new flow, which the router hashes to any node, and only the node that sent the DATA
    // has that port. With 3 nodes about two thirds of transfers fail.
    let f = fleet(&["--retries", "1"]);
    let tries = 12;
    let results: Vec<bool> = thread::scope(|sc| {
        let handles: Vec<_> = (0..tries)
            .map(|n| {
                let f = &f;
                sc.spawn(move || {
                    let out = f.layout.local.join(format!("multi-{n}.bin"));
                    let opts = ["--timeout", "1s", "--retries", "2"];
                    let o = tftpx_get(&f.client, ANYCAST, "image.bin", &out, &opts);
                    o.status.success()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let failed = results.iter().filter(|ok| !**ok).count();
    eprintln!("multi-port behind ECMP: {failed} of {tries} downloads failed");
    // All 12 succeeding would need every transfer's ACK flow hashed to its own node:
    // (1/3)^12 by chance.
    assert!(
        failed > 0,
        "every multi-port download succeeded:\n{}",
        f.logs()
    );
}

/// A child process killed by its PID when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hand-driven TFTP client (Python's socket module) in the client namespace: it sends an
/// RRQ for image.bin (no options) to the anycast address, prints where DATA 1 came from, waits
/// for a line on stdin, sends ACK 1 to that address and port, and prints every datagram that
/// comes back until an ERROR (at most 50 datagrams, 20 s without one ends it).
const HAND_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(20)
s.bind(("0.0.0.0", 0))
s.sendto(b"\x00\x01image.bin\x00octet\x00", (sys.argv[1], 69))
d, a = s.recvfrom(2000)
print("port %d first %s:%d op %d block %d len %d" % (s.getsockname()[1], a[0], a[1], d[1], d[3] | d[2] << 8, len(d)), flush=True)
sys.stdin.readline()
s.sendto(b"\x00\x04" + d[2:4], a)
for _ in range(50):
    d, b = s.recvfrom(2000)
    print("got %s:%d op %d code %d" % (b[0], b[1], d[1], d[3] | d[2] << 8), flush=True)
    if d[1] == 5:
        break
"#;

#[test]
fn anycast_transfer_in_flight_to_a_withdrawn_node_gets_error_5_from_another() {
    require("python3", "--version", "python3");
    let f = fleet(&["--single-port"]);
    let mut child = f
        .client
        .command("python3")
        .args(["-c", HAND_CLIENT, ANYCAST])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3 in the client namespace");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let _child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let first = match rx.recv_timeout(CLIENT_LIMIT) {
        Ok(l) => l,
        Err(e) => panic!(
            "no DATA 1 ({e}); python: {}",
            err.join().unwrap_or_default()
        ),
    };
    // "port P first 203.0.113.10:69 op 3 block 1 len 516"
    assert!(
        first.contains(&format!("first {ANYCAST}:69 op 3 block 1 len 516")),
        "DATA 1 should come from the anycast address and port 69: {first}"
    );
    let port: u16 = first
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    // The node serving it: the one that logged the request from that port.
    let head = format!("RRQ from {FLEET_CLIENT}:{port} ");
    let mut serving = None;
    assert!(
        wait_until(LOG_WAIT, || {
            serving = f.servers.iter().position(|s| s.log().contains(&head));
            serving.is_some()
        }),
        "no node logged {head:?}:\n{}",
        f.logs()
    );
    let serving = serving.expect("found above") + 1;
    let others: Vec<usize> = (1..=NODES).filter(|&i| i != serving).collect();
    f.route(&others);
    std::io::Write::write_all(&mut stdin, b"go\n").expect("tell python to ACK");
    // The withdrawn node may still retransmit DATA 1 (it is alive; only its route is gone),
    // but the ACK reaches another node, which has no such transfer: ERROR 5 from the anycast
    // address and port 69.
    let mut lines = Vec::new();
    let error = loop {
        match rx.recv_timeout(CLIENT_LIMIT) {
            Ok(l) if l.contains(" op 5 ") => break l,
            Ok(l) => {
                assert!(lines.len() < 50, "no ERROR after {lines:?}");
                lines.push(l);
            }
            Err(e) => panic!(
                "no ERROR ({e}) after {lines:?}; python: {}\n{}",
                err.join().unwrap_or_default(),
                f.logs()
            ),
        }
    };
    assert_eq!(
        error,
        format!("got {ANYCAST}:69 op 5 code 5"),
        "after {lines:?}"
    );
    eprintln!("node {serving} withdrawn mid-transfer; then {lines:?}, {error}");
}
