//! The `tftpx` command: `serve`, `get` (`pull`) and `put` (`push`).
//!
//! Exit codes: 0 success, 1 failure (a transfer failed, or the server could not start),
//! 2 usage error, 128 + the signal's number when `get`/`put` is stopped by SIGINT (130) or
//! SIGTERM (143).

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

mod assets;
mod config;
mod logging;
mod metrics;
mod privileges;
mod serve;
mod systemd;
mod transfer;

/// A TFTP server and client (RFC 1350, 2347, 2348, 2349, 7440).
#[derive(Debug, Parser)]
#[command(name = "tftpx", version, about, propagate_version = true)]
struct Cli {
    /// More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints
    /// the address used, the options asked and in force and the transfer's counters, -vv a
    /// packet trace (direction, opcode, block, size, time since start).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a directory or an origin: `tftpx serve ./boot --listen 127.0.0.1:6969`
    // Boxed: its many flags make it much larger than the other variants.
    Serve(Box<serve::ServeArgs>),
    /// Download files: `tftpx get HOST[:PORT] REMOTE... [-o LOCAL]` or `tftpx get tftp://HOST/PATH`
    #[command(visible_alias = "pull")]
    Get(transfer::GetArgs),
    /// Upload files: `tftpx put HOST[:PORT] LOCAL [REMOTE]` or `tftpx put HOST LOCAL LOCAL LOCAL...`
    #[command(visible_alias = "push")]
    Put(transfer::PutArgs),
    /// Print a shell completion script: `tftpx completions bash`
    Completions(assets::CompletionsArgs),
    /// Print a man page in roff (for packaging): `tftpx man serve | man -l -`
    #[command(hide = true)]
    Man(assets::ManArgs),
}

/// How a command failed: decides the exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The command line was wrong (exit 2).
    Usage(String),
    /// The work failed (exit 1).
    Failed(String),
    /// Some of the work failed and each failure was already printed (exit 1).
    Reported,
}

/// Parses `1s`, `500ms`, `2m` (humantime), or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs > 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err("must be positive, e.g. 1s or 500ms".into());
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 1s or 500ms)"))?;
    if d.is_zero() {
        return Err("must be positive, e.g. 1s or 500ms".into());
    }
    Ok(d)
}

/// The longest busy poll accepted: a wait that polls longer is a mistake (a unit left out).
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Parses a busy-poll budget: `0`, or a duration with its unit (`100us`, `50µs`, `1ms`), at
/// most 10 ms. A bare number other than 0 is refused: seconds would be a mistake here.
pub(crate) fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.parse::<f64>().is_ok() {
        return Err("give a unit, e.g. 100us or 1ms (0 turns busy polling off)".into());
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 100us, or 0)"))?;
    if d > MAX_BUSY_POLL {
        return Err(
            "at most 10ms: a wait polls the socket this long before it sleeps (try e.g. 100us, or 0)"
                .into(),
        );
    }
    Ok(d)
}

/// Makes glibc's allocator return every buffer of 128 KiB or more to the system when it is
/// freed (a window ring, a read buffer), instead of keeping it in a heap after a burst of big
/// transfers: an explicit M_MMAP_THRESHOLD turns off glibc's dynamic threshold, which would
/// otherwise rise to the size of the first freed window and keep later ones in the heap.
/// Called before the runtime starts any thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn give_freed_buffers_back() {
    // SAFETY: mallopt only sets an allocator parameter; no thread has started yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_freed_buffers_back() {}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // `serve`: the --config file merged with the command line, before logging starts (its
    // flags may be in the file).
    let mut source = None;
    if let Command::Serve(args) = &mut cli.command {
        match config::Source::new(std::env::args_os().collect()).and_then(|s| {
            let loaded = s.load()?;
            Ok((s, loaded))
        }) {
            Ok((s, loaded)) => {
                **args = loaded.args;
                source = Some((s, loaded.effective));
            }
            Err(msg) => {
                eprintln!("error: {msg}");
                return ExitCode::from(1);
            }
        }
    }
    let serve_logs = match &cli.command {
        Command::Serve(args) => Some(&args.log),
        _ => None,
    };
    logging::init(cli.verbose, cli.quiet, serve_logs);
    let quiet = cli.quiet > 0;
    let result = match cli.command {
        Command::Completions(args) => assets::completions(args),
        Command::Man(args) => assets::man(args),
        // The server builds its own runtime (spread over every core), around binding as
        // root and giving root up.
        Command::Serve(args) => {
            give_freed_buffers_back();
            let (source, effective) = source.expect("loaded above");
            serve::main(*args, source, effective)
        }
        // A client runs one lock-step transfer, where waking a task on another thread costs
        // more than it gains.
        command => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let caught = Arc::new(AtomicI32::new(0));
                let r = rt.block_on(async {
                    let ctx = transfer::Ctx {
                        quiet,
                        verbose: cli.verbose,
                        cancel: tftpx::CancellationToken::new(),
                    };
                    stop_on_signals(ctx.cancel.clone(), caught.clone())?;
                    match command {
                        Command::Get(args) => transfer::get(args, &ctx).await,
                        Command::Put(args) => transfer::put(args, &ctx).await,
                        Command::Serve(_) | Command::Completions(_) | Command::Man(_) => {
                            unreachable!("handled above")
                        }
                    }
                });
                // Nothing of a transfer is left running; a FIFO still waiting for its reader
                // in the blocking pool must not hold the exit.
                rt.shutdown_background();
                let sig = caught.load(Ordering::SeqCst);
                if sig != 0 {
                    eprintln!("tftpx: stopped by signal {sig}; the server was told (ERROR 0)");
                    return ExitCode::from(128 + sig as u8);
                }
                r
            }
            Err(e) => Err(CliError::Failed(format!("cannot start the runtime: {e}"))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("error: {msg}\n\nFor more information, try '--help'.");
            ExitCode::from(2)
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(CliError::Reported) => ExitCode::from(1),
    }
}

/// On the first SIGINT or SIGTERM, records its number in `caught` and cancels `cancel`: the
/// running transfer sends ERROR 0 to the server, its temporary file is removed, and the
/// command exits 128 + the number. A second signal exits at once.
fn stop_on_signals(
    cancel: tftpx::CancellationToken,
    caught: Arc<AtomicI32>,
) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|e| CliError::Failed(format!("cannot handle signals: {e}")))
    };
    let mut int = listen(SignalKind::interrupt())?;
    let mut term = listen(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            if caught.swap(sig, Ordering::SeqCst) != 0 {
                std::process::exit(128 + sig);
            }
            cancel.cancel();
        }
    });
    Ok(())
}
