//! `tftpx serve`: parse flags into a [`tftpx::Server`], bind (or take the sockets systemd
//! passed, see [`crate::systemd`]), give up root (see [`crate::privileges`]) and run until
//! SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Result;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use tftpx::policy::Action;
use tftpx::proto::negotiate::RefusedOptions;
use tftpx::{
    Acl, Cidr, DirHandler, Handler, LiveSettings, PortRange, Reloader, RemapRules, Server,
    ServerError,
};
use tftpx_origin::{CachedOrigin, Origin};

use crate::metrics::{self, Metrics};
use crate::privileges::{self, Confinement, GateGuard, Identity};
use crate::systemd::{self, Notifier, Passed};
use crate::{config, parse_duration, CliError};

/// Serve a directory, or an HTTP or S3 origin, over TFTP.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory to serve (names resolve inside it only), or an origin to fetch each file
    /// from: an http:// or https:// base URL, or s3://BUCKET/PREFIX (configured by the AWS
    /// environment variables). Origins are read-only.
    #[arg(default_value = ".", value_name = "DIR|URL")]
    pub dir: PathBuf,

    /// Address and port to listen on; repeat for several [default: 0.0.0.0:69 and [::]:69].
    /// ADDR:PORT, [IPV6]:PORT, HOST:PORT (every address HOST resolves to), an address
    /// alone (port 69), or PORT / :PORT (every address of both families). [::]:PORT
    /// alone serves IPv4 too. Ignored, with a warning, when systemd passes listen sockets.
    #[arg(short, long = "listen", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Vec<Listen>,

    /// Let clients overwrite existing files.
    #[arg(long)]
    pub allow_write: bool,

    /// Let clients create new files (implies --allow-write).
    #[arg(long)]
    pub allow_create: bool,

    /// Serve files that have more than one hard link (refused by default: another name of
    /// the same file may lie outside DIR).
    #[arg(long)]
    pub allow_hard_links: bool,

    /// Retransmission timeout when the client negotiates none (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Retransmissions before a transfer is abandoned.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,

    /// Largest blksize granted to clients, in bytes (8..=65464).
    #[arg(long, default_value_t = 65464, value_parser = clap::value_parser!(u16).range(8..=65464), value_name = "BYTES")]
    pub max_blksize: u16,

    /// Largest windowsize granted to clients, in blocks (1..=65535).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..), value_name = "BLOCKS")]
    pub max_windowsize: u16,

    /// Largest upload accepted, in bytes (a bigger announced tsize gets ERROR 3).
    #[arg(long, value_name = "BYTES")]
    pub max_upload_size: Option<u64>,

    /// Transfers running at once; more requests get "server busy".
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_transfers: usize,

    /// Transfers running at once for one client IP address; 0 = no limit.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_transfers_per_client: usize,

    /// Requests per second accepted from one source IP address (bursts of twice that);
    /// beyond it requests are dropped and the source is told once per 10 s. 0 = no limit.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub rate_limit: u32,

    /// Retransmissions to a client that has not yet acknowledged DATA (or sent DATA): its
    /// address may be forged, so this bounds how much a spoofed request can reflect.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub max_unanswered_retries: u32,

    /// How long a transfer waiting for its client polls its socket before it sleeps, e.g.
    /// 100us, 50us; 0 = never. Saves the sleep and wake-up per block of lock-step transfers
    /// on quiet (above all virtual) machines; only while the server runs at most half as
    /// many transfers as it has CPUs, and polls that miss back off.
    #[arg(long, default_value = "100us", value_parser = crate::parse_busy_poll, value_name = "DURATION")]
    pub busy_poll: Duration,

    /// Longest timeout a client may negotiate (RFC 2349 allows up to 255 s); a longer one
    /// is left out of the OACK.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_timeout: Duration,

    /// Memory for transfer buffers, all transfers together (e.g. 256M, 1G); when spent, new
    /// transfers get a smaller blksize x windowsize instead of a refusal.
    #[arg(long, default_value = "256M", value_parser = parse_size, value_name = "BYTES")]
    pub max_memory: u64,

    /// IPv4 addresses sharing this many leading bits count as one client for
    /// --rate-limit and --max-transfers-per-client.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32), value_name = "BITS")]
    pub client_prefix_v4: u8,

    /// IPv6 addresses sharing this many leading bits count as one client for
    /// --rate-limit and --max-transfers-per-client (a host may send from its whole /64;
    /// use 128 on a LAN where many clients share one /64).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128), value_name = "BITS")]
    pub client_prefix_v6: u8,

    /// Started as root: the account to run as once the sockets are bound and DIR is open
    /// (files are then opened with its rights, with no capability left) [default: tftp if
    /// that account exists, else nobody]. `--user root` keeps root (not recommended).
    /// Started as another user, only that user.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// Started as root: the group to run as [default: the --user's primary group].
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Do not confine the server with Landlock (where the kernel has it, the server may then
    /// only read, and with uploads write, files beneath DIR).
    #[arg(long)]
    pub no_landlock: bool,

    /// Remap requested file names with the rules in FILE, tftpd-hpa's `--map-file` syntax
    /// (`OPERATION REGEX [REPLACEMENT]` per line; see README "Remap rules"). A bad file
    /// stops start-up with FILE:LINE and what is wrong.
    #[arg(long = "map", value_name = "FILE")]
    pub map: Option<PathBuf>,

    /// `--allow CIDR` / `--deny CIDR`, in command-line order.
    #[command(flatten)]
    pub acl: AclArgs,

    /// Accept uploads (WRQ) only from this address block (CIDR, or an address alone);
    /// repeat for several. Others get ERROR 2. Default: from anyone allowed to talk.
    #[arg(long = "allow-write-from", value_name = "CIDR", value_parser = parse_cidr)]
    pub allow_write_from: Vec<Cidr>,

    /// Ignore this option in requests, as if not sent, so it never appears in an OACK (for
    /// boot ROMs that mishandle it); repeat for several. One of blksize, tsize, timeout,
    /// windowsize, utimeout (case-insensitive).
    #[arg(long = "refuse", value_name = "OPTION", value_parser = parse_refused)]
    pub refuse: Vec<RefusedOptions>,

    /// File mode creation mask (octal) for uploaded files: new files get 0644 less it.
    #[arg(long, default_value = "022", value_parser = parse_umask, value_name = "MODE")]
    pub umask: u32,

    /// Bind transfer sockets (TIDs) to ports LOW..=HIGH only (for firewalls); with every
    /// port taken, requests get "Server busy". 1 <= LOW <= HIGH <= 65535.
    #[arg(long, value_name = "LOW:HIGH", value_parser = parse_port_range)]
    pub port_range: Option<PortRange>,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR:PORT/metrics and the
    /// running transfers as JSON at /transfers (port 0: one the OS picks, logged at start).
    /// Bound before privileges are dropped; keep it on loopback or a management network.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// With an origin (http://, https://, s3://): keep each fetched file in this directory
    /// (created if missing, owned by --user), revalidate it with the origin's ETag /
    /// Last-Modified on each request, and let concurrent requests for one file share one
    /// origin fetch. The least recently used files go beyond --cache-size. Ignored, with a
    /// warning, when the root is a directory.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Most bytes --cache keeps (e.g. 512M, 10G; 4 KiB per file included).
    #[arg(long, default_value = "1G", value_parser = parse_size, value_name = "BYTES")]
    pub cache_size: u64,

    /// Single-port mode: every transfer answers from the listen address and port (no port
    /// per transfer), so transfers cross NATs without a TFTP helper and ECMP (anycast)
    /// routers that hash on ports. dnsmasq's --tftp-single-port.
    #[arg(long, conflicts_with = "port_range")]
    pub single_port: bool,

    /// With --single-port: every datagram is read from the listen socket by the listener,
    /// which runs the directory's downloads itself, batched across transfers (no task
    /// woken per datagram), and routes the rest to their transfers. Without it each
    /// transfer gets a socket of its own connected to its peer (SO_REUSEADDR on the listen
    /// port).
    #[arg(long, requires = "single_port")]
    pub shared_socket: bool,

    /// `--log-format` and `--log-filter`.
    #[command(flatten)]
    pub log: crate::logging::LogArgs,

    /// On SIGTERM/SIGINT, stop answering requests and let running transfers finish for up
    /// to this long (e.g. 30s) before ending the rest with ERROR 0; 0: end them at once.
    #[arg(long, default_value = "0", value_parser = parse_drain, value_name = "DURATION")]
    pub drain: Duration,

    /// Read settings from this TOML file: its keys are these long flags without the dashes
    /// (`listen = ["0.0.0.0:69"]`, `allow-create = true`) and `root` for DIR. Flags on the
    /// command line win (their list replaces the file's). SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the settings (the --config file, DIR, the --map file, --user) and exit: 0 when
    /// they are good, 1 with the reason. Binds nothing.
    #[arg(long)]
    pub check_config: bool,
}

/// Parses `--drain`: `0`, or a duration as [`parse_duration`].
fn parse_drain(s: &str) -> Result<Duration, String> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// `--allow CIDR` and `--deny CIDR` (repeatable), kept in the order given: the first rule
/// that matches a client decides, a client no rule matches is allowed.
#[derive(Debug, Clone, Default)]
pub struct AclArgs {
    /// The rules, in command-line order.
    pub acl: Acl,
}

const ALLOW: &str = "allow";
const DENY: &str = "deny";

impl FromArgMatches for AclArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut rules: Vec<(usize, Action, Cidr)> = Vec::new();
        for (id, action) in [(ALLOW, Action::Allow), (DENY, Action::Deny)] {
            if let (Some(values), Some(at)) = (m.get_many::<Cidr>(id), m.indices_of(id)) {
                rules.extend(at.zip(values).map(|(i, c)| (i, action, *c)));
            }
        }
        rules.sort_by_key(|r| r.0);
        let acl = rules
            .into_iter()
            .fold(Acl::new(), |acl, (_, a, c)| acl.rule(a, c));
        Ok(Self { acl })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for AclArgs {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new(ALLOW)
                .long(ALLOW)
                .value_name("CIDR")
                .action(ArgAction::Append)
                .value_parser(parse_cidr)
                .help(
                    "Serve clients in this address block (CIDR, or an address alone); \
                     repeatable. --allow and --deny rules apply in the order given, the \
                     first that matches decides; no match: allowed",
                ),
        )
        .arg(
            Arg::new(DENY)
                .long(DENY)
                .value_name("CIDR")
                .action(ArgAction::Append)
                .value_parser(parse_cidr)
                .help(
                    "Drop every datagram from this address block without an answer \
                     (counted, logged once per 10 s per client); repeatable, see --allow",
                ),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// Parses a `--allow`/`--deny`/`--allow-write-from` value.
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| e.to_string())
}

/// Parses a `--refuse` value (an option name, case-insensitive).
fn parse_refused(s: &str) -> Result<RefusedOptions, String> {
    RefusedOptions::from_name(s.trim()).ok_or_else(|| {
        let valid: Vec<&str> = RefusedOptions::ALL.iter().map(|(n, _)| *n).collect();
        format!("unknown option {s:?}; valid: {}", valid.join(", "))
    })
}

/// Parses a `--umask` value: octal, 0..=0777 (`022`, `0o077`, `0002`).
fn parse_umask(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let bad = || format!("{s:?} is not an octal mode from 000 to 777 (e.g. 022 or 077)");
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(bad());
    }
    let m = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if m > 0o777 {
        return Err(bad());
    }
    Ok(m)
}

/// Parses a `--port-range` value (`LOW:HIGH`).
fn parse_port_range(s: &str) -> Result<PortRange, String> {
    s.parse::<PortRange>().map_err(|e| e.to_string())
}

/// Reads and parses the `--map` rules file (before privileges are dropped).
fn load_map(path: &std::path::Path) -> Result<RemapRules, CliError> {
    let text = std::fs::read(path)
        .map_err(|e| CliError::Failed(format!("cannot read --map {}: {e}", path.display())))?;
    let text = String::from_utf8(text).map_err(|e| {
        CliError::Failed(format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    RemapRules::parse(&text)
        .map_err(|e| CliError::Failed(format!("{}:{}: {}", path.display(), e.line, e.message)))
}

/// The TFTP port (RFC 1350).
const TFTP_PORT: u16 = 69;

/// One `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// An address and port (an address alone: port 69).
    Addr(SocketAddr),
    /// `PORT` or `:PORT`: `0.0.0.0:PORT` and `[::]:PORT` (IPv6 only), like the defaults.
    Any(u16),
    /// `HOST:PORT`: every address the name resolves to, at start-up.
    Host(String, u16),
}

/// Parses a `--listen` value (see [`Listen`]).
pub(crate) fn parse_listen(s: &str) -> Result<Listen, String> {
    let t = s.trim();
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number (0-65535) in --listen {s:?}"))
    };
    if t.is_empty() {
        return Err("empty; try e.g. 0.0.0.0:69, [::]:69, :69 or localhost:6969".into());
    }
    if let Some(p) = t.strip_prefix(':') {
        return Ok(Listen::Any(port(p)?));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Listen::Any(port(t)?));
    }
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(Listen::Addr(a));
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(Listen::Addr(SocketAddr::new(ip, TFTP_PORT)));
    }
    if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']' (write [IPV6]:PORT)"))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("{inside:?} is not an IPv6 address in --listen {s:?}"))?;
        let p = match after {
            "" => TFTP_PORT,
            _ => match after.strip_prefix(':') {
                Some(p) => port(p)?,
                None => return Err(format!("{s:?}: expected [IPV6]:PORT")),
            },
        };
        return Ok(Listen::Addr(SocketAddr::new(IpAddr::V6(ip), p)));
    }
    // A name alone is more likely a typo than a host: names need their port.
    let Some((host, p)) = t.rsplit_once(':') else {
        return Err(format!(
            "{t:?} is not an address; a host name needs its port (HOST:PORT, e.g. \
             localhost:6969)"
        ));
    };
    let p = port(p)?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(format!(
            "{host:?} is neither an address nor a host name in --listen {s:?} \
             (an IPv6 address with a port is written [IPV6]:PORT)"
        ));
    }
    Ok(Listen::Host(host.to_owned(), p))
}

/// What to bind: the addresses, and those that may be left out when the machine has no
/// IPv6 (the `[::]` of the defaults and of `:PORT`).
fn listen_addrs(listen: &[Listen]) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
    let any = |p: u16| {
        [
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), p),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), p),
        ]
    };
    if listen.is_empty() {
        let both = any(TFTP_PORT);
        return Ok((both.to_vec(), vec![both[1]]));
    }
    let mut addrs = Vec::new();
    let mut optional = Vec::new();
    for l in listen {
        let found: Vec<SocketAddr> = match l {
            Listen::Addr(a) => vec![*a],
            Listen::Any(p) => {
                optional.push(any(*p)[1]);
                any(*p).to_vec()
            }
            Listen::Host(h, p) => {
                let found: Vec<SocketAddr> = (h.as_str(), *p)
                    .to_socket_addrs()
                    .map_err(|e| anyhow::anyhow!("cannot resolve --listen {h}: {e}"))?
                    .collect();
                anyhow::ensure!(!found.is_empty(), "--listen {h}: the name has no address");
                found
            }
        };
        for a in found {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    Ok((addrs, optional))
}

/// Runs `tftpx serve` to the end: raises the descriptor limit, opens DIR and binds as the
/// user it was started as, then switches to `--user` and confines every thread before the
/// first request is read.
///
/// # Errors
/// A usage error for a `--user`/`--group` it cannot take; a failure (one line) when DIR
/// cannot be opened, an address cannot be bound, the switch fails, or the account cannot
/// read DIR (or write in it, with uploads).
pub fn main(
    args: ServeArgs,
    source: config::Source,
    effective: BTreeMap<String, String>,
) -> Result<(), CliError> {
    if args.check_config {
        return check(&args, &source);
    }
    // Before any thread starts: this reads and clears LISTEN_* from the environment.
    let passed = systemd::take_listen_sockets().map_err(CliError::Failed)?;
    // Connected while root and unconfined; used after the switch.
    let notifier = Notifier::from_env();
    // Process-wide, before any thread or file: uploads are created 0644 less this mask.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(args.umask));
    let nofile = privileges::raise_nofile_limit();
    let who = privileges::choose(args.user.as_deref(), args.group.as_deref())?;
    let map = args.map.as_deref().map(load_map).transpose()?;
    let failed = |e: String| CliError::Failed(e);
    // TCP, bound while root and unconfined: Landlock denies binding TCP afterwards.
    let metrics_listener = args
        .metrics
        .map(metrics::bind)
        .transpose()
        .map_err(failed)?;
    // Set once the server exists (its stats feed the metrics); transfers end only later.
    let metrics_sink = metrics_listener
        .as_ref()
        .map(|_| Arc::new(OnceLock::<Arc<Metrics>>::new()));
    let prologue = Prologue {
        passed,
        notifier,
        old_umask,
        nofile,
        who,
        map,
        metrics_listener,
        metrics_sink,
        source,
        effective,
    };
    let root_arg = args.dir.to_string_lossy().into_owned();
    if Origin::is_origin(&root_arg) {
        // An upload becomes one PUT or PutObject after its last block, which creates or
        // replaces alike: either flag allows uploads.
        let origin = Origin::parse(&root_arg)
            .map_err(|e| CliError::Usage(e.to_string()))?
            .allow_write(args.allow_write || args.allow_create);
        let site = OriginSite::of(&origin);
        // Loads the resolver's modules while /usr is readable (Landlock allows only /etc
        // afterwards), and says early when the origin's host does not resolve.
        if let Some(host) = &site.host {
            if let Err(e) = (host.as_str(), site.ports[0]).to_socket_addrs() {
                tracing::warn!("origin {}: cannot resolve {host} now: {e}", site.label);
            }
        }
        let cache = args
            .cache
            .as_deref()
            .map(|dir| prepare_cache(dir, &prologue.who))
            .transpose()
            .map_err(failed)?;
        let mut served = Served {
            label: site.label.clone(),
            confine_to: PathBuf::from("/etc"),
            // Uploads are held in memory until they are sent: no file is written.
            writable: false,
            connect_tcp: site.ports,
            cache: cache.clone(),
            cache_stats: None,
        };
        return match cache {
            Some(dir) => {
                let cached = CachedOrigin::new(origin, &dir, args.cache_size)
                    .map_err(|e| failed(format!("--cache {}: {e}", dir.display())))?;
                let read = cached.clone();
                served.cache_stats = Some(Arc::new(move || (read.stats(), read.used_bytes())));
                serve(args, cached, served, prologue)
            }
            None => serve(args, origin, served, prologue),
        };
    }
    if let Some(c) = &args.cache {
        tracing::warn!("{}", cache_ignored(c));
    }
    let handler = DirHandler::new(&args.dir)
        .map_err(|e| failed(format!("cannot serve {}: {e}", args.dir.display())))?
        .allow_write(args.allow_write)
        .allow_create(args.allow_create)
        .allow_hard_links(args.allow_hard_links);
    let root = handler.root().to_path_buf();
    let served = Served {
        label: root.display().to_string(),
        confine_to: root,
        writable: args.allow_write || args.allow_create,
        connect_tcp: Vec::new(),
        cache: None,
        cache_stats: None,
    };
    serve(args, handler, served, prologue)
}

/// What [`main`] prepared before choosing a directory or an origin.
struct Prologue {
    passed: Vec<Passed>,
    notifier: Notifier,
    old_umask: nix::sys::stat::Mode,
    nofile: privileges::NofileLimit,
    who: Identity,
    map: Option<RemapRules>,
    metrics_listener: Option<std::net::TcpListener>,
    metrics_sink: Option<Arc<OnceLock<Arc<Metrics>>>>,
    /// Where the settings came from (SIGHUP re-reads it) and those in force at start.
    source: config::Source,
    effective: BTreeMap<String, String>,
}

/// What is served, for the log and for Landlock.
struct Served {
    /// The directory or origin URL, as logged.
    label: String,
    /// The directory Landlock confines file access to (the served one; `/etc` for an
    /// origin, read-only, for name resolution).
    confine_to: PathBuf,
    /// Uploads allowed.
    writable: bool,
    /// TCP ports the server may connect to (an origin's).
    connect_tcp: Vec<u16>,
    /// The origin's `--cache` directory (absolute): read and written under Landlock.
    cache: Option<PathBuf>,
    /// The cache's counters, for `--metrics`.
    cache_stats: Option<metrics::CacheSource>,
}

/// The warning for `--cache` with a directory root (a shared config file may set it).
fn cache_ignored(dir: &std::path::Path) -> String {
    format!(
        "--cache {}: ignored, the root is a directory (the cache is for http://, https:// and \
         s3:// origins)",
        dir.display()
    )
}

/// Creates the `--cache` directory if missing (mode 0750, owned by the account the server
/// switches to) and returns it absolute; a directory the account cannot write is reported
/// after the switch.
fn prepare_cache(dir: &std::path::Path, who: &Identity) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| format!("--cache {}: cannot create it: {e}", dir.display()))?;
        if let Identity::Switch(a) = who {
            nix::unistd::chown(dir, Some(a.uid), Some(a.gid)).map_err(|e| {
                format!(
                    "--cache {}: cannot give it to {}: {e}",
                    dir.display(),
                    a.name
                )
            })?;
        }
    }
    std::fs::canonicalize(dir).map_err(|e| format!("--cache {}: {e}", dir.display()))
}

/// Where an origin's requests go: for the log, name resolution and Landlock's TCP rules.
struct OriginSite {
    label: String,
    host: Option<String>,
    /// Never empty.
    ports: Vec<u16>,
}

impl OriginSite {
    fn of(origin: &Origin) -> Self {
        match origin {
            Origin::Http(h) => {
                let base = h.base();
                Self {
                    label: base.to_string(),
                    host: base.host_str().map(str::to_owned),
                    ports: vec![base.port_or_known_default().unwrap_or(80)],
                }
            }
            Origin::S3(s) => {
                // The endpoint's port (environment or profile file), else HTTPS; without
                // keys also port 80 (instance or container credentials).
                let endpoint = s.endpoint().and_then(reqwest_free_parse);
                let (host, port) = endpoint.unwrap_or((None, 443));
                let mut ports = vec![port];
                if !s.has_static_keys() && port != 80 {
                    ports.push(80);
                }
                Self {
                    label: s.describe(),
                    host,
                    ports,
                }
            }
        }
    }
}

/// Host and port of an `http://` or `https://` URL (the port defaulted by its scheme).
fn reqwest_free_parse(url: &str) -> Option<(Option<String>, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    Some((Some(host.to_owned()), port))
}

/// The rest of [`main`], for a directory or an origin.
fn serve<H: Handler + Clone>(
    args: ServeArgs,
    handler: H,
    served: Served,
    prologue: Prologue,
) -> Result<(), CliError> {
    let Prologue {
        passed,
        notifier,
        old_umask,
        nofile,
        who,
        map,
        metrics_listener,
        metrics_sink,
        source,
        effective,
    } = prologue;
    let failed = |e: String| CliError::Failed(e);
    let root = served.confine_to.clone();
    let root_fd = privileges::open_dir(&root)
        .map_err(|e| failed(format!("cannot serve {}: {e}", root.display())))?;
    let writable = served.writable;
    let cache_fd = served
        .cache
        .as_deref()
        .map(|d| {
            privileges::open_dir(d).map_err(|e| failed(format!("--cache {}: {e}", d.display())))
        })
        .transpose()?;
    // SIGHUP re-reads these files: their directories stay readable under Landlock.
    let reread_dirs = reread_dirs([source.path(), args.map.as_deref()]);
    let reread = reread_dirs
        .iter()
        .filter_map(|d| privileges::open_dir(d).ok())
        .collect::<Vec<_>>();
    // Runtime threads wait in on_thread_start until the switch below, then confine
    // themselves (no_new_privs and Landlock are per thread).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(privileges::on_thread_start)
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    // Dropped before `rt` on every early return: lets waiting threads go so the runtime can
    // shut down.
    let gate = GateGuard::new();
    let server = {
        let _enter = rt.enter();
        bind(&args, handler, map, passed, metrics_sink.clone())
            .map_err(|e| failed(format!("{e:#}")))?
    };
    let metrics_server = match (metrics_listener, &metrics_sink) {
        (Some(l), Some(sink)) => {
            let m = Arc::new(Metrics::new(server.stats(), served.cache_stats.clone()));
            let _ = sink.set(m.clone());
            let _enter = rt.enter();
            let l = tokio::net::TcpListener::from_std(l)
                .map_err(|e| failed(format!("--metrics: {e}")))?;
            Some((l, m))
        }
        _ => None,
    };
    let confined = privileges::confine(
        &who,
        &Confinement {
            root: &root_fd,
            writable,
            connect_tcp: &served.connect_tcp,
            landlock: !args.no_landlock,
            foreign: &[],
            reread: &reread,
            cache: cache_fd.as_ref(),
        },
    )
    .map_err(|e| failed(format!("cannot drop privileges: {e}")))?;
    drop(gate);
    privileges::check_root_access(&who, &root_fd, &root, writable).map_err(failed)?;
    drop(root_fd);
    if let (Some(fd), Some(dir)) = (&cache_fd, &served.cache) {
        privileges::check_root_access(&who, fd, dir, true)
            .map_err(|e| failed(e.replacen("cannot serve", "--cache: cannot use", 1)))?;
        let landlock = if confined.landlock.is_some() {
            "; Landlock lets the server read, write, create and remove files there"
        } else {
            ""
        };
        tracing::info!(
            "cache: {} (at most {} bytes), revalidated with the origin on each request{landlock}",
            dir.display(),
            args.cache_size
        );
    }
    drop(cache_fd);

    let origin = !served.connect_tcp.is_empty();
    let mode = if origin && (args.allow_create || args.allow_write) {
        "read-write, uploads sent to the origin after their last block"
    } else if args.allow_create {
        "read-write, may create files"
    } else if args.allow_write {
        "read-write, existing files only"
    } else {
        "read-only"
    };
    let addrs = server.local_addrs();
    for a in &addrs {
        tracing::info!("serving {} on {a} ({mode})", served.label);
    }
    match &who {
        Identity::Switch(_) => tracing::info!(
            "running as {}: no capabilities, no supplementary groups, no_new_privs",
            who.describe()
        ),
        Identity::KeepRoot => tracing::warn!(
            "running as root (--user root): every file root can read below {} can be served, \
             with all of root's capabilities; give the server an account of its own \
             (e.g. --user nobody)",
            served.label
        ),
        Identity::Unprivileged(_) => {
            tracing::debug!("running as {} (not started as root)", who.describe())
        }
    }
    tracing::debug!("{} runtime threads confined themselves", confined.threads);
    log_policy(&args, Some(old_umask.bits()));
    confined.log(&root, writable, &served.connect_tcp);
    if confined.landlock.is_some() && !reread_dirs.is_empty() {
        let dirs: Vec<String> = reread_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        tracing::info!(
            "Landlock: files in {} stay readable, for SIGHUP to re-read --config and --map \
             (a --map file elsewhere needs a restart)",
            dirs.join(", ")
        );
    }
    nofile.log();
    if let Some((l, m)) = metrics_server {
        if let Ok(a) = l.local_addr() {
            tracing::info!("metrics at {}", metrics::describe(a));
        }
        rt.spawn(metrics::serve(l, m));
    }
    if notifier.enabled() {
        let on: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        notifier.ready(&format!(
            "Serving {} on {} ({mode})",
            served.label,
            on.join(", ")
        ));
        tracing::debug!("told the service manager: READY=1");
    }
    let reload = Reload {
        source,
        effective,
        reloader: server.reloader(),
    };
    rt.block_on(run(server, notifier, reload, args.drain));
    Ok(())
}

/// The directories of the settings files SIGHUP re-reads, each once.
fn reread_dirs<'a>(files: impl IntoIterator<Item = Option<&'a std::path::Path>>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for f in files.into_iter().flatten() {
        let Some(dir) = std::fs::canonicalize(f)
            .ok()
            .and_then(|f| f.parent().map(PathBuf::from))
        else {
            continue;
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// `--check-config`: everything start-up reads, without binding, switching or serving.
fn check(args: &ServeArgs, source: &config::Source) -> Result<(), CliError> {
    let failed = |e: String| CliError::Failed(e);
    let root_arg = args.dir.to_string_lossy();
    if Origin::is_origin(&root_arg) {
        Origin::parse(&root_arg).map_err(|e| CliError::Usage(e.to_string()))?;
        if let Some(dir) = &args.cache {
            if dir.exists() && !dir.is_dir() {
                return Err(failed(format!(
                    "--cache {}: not a directory",
                    dir.display()
                )));
            }
        }
    } else {
        if let Some(c) = &args.cache {
            tracing::warn!("{}", cache_ignored(c));
        }
        DirHandler::new(&args.dir)
            .map_err(|e| failed(format!("cannot serve {}: {e}", args.dir.display())))?;
    }
    if let Some(m) = &args.map {
        load_map(m)?;
    }
    privileges::choose(args.user.as_deref(), args.group.as_deref())?;
    listen_addrs(&args.listen).map_err(|e| failed(format!("{e:#}")))?;
    let what = source.path().map_or_else(
        || "the command line".to_owned(),
        |p| p.display().to_string(),
    );
    println!(
        "tftpx: configuration OK ({what}): serving {}",
        args.dir.display()
    );
    Ok(())
}

/// What SIGHUP needs: where the settings come from, those in force at start, and the
/// server's handle for the reloadable ones.
struct Reload {
    source: config::Source,
    effective: BTreeMap<String, String>,
    reloader: Reloader,
}

impl Reload {
    /// Re-reads the --config file and the --map file and puts the address rules, upload
    /// sources, remap rules and refused options in force for new requests; on any error
    /// keeps the settings in force and says why.
    fn reload(&self) {
        let loaded = match self.source.load() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("SIGHUP: {e}; keeping the settings in force");
                return;
            }
        };
        let args = &loaded.args;
        let remap = match args.map.as_deref().map(load_map).transpose() {
            Ok(m) => m.map(Arc::new),
            Err(CliError::Failed(e) | CliError::Usage(e)) => {
                tracing::warn!("SIGHUP: {e}; keeping the settings in force");
                return;
            }
            Err(CliError::Reported) => return,
        };
        for (key, old, new) in config::needs_restart(&self.effective, &loaded.effective) {
            tracing::warn!(
                "SIGHUP: {key} changed ({old:?} -> {new:?}): needs a restart; still {old:?}"
            );
        }
        let rules = remap.as_ref().map_or(0, |m| m.len());
        let files: Vec<String> = [self.source.path(), args.map.as_deref()]
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect();
        let what = if files.is_empty() {
            "the command line (no --config or --map file to re-read)".to_owned()
        } else {
            files.join(" and ")
        };
        self.reloader.replace(LiveSettings {
            acl: args.acl.acl.clone(),
            write_from: (!args.allow_write_from.is_empty()).then(|| args.allow_write_from.clone()),
            remap,
            refused: args.refuse.iter().fold(RefusedOptions::NONE, |a, &b| a | b),
        });
        tracing::info!(
            "SIGHUP: reloaded {what}: {} address rule(s), {} upload source block(s), {rules}              remap rule(s), {} refused option(s); new requests use them, running transfers              continue",
            args.acl.acl.rules().len(),
            args.allow_write_from.len(),
            args.refuse.len(),
        );
        log_policy(args, None);
    }
}

/// Says at start (with the umask the process had), or after a reload (`None`), what the
/// policy flags changed.
fn log_policy(args: &ServeArgs, old_umask: Option<u32>) {
    if !args.acl.acl.is_empty() {
        let rules: Vec<String> = args
            .acl
            .acl
            .rules()
            .iter()
            .map(|(a, c)| match a {
                Action::Allow => format!("allow {c}"),
                Action::Deny => format!("deny {c}"),
            })
            .collect();
        tracing::info!(
            "address rules (first match wins, others allowed): {}",
            rules.join(", ")
        );
    }
    if !args.allow_write_from.is_empty() {
        let from: Vec<String> = args
            .allow_write_from
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::info!("uploads accepted only from {}", from.join(", "));
    }
    let refused = args.refuse.iter().fold(RefusedOptions::NONE, |a, &b| a | b);
    if !refused.is_empty() {
        let names: Vec<&str> = refused.names().collect();
        tracing::info!(
            "options ignored in requests (--refuse): {}",
            names.join(", ")
        );
    }
    // Start-only settings (a reload logs the ones above).
    let Some(old_umask) = old_umask else {
        return;
    };
    if args.single_port {
        tracing::info!("single-port mode: transfers answer from the listen address and port");
    }
    if let Some(r) = args.port_range {
        tracing::info!("transfer ports: {r}");
        if *r.ports().start() < 1024 {
            tracing::warn!(
                "--port-range {r} includes ports below 1024, which only root (or \
                 CAP_NET_BIND_SERVICE) may bind"
            );
        }
    }
    tracing::debug!("umask {:03o} (was {old_umask:03o})", args.umask);
}

/// Binds every listen address (the defaults, less IPv6 where the machine has none), or
/// takes the sockets systemd passed instead.
fn bind<H: Handler + Clone>(
    args: &ServeArgs,
    handler: H,
    map: Option<RemapRules>,
    passed: Vec<Passed>,
    metrics: Option<Arc<OnceLock<Arc<Metrics>>>>,
) -> Result<Server<H>> {
    let activated = !passed.is_empty();
    let (mut listen, optional) = if activated {
        if !args.listen.is_empty() {
            tracing::warn!(
                "--listen ignored: serving the {} socket(s) passed by systemd instead",
                passed.len()
            );
        }
        (Vec::new(), Vec::new())
    } else {
        listen_addrs(&args.listen)?
    };
    let mut passed = Some(passed);
    let server = loop {
        let mut b = Server::builder(handler.clone())
            .timeout(args.timeout)
            .max_retries(args.retries)
            .max_blksize(args.max_blksize)
            .max_windowsize(args.max_windowsize)
            .max_upload_size(args.max_upload_size)
            .max_transfers(args.max_transfers)
            .max_transfers_per_client(
                (args.max_transfers_per_client > 0).then_some(args.max_transfers_per_client),
            )
            .rate_limit(Some(args.rate_limit))
            .max_unanswered_retries(args.max_unanswered_retries)
            .busy_poll(args.busy_poll)
            .max_timeout(args.max_timeout)
            .max_memory(usize::try_from(args.max_memory).unwrap_or(usize::MAX))
            .client_prefix_v4(args.client_prefix_v4)
            .client_prefix_v6(args.client_prefix_v6)
            .acl(args.acl.acl.clone())
            .refuse_options(args.refuse.iter().fold(RefusedOptions::NONE, |a, &b| a | b));
        if !args.allow_write_from.is_empty() {
            b = b.allow_write_from(args.allow_write_from.clone());
        }
        if let Some(r) = args.port_range {
            b = b.port_range(r);
        }
        b = b.single_port(args.single_port);
        b = b.single_port_shared(args.shared_socket);
        for a in &listen {
            b = b.listen(*a);
        }
        if let Some(m) = &map {
            b = b.remap(m.clone());
        }
        if let Some(sink) = &metrics {
            let sink = sink.clone();
            b = b.on_transfer_end(move |s| {
                if let Some(m) = sink.get() {
                    m.record(s);
                }
            });
        }
        // Taken once: only a failure to bind an address of our own goes round again, and
        // with sockets passed there is none.
        for p in passed.take().into_iter().flatten() {
            let at = p
                .socket
                .local_addr()
                .map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let name = p
                .name
                .as_deref()
                .map(|n| format!(", {n}"))
                .unwrap_or_default();
            tracing::info!(
                "listening on {at}: socket passed by systemd (descriptor {}{name})",
                p.fd
            );
            b = b.listen_socket(p.socket);
        }
        match b.bind() {
            Ok(s) => break s,
            // A machine without IPv6 still serves IPv4 by default (and with :PORT).
            Err(ServerError::Bind { addr, source })
                if optional.contains(&addr) && listen.len() > 1 && ipv6_missing(&source) =>
            {
                tracing::warn!("IPv6 unavailable ({source}); serving IPv4 only");
                listen.retain(|a| *a != addr);
            }
            Err(ServerError::Bind { addr, source })
                if source.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 =>
            {
                anyhow::bail!(
                    "cannot listen on {addr}: {source}; ports below 1024 need root \
                     (or try --listen 127.0.0.1:6969)"
                );
            }
            // Its message already names the OS error: no source chain (it would say it twice).
            Err(e) => anyhow::bail!("{e}"),
        }
    };
    Ok(server)
}

/// Serves until SIGINT or SIGTERM (telling the service manager STOPPING=1 first), then
/// ends running transfers with ERROR 0; with `drain`, first stops answering requests and
/// lets them finish for up to that long. SIGHUP reloads (see [`Reload::reload`]).
async fn run<H: Handler>(server: Server<H>, notifier: Notifier, reload: Reload, drain: Duration) {
    // A daemon must not die of SIGHUP: it asks a service to reload.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    reload.reload();
                }
            });
        }
        Err(e) => tracing::warn!("cannot handle SIGHUP (no reload): {e}"),
    }
    let token = server.shutdown_token();
    let stop_listening = server.drain_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        if drain.is_zero() {
            tracing::info!("shutting down: ending running transfers");
            notifier.stopping("Shutting down: ending running transfers");
            token.cancel();
            return;
        }
        // First, so that nothing is answered once the log or systemd says so.
        stop_listening.cancel();
        let d = humantime::format_duration(drain);
        tracing::info!(
            "draining: no new requests are answered; running transfers may finish for up to \
             {d} (a second signal ends them now)"
        );
        notifier.stopping(&format!("Draining for up to {d}"));
        tokio::select! {
            _ = tokio::time::sleep(drain) => tracing::info!(
                "drain time ({d}) over: ending the transfers still running"
            ),
            _ = shutdown_signal() => tracing::info!(
                "second signal: ending the transfers still running"
            ),
        }
        token.cancel();
    });
    server.run().await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {},
                _ = i.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Parses a byte count: `1048576`, `64K`, `256M`, `1G` (powers of 1024; `KiB`, `MiB`,
/// `GiB` and a trailing `B` are accepted too).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 10),
        Some('M') => (&body[..body.len() - 1], 20),
        Some('G') => (&body[..body.len() - 1], 30),
        Some('T') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try e.g. 1048576, 64K, 256M or 1G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// True for the errors binding `[::]` gives on a machine without IPv6.
fn ipv6_missing(e: &std::io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    matches!(
        e.kind(),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(EAFNOSUPPORT)
}
