//! `tftpx get` / `tftpx put`: parse flags into a [`tftpx::Client`], show progress, map
//! failures to exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tftpx::proto::Mode;
use tftpx::{Client, ClientError, Progress, Report};
use tokio::io::AsyncWriteExt;

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
    /// DATA (RFC 1350 dally); 0 exits at once [default: the timeout]
    #[arg(long, value_parser = parse_dally, value_name = "DURATION")]
    pub dally: Option<Duration>,
}

fn parse_dally(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s.to_ascii_lowercase().as_str() {
        "octet" | "binary" => Ok(Mode::Octet),
        "netascii" | "ascii" => Ok(Mode::Netascii),
        _ => Err(format!("unknown mode {s:?}: use octet or netascii")),
    }
}

/// Download a file: `tftpx get HOST[:PORT] REMOTE [-o LOCAL]` or `tftpx get tftp://HOST[:PORT]/PATH`
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The server, `HOST[:PORT]` (IPv6 in brackets: `[::1]:6969`), or a `tftp://` URL.
    pub server: String,
    /// The file on the server (omit when SERVER is a tftp:// URL).
    pub remote: Option<String>,
    /// Where to write it [default: the remote file's base name, always a file: a remote
    /// named `-` becomes a file named `-`]; `-o -` writes to stdout.
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

/// Upload a file: `tftpx put HOST[:PORT] LOCAL [REMOTE]` (`-` as LOCAL reads stdin)
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The server, `HOST[:PORT]` (IPv6 in brackets: `[::1]:6969`), or a `tftp://` URL naming
    /// the remote file.
    pub server: String,
    /// The file to send; `-` reads standard input (then REMOTE is required).
    pub local: PathBuf,
    /// The name on the server [default: LOCAL's base name].
    pub remote: Option<String>,
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

async fn resolve(t: &Target) -> Result<std::net::SocketAddr, CliError> {
    let mut addrs = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| CliError::Failed(format!("cannot resolve {}: {e}", t.host)))?;
    addrs
        .next()
        .ok_or_else(|| CliError::Failed(format!("{} has no address", t.host)))
}

fn build_client(
    server: std::net::SocketAddr,
    opts: &TransferOpts,
    mode: Mode,
    max_size: Option<u64>,
) -> Client {
    let mut b = Client::builder(server)
        .mode(mode)
        .retries(opts.retries)
        .tsize(!opts.no_tsize)
        .max_size(max_size);
    if let Some(n) = opts.blksize {
        b = b.blksize(n);
    }
    if let Some(n) = opts.windowsize {
        b = b.windowsize(n);
    }
    if let Some(t) = opts.timeout {
        b = b.timeout(t).dally(t);
    }
    if let Some(d) = opts.dally {
        b = b.dally(d);
    }
    b.build()
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

fn on_progress(pb: &ProgressBar) -> impl FnMut(Progress) + Send + '_ {
    move |p: Progress| {
        if let Some(t) = p.total {
            if pb.length() != Some(t) {
                pb.set_length(t);
            }
        }
        pb.set_position(p.bytes);
    }
}

fn summary(verb: &str, r: &Report) -> String {
    let secs = r.duration.as_secs_f64();
    let rate = if secs > 0.0 {
        r.bytes as f64 / secs / 1e6
    } else {
        0.0
    };
    let mut s = format!(
        "{verb} {} bytes in {secs:.3} s ({rate:.1} MB/s), blksize {} windowsize {}",
        r.bytes, r.negotiated.blksize, r.negotiated.windowsize
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

pub async fn get(args: GetArgs, quiet: bool) -> Result<(), CliError> {
    let target = parse_target(&args.server).map_err(CliError::Usage)?;
    let remote = match (&target.path, &args.remote) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give the remote file either in the tftp:// URL or as REMOTE, not both".into(),
            ))
        }
        (Some(p), None) => p.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            return Err(CliError::Usage(
                "missing REMOTE: tftpx get HOST[:PORT] REMOTE [-o LOCAL]".into(),
            ))
        }
    };
    let mode = args.opts.mode.or(target.mode).unwrap_or(Mode::Octet);
    // Only `-o -` means stdout: a remote whose base name is `-` is a file named `-`.
    let to_stdout = args.output.as_deref() == Some(Path::new("-"));
    let local = match &args.output {
        Some(p) => p.clone(),
        None => PathBuf::from(base_name(&remote).ok_or_else(|| {
            CliError::Usage(format!(
                "cannot derive a local name from {remote:?}: give one with -o LOCAL"
            ))
        })?),
    };
    let server = resolve(&target).await?;
    let client = build_client(server, &args.opts, mode, args.max_size);
    let pb = progress_bar(quiet);
    let report = if to_stdout {
        // Buffered: tokio's stdout hands every write to a thread, one DATA block at a time.
        let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
        let r = client
            .get(&remote, &mut out, on_progress(&pb))
            .await
            .map_err(transfer_failed);
        out.flush().await.ok();
        r?
    } else {
        // Download beside LOCAL, then rename: a failure leaves no partial file and never
        // touches an existing LOCAL.
        let dir = match local.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".tftpx-")
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(|e| CliError::Failed(format!("cannot write in {}: {e}", dir.display())))?;
        let (file, path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let report = {
            let mut w = tokio::io::BufWriter::with_capacity(256 * 1024, &mut file);
            client
                .get(&remote, &mut w, on_progress(&pb))
                .await
                .map_err(transfer_failed)?
        };
        // No fsync: like tftp-hpa, curl and every peer measured, the download is left to the
        // page cache (an fsync cost a third of a 100 MiB transfer at blksize 65464). The
        // rename still means LOCAL is either the old file or the complete new one.
        drop(file);
        set_default_permissions(&path);
        path.persist(&local).map_err(|e| {
            CliError::Failed(format!("cannot write {}: {}", local.display(), e.error))
        })?;
        report
    };
    pb.finish_and_clear();
    if !quiet {
        eprintln!("{}", summary("received", &report));
    }
    // The file is in place and reported; linger for the dally before exiting.
    client.finish().await;
    Ok(())
}

/// Temporary files are created 0600; a downloaded file gets the usual 0644 (less umask is
/// not applied: this matches what tftp-hpa's client produces).
fn set_default_permissions(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644));
}

pub async fn put(args: PutArgs, quiet: bool) -> Result<(), CliError> {
    let target = parse_target(&args.server).map_err(CliError::Usage)?;
    let stdin = args.local.as_os_str() == "-";
    let remote = match (&target.path, &args.remote) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give the remote name either in the tftp:// URL or as REMOTE, not both".into(),
            ))
        }
        (Some(p), None) => p.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) if stdin => {
            return Err(CliError::Usage(
                "reading from stdin (-) needs a REMOTE name: tftpx put HOST - REMOTE".into(),
            ))
        }
        (None, None) => args
            .local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "cannot derive a remote name from {}: give REMOTE",
                    args.local.display()
                ))
            })?,
    };
    let mode = args.opts.mode.or(target.mode).unwrap_or(Mode::Octet);
    let server = resolve(&target).await?;
    let client = build_client(server, &args.opts, mode, None);
    let pb = progress_bar(quiet);
    let report = if stdin {
        let input = tokio::io::BufReader::with_capacity(256 * 1024, tokio::io::stdin());
        client.put(&remote, input, None, on_progress(&pb)).await
    } else {
        let file = tokio::fs::File::open(&args.local)
            .await
            .map_err(|e| CliError::Failed(format!("cannot read {}: {e}", args.local.display())))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| CliError::Failed(format!("{}: {e}", args.local.display())))?;
        if !meta.is_file() {
            return Err(CliError::Failed(format!(
                "{} is not a regular file",
                args.local.display()
            )));
        }
        let input = tokio::io::BufReader::with_capacity(256 * 1024, file);
        client
            .put(&remote, input, Some(meta.len()), on_progress(&pb))
            .await
    }
    .map_err(transfer_failed)?;
    pb.finish_and_clear();
    if !quiet {
        eprintln!("{}", summary("sent", &report));
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
