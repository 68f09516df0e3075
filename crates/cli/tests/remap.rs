//! `tftpx serve --map RULES` against the real `in.tftpd -m RULES` (tftpd-hpa): the same
//! rules file, the same tree and the same requests, sent as raw datagrams from 127.0.0.1
//! (so `\i` and `\x` are the same for both), must have the same outcomes: the same bytes
//! served, or the same ERROR code; and after the uploads, the two trees must be identical.
//!
//! tftpd-hpa is Debian 12's 5.2+20150808; `.ci/install-peers.sh` installs it. Where it
//! differs from tftpx by design (see `tftpx::remap`), the rules avoid the difference and say
//! so.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Layout, Server};

const IN_TFTPD: &str = "/usr/sbin/in.tftpd";
/// How long one datagram is awaited before the request is sent again.
const WAIT: Duration = Duration::from_secs(5);
/// Sends of one request before giving up.
const TRIES: usize = 3;
/// Blocks a download may have (every file here is a few blocks).
const MAX_BLOCKS: usize = 64;

/// What a request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A download's bytes, or an upload accepted to the end.
    Ok(Vec<u8>),
    /// An ERROR packet: code and message.
    Error(u16, String),
}

impl Outcome {
    fn code(&self) -> Option<u16> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Error(c, _) => Some(*c),
        }
    }
}

fn request(opcode: u8, name: &[u8]) -> Vec<u8> {
    let mut p = vec![0, opcode];
    p.extend_from_slice(name);
    p.push(0);
    p.extend_from_slice(b"octet\0");
    p
}

fn error_of(d: &[u8]) -> Option<Outcome> {
    (d.len() >= 4 && d[1] == 5).then(|| {
        let msg = &d[4..];
        let msg = &msg[..msg.iter().position(|&b| b == 0).unwrap_or(msg.len())];
        Outcome::Error(
            u16::from_be_bytes([d[2], d[3]]),
            String::from_utf8_lossy(msg).into_owned(),
        )
    })
}

/// Sends `req` to `server` and returns the first reply and the address (TID) it came from,
/// sending the request again after each [`WAIT`] without an answer.
fn first_reply(sock: &UdpSocket, server: SocketAddr, req: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1024];
    for _ in 0..TRIES {
        sock.send_to(req, server).unwrap();
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            return (buf[..n].to_vec(), from);
        }
    }
    panic!("no answer from {server} to {req:?} after {TRIES} tries");
}

/// A client socket on the loopback address of `server`'s family.
fn socket(server: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Downloads `name` (octet, no options, lock-step) from `server`.
fn get(server: SocketAddr, name: &[u8]) -> Outcome {
    let sock = socket(server);
    let (mut d, tid) = first_reply(&sock, server, &request(1, name));
    let mut data = Vec::new();
    let mut buf = [0u8; 1024];
    for block in 1..=MAX_BLOCKS {
        if let Some(e) = error_of(&d) {
            return e;
        }
        assert_eq!(&d[..2], [0, 3], "DATA expected from {server}: {d:?}");
        assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, block);
        data.extend_from_slice(&d[4..]);
        let ack = [0, 4, d[2], d[3]];
        sock.send_to(&ack, tid).unwrap();
        if d.len() < 4 + 512 {
            return Outcome::Ok(data);
        }
        let (n, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("DATA {} from {server}: {e}", block + 1));
        assert_eq!(from, tid);
        d = buf[..n].to_vec();
    }
    panic!("{name:?} from {server}: more than {MAX_BLOCKS} blocks");
}

/// Uploads `content` (under 512 bytes: one DATA) as `name` to `server`.
fn put(server: SocketAddr, name: &[u8], content: &[u8]) -> Outcome {
    assert!(content.len() < 512);
    let sock = socket(server);
    let (d, tid) = first_reply(&sock, server, &request(2, name));
    if let Some(e) = error_of(&d) {
        return e;
    }
    assert_eq!(d, [0, 4, 0, 0], "ACK 0 expected from {server}");
    let mut data = vec![0, 3, 0, 1];
    data.extend_from_slice(content);
    let mut buf = [0u8; 1024];
    for _ in 0..TRIES {
        sock.send_to(&data, tid).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Some(e) = error_of(&buf[..n]) {
                return e;
            }
            assert_eq!(&buf[..n], [0, 4, 0, 1], "ACK 1 expected from {server}");
            return Outcome::Ok(Vec::new());
        }
    }
    panic!("no ACK 1 from {server} for {name:?}");
}

/// A running `in.tftpd -L -s -c -p -u root -m RULES -a 127.0.0.1:PORT DIR`, killed (by
/// PID) when dropped.
struct InTftpd {
    child: Child,
    addr: SocketAddr,
}

impl InTftpd {
    fn start(root: &Path, rules: &Path, host: IpAddr) -> Self {
        assert!(
            Path::new(IN_TFTPD).is_file(),
            "{IN_TFTPD} is missing: run `bash .ci/install-peers.sh` as root"
        );
        let mut last = String::new();
        for _ in 0..5 {
            let addr = UdpSocket::bind(SocketAddr::new(host, 0))
                .unwrap()
                .local_addr()
                .unwrap();
            let mut child = Command::new(IN_TFTPD)
                .args(["-L", "-s", "-c", "-p", "-u", "root", "-m"])
                .arg(rules)
                .arg("-a")
                .arg(addr.to_string())
                .arg(root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start in.tftpd");
            // Ready once it answers anything (the rules may refuse the probe).
            let sock = UdpSocket::bind(SocketAddr::new(host, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let start = Instant::now();
            let mut buf = [0u8; 1024];
            while start.elapsed() < Duration::from_secs(10) {
                if let Some(st) = child.try_wait().unwrap() {
                    last = format!("in.tftpd exited with {st}");
                    break;
                }
                sock.send_to(&request(1, b"ready-probe"), addr).unwrap();
                if sock.recv_from(&mut buf).is_ok() {
                    return Self { child, addr };
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            last = format!("{last}; no answer on {addr}");
        }
        panic!("in.tftpd did not start: {last}");
    }
}

impl Drop for InTftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file below `dir`: relative path -> content.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// One request and what both servers must answer.
enum Req {
    /// Download NAME: the content of FILE (relative to the root), or ERROR code.
    Get(&'static str, Result<&'static str, u16>),
    /// Upload NAME: accepted and stored as FILE, or ERROR code.
    Put(&'static str, Result<&'static str, u16>),
}

/// Runs `reqs` from 127.0.0.1 against in.tftpd and tftpx serving identical trees (`files`)
/// with `rules`; asserts each outcome is the expected one and the same for both, and that
/// the trees are identical afterwards. Returns tftpx's log.
fn differential(rules: &str, files: &[(&str, &[u8])], reqs: &[Req]) -> String {
    differential_from(IpAddr::V4(Ipv4Addr::LOCALHOST), rules, files, reqs)
}

/// [`differential`] with requests from `host` (127.0.0.1 or ::1), where both servers listen.
fn differential_from(host: IpAddr, rules: &str, files: &[(&str, &[u8])], reqs: &[Req]) -> String {
    let base = Layout::new();
    let rules_path = base.base.join("remap.rules");
    std::fs::write(&rules_path, rules).unwrap();
    let hpa_root: PathBuf = base.base.join("hpa");
    for root in [&base.root, &hpa_root] {
        for (name, content) in files {
            let p = root.join(name);
            if name.ends_with('/') {
                std::fs::create_dir_all(&p).unwrap();
                continue;
            }
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
    }
    let hpa = InTftpd::start(&hpa_root, &rules_path, host);
    let rules_arg = rules_path.to_str().unwrap();
    let listen = SocketAddr::new(host, 0).to_string();
    let mut args = vec!["--map", rules_arg, "--allow-create", "--rate-limit", "0"];
    if host.is_ipv6() {
        // Besides the 127.0.0.1:0 every common::Server listens on.
        args.extend(["--listen", &listen]);
    }
    let tftpx = Server::start(&base.root, &args);
    let tftpx_addr = if host.is_ipv6() {
        let on = format!(" on [{host}]:");
        assert!(
            common::wait_until(Duration::from_secs(10), || tftpx.log().contains(&on)),
            "tftpx does not listen on {host}"
        );
        let log = tftpx.log();
        let rest = &log[log.find(&on).unwrap() + on.len()..];
        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
        SocketAddr::new(host, port.parse().unwrap())
    } else {
        SocketAddr::new(host, tftpx.port)
    };
    let originals: BTreeMap<String, Vec<u8>> = tree(&base.root);
    println!(
        "{:<28} {:<8} {:<40} {:<40}",
        "request", "", "in.tftpd", "tftpx"
    );
    for (i, req) in reqs.iter().enumerate() {
        let (kind, name, want) = match req {
            Req::Get(n, w) => ("RRQ", *n, *w),
            Req::Put(n, w) => ("WRQ", *n, *w),
        };
        let upload = format!("upload {i} of {name}\n").into_bytes();
        let run = |addr| match req {
            Req::Get(..) => get(addr, name.as_bytes()),
            Req::Put(..) => put(addr, name.as_bytes(), &upload),
        };
        let (h, x) = (run(hpa.addr), run(tftpx_addr));
        let show = |o: &Outcome| match o {
            Outcome::Ok(b) => format!("ok, {} bytes", b.len()),
            Outcome::Error(c, m) => format!("ERROR {c} {m:?}"),
        };
        println!("{name:<28} {kind:<8} {:<40} {:<40}", show(&h), show(&x));
        match want {
            Ok(file) => {
                let expected = match req {
                    Req::Get(..) => originals
                        .get(file)
                        .unwrap_or_else(|| panic!("no {file} in the tree"))
                        .clone(),
                    Req::Put(..) => Vec::new(),
                };
                assert_eq!(
                    h,
                    Outcome::Ok(expected.clone()),
                    "in.tftpd: {kind} {name:?}"
                );
                assert_eq!(x, Outcome::Ok(expected), "tftpx: {kind} {name:?}");
                if let Req::Put(..) = req {
                    for root in [&hpa_root, &base.root] {
                        assert_eq!(
                            std::fs::read(root.join(file)).ok().as_deref(),
                            Some(&upload[..]),
                            "{kind} {name:?} stored as {file} under {}",
                            root.display()
                        );
                    }
                }
            }
            Err(code) => {
                assert_eq!(h.code(), Some(code), "in.tftpd: {kind} {name:?}: {h:?}");
                assert_eq!(x.code(), Some(code), "tftpx: {kind} {name:?}: {x:?}");
                // The messages too ("Access denied", a rule's own, "Remap table failure").
                assert_eq!(x, h, "{kind} {name:?}");
            }
        }
    }
    // Uploads landed at the same names, and nothing else changed.
    assert_eq!(
        tree(&hpa_root).keys().collect::<Vec<_>>(),
        tree(&base.root).keys().collect::<Vec<_>>()
    );
    assert_eq!(tree(&hpa_root), tree(&base.root));
    tftpx.log()
}

/// PXE and Windows clients: backslash paths, `/tftpboot/` prefixes, case-insensitive
/// names, per-client names from `\x` and `\i`, refusals with `a` and `a~`, `\L`.
#[test]
fn same_outcomes_as_tftpd_hpa_for_boot_clients() {
    let rules = r"# Windows Deployment Services: \Boot\BCD is boot/bcd
rg \\ /                        # every backslash is a separator
r ^/tftpboot/                  # some configs carry the old root in their names
r ^/                           # and a leading slash
ri ^boot/bcd$ boot/bcd         # any case
r ^lower/(.*)$ \L\1            # lower-case what follows lower/
# PXELINUX: per-client files (the client is 127.0.0.1: 7F000001)
r ^pxelinux\.cfg/mine$ pxelinux.cfg/\x
r ^whoami$ by-ip/\i
a ^secret/                     # never
a ^private/(.*)$ no\ \1\ for\ \i  # with a message
a~ ^(boot/|pxelinux|by-ip/|vmlinuz$|upload/)
";
    // (No message on the a~ rule: tftpd-hpa 5.2 garbles one for an inverted rule, which has
    // no match: `no\ way` arrives as "o way"; tftpx sends it whole. See the unit tests.)
    let files: &[(&str, &[u8])] = &[
        ("boot/bcd", b"the BCD store\n"),
        ("boot/x64/wdsnbp.com", &[0x4d; 1500]),
        ("vmlinuz", &common::pseudo_random(2000)),
        ("pxelinux.0", b"pxelinux\n"),
        ("pxelinux.cfg/7F000001", b"config for 127.0.0.1\n"),
        ("pxelinux.cfg/default", b"default config\n"),
        ("by-ip/127.0.0.1", b"hello 127.0.0.1\n"),
        ("secret/key", b"do not serve\n"),
        ("private/key", b"do not serve\n"),
        ("other", b"not a boot file\n"),
        ("upload/", b""),
    ];
    use Req::*;
    let log = differential(
        rules,
        files,
        &[
            Get("\\Boot\\BCD", Ok("boot/bcd")),
            Get("\\boot\\x64\\wdsnbp.com", Ok("boot/x64/wdsnbp.com")),
            Get("/tftpboot/vmlinuz", Ok("vmlinuz")),
            Get("/tftpboot/BOOT/Bcd", Ok("boot/bcd")),
            Get("/pxelinux.0", Ok("pxelinux.0")),
            Get("lower/VMLINUZ", Ok("vmlinuz")),
            Get("pxelinux.cfg/mine", Ok("pxelinux.cfg/7F000001")),
            Get("pxelinux.cfg/default", Ok("pxelinux.cfg/default")),
            Get("whoami", Ok("by-ip/127.0.0.1")),
            Get("secret/key", Err(2)),
            Get("/tftpboot/secret/key", Err(2)),
            Get("other", Err(2)),
            Get("private/key", Err(2)),
            Get("boot/missing", Err(1)),
            Put("secret/new", Err(2)),
            Put("\\upload\\one", Ok("upload/one")),
        ],
    );
    // The log shows both names.
    assert!(
        log.contains("\"/tftpboot/vmlinuz\" -> \"vmlinuz\" octet: ok"),
        "{log}"
    );
    assert!(
        log.contains("RRQ from 127.0.0.1:") && log.contains("remapped to \"by-ip/127.0.0.1\""),
        "{log}"
    );
    assert!(log.contains("refused by remap rule at line 10"), "{log}");
}

/// The flow flags: `e` ends, `s` starts over, `g` repeats, `G`/`P` pick the request kind,
/// `4`/`6` the address family, `~` inverts; an endless `s` loop is refused (ERROR 2).
#[test]
fn same_outcomes_as_tftpd_hpa_for_rule_flags() {
    // tftpd-hpa 5.2 restarts an `s` rule at the second rule, not the first (tftpx: the
    // first, as documented): the first rule here never matches, so both agree.
    let rules = r"r ^never-requested$ x
r ^b-(.*)$ \1                  # 2: before the s rule: reached again only by a restart
rs ^a-(.*)$ \1                 # 3: strip a-, start over
re ^alias$ vmlinuz             # 4: e: stop here...
r ^vmlinuz$ missing            # 5: ...so an alias is not sent on to missing
rg ^x-                         # 6: g: strip every leading x-
r ^y-                          # 7: no g: strip one y-
rG ^dl-only$ vmlinuz           # 8: downloads only
rP ^ul-only$ upload/renamed    # 9: uploads only
r6 ^v4-name$ missing           # 10: IPv6 clients only: not these
r4 ^v4-name$ vmlinuz           # 11: IPv4 clients only
rs ^loop$ loop                 # 12: restarts forever
r ^hash$ a\#b\ c               # 13: escaped # and space
e~ ^inv-                       # 14: stop unless the name starts with inv-
r ^inv-(.*)$ \1                # 15
r ^stopped$ x                  # 16: reached only by inv- names
";
    let files: &[(&str, &[u8])] = &[
        ("vmlinuz", &common::pseudo_random(1300)),
        ("b-only", b"b-only\n"),
        ("only", b"only\n"),
        ("y-file", b"y-file\n"),
        ("file", b"file\n"),
        ("inv-x", b"not this one\n"),
        ("x", b"x\n"),
        ("a#b c", b"hash\n"),
        ("upload/", b""),
    ];
    use Req::*;
    differential(
        rules,
        files,
        &[
            // s: a-b-only -> b-only, restart: rule 2 -> only.
            Get("a-b-only", Ok("only")),
            // Without s, rule 2 is not seen again: y-b-only -> b-only.
            Get("y-b-only", Ok("b-only")),
            Get("alias", Ok("vmlinuz")),
            Get("vmlinuz", Err(1)),
            Get("x-x-x-file", Ok("file")),
            Get("y-y-file", Ok("y-file")),
            Get("dl-only", Ok("vmlinuz")),
            Put("dl-only", Ok("dl-only")),
            Get("ul-only", Err(1)),
            Put("ul-only", Ok("upload/renamed")),
            Get("v4-name", Ok("vmlinuz")),
            Get("inv-x", Ok("x")),
            Get("inv-stopped", Ok("x")),
            // ~e stopped before rule 16.
            Get("stopped", Err(1)),
            Get("loop", Err(2)),
            Get("hash", Ok("a#b c")),
        ],
    );
}

/// IPv6 clients: `6` rules apply and `4` rules do not, `\x` is 32 hex digits, `\i` the
/// colon form.
#[test]
fn same_outcomes_as_tftpd_hpa_for_ipv6_clients() {
    let rules = r"r6 ^who$ by-hex/\x
r4 ^who$ v4-file
r ^ip$ by-ip/\i
r4 ^v4-only$ v4-file
";
    let files: &[(&str, &[u8])] = &[
        ("by-hex/00000000000000000000000000000001", b"::1 in hex\n"),
        ("by-ip/::1", b"::1\n"),
        ("v4-file", b"for IPv4 clients\n"),
    ];
    use Req::*;
    differential_from(
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        rules,
        files,
        &[
            Get("who", Ok("by-hex/00000000000000000000000000000001")),
            Get("ip", Ok("by-ip/::1")),
            Get("v4-only", Err(1)),
        ],
    );
}

/// A rules file with an error stops `tftpx serve` at start-up, naming FILE:LINE and the
/// problem; in.tftpd refuses the same file too.
#[test]
fn bad_rules_file_fails_start_up_with_its_line() {
    let base = Layout::new();
    for (text, line, what) in [
        ("r ^a b\n# fine\nrx ^a b\n", 3, "unknown flag 'x'"),
        ("\n\nr ^a(b c\n", 3, "regex \"^a(b\""),
        ("r ^a b\nr\n", 2, "no regex"),
    ] {
        let rules = base.base.join("bad.rules");
        std::fs::write(&rules, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tftpx"))
            .arg("serve")
            .arg(&base.root)
            .args(["--listen", "127.0.0.1:0", "--user", "root", "--map"])
            .arg(&rules)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let ok = common::wait_until(Duration::from_secs(30), || {
            child.try_wait().unwrap().is_some()
        });
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tftpx serve kept running with a bad rules file {text:?}");
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let prefix = format!("{}:{line}: ", rules.display());
        assert!(
            stderr.contains(&prefix) && stderr.contains(what),
            "{text:?}: expected {prefix}...{what} in {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        // in.tftpd refuses it too (EX_CONFIG) rather than serving without its rules.
        let hpa = Command::new(IN_TFTPD)
            .args(["-L", "-s", "-u", "root", "-a", "127.0.0.1:0", "-m"])
            .arg(&rules)
            .arg(&base.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut hpa = hpa.expect("start in.tftpd");
        let ok = common::wait_until(Duration::from_secs(30), || {
            hpa.try_wait().unwrap().is_some()
        });
        if !ok {
            let _ = hpa.kill();
        }
        let st = hpa.wait().unwrap();
        assert!(ok && !st.success(), "in.tftpd accepted {text:?}: {st}");
    }
}
