//! Where `tftpx` logs go and in which form: stderr, as text or JSON lines, filtered by
//! `--log-filter`, `RUST_LOG` or `-v`/`-q`.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The form of each log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL message field=value...`, for people.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields
    /// (`peer`, `kind`, `file`, `bytes`, `outcome`, `error_code`...), for programs.
    Json,
}

/// `tftpx serve` logging flags.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log line form: text, or json (one object per line with the transfer's fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// Which lines to log, per module, in RUST_LOG syntax (e.g. `warn`,
    /// `info,tftpx::server=warn`). Overrides RUST_LOG, -v and -q.
    #[arg(long, value_name = "FILTER", value_parser = parse_filter)]
    pub log_filter: Option<String>,
}

fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{e} (try e.g. warn or info,tftpx::server=warn)"))
}

/// The level `-v`/`-q` select: info by default, each -v one more verbose (debug, trace),
/// each -q one less (warn, error).
fn level(verbose: u8, quiet: u8) -> LevelFilter {
    match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => LevelFilter::ERROR,
        -1 => LevelFilter::WARN,
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// The server's filter for a `-v`/`-q` level: `-v` (debug) and `-vv` (trace: the per-packet
/// trace, target `tftpx::packet`) apply to tftpx's own crates only, so the libraries under
/// it (the metrics endpoint's HTTP server, tokio) stay at info.
fn verbosity_filter(level: LevelFilter) -> EnvFilter {
    if level <= LevelFilter::INFO {
        return EnvFilter::default().add_directive(level.into());
    }
    let mut f = EnvFilter::default().add_directive(LevelFilter::INFO.into());
    for krate in ["tftpx", "tftpx_cli", "tftpx_proto"] {
        if let Ok(d) = format!("{krate}={level}").parse() {
            f = f.add_directive(d);
        }
    }
    f
}

/// Sets up logging to stderr. `serve` is `Some` for `tftpx serve`: its flags apply, then
/// `RUST_LOG` when `--log-filter` is absent, then `-v`/`-q`; under systemd (`JOURNAL_STREAM`
/// set) lines carry no timestamp of ours, the journal adds its own. The client commands
/// (`serve` is `None`) log text at the `-v`/`-q` level, as they always did.
pub fn init(verbose: u8, quiet: u8, serve: Option<&LogArgs>) {
    let level = level(verbose, quiet);
    let Some(args) = serve else {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
        return;
    };
    let mut bad_rust_log = None;
    let filter = match &args.log_filter {
        // Checked when the command line was parsed.
        Some(f) => EnvFilter::builder().parse_lossy(f),
        None => match std::env::var("RUST_LOG") {
            Ok(f) if !f.trim().is_empty() => match EnvFilter::builder().parse(&f) {
                Ok(filter) => filter,
                Err(e) => {
                    bad_rust_log = Some(format!("RUST_LOG={f:?} ignored: {e}"));
                    verbosity_filter(level)
                }
            },
            _ => verbosity_filter(level),
        },
    };
    let journal = std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty());
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::stderr().is_terminal());
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match (args.log_format, journal) {
        (LogFormat::Text, false) => layer.boxed(),
        (LogFormat::Text, true) => layer.without_time().boxed(),
        (LogFormat::Json, false) => layer.json().flatten_event(true).boxed(),
        (LogFormat::Json, true) => layer.json().flatten_event(true).without_time().boxed(),
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
    if let Some(msg) = bad_rust_log {
        tracing::warn!("{msg}");
    }
}
