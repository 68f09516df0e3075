//! `tftpx serve --config FILE`: a TOML file whose keys are the long flags of `tftpx serve`
//! (`listen = ["127.0.0.1:69"]`, `allow-create = true`, `timeout = "1s"`), plus `root` for
//! the directory.
//!
//! The file is turned into `--flag=value` arguments and parsed by the same clap parsers as
//! the command line, so a key means exactly what its flag means. A flag given on the
//! command line wins over its key; for a repeatable flag (`listen`, `refuse`,
//! `allow-write-from`) the command line's values replace the file's list, and `allow` and
//! `deny` count as one list (the address rules): either flag on the command line replaces
//! both keys. In the file, the rules of whichever of `allow`/`deny` comes first apply
//! first.
//!
//! Errors name the file, the line, the key and what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches};
use toml::{Spanned, Value};

use crate::serve::ServeArgs;
use crate::{Cli, Command};

/// The key for the `DIR` argument.
const ROOT: &str = "root";
/// Flags that are not keys: about the file itself, or not of `serve`.
const NOT_KEYS: &[&str] = &[
    "config",
    "check-config",
    "help",
    "verbose",
    "quiet",
    "version",
];
/// Keys whose change SIGHUP puts in force (see [`crate::serve`]); every other key needs a
/// restart.
pub(crate) const RELOADABLE: &[&str] = &["map", "allow", "deny", "allow-write-from", "refuse"];
/// The address rules: given on the command line, they replace both keys.
const ACL: &[&str] = &["allow", "deny"];

/// Where `tftpx serve`'s settings come from: its command line and, with `--config`, a file
/// that is read again on every [`Source::load`] (SIGHUP).
#[derive(Debug, Clone)]
pub struct Source {
    /// The whole command line, as given.
    argv: Vec<OsString>,
    /// The index of `serve` in it.
    serve_at: usize,
    /// `--config FILE`.
    path: Option<PathBuf>,
    /// Keys given on the command line (they win over the file).
    on_cli: BTreeSet<String>,
}

/// Settings read by [`Source::load`].
#[derive(Debug)]
pub struct Loaded {
    /// The command line merged with the file.
    pub args: ServeArgs,
    /// Every key's value in force (defaults included), as text: compared on SIGHUP to say
    /// which changes need a restart.
    pub effective: BTreeMap<String, String>,
}

impl Source {
    /// Reads `tftpx serve`'s command line from `argv` (as `std::env::args_os`).
    ///
    /// # Errors
    /// The command line does not parse (already checked by the caller, so not expected).
    pub fn new(argv: Vec<OsString>) -> Result<Self, String> {
        let matches = Cli::command()
            .try_get_matches_from(&argv)
            .map_err(|e| e.to_string())?;
        let Some(serve) = matches.subcommand_matches("serve") else {
            return Err("not a serve command".into());
        };
        // Before `serve` there are only -v/-q/--help/--version (none takes a value).
        let serve_at = argv
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, a)| !a.to_string_lossy().starts_with('-'))
            .map(|(i, _)| i)
            .ok_or("no subcommand")?;
        let mut on_cli = BTreeSet::new();
        for (key, arg) in keys() {
            if serve.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
                on_cli.insert(key);
            }
        }
        if serve.value_source("dir") == Some(ValueSource::CommandLine) {
            on_cli.insert(ROOT.to_owned());
        }
        Ok(Self {
            argv,
            serve_at,
            path: serve.get_one::<PathBuf>("config").cloned(),
            on_cli,
        })
    }

    /// The `--config` file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the file (if any) and merges it with the command line.
    ///
    /// # Errors
    /// `FILE: ...` when the file cannot be read; `FILE:LINE: ...` naming the key and what
    /// was expected for a syntax error, an unknown key, a value of the wrong type or one
    /// its flag's parser refuses.
    pub fn load(&self) -> Result<Loaded, String> {
        let (file_args, root) = match &self.path {
            Some(p) => self.file_args(p)?,
            None => (Vec::new(), None),
        };
        let mut argv = self.argv[..=self.serve_at].to_vec();
        argv.extend(file_args);
        argv.extend_from_slice(&self.argv[self.serve_at + 1..]);
        let file = self
            .path
            .as_ref()
            .map(|p| format!("{}: ", p.display()))
            .unwrap_or_default();
        let matches = Cli::command()
            .try_get_matches_from(&argv)
            .map_err(|e| format!("{file}{}", clap_message(&e)))?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| format!("{file}{e}"))?;
        let Command::Serve(mut args) = cli.command else {
            return Err("not a serve command".into());
        };
        if let Some(root) = root {
            args.dir = root;
        }
        let serve = matches
            .subcommand_matches("serve")
            .ok_or("not a serve command")?;
        let mut effective = BTreeMap::new();
        for (key, arg) in keys() {
            let raw: Vec<String> = serve
                .try_get_raw(arg.get_id().as_str())
                .ok()
                .flatten()
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            effective.insert(key, raw.join(", "));
        }
        effective.insert(ROOT.to_owned(), args.dir.display().to_string());
        Ok(Loaded {
            args: *args,
            effective,
        })
    }

    /// The file's settings as `--flag=value` arguments (less those the command line gives),
    /// and its `root`.
    fn file_args(&self, path: &Path) -> Result<(Vec<OsString>, Option<PathBuf>), String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        let table: BTreeMap<String, Spanned<Value>> = toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
            format!("{shown}:{at}: {}", e.message().trim_end())
        })?;
        let mut entries: Vec<(&String, &Spanned<Value>)> = table.iter().collect();
        // In file order: `allow` and `deny` rules apply in the order their keys come.
        entries.sort_by_key(|(_, v)| v.span().start);
        let keys: BTreeMap<String, Arg> = keys().collect();
        let serve_cmd = serve_command();
        let acl_on_cli = ACL.iter().any(|k| self.on_cli.contains(*k));
        let mut out = Vec::new();
        let mut root = None;
        for (key, value) in entries {
            let line = line_of(&text, value.span().start);
            let at = format!("{shown}:{line}: {key}");
            if key == ROOT {
                let Value::String(s) = value.get_ref() else {
                    return Err(format!(
                        "{at}: expected a directory name (a string), found {}",
                        type_name(value.get_ref())
                    ));
                };
                if !self.on_cli.contains(ROOT) {
                    root = Some(PathBuf::from(s));
                }
                continue;
            }
            let Some(arg) = keys.get(key.as_str()) else {
                return Err(format!(
                    "{at}: unknown key; the keys are `root` and the long flags of \
                     `tftpx serve` without their dashes ({})",
                    keys.keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let values: Vec<String> = match arg.get_action() {
                ArgAction::SetTrue => match value.get_ref() {
                    Value::Boolean(true) => vec![String::new()],
                    Value::Boolean(false) => Vec::new(),
                    v => {
                        return Err(format!(
                            "{at}: expected true or false, found {}",
                            type_name(v)
                        ))
                    }
                },
                ArgAction::Append => match value.get_ref() {
                    Value::Array(items) => items
                        .iter()
                        .map(|v| scalar(v).ok_or_else(|| expected(&at, arg, v, true)))
                        .collect::<Result<_, _>>()?,
                    v => vec![scalar(v).ok_or_else(|| expected(&at, arg, v, true))?],
                },
                _ => vec![scalar(value.get_ref())
                    .ok_or_else(|| expected(&at, arg, value.get_ref(), false))?],
            };
            // Each value through its flag's own parser, alone, so the error names this line.
            if arg.get_action().takes_values() {
                for v in &values {
                    serve_cmd
                        .clone()
                        .try_get_matches_from([
                            OsString::from("serve"),
                            format!("--{key}={v}").into(),
                        ])
                        .map_err(|e| format!("{at}: {}", clap_message(&e)))?;
                }
            }
            let given =
                self.on_cli.contains(key.as_str()) || (acl_on_cli && ACL.contains(&key.as_str()));
            if given {
                continue;
            }
            for v in values {
                out.push(if arg.get_action().takes_values() {
                    OsString::from(format!("--{key}={v}"))
                } else {
                    OsString::from(format!("--{key}"))
                });
            }
        }
        Ok((out, root))
    }
}

/// The `serve` subcommand, built (so its args know their actions and parsers).
fn serve_command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd.find_subcommand("serve")
        .cloned()
        .expect("the serve subcommand")
}

/// Every key of the file but `root`: the long name of each `tftpx serve` flag, with its arg.
fn keys() -> impl Iterator<Item = (String, Arg)> {
    serve_command()
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_owned(), a.clone())))
        .filter(|(k, _)| !NOT_KEYS.contains(&k.as_str()))
        .collect::<Vec<_>>()
        .into_iter()
}

/// A string, integer or float as the text its flag would take.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// "expected a VALUE_NAME (a string or number)[, or a list of them], found TYPE".
fn expected(at: &str, arg: &Arg, found: &Value, list: bool) -> String {
    let what = arg
        .get_value_names()
        .and_then(|n| n.first())
        .map_or_else(|| "value".to_owned(), ToString::to_string);
    let list = if list { " or a list of them" } else { "" };
    format!(
        "{at}: expected {what} (a string or a number){list}, found {}",
        type_name(found)
    )
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A clap error's first line, without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The keys that differ between two [`Loaded::effective`] maps and need a restart to take
/// effect, with their old and new values.
pub fn needs_restart<'a>(
    old: &'a BTreeMap<String, String>,
    new: &'a BTreeMap<String, String>,
) -> Vec<(&'a str, &'a str, &'a str)> {
    old.iter()
        .filter(|(k, _)| !RELOADABLE.contains(&k.as_str()))
        .filter_map(|(k, o)| {
            let n = new.get(k)?;
            (n != o).then_some((k.as_str(), o.as_str(), n.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(argv: &[&str], file: &str) -> (tempfile::NamedTempFile, Source) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), file).unwrap();
        let mut v: Vec<OsString> = argv.iter().map(OsString::from).collect();
        v.push("--config".into());
        v.push(f.path().into());
        let s = Source::new(v).unwrap();
        (f, s)
    }

    #[test]
    fn file_values_apply_and_the_command_line_wins() {
        let (_f, s) = source(
            &[
                "tftpx",
                "-v",
                "serve",
                "--timeout",
                "3s",
                "--listen",
                "127.0.0.1:7",
            ],
            "root = \"/srv\"\ntimeout = \"2s\"\nretries = 9\nallow-create = true\n\
             listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nrefuse = \"tsize\"\n",
        );
        let l = s.load().unwrap();
        assert_eq!(l.args.dir, PathBuf::from("/srv"));
        let (_f, s) = source(&["tftpx", "serve", "/boot"], "root = \"/srv\"\n");
        assert_eq!(s.load().unwrap().args.dir, PathBuf::from("/boot"));
        assert_eq!(l.args.timeout, std::time::Duration::from_secs(3));
        assert_eq!(l.args.retries, 9);
        assert!(l.args.allow_create);
        assert_eq!(
            l.args.listen.len(),
            1,
            "the command line's list replaces the file's"
        );
        assert_eq!(l.args.refuse.len(), 1);
        assert_eq!(l.effective["timeout"], "3s");
        assert_eq!(l.effective["root"], "/srv");
    }

    #[test]
    fn allow_and_deny_keep_file_order_and_the_command_line_replaces_both() {
        let (_f, s) = source(
            &["tftpx", "serve"],
            "deny = \"10.0.0.5\"\nallow = [\"10.0.0.0/8\"]\n",
        );
        let acl = s.load().unwrap().args.acl.acl;
        assert!(!acl.allows("10.0.0.5".parse().unwrap()));
        assert!(acl.allows("10.0.0.6".parse().unwrap()));
        let (_f, s) = source(
            &["tftpx", "serve", "--allow", "192.0.2.1"],
            "deny = [\"10.0.0.5\"]\n",
        );
        let acl = s.load().unwrap().args.acl.acl;
        assert_eq!(acl.rules().len(), 1);
    }

    #[test]
    fn errors_name_the_file_line_key_and_what_is_expected() {
        for (file, want) in [
            ("\n\nbogus = 1\n", ":3: bogus: unknown key"),
            ("allow-create = \"yes\"\n", ":1: allow-create: expected true or false, found a string"),
            ("retries = 5\ntimeout = \"soon\"\n", ":2: timeout: invalid value 'soon'"),
            ("listen = [true]\n", ":1: listen: expected ADDR:PORT (a string or a number) or a list of them, found a boolean"),
            ("root = 3\n", ":1: root: expected a directory name (a string), found an integer"),
            ("timeout = [\"1s\"]\n", ":1: timeout: expected DURATION (a string or a number), found a list"),
            ("x = = 1\n", ":1: "),
        ] {
            let (f, s) = source(&["tftpx", "serve"], file);
            let e = s.load().unwrap_err();
            let path = f.path().display().to_string();
            assert!(e.starts_with(&path), "{e}");
            assert!(e.contains(want), "{file:?}: {e}");
        }
    }
}
