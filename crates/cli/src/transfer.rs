//! `tftpx get` / `tftpx put`: parse flags into a [`tftpx::Client`], show progress, map
//! failures to exit codes.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tftpx::proto::transfer::Stats;
use tftpx::proto::Mode;
use tftpx::{CancellationToken, Client, ClientError, PacketTrace, Progress, Report, SyncFile};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::serve::parse_size;
use crate::{parse_duration, CliError};

/// Options shared by get and put.
#[derive(Debug, Args)]
pub struct TransferOpts {
    /// Block size to ask for, in bytes (8..=65464; 1468 fits a 1500-byte Ethernet MTU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(8..=65464), value_name = "BYTES")]
    pub blksize: Option<u16>,

    /// Window size to ask for, in blocks (1..=65535, RFC 7440).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), value_name = "BLOCKS")]
    pub windowsize: Option<u16>,

    /// Ask for (get) or announce (put) the transfer size [default: on].
    #[arg(long, overrides_with = "no_tsize")]
    pub tsize: bool,

    /// Do not send the tsize option.
    #[arg(long)]
    pub no_tsize: bool,

    /// Retransmission timeout, e.g. 1s or 500ms; whole seconds are also sent as the
    /// timeout option.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// Retransmissions before giving up.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,

    /// Transfer mode: octet (bytes as they are) or netascii (text, CR LF on the wire).
    #[arg(long, value_parser = parse_mode, value_name = "octet|netascii")]
    pub mode: Option<Mode>,

    /// After a download's final ACK, linger this long to re-acknowledge a repeated last
    /// DATA (RFC 1350 section 6), e.g. 1s; the command (and a regular file's rename into
    /// place) ends after it [default: 0, the command ends when the file is complete and in
    /// place, as curl and tftp-hpa do]
    #[arg(long, value_parser = parse_dally, value_name = "DURATION")]
    pub dally: Option<Duration>,

    /// How long a wait for the server polls the socket before it sleeps, e.g. 100us; 0 =
    /// never. Saves a sleep and wake-up per block in lock-step on quiet (above all virtual)
    /// machines; polls that miss back off [default: 100us]
    #[arg(long, value_parser = crate::parse_busy_poll, value_name = "DURATION")]
    pub busy_poll: Option<Duration>,

    /// Use IPv4 addresses only: a host name's IPv6 addresses are skipped, an IPv6 literal
    /// is refused.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use IPv6 addresses only: a host name's IPv4 addresses are skipped, an IPv4 literal
    /// is refused.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

/// Parses a dally: `0`, `0s`, `500ms`, `1s`, or a number of seconds (zero allowed).
fn parse_dally(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err("must be 0 or more, e.g. 0, 1s or 500ms".into());
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 0, 1s or 500ms)"))
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s.to_ascii_lowercase().as_str() {
        "octet" | "binary" => Ok(Mode::Octet),
        "netascii" | "ascii" => Ok(Mode::Netascii),
        _ => Err(format!("unknown mode {s:?}: use octet or netascii")),
    }
}

/// What `tftpx get --help` and `tftpx put --help` end with.
const EXIT_CODES: &str = "Exit codes: 0 every file transferred; 1 a transfer failed (one \
    `error:` line each; the others still ran); 2 usage error; 130 / 143 stopped by SIGINT \
    (Ctrl-C) / SIGTERM: the server got ERROR 0 and no temporary file is left.";

/// Download files: `tftpx get HOST[:PORT] REMOTE... [-o LOCAL]` or `tftpx get tftp://HOST[:PORT]/PATH`
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct GetArgs {
    /// The server, `HOST[:PORT]` (IPv6 in brackets: `[::1]:6969`), or a `tftp://` URL.
    pub server: String,
    /// The files on the server, fetched in turn (omit when SERVER is a tftp:// URL). A
    /// failure does not stop the others; the exit code is 1 if any failed.
    pub remote: Vec<String>,
    /// Where to write it [default: the remote file's base name; a remote named `-` becomes
    /// a file named `-`]. `-o -` or `-o /dev/stdout` writes to stdout; an existing
    /// directory gets the file under its remote base name (with several REMOTEs, -o must
    /// be one); a device or FIFO is written, never replaced; a symlink is written through;
    /// a regular file is replaced only once the download is complete, keeping its mode
    /// and owner.
    #[arg(short, long, value_name = "LOCAL")]
    pub output: Option<PathBuf>,
    /// Largest download accepted, in bytes; suffixes K, M, G, T multiply by 1024 (10M =
    /// 10 MiB). A bigger file, or one whose announced tsize is bigger, is stopped with
    /// ERROR 3 and nothing is kept. Without it the announced tsize still caps the download.
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub max_size: Option<u64>,
    #[command(flatten)]
    pub opts: TransferOpts,
}

/// Upload files: `tftpx put HOST[:PORT] LOCAL [REMOTE]` or `tftpx put HOST[:PORT] LOCAL LOCAL LOCAL...`
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct PutArgs {
    /// The server, `HOST[:PORT]` (IPv6 in brackets: `[::1]:6969`), or a `tftp://` URL naming
    /// the remote file.
    pub server: String,
    /// `LOCAL [REMOTE]`: the file to send (`-` reads standard input, then REMOTE is
    /// required) and its name on the server [default: LOCAL's base name]. Three or more
    /// (or two with --each): local files, each sent under its base name; a failure does not
    /// stop the others, the exit code is 1 if any failed.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Every file after SERVER is a LOCAL sent under its base name, even when there are
    /// exactly two.
    #[arg(long)]
    pub each: bool,
    #[command(flatten)]
    pub opts: TransferOpts,
}

/// A parsed server target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// Path from a tftp:// URL, without the leading `/`.
    pub path: Option<String>,
    /// Mode from a URL's `;mode=`.
    pub mode: Option<Mode>,
}

/// Parses `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`, a bare IPv6 address, or
/// `tftp://HOST[:PORT]/PATH[;mode=octet|netascii]` (RFC 3617).
pub fn parse_target(s: &str) -> Result<Target, String> {
    if strip_prefix_ci(s, "http://").is_some() || strip_prefix_ci(s, "https://").is_some() {
        return Err(format!("{s:?}: tftpx speaks TFTP: use tftp://HOST/PATH"));
    }
    let (authority, path, mode) = if let Some(rest) = strip_prefix_ci(s, "tftp://") {
        let (auth, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: a tftp:// URL needs a path, e.g. tftp://host/file"))?;
        let (path, mode) = match path.rsplit_once(';') {
            Some((p, m)) => {
                let m = strip_prefix_ci(m, "mode=")
                    .ok_or_else(|| format!("{s:?}: unknown URL parameter {m:?} (only ;mode=)"))?;
                (p, Some(parse_mode(m)?))
            }
            None => (path, None),
        };
        let path = percent_decode(path)?;
        if path.is_empty() {
            return Err(format!("{s:?}: the URL names no file"));
        }
        (auth, Some(path), mode)
    } else {
        (s, None, None)
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']' after the IPv6 address"))?;
        let port = match after {
            "" => 69,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected :PORT after ']'"))?,
                s,
            )?,
        };
        (h.to_owned(), port)
    } else if authority.matches(':').count() > 1 {
        // A bare IPv6 address: no port possible without brackets.
        (authority.to_owned(), 69)
    } else if let Some((h, p)) = authority.rsplit_once(':') {
        (h.to_owned(), parse_port(p, s)?)
    } else {
        (authority.to_owned(), 69)
    };
    if host.is_empty() {
        return Err(format!("{s:?}: no host given"));
    }
    Ok(Target {
        host,
        port,
        path,
        mode,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{whole:?}: invalid port {p:?} (1..=65535)"))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// An address family `-4` / `-6` restricts the client to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Any,
    V4,
    V6,
}

impl Family {
    fn of(opts: &TransferOpts) -> Self {
        match (opts.ipv4, opts.ipv6) {
            (true, _) => Self::V4,
            (_, true) => Self::V6,
            _ => Self::Any,
        }
    }
}

/// The addresses to try, in the resolver's order (RFC 6724 preference, as getaddrinfo
/// sorts them), without repeats, restricted to `family`. An address literal of the other
/// family is a usage error; a name with no address of the family is a failure.
fn candidates(
    host: &str,
    resolved: impl IntoIterator<Item = SocketAddr>,
    family: Family,
) -> Result<Vec<SocketAddr>, CliError> {
    let mut all: Vec<SocketAddr> = Vec::new();
    for a in resolved {
        if !all.contains(&a) {
            all.push(a);
        }
    }
    let wanted = |a: &SocketAddr| match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    };
    let kept: Vec<SocketAddr> = all.iter().copied().filter(wanted).collect();
    if !kept.is_empty() {
        return Ok(kept);
    }
    let flag = if family == Family::V4 { "-4" } else { "-6" };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(CliError::Usage(format!(
            "{flag} forbids the address {host}"
        )));
    }
    if all.is_empty() {
        return Err(CliError::Failed(format!("{host} has no address")));
    }
    Err(CliError::Failed(format!(
        "{host} has no {} address ({flag})",
        if family == Family::V4 { "IPv4" } else { "IPv6" }
    )))
}

async fn resolve(t: &Target, family: Family) -> Result<Vec<SocketAddr>, CliError> {
    let addrs = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| CliError::Failed(format!("cannot resolve {}: {e}", t.host)))?;
    candidates(&t.host, addrs, family)
}

/// Whether a failed transfer means the address never answered (nothing listens there, it
/// is unreachable, or it stayed silent), so the next address may be tried.
fn unanswered(e: &ClientError) -> bool {
    match e {
        ClientError::TimedOut { .. } => true,
        ClientError::Io(io) => matches!(
            io.raw_os_error(),
            Some(
                libc::ECONNREFUSED
                    | libc::ENETUNREACH
                    | libc::EHOSTUNREACH
                    | libc::EADDRNOTAVAIL
                    | libc::EAFNOSUPPORT
            )
        ),
        _ => false,
    }
}

/// The server's addresses and the one in use: until one of them has answered, a transfer
/// that got no answer at all moves on to the next address (and is run again from the
/// start: nothing was read from the input or written to the output yet).
struct Servers<'a> {
    /// `HOST[:PORT]` as the user gave it, for messages.
    name: String,
    addrs: Vec<SocketAddr>,
    current: std::cell::Cell<usize>,
    /// An address answered: it is used for every later transfer.
    settled: std::cell::Cell<bool>,
    opts: &'a TransferOpts,
    mode: Mode,
    max_size: Option<u64>,
    cancel: &'a CancellationToken,
    verbose: u8,
    /// The counters of the transfer that ran last (its final progress report), for `-v`
    /// after a failure.
    last_stats: std::sync::Mutex<Option<Stats>>,
}

impl<'a> Servers<'a> {
    fn new(
        target: &Target,
        addrs: Vec<SocketAddr>,
        opts: &'a TransferOpts,
        mode: Mode,
        max_size: Option<u64>,
        ctx: &'a Ctx,
    ) -> Self {
        let name = if target.host.contains(':') {
            format!("[{}]:{}", target.host, target.port)
        } else {
            format!("{}:{}", target.host, target.port)
        };
        Self {
            name,
            addrs,
            current: std::cell::Cell::new(0),
            settled: std::cell::Cell::new(false),
            opts,
            mode,
            max_size,
            cancel: &ctx.cancel,
            verbose: ctx.verbose,
            last_stats: std::sync::Mutex::new(None),
        }
    }

    /// With `-v`, after a failed transfer: its counters (as after a successful one).
    fn report_failure(&self, r: &Result<Report, ClientError>) {
        if self.verbose == 0 || r.is_ok() {
            return;
        }
        let last = *self.last_stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = last {
            eprintln!("{}", counters(&st));
        }
    }

    /// The client for the current address, and a flag raised when that address answers.
    /// The packet trace runs for `-vv`, or while more than one address is in play (to see
    /// whether the server answered); otherwise there is none.
    fn client(&self) -> (Client, Arc<AtomicBool>) {
        let i = self.current.get();
        let addr = self.addrs[i];
        if self.verbose > 0 && !self.settled.get() {
            eprintln!(
                "tftpx: {} -> {addr} (address {} of {})",
                self.name,
                i + 1,
                self.addrs.len()
            );
        }
        let heard = Arc::new(AtomicBool::new(false));
        let mut b = build_client(addr, self.opts, self.mode, self.max_size, self.cancel);
        let print = self.verbose >= 2;
        if print || (self.addrs.len() > 1 && !self.settled.get()) {
            let flag = heard.clone();
            b = b.trace(move |t: &PacketTrace| {
                if t.direction == tftpx::Direction::Received && t.peer.ip() == addr.ip() {
                    flag.store(true, Ordering::Relaxed);
                }
                if print {
                    eprintln!("tftpx: {t}");
                }
            });
        }
        (b.build(), heard)
    }

    /// After a transfer: true when it should run again at the next address.
    fn move_on<T>(&self, r: &Result<T, ClientError>, heard: &AtomicBool) -> bool {
        if self.settled.get() {
            return false;
        }
        let i = self.current.get();
        match r {
            Err(e) if !heard.load(Ordering::Relaxed) && unanswered(e) => {
                if i + 1 >= self.addrs.len() {
                    return false;
                }
                if self.verbose > 0 {
                    eprintln!(
                        "tftpx: {} did not answer ({}); trying {}",
                        self.addrs[i],
                        tftpx::printable(&e.to_string()),
                        self.addrs[i + 1]
                    );
                }
                self.current.set(i + 1);
                true
            }
            _ => {
                if r.is_ok() || heard.load(Ordering::Relaxed) {
                    self.settled.set(true);
                }
                false
            }
        }
    }

    /// Downloads `remote` into `out`, from the first address that answers.
    async fn get<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        out: &mut W,
        pb: &ProgressBar,
    ) -> Result<Report, ClientError> {
        loop {
            let (client, heard) = self.client();
            let r = client
                .get(remote, &mut *out, on_progress(pb, &self.last_stats))
                .await;
            if !self.move_on(&r, &heard) {
                self.report_failure(&r);
                return r;
            }
        }
    }

    /// Uploads `input` as `remote`, to the first address that answers (a sender reads
    /// nothing before the server's first reply, so `input` is still whole for the next).
    async fn put<R: AsyncRead + Unpin>(
        &self,
        remote: &str,
        input: &mut R,
        size: Option<u64>,
        pb: &ProgressBar,
    ) -> Result<Report, ClientError> {
        loop {
            let (client, heard) = self.client();
            let r = client
                .put(remote, &mut *input, size, on_progress(pb, &self.last_stats))
                .await;
            if !self.move_on(&r, &heard) {
                self.report_failure(&r);
                return r;
            }
        }
    }
}

fn build_client(
    server: SocketAddr,
    opts: &TransferOpts,
    mode: Mode,
    max_size: Option<u64>,
    cancel: &CancellationToken,
) -> tftpx::ClientBuilder {
    let mut b = Client::builder(server)
        .mode(mode)
        .retries(opts.retries)
        .tsize(!opts.no_tsize)
        .max_size(max_size)
        .cancel_token(cancel.clone())
        // The command's runtime runs this transfer and the signal handler only: waiting in
        // the receive call saves the event loop's per-packet work (lock-step level with
        // tftp-hpa and busybox; see the README's Benchmarks).
        .blocking_wait(true)
        // The command ends when the file is complete and in place, as curl, busybox and
        // tftp-hpa do; `--dally` brings back the RFC 1350 linger.
        .dally(opts.dally.unwrap_or(Duration::ZERO))
        .busy_poll(opts.busy_poll.unwrap_or(tftpx::DEFAULT_BUSY_POLL));
    if let Some(n) = opts.blksize {
        b = b.blksize(n);
    }
    if let Some(n) = opts.windowsize {
        b = b.windowsize(n);
    }
    if let Some(t) = opts.timeout {
        b = b.timeout(t);
    }
    b
}

/// A download's write buffer, bytes. The library writes a download in runs of at least
/// this much (tftpx::Client holds the blocks and writes them right after an ACK): those
/// pass the buffer by, uncopied; it gathers the blocks written one by one (netascii, or a
/// block near --max-size).
const GET_BUFFER: usize = 64 * 1024;

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        // IEC units (KiB, MiB), as in the closing summary.
        ProgressStyle::with_template(
            "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

fn on_progress<'a>(
    pb: &'a ProgressBar,
    last: &'a std::sync::Mutex<Option<Stats>>,
) -> impl FnMut(Progress) + Send + 'a {
    // The length last given to the bar: asking the bar takes its lock, once per datagram.
    let mut length = None;
    // A hidden bar (-q, stderr not a terminal) is not updated: each update takes its lock
    // and reads the clock, once per datagram, while the server waits for the ACK.
    let hidden = pb.is_hidden();
    move |p: Progress| {
        *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.stats);
        if hidden {
            return;
        }
        if p.total.is_some() && p.total != length {
            length = p.total;
            pb.set_length(p.total.unwrap_or(0));
        }
        pb.set_position(p.bytes);
    }
}

/// `n` bytes in IEC units, as the progress bar shows them: `512 B`, `2.9 KiB`, `100.0 MiB`.
fn iec(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn summary(verb: &str, r: &Report) -> String {
    let secs = r.duration.as_secs_f64();
    let rate = if secs > 0.0 {
        r.bytes as f64 / secs
    } else {
        0.0
    };
    let mut s = format!(
        "{verb} {} bytes ({}) in {secs:.3} s ({}/s), blksize {} windowsize {}",
        r.bytes,
        iec(r.bytes as f64),
        iec(rate),
        r.negotiated.blksize,
        r.negotiated.windowsize
    );
    if r.stats.retransmits > 0 {
        s.push_str(&format!(", {} retransmits", r.stats.retransmits));
    }
    s
}

fn transfer_failed(e: ClientError) -> CliError {
    if let ClientError::TooLarge { limit } = e {
        return CliError::Failed(format!(
            "the file is larger than --max-size ({limit} bytes); nothing was kept"
        ));
    }
    // The server's message is untrusted: no control characters reach the terminal.
    CliError::Failed(tftpx::printable(&e.to_string()))
}

fn base_name(remote: &str) -> Option<&str> {
    remote
        .rsplit(['/', '\\'])
        .next()
        .filter(|b| !b.is_empty() && *b != "." && *b != "..")
}

/// The `-v` lines after a transfer: the options asked and those in force, and the
/// transfer's counters (proto `Stats`).
fn details(opts: &TransferOpts, mode: Mode, tsize: Option<u64>, r: &Report) -> String {
    let mut asked = vec![format!("mode {}", mode_name(mode))];
    if let Some(n) = opts.blksize {
        asked.push(format!("blksize {n}"));
    }
    if let Some(n) = opts.windowsize {
        asked.push(format!("windowsize {n}"));
    }
    // As the client sends it: only a whole number of seconds in 1..=255.
    if let Some(t) = opts
        .timeout
        .filter(|t| t.subsec_nanos() == 0 && (1..=255).contains(&t.as_secs()))
    {
        asked.push(format!("timeout {}", t.as_secs()));
    }
    if let Some(t) = tsize.filter(|_| !opts.no_tsize && mode == Mode::Octet) {
        asked.push(format!("tsize {t}"));
    }
    let n = &r.negotiated;
    let mut granted = vec![
        format!("blksize {}", n.blksize),
        format!("windowsize {}", n.windowsize),
    ];
    if let Some(t) = n.timeout {
        granted.push(format!("timeout {}", humantime::format_duration(t)));
    }
    if let Some(t) = n.tsize {
        granted.push(format!("tsize {t}"));
    }
    format!(
        "tftpx: options asked: {}\n\
         tftpx: options in force: {}\n{}\n\
         tftpx: busy polls: {} of {} got a datagram before the wait slept",
        asked.join(", "),
        granted.join(", "),
        counters(&r.stats),
        r.busy_polls.hits,
        r.busy_polls.polls
    )
}

/// The `-v` counters line of a transfer (proto `Stats`), after success or failure.
fn counters(st: &Stats) -> String {
    format!(
        "tftpx: counters: {} blocks, {} retransmissions, {} timeouts, {} duplicates, \
         {} strangers, {} ignored",
        st.blocks, st.retransmits, st.timeouts, st.duplicates, st.strangers, st.ignored
    )
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Netascii => "netascii",
        _ => "octet",
    }
}

/// What the command shares between its transfers.
pub struct Ctx {
    /// `-q`: no summary, no progress bar.
    pub quiet: bool,
    /// `-v`: the address used, the options and the counters; `-vv`: also a packet trace.
    pub verbose: u8,
    /// Cancelled by SIGINT / SIGTERM: the running transfer sends ERROR 0 and stops.
    pub cancel: CancellationToken,
}

/// Runs `one` for every item; a failure is reported (one line, prefixed with the item when
/// there are several) and does not stop the others. A signal does.
async fn each<T, F, Fut>(
    items: Vec<T>,
    name: impl Fn(&T) -> String,
    ctx: &Ctx,
    one: F,
) -> Result<(), CliError>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    if items.len() == 1 {
        let item = items.into_iter().next().expect("one item");
        return one(item).await;
    }
    let mut failed = 0;
    for item in items {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let label = tftpx::printable(&name(&item));
        match one(item).await {
            Ok(()) => {}
            Err(_) if ctx.cancel.is_cancelled() => break,
            Err(CliError::Usage(m) | CliError::Failed(m)) => {
                eprintln!("error: {label}: {m}");
                failed += 1;
            }
            Err(CliError::Reported) => failed += 1,
        }
    }
    if failed > 0 || ctx.cancel.is_cancelled() {
        Err(CliError::Reported)
    } else {
        Ok(())
    }
}

/// Where a download goes.
#[derive(Debug)]
enum Dest {
    /// `-o -` or `-o /dev/stdout`: standard output.
    Stdout,
    /// An existing file that is not a regular one (a device, a FIFO), or one of the
    /// process's open files (/dev/stderr, /dev/fd/N): opened and written, never replaced.
    Direct(PathBuf),
    /// A regular file (existing or not), reached through any symlinks: downloaded beside
    /// it and renamed over it. `keep` is the existing file's (mode, uid, gid).
    Replace {
        path: PathBuf,
        keep: Option<(u32, u32, u32)>,
    },
}

/// Paths that name this process's standard output.
const STDOUT_PATHS: [&str; 3] = ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"];

/// Paths (and the directories of paths) that name a file this process already has open.
const OPEN_FILE_PATHS: [&str; 4] = [
    "/dev/stderr",
    "/dev/fd",
    "/proc/self/fd",
    "/proc/thread-self/fd",
];

/// Follows `p` through symlinks (at most 40, as the kernel does) to the path that names
/// the file itself; a dangling link gives the path the link points to.
fn resolve_links(p: &Path) -> std::io::Result<PathBuf> {
    let mut p = p.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = if target.is_absolute() {
                    target
                } else {
                    p.parent().unwrap_or(Path::new("")).join(target)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

/// Decides where a download to `local` goes, and checks that it can be written, before any
/// transfer. `to_stdout` is `-o -` (a local name `-` derived from the remote one is a file).
fn destination(local: &Path, to_stdout: bool) -> Result<Dest, CliError> {
    use std::os::unix::fs::MetadataExt;
    let cannot =
        |e: std::io::Error| CliError::Failed(format!("cannot write {}: {e}", local.display()));
    if to_stdout || STDOUT_PATHS.iter().any(|s| local == Path::new(s)) {
        return Ok(Dest::Stdout);
    }
    // The process's own descriptors (/dev/stderr, /dev/fd/N, /proc/self/fd/N) are magic
    // links to what the shell opened (a pipe, a tty, a file): opened as they are.
    if OPEN_FILE_PATHS.iter().any(|p| local.starts_with(p)) {
        return Ok(Dest::Direct(local.to_path_buf()));
    }
    let path = resolve_links(local).map_err(cannot)?;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Err(CliError::Failed(format!(
            "cannot write {}: it is a directory",
            local.display()
        ))),
        Ok(m) if !m.is_file() => Ok(Dest::Direct(path)),
        Ok(m) => {
            // Writable now, or the download is refused before it starts (as curl would).
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(cannot)?;
            Ok(Dest::Replace {
                path,
                keep: Some((m.mode() & 0o7777, m.uid(), m.gid())),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Dest::Replace { path, keep: None })
        }
        Err(e) => Err(cannot(e)),
    }
}

/// A download's temporary file beside its destination, removed on drop unless renamed.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// Creates `.tftpx-XXXXXXXX.part` in `dir`: mode 0600 when it will take an existing
    /// file's mode, else 0666 less the umask (the kernel applies it), as any new file gets.
    fn create(dir: &Path, private: bool) -> std::io::Result<(Self, std::fs::File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().rotate_left(16);
        let mut last = None;
        for i in 0..100u32 {
            let name = format!(
                ".tftpx-{:08x}.part",
                seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))
            );
            let path = dir.join(name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if private { 0o600 } else { 0o666 })
                .open(&path)
            {
                Ok(f) => return Ok((Self { path, kept: false }, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `tftpx get`: every REMOTE in turn.
pub async fn get(args: GetArgs, ctx: &Ctx) -> Result<(), CliError> {
    let target = parse_target(&args.server).map_err(CliError::Usage)?;
    let remotes = match (&target.path, args.remote.is_empty()) {
        (Some(_), false) => {
            return Err(CliError::Usage(
                "give the remote file either in the tftp:// URL or as REMOTE, not both".into(),
            ))
        }
        (Some(p), true) => vec![p.clone()],
        (None, false) => args.remote.clone(),
        (None, true) => {
            return Err(CliError::Usage(
                "missing REMOTE: tftpx get HOST[:PORT] REMOTE... [-o LOCAL]".into(),
            ))
        }
    };
    // With several files, -o names the directory they go to.
    let into_dir = match &args.output {
        Some(o) if remotes.len() > 1 => {
            if !o.is_dir() {
                return Err(CliError::Usage(format!(
                    "with several files, -o must name an existing directory ({} is not one)",
                    o.display()
                )));
            }
            true
        }
        Some(o) => o.is_dir() && o.as_os_str() != "-",
        None => false,
    };
    // Every local name first: a usage error stops the command before any transfer.
    let mut jobs = Vec::with_capacity(remotes.len());
    for remote in remotes {
        let base = || {
            base_name(&remote).map(PathBuf::from).ok_or_else(|| {
                CliError::Usage(format!(
                    "cannot derive a local name from {remote:?}: give one with -o LOCAL"
                ))
            })
        };
        let local = match &args.output {
            Some(o) if into_dir => o.join(base()?),
            Some(o) => o.clone(),
            None => base()?,
        };
        jobs.push((remote, local));
    }
    let mode = args.opts.mode.or(target.mode).unwrap_or(Mode::Octet);
    let addrs = resolve(&target, Family::of(&args.opts)).await?;
    let servers = Servers::new(&target, addrs, &args.opts, mode, args.max_size, ctx);
    let several = jobs.len() > 1;
    // Only `-o -` means stdout: a remote whose base name is `-` is a file named `-`.
    let stdout_allowed = args.output.as_deref() == Some(Path::new("-"));
    each(
        jobs,
        |(r, _)| r.clone(),
        ctx,
        |(remote, local)| get_one(&servers, remote, local, several, stdout_allowed, ctx),
    )
    .await
}

async fn get_one(
    servers: &Servers<'_>,
    remote: String,
    local: PathBuf,
    several: bool,
    stdout_allowed: bool,
    ctx: &Ctx,
) -> Result<(), CliError> {
    let dest = destination(&local, local.as_os_str() == "-" && stdout_allowed)?;
    // A packet trace (-vv) is line by line: no bar drawn over it.
    let pb = progress_bar(ctx.quiet || ctx.verbose >= 2);
    let report = match dest {
        Dest::Stdout => {
            // Buffered: tokio's stdout hands every write to a thread, one DATA block at a
            // time.
            let mut out = tokio::io::BufWriter::with_capacity(GET_BUFFER, tokio::io::stdout());
            let r = servers
                .get(&remote, &mut out, &pb)
                .await
                .map_err(transfer_failed);
            out.flush().await.ok();
            r?
        }
        Dest::Direct(path) => {
            // Opening a FIFO waits for its reader: a signal must still end the command.
            let mut options = tokio::fs::OpenOptions::new();
            options.write(true).truncate(true);
            let file = tokio::select! {
                f = options.open(&path) => f.map_err(|e| {
                    CliError::Failed(format!("cannot write {}: {e}", local.display()))
                })?,
                _ = ctx.cancel.cancelled() => return Err(CliError::Failed("cancelled".into())),
            };
            let mut w = tokio::io::BufWriter::with_capacity(GET_BUFFER, file);
            servers
                .get(&remote, &mut w, &pb)
                .await
                .map_err(transfer_failed)?
        }
        Dest::Replace { path, keep } => {
            // Download beside the file, then rename: a failure leaves no partial file and
            // never touches an existing one.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let (mut tmp, file) = TempFile::create(&dir, keep.is_some())
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", local.display())))?;
            // A regular file of our own: plain writes on this thread (tftpx::SyncFile).
            let mut file = SyncFile(file);
            let report = {
                let mut w = tokio::io::BufWriter::with_capacity(GET_BUFFER, &mut file);
                servers
                    .get(&remote, &mut w, &pb)
                    .await
                    .map_err(transfer_failed)?
            };
            // No fsync: like tftp-hpa, curl and every peer measured, the download is left
            // to the page cache (an fsync cost a third of a 100 MiB transfer at blksize
            // 65464). The rename still means LOCAL is either the old file or the new one.
            drop(file);
            if let Some((mode, uid, gid)) = keep {
                // The owner first: chown clears set-id bits, the mode then restores them.
                if let Err(e) = std::os::unix::fs::chown(&tmp.path, Some(uid), Some(gid)) {
                    tracing::warn!(
                        "{}: cannot keep the owner {uid}:{gid}: {e}",
                        local.display()
                    );
                }
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp.path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| {
                        CliError::Failed(format!(
                            "cannot keep the mode of {}: {e}",
                            local.display()
                        ))
                    })?;
            }
            std::fs::rename(&tmp.path, &path)
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", local.display())))?;
            tmp.kept = true;
            report
        }
    };
    pb.finish_and_clear();
    if !ctx.quiet && ctx.verbose > 0 {
        eprintln!("{}", details(servers.opts, servers.mode, Some(0), &report));
    }
    if !ctx.quiet {
        let s = summary("received", &report);
        if several {
            eprintln!("{}: {s}", tftpx::printable(&remote));
        } else {
            eprintln!("{s}");
        }
    }
    Ok(())
}

/// `tftpx put`: one LOCAL [REMOTE], or several LOCAL files under their base names.
pub async fn put(args: PutArgs, ctx: &Ctx) -> Result<(), CliError> {
    let target = parse_target(&args.server).map_err(CliError::Usage)?;
    let several = args.each || args.files.len() > 2;
    let jobs: Vec<(PathBuf, String)> = if several {
        if target.path.is_some() {
            return Err(CliError::Usage(
                "a tftp:// URL names one remote file: give one LOCAL with it".into(),
            ));
        }
        let mut jobs = Vec::with_capacity(args.files.len());
        for local in &args.files {
            if local.as_os_str() == "-" {
                return Err(CliError::Usage(
                    "stdin (-) can only be sent alone: tftpx put HOST - REMOTE".into(),
                ));
            }
            jobs.push((local.clone(), remote_name(local)?));
        }
        jobs
    } else {
        let local = args.files[0].clone();
        let stdin = local.as_os_str() == "-";
        let given = args
            .files
            .get(1)
            .map(|r| {
                r.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| CliError::Usage(format!("REMOTE {} is not UTF-8", r.display())))
            })
            .transpose()?;
        let remote = match (&target.path, given) {
            (Some(_), Some(_)) => {
                return Err(CliError::Usage(
                    "give the remote name either in the tftp:// URL or as REMOTE, not both".into(),
                ))
            }
            (Some(p), None) => p.clone(),
            (None, Some(r)) => r,
            (None, None) if stdin => {
                return Err(CliError::Usage(
                    "reading from stdin (-) needs a REMOTE name: tftpx put HOST - REMOTE".into(),
                ))
            }
            (None, None) => remote_name(&local)?,
        };
        vec![(local, remote)]
    };
    let mode = args.opts.mode.or(target.mode).unwrap_or(Mode::Octet);
    let addrs = resolve(&target, Family::of(&args.opts)).await?;
    let servers = Servers::new(&target, addrs, &args.opts, mode, None, ctx);
    let many = jobs.len() > 1;
    each(
        jobs,
        |(l, _)| l.display().to_string(),
        ctx,
        |(local, remote)| put_one(&servers, local, remote, many, ctx),
    )
    .await
}

fn remote_name(local: &Path) -> Result<String, CliError> {
    local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "cannot derive a remote name from {}: give REMOTE",
                local.display()
            ))
        })
}

/// Opens LOCAL for reading without waiting for a FIFO's writer (`O_NONBLOCK`, which a
/// regular file's reads ignore); the caller refuses anything but a regular file.
fn open_for_upload(local: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(local)
}

async fn put_one(
    servers: &Servers<'_>,
    local: PathBuf,
    remote: String,
    several: bool,
    ctx: &Ctx,
) -> Result<(), CliError> {
    let pb = progress_bar(ctx.quiet || ctx.verbose >= 2);
    let mut size = None;
    let report = if local.as_os_str() == "-" {
        let mut input = tokio::io::BufReader::with_capacity(256 * 1024, tokio::io::stdin());
        servers.put(&remote, &mut input, None, &pb).await
    } else {
        // Opening a FIFO would wait for its writer: open without waiting, then refuse
        // anything but a regular file, which is read with plain reads (tftpx::SyncFile).
        let file = open_for_upload(&local)
            .map_err(|e| CliError::Failed(format!("cannot read {}: {e}", local.display())))?;
        let meta = file
            .metadata()
            .map_err(|e| CliError::Failed(format!("{}: {e}", local.display())))?;
        if !meta.is_file() {
            return Err(CliError::Failed(format!(
                "{} is not a regular file",
                local.display()
            )));
        }
        // Unbuffered: tftpx::Client reads an upload ahead in runs of 256 KiB.
        let mut input = SyncFile(file);
        size = Some(meta.len());
        servers.put(&remote, &mut input, size, &pb).await
    }
    .map_err(transfer_failed)?;
    pb.finish_and_clear();
    if !ctx.quiet && ctx.verbose > 0 {
        eprintln!("{}", details(servers.opts, servers.mode, size, &report));
    }
    if !ctx.quiet {
        let s = summary("sent", &report);
        if several {
            eprintln!("{}: {s}", local.display());
        } else {
            eprintln!("{s}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
            path: None,
            mode: None,
        }
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("10.0.0.1").unwrap(), t("10.0.0.1", 69));
        assert_eq!(parse_target("host:6969").unwrap(), t("host", 6969));
        assert_eq!(parse_target("[::1]:6969").unwrap(), t("::1", 6969));
        assert_eq!(parse_target("[fe80::1]").unwrap(), t("fe80::1", 69));
        assert_eq!(parse_target("::1").unwrap(), t("::1", 69));
        let u = parse_target("tftp://example.net:7000/boot/pxelinux.0;mode=netascii").unwrap();
        assert_eq!(u.host, "example.net");
        assert_eq!(u.port, 7000);
        assert_eq!(u.path.as_deref(), Some("boot/pxelinux.0"));
        assert_eq!(u.mode, Some(Mode::Netascii));
        let u = parse_target("TFTP://[::1]/a%20b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_deref()),
            ("::1", 69, Some("a b"))
        );
        for bad in [
            "host:0",
            "host:x",
            "[::1",
            "tftp://host",
            "tftp://host/",
            ":69",
            "tftp://h/f;x=1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_urls_point_to_tftp() {
        for url in ["http://h/f", "HTTPS://h:80/f"] {
            let e = parse_target(url).unwrap_err();
            assert!(e.contains("tftpx speaks TFTP: use tftp://HOST/PATH"), "{e}");
        }
    }

    #[test]
    fn candidates_keep_order_drop_repeats_and_filter_family() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let resolved = [
            a("[::1]:69"),
            a("127.0.0.1:69"),
            a("[::1]:69"),
            a("10.0.0.1:69"),
        ];
        let all = candidates("h", resolved, Family::Any).unwrap();
        assert_eq!(all, [a("[::1]:69"), a("127.0.0.1:69"), a("10.0.0.1:69")]);
        let v4 = candidates("h", resolved, Family::V4).unwrap();
        assert_eq!(v4, [a("127.0.0.1:69"), a("10.0.0.1:69")]);
        let v6 = candidates("h", resolved, Family::V6).unwrap();
        assert_eq!(v6, [a("[::1]:69")]);
        assert!(matches!(
            candidates("127.0.0.1", [a("127.0.0.1:69")], Family::V6),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            candidates("h", [a("127.0.0.1:69")], Family::V6),
            Err(CliError::Failed(m)) if m == "h has no IPv6 address (-6)"
        ));
        assert!(matches!(
            candidates("h", [], Family::Any),
            Err(CliError::Failed(m)) if m == "h has no address"
        ));
    }

    #[test]
    fn only_an_unanswered_request_moves_on() {
        assert!(unanswered(&ClientError::TimedOut { retries: 5 }));
        let os = |n| ClientError::Io(std::io::Error::from_raw_os_error(n));
        assert!(unanswered(&os(libc::ECONNREFUSED)));
        assert!(unanswered(&os(libc::ENETUNREACH)));
        assert!(unanswered(&os(libc::EAFNOSUPPORT)));
        assert!(!unanswered(&os(libc::ENOSPC)));
        assert!(!unanswered(&ClientError::Cancelled));
        assert!(!unanswered(&ClientError::Server {
            code: tftpx::proto::wire::ErrorCode::FileNotFound,
            message: "no".into()
        }));
    }

    #[test]
    fn iec_units() {
        assert_eq!(iec(0.0), "0 B");
        assert_eq!(iec(1023.0), "1023 B");
        assert_eq!(iec(1024.0), "1.0 KiB");
        assert_eq!(iec(1124.0), "1.1 KiB");
        assert_eq!(iec(100.0 * 1024.0 * 1024.0), "100.0 MiB");
        assert_eq!(iec(3.0 * 1024f64.powi(4)), "3.0 TiB");
    }

    #[test]
    fn busy_poll_budgets() {
        use crate::parse_busy_poll;
        assert_eq!(parse_busy_poll("0"), Ok(Duration::ZERO));
        assert_eq!(parse_busy_poll("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_busy_poll("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_busy_poll("50µs"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_busy_poll("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_busy_poll("10ms"), Ok(Duration::from_millis(10)));
        // A bare number would be seconds: refused, with the fix.
        let e = parse_busy_poll("100").unwrap_err();
        assert!(e.contains("give a unit, e.g. 100us"), "{e}");
        let e = parse_busy_poll("11ms").unwrap_err();
        assert!(e.contains("at most 10ms"), "{e}");
        assert!(parse_busy_poll("fast").is_err());
    }

    #[test]
    fn dallies() {
        assert_eq!(parse_dally("0"), Ok(Duration::ZERO));
        assert_eq!(parse_dally("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_dally("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_dally("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["-1", "x", "1 parsec"] {
            assert!(parse_dally(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_names() {
        assert_eq!(base_name("a/b/c.img"), Some("c.img"));
        assert_eq!(base_name("win\\x.cfg"), Some("x.cfg"));
        assert_eq!(base_name("dir/"), None);
        assert_eq!(base_name(".."), None);
        // A file named `-`, never stdout: get() only writes to stdout for `-o -`.
        assert_eq!(base_name("-"), Some("-"));
        assert_eq!(base_name("dir/-"), Some("-"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in ["", "M", "10X", "-1", "1.5M", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
