//! What the .deb installs besides the binary: shell completions (`tftpx completions SHELL`)
//! that complete the real flags in a real bash, man pages that render with man-db's
//! `man -l` and groff and name every `serve` flag, the committed copies of both under
//! packaging/ equal to what the binary prints now (else: `bash packaging/generate.sh`), and
//! packaging/tftpx.toml naming every `serve` flag and valid TOML once uncommented.
//!
//! The package itself is built, installed, used and removed by `.ci/deb-test.sh` (it
//! changes the system: a package, a user, /srv/tftp). bash, man-db, groff and python3 come
//! from `.ci/install-peers.sh`; a missing one fails the test.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tftpx");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `prog args`, feeding `stdin`; panics naming the program if it cannot start.
fn run(prog: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {prog} (installed by .ci/install-peers.sh): {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("stdin writer");
    out
}

fn tftpx(args: &[&str]) -> Vec<u8> {
    let out = run(BIN, args, b"", &[]);
    assert!(
        out.status.success(),
        "tftpx {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The long flags `tftpx serve --help` lists (without --help and --version).
fn serve_flags() -> BTreeSet<String> {
    let help = String::from_utf8(tftpx(&["serve", "--help"])).expect("utf-8 help");
    let flags: BTreeSet<String> = help
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-").and_then(|_| {
                // "-l, --listen <ADDR:PORT>" or "--allow-write"
                l.split_whitespace()
                    .find(|w| w.starts_with("--"))
                    .map(|w| w.trim_end_matches(',').trim_end_matches("..."))
            })?;
            Some(l.to_owned())
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect();
    assert!(
        flags.contains("--allow-create") && flags.contains("--port-range") && flags.len() > 25,
        "parsed the serve flags from --help: {flags:?}"
    );
    flags
}

/// Text as a terminal would show it, without overstrike bold/underline (`X\bX`, `_\bX`).
fn plain(rendered: &[u8]) -> String {
    let s = String::from_utf8_lossy(rendered);
    let mut out: Vec<char> = Vec::with_capacity(s.len());
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn bash_completion_completes_subcommands_and_serve_flags() {
    let script = tftpx(&["completions", "bash"]);
    let text = String::from_utf8(script.clone()).expect("utf-8");
    assert!(text.contains("serve"), "no serve in:\n{text}");
    assert!(text.contains("--allow-create"), "no --allow-create");
    // Run it in bash as the shell would on TAB: COMP_WORDS is the line, COMP_CWORD the word.
    let complete = |words: &[&str]| -> BTreeSet<String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tftpx.bash");
        std::fs::write(&file, &script).unwrap();
        let words_q: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let cmd = format!(
            "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{}'\nCOMP_POINT=${{#COMP_LINE}}\n\
             _tftpx tftpx '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            file.display(),
            words_q.join(" "),
            words.len() - 1,
            words.join(" "),
            words[words.len() - 1],
            words[words.len().saturating_sub(2)],
        );
        let out = run("bash", &["--norc", "--noprofile", "-c", &cmd], b"", &[]);
        assert!(
            out.status.success(),
            "bash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    };
    let subcommands = complete(&["tftpx", "se"]);
    assert_eq!(subcommands, BTreeSet::from(["serve".to_owned()]));
    let all = complete(&["tftpx", ""]);
    for c in ["serve", "get", "put", "completions"] {
        assert!(all.contains(c), "{c} missing from {all:?}");
    }
    assert!(
        !all.contains("man"),
        "the hidden man command is offered: {all:?}"
    );
    let flags = complete(&["tftpx", "serve", "--allow-c"]);
    assert_eq!(flags, BTreeSet::from(["--allow-create".to_owned()]));
    let shells = complete(&["tftpx", "completions", ""]);
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.contains(s), "{s} missing from {shells:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_the_serve_flags() {
    let zsh = String::from_utf8(tftpx(&["completions", "zsh"])).unwrap();
    assert!(
        zsh.starts_with("#compdef tftpx"),
        "{}",
        &zsh[..zsh.len().min(80)]
    );
    assert!(zsh.contains("--allow-create") && zsh.contains("serve"));
    let fish = String::from_utf8(tftpx(&["completions", "fish"])).unwrap();
    assert!(fish.contains("complete -c tftpx") && fish.contains("-l allow-create"));
    // Unknown shell: a usage error listing the shells.
    let out = run(BIN, &["completions", "tcsh"], b"", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bash") && err.contains("zsh"), "{err}");
}

#[test]
fn man_pages_render_with_man_and_groff_and_list_every_serve_flag() {
    let serve_page = tftpx(&["man", "serve"]);
    assert!(
        serve_page.starts_with(b".ie \\n(.g"),
        "roff source expected"
    );
    // man-db, as `man tftpx-serve` would show it once installed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tftpx-serve.1");
    std::fs::write(&file, &serve_page).unwrap();
    let out = run(
        "man",
        &["-l", file.to_str().unwrap()],
        b"",
        &[("MANWIDTH", "200"), ("MANPAGER", "cat"), ("PAGER", "cat")],
    );
    assert!(
        out.status.success(),
        "man -l: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = plain(&out.stdout);
    assert!(text.contains("tftpx-serve(1)"), "{text}");
    assert!(
        text.contains("SYNOPSIS") && text.contains("OPTIONS"),
        "{text}"
    );
    for flag in serve_flags() {
        assert!(
            text.contains(&flag),
            "{flag} missing from man tftpx-serve:\n{text}"
        );
    }
    assert!(
        text.contains("[default: 65464]"),
        "defaults are shown: {text}"
    );
    // groff with every warning on: the roff must be clean, not just renderable.
    let out = run("groff", &["-man", "-Tutf8", "-ww", "-z"], &serve_page, &[]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "groff warnings");

    // tftpx(1) lists the commands with their pages.
    let top = tftpx(&["man"]);
    let out = run("groff", &["-man", "-Tutf8", "-ww"], &top, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "groff warnings");
    let text = plain(&out.stdout);
    for page in [
        "tftpx-serve(1)",
        "tftpx-get(1)",
        "tftpx-put(1)",
        "tftpx-completions(1)",
    ] {
        assert!(text.contains(page), "{page} missing from tftpx(1):\n{text}");
    }
    assert!(
        !text.contains("tftpx-man"),
        "hidden command listed:\n{text}"
    );
    let out = run(BIN, &["man", "nonsense"], b"", &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn packaged_man_pages_and_completions_are_current() {
    let root = repo().join("packaging");
    let mut expected: Vec<(PathBuf, Vec<u8>)> = vec![
        (root.join("man/tftpx.1"), tftpx(&["man"])),
        (
            root.join("completions/tftpx.bash"),
            tftpx(&["completions", "bash"]),
        ),
        (
            root.join("completions/_tftpx"),
            tftpx(&["completions", "zsh"]),
        ),
        (
            root.join("completions/tftpx.fish"),
            tftpx(&["completions", "fish"]),
        ),
    ];
    for cmd in ["serve", "get", "put", "completions"] {
        expected.push((
            root.join(format!("man/tftpx-{cmd}.1")),
            tftpx(&["man", cmd]),
        ));
    }
    let stale: Vec<String> = expected
        .iter()
        .filter(|(path, bytes)| std::fs::read(path).ok().as_ref() != Some(bytes))
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        stale.is_empty(),
        "stale or missing (the flags changed): {stale:?}; run `bash packaging/generate.sh`"
    );
    // No page the package would ship that the binary no longer makes.
    let shipped: BTreeSet<String> = std::fs::read_dir(root.join("man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let made: BTreeSet<String> = expected
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "1"))
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(shipped, made);
}

/// Keys of `tftpx serve` that are not settings of a config file.
const NOT_CONFIG_KEYS: &[&str] = &["--verbose", "--quiet", "--config", "--check-config"];

#[test]
fn packaged_config_names_every_serve_flag_and_parses() {
    let text = std::fs::read_to_string(repo().join("packaging/tftpx.toml")).unwrap();
    // Every setting line is commented out: the file changes nothing until edited.
    let keys: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| {
            let (k, _) = l.split_once(" = ")?;
            (!k.contains(' ')).then(|| format!("--{k}"))
        })
        .collect();
    assert!(
        text.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "packaging/tftpx.toml must be all comments"
    );
    let mut flags = serve_flags();
    flags.retain(|f| !NOT_CONFIG_KEYS.contains(&f.as_str()));
    flags.insert("--root".to_owned()); // the DIR argument
    assert_eq!(
        keys, flags,
        "packaging/tftpx.toml keys (left) vs tftpx serve flags (right)"
    );
    // Uncommented, it is TOML (python3's tomllib, Python 3.11+).
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = run(
        "python3",
        &[
            "-c",
            "import sys, tomllib; d = tomllib.loads(sys.stdin.read()); print(len(d))",
        ],
        uncommented.as_bytes(),
        &[],
    );
    assert!(
        out.status.success(),
        "not TOML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        keys.len().to_string()
    );
}
