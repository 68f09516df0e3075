//! What a package installs besides the binary, generated from the clap definitions so it
//! always matches the flags: shell completions (`tftpx completions SHELL`, clap_complete)
//! and man pages (`tftpx man [COMMAND]`, clap_mangen, hidden). The files under
//! `packaging/` are this output (`packaging/generate.sh`); `tests/package.rs` fails when
//! they are stale.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::CliError;

/// `tftpx completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for. Install: bash, the output in
    /// /usr/share/bash-completion/completions/tftpx; zsh, in a directory of $fpath as
    /// _tftpx; fish, in ~/.config/fish/completions/tftpx.fish.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `tftpx man [COMMAND]` (hidden: for packaging).
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (serve, get, put, completions): tftpx-COMMAND(1).
    /// Without one, tftpx(1).
    pub command: Option<String>,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs) -> Result<(), CliError> {
    // clap_complete offers hidden subcommands too: the same command without `man`.
    let full = crate::Cli::command();
    let mut cmd = clap::Command::new("tftpx")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "tftpx", &mut out);
    write_stdout(&out)
}

/// Writes the roff source of tftpx(1), or of tftpx-COMMAND(1), to stdout.
pub fn man(args: ManArgs) -> Result<(), CliError> {
    // As clap_mangen::generate_to: built, so that subcommands carry their full names
    // (tftpx-serve) and the global flags; no `help` subcommand page.
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let page = match args.command.as_deref() {
        None => cmd,
        Some(name) => cmd
            .get_subcommands()
            .find(|s| !s.is_hide_set() && s.get_name() == name)
            .cloned()
            .ok_or_else(|| CliError::Usage(format!("no man page for command {name:?}")))?,
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .manual("tftpx manual")
        .render(&mut out)
        .map_err(|e| CliError::Failed(format!("cannot render the man page: {e}")))?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Failed(format!("cannot write to stdout: {e}")))
}
