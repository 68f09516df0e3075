//! File name remapping with tftp-hpa's rules (`in.tftpd --map-file`, see its `tftpd(8)`
//! "FILENAME REMAPPING"): a list of regular-expression rules that rewrite, or refuse, a
//! requested file name before the [`Handler`](crate::Handler) sees it.
//!
//! # Syntax
//!
//! One rule per line: `OPERATION REGEX [REPLACEMENT]`, separated by white space. An unescaped
//! `#` starts a comment (also inside a field); blank lines are ignored. A backslash escapes
//! the next character in every field, so `\ ` and `\#` put a space or a hash mark into the
//! regex or the replacement (the backslash stays in the field: the regex sees `\ `, which
//! matches a space, and the replacement turns it into a space).
//!
//! `OPERATION` is one or more of:
//!
//! | flag | meaning |
//! | --- | --- |
//! | `r` | replace the first (leftmost) match of the regex with the replacement |
//! | `g` | with `r`: repeat the rule on the result until the regex no longer matches |
//! | `i` | match case-insensitively (ASCII letters) |
//! | `e` | if the rule matched, stop: the current name is the result |
//! | `s` | if the rule matched, start over from the first rule |
//! | `a` | if the rule matched, refuse the request: ERROR 2 (RFC 1350 "Access violation") with the replacement as the message, or `Access denied` |
//! | `G` | the rule applies to RRQs (GET) only |
//! | `P` | the rule applies to WRQs (PUT) only |
//! | `4` | the rule applies to IPv4 clients only (IPv4-mapped IPv6 addresses count as IPv4) |
//! | `6` | the rule applies to IPv6 clients only |
//! | `~` | the rule matches when the regex does *not* match (not with `r`; `\0`..`\9` are then empty) |
//!
//! The replacement may contain `\0` (the whole match), `\1`..`\9` (parenthesised groups; an
//! unmatched group is empty), `\i` (the client's IP address: `192.0.2.169`, `2001:db8::1`),
//! `\x` (the client's IP address in upper-case hex, the way PXELINUX names its config files:
//! `C00002A9` for IPv4, 32 digits for IPv6), `\U` / `\L` (upper/lower-case what follows,
//! ASCII), `\E` (stop doing so), and `\c` for any other character `c` (`\\`, `\ `, `\#`).
//!
//! # Regular expressions
//!
//! tftp-hpa compiles POSIX extended regexes (`regcomp(REG_EXTENDED)`); tftpx uses the
//! [`regex`] crate on bytes, with Unicode off (`.` and `[^x]` match any byte, as in the C
//! locale) and `.` matching a newline, as POSIX does. Bracket expressions are translated
//! from POSIX (a backslash inside brackets is a literal backslash, `[\]` is valid; `[:alpha:]`
//! classes work). Differences that remain:
//!
//! - The regex crate takes the leftmost-*first* match, POSIX the leftmost-*longest*: with
//!   alternatives that match at the same place (`(a|ab)` against `ab`) the first alternative
//!   wins here, the longest there. Write alternatives longest first.
//! - Back-references (`\1` in the regex) and collating elements (`[.x.]`, `[=x=]`) are
//!   refused when the file is parsed; `\d`, `\w`, `\s`, `\b` and `(?i)` are the regex
//!   crate's (POSIX ERE has none of them).
//!
//! # Differences from tftp-hpa
//!
//! - A rule that would never run (`GP`, `46`) or whose flags contradict each other (`r~`,
//!   `ra`, `as`, `ae`, `es`, as tftp-hpa 5.3 also refuses), text after the replacement (an
//!   unescaped space in it, usually a mistake), and tftp-hpa 5.3's additions (`gg`, `E`, `j`,
//!   `:labels`) are errors with the line number.
//! - `s` restarts at the first rule, as documented; tftpd-hpa 5.2 (Debian 12's) restarts at
//!   the second (fixed in 5.3).
//! - A refusing rule's message is its replacement alone (5.3); 5.2 put the text before and
//!   after the match around it.
//! - At most [`MAX_STEPS`] rule evaluations (each repetition of a `g` rule counts; 5.2 did
//!   not count those, so `rg a a` never ended there) and names of at most [`MAX_REMAP_LEN`]
//!   bytes: beyond either the request is refused with ERROR 2 `Remap table failure`, as
//!   tftp-hpa does when its step limit (also 1024) runs out.

use std::fmt;
use std::net::IpAddr;

use regex::bytes::{Captures, Regex, RegexBuilder};

use crate::server::Kind;

/// Rule evaluations (a rule tried against the name, or one more round of a `g` rule) one
/// request may cost before it is refused: the guard against `s` and `g` loops (tftp-hpa's
/// limit too).
pub const MAX_STEPS: usize = 1024;

/// Longest name, in bytes, remapping may produce or take as input (tftp-hpa's line limit);
/// a request whose name grows beyond it is refused.
pub const MAX_REMAP_LEN: usize = 16 * 1024;

/// The message of a refusal by an `a` rule without a replacement (in.tftpd's text for
/// ERROR 2).
pub const ACCESS_DENIED: &str = "Access denied";

/// The message when remapping does not finish within [`MAX_STEPS`] or [`MAX_REMAP_LEN`]
/// (in.tftpd's text).
pub const REMAP_FAILURE: &str = "Remap table failure";

/// A parsed rules file. Build it with [`RemapRules::parse`], give it to the server with
/// [`ServerBuilder::remap`](crate::ServerBuilder::remap).
#[derive(Debug, Clone, Default)]
pub struct RemapRules {
    rules: Vec<Rule>,
}

/// A rules file that cannot be used: the line (1-based) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// The line, counting from 1.
    pub line: usize,
    /// What is wrong, in words.
    pub message: String,
}

/// The result of [`RemapRules::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remapped {
    /// The name to serve (the request's own name when no rule rewrote it).
    Name(Vec<u8>),
    /// The request is refused with ERROR 2 (Access violation, RFC 1350 section 5).
    Refused(Refusal),
}

/// Why [`RemapRules::apply`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An `a` rule matched.
    Rule {
        /// Its line in the rules file (1-based).
        line: usize,
        /// Its replacement, expanded (empty when it has none).
        message: Vec<u8>,
    },
    /// More than [`MAX_STEPS`] rule evaluations (an `s` or `g` loop).
    TooManySteps,
    /// The name became longer than [`MAX_REMAP_LEN`] bytes (or was already).
    TooLong,
}

impl Refusal {
    /// The text of the ERROR 2 sent to the client, as in.tftpd sends it: an `a` rule's
    /// expanded replacement (lossy UTF-8), else [`ACCESS_DENIED`]; [`REMAP_FAILURE`] for the
    /// limits.
    pub fn message(&self) -> String {
        match self {
            Refusal::Rule { message, .. } if !message.is_empty() => {
                String::from_utf8_lossy(message).into_owned()
            }
            Refusal::Rule { .. } => ACCESS_DENIED.to_owned(),
            Refusal::TooManySteps | Refusal::TooLong => REMAP_FAILURE.to_owned(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Rule { line, .. } => write!(f, "refused by remap rule at line {line}"),
            Refusal::TooManySteps => write!(
                f,
                "remap rules did not finish within {MAX_STEPS} steps (an s or g loop?)"
            ),
            Refusal::TooLong => write!(f, "remapped name longer than {MAX_REMAP_LEN} bytes"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    rewrite: bool,
    global: bool,
    exit: bool,
    restart: bool,
    abort: bool,
    invert: bool,
    get_only: bool,
    put_only: bool,
    v4_only: bool,
    v6_only: bool,
}

#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    flags: Flags,
    regex: Regex,
    replacement: Vec<Piece>,
}

/// One element of a parsed replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Group(usize),
    ClientIp,
    ClientHex,
    Upper,
    Lower,
    NoCase,
}

impl RemapRules {
    /// Parses a rules file (see the [module documentation](self) for the syntax). An empty
    /// file (or one of comments only) is valid and remaps nothing.
    ///
    /// # Errors
    /// [`ParseError`] for the first line that is not a valid rule: an unknown or
    /// contradictory operation flag, a missing regex, a regex the regex crate refuses (or a
    /// POSIX feature it lacks: back-references, collating elements), or text after the
    /// replacement. Replacements always parse (`\c` is `c`; a group the regex lacks is
    /// empty).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut rules = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let err = |message: String| ParseError { line, message };
            let content: String = raw.chars().filter(|&c| c != '\r' && c != '\0').collect();
            let fields = fields(&content);
            let Some(op) = fields.first() else { continue };
            let (flags, case_insensitive) = parse_flags(op).map_err(err)?;
            let Some(re) = fields.get(1) else {
                return Err(err(format!("operation {op:?} has no regex")));
            };
            if let Some(extra) = fields.get(3) {
                return Err(err(format!(
                    "unexpected {extra:?} after the replacement (escape spaces in it as \"\\ \")"
                )));
            }
            let translated = posix_to_regex(re).map_err(|m| err(format!("regex {re:?}: {m}")))?;
            let regex = RegexBuilder::new(&translated)
                .unicode(false)
                .case_insensitive(case_insensitive)
                .dot_matches_new_line(true)
                .build()
                .map_err(|e| err(format!("regex {re:?}: {}", one_line(&e.to_string()))))?;
            let replacement = parse_replacement(fields.get(2).map_or("", |s| s.as_str()));
            rules.push(Rule {
                line,
                flags,
                regex,
                replacement,
            });
        }
        Ok(Self { rules })
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule (every name stays as it is).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs the rules over a requested file name `name` (bytes, without the NUL) for a
    /// request of `kind` from `client`: rules apply from the top, each to the result of the
    /// ones before.
    ///
    /// Returns [`Remapped::Name`] with the name to open, or [`Remapped::Refused`] when an
    /// `a` rule matched, the rules ran more than [`MAX_STEPS`] steps, or the name grew
    /// beyond [`MAX_REMAP_LEN`] bytes.
    pub fn apply(&self, name: &[u8], client: IpAddr, kind: Kind) -> Remapped {
        let client = client.to_canonical();
        if name.len() > MAX_REMAP_LEN {
            return Remapped::Refused(Refusal::TooLong);
        }
        let mut current = name.to_vec();
        let mut steps = 0usize;
        let mut i = 0;
        while let Some(rule) = self.rules.get(i) {
            i += 1;
            if !rule.applies(kind, client) {
                continue;
            }
            steps += 1;
            if steps > MAX_STEPS {
                return Remapped::Refused(Refusal::TooManySteps);
            }
            let caps = rule.regex.captures(&current);
            if caps.is_some() == rule.flags.invert {
                continue;
            }
            // An inverted rule matched because the regex did not: no groups to expand.
            let caps = if rule.flags.invert { None } else { caps };
            if rule.flags.abort {
                let message = expand(&rule.replacement, &current, caps.as_ref(), client);
                return Remapped::Refused(Refusal::Rule {
                    line: rule.line,
                    message,
                });
            }
            if rule.flags.rewrite {
                let mut caps = caps;
                while let Some(c) = caps {
                    let whole = c.get(0).map_or(0..0, |m| m.range());
                    let mut next = current[..whole.start].to_vec();
                    next.extend(expand(&rule.replacement, &current, Some(&c), client));
                    next.extend_from_slice(&current[whole.end..]);
                    drop(c);
                    current = next;
                    if current.len() > MAX_REMAP_LEN {
                        return Remapped::Refused(Refusal::TooLong);
                    }
                    if !rule.flags.global {
                        break;
                    }
                    steps += 1;
                    if steps > MAX_STEPS {
                        return Remapped::Refused(Refusal::TooManySteps);
                    }
                    caps = rule.regex.captures(&current);
                }
            }
            if rule.flags.exit {
                break;
            }
            if rule.flags.restart {
                i = 0;
            }
        }
        Remapped::Name(current)
    }
}

impl Rule {
    fn applies(&self, kind: Kind, client: IpAddr) -> bool {
        let f = &self.flags;
        !(f.get_only && kind != Kind::Rrq
            || f.put_only && kind != Kind::Wrq
            || f.v4_only && !client.is_ipv4()
            || f.v6_only && !client.is_ipv6())
    }
}

/// Splits a line into fields at unescaped white space, up to an unescaped `#`; escapes stay
/// in the fields.
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in line.chars() {
        if !escaped && (c.is_ascii_whitespace() || c == '\x0b' || c == '#') {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if c == '#' {
                return out;
            }
            continue;
        }
        // Two backslashes leave the escape state.
        escaped = !escaped && c == '\\';
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_flags(op: &str) -> Result<(Flags, bool), String> {
    let mut f = Flags::default();
    let mut icase = false;
    for c in op.chars() {
        let already = match c {
            'r' => std::mem::replace(&mut f.rewrite, true),
            'g' => std::mem::replace(&mut f.global, true),
            'e' => std::mem::replace(&mut f.exit, true),
            's' => std::mem::replace(&mut f.restart, true),
            'a' => std::mem::replace(&mut f.abort, true),
            'i' => std::mem::replace(&mut icase, true),
            '~' => std::mem::replace(&mut f.invert, true),
            'G' => std::mem::replace(&mut f.get_only, true),
            'P' => std::mem::replace(&mut f.put_only, true),
            '4' => std::mem::replace(&mut f.v4_only, true),
            '6' => std::mem::replace(&mut f.v6_only, true),
            'E' | 'j' | ':' => {
                return Err(format!(
                    "operation {op:?}: '{c}' (tftp-hpa 5.3 labels, jumps and E) is not supported"
                ))
            }
            _ => {
                return Err(format!(
                    "operation {op:?}: unknown flag '{c}' (known: r g i e s a G P 4 6 ~)"
                ))
            }
        };
        if already && c == 'g' {
            return Err(format!(
                "operation {op:?}: \"gg\" (tftp-hpa 5.3's sed-style global) is not supported"
            ));
        }
    }
    let pairs = [
        (
            f.rewrite && f.invert,
            "r and ~ (an inverted rule has no match to replace)",
        ),
        (f.rewrite && f.abort, "r and a"),
        (f.abort && f.restart, "a and s"),
        (f.abort && f.exit, "a and e"),
        (f.exit && f.restart, "e and s"),
        (
            f.get_only && f.put_only,
            "G and P (the rule would never apply)",
        ),
        (
            f.v4_only && f.v6_only,
            "4 and 6 (the rule would never apply)",
        ),
    ];
    if let Some((_, what)) = pairs.iter().find(|(bad, _)| *bad) {
        return Err(format!("operation {op:?}: flags {what} cannot be combined"));
    }
    if !f.rewrite {
        // As in tftp-hpa: repeating is about rewriting.
        f.global = false;
    }
    Ok((f, icase))
}

/// Translates a POSIX extended regex into the regex crate's syntax: bracket expressions are
/// rewritten (POSIX takes a backslash in brackets literally and has no nested classes or
/// set operations); everything else is passed on.
fn posix_to_regex(re: &str) -> Result<String, String> {
    let chars: Vec<char> = re.chars().collect();
    let mut out = String::with_capacity(re.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                let Some(&c) = chars.get(i + 1) else {
                    return Err("ends with a lone backslash".into());
                };
                if c.is_ascii_digit() && c != '0' {
                    return Err(format!("back-reference \\{c} is not supported"));
                }
                out.push('\\');
                out.push(c);
                i += 2;
            }
            '[' => i = bracket(&chars, i, &mut out)?,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Translates the POSIX bracket expression starting at `chars[start]` (`[`); returns the
/// index after its `]`.
fn bracket(chars: &[char], start: usize, out: &mut String) -> Result<usize, String> {
    let mut i = start + 1;
    out.push('[');
    if chars.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err("unterminated bracket expression".into());
        };
        if c == ']' && !first {
            out.push(']');
            return Ok(i + 1);
        }
        first = false;
        if c == '[' && matches!(chars.get(i + 1), Some(':' | '.' | '=')) {
            let kind = chars[i + 1];
            let close = (i + 2..chars.len().saturating_sub(1))
                .find(|&j| chars[j] == kind && chars[j + 1] == ']')
                .ok_or("unterminated [: :], [. .] or [= =] in brackets")?;
            if kind != ':' {
                return Err(format!(
                    "collating element [{kind}..{kind}] in brackets is not supported"
                ));
            }
            out.extend(&chars[i..close + 2]);
            i = close + 2;
            continue;
        }
        // A range a-z (a '-' first or last is literal).
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&e| e != ']') {
            push_class_char(out, c);
            out.push('-');
            push_class_char(out, chars[i + 2]);
            i += 3;
            continue;
        }
        push_class_char(out, c);
        i += 1;
    }
}

/// A literal character inside a regex-crate class, escaped when the crate gives it a meaning
/// there.
fn push_class_char(out: &mut String, c: char) {
    if matches!(c, '\\' | '[' | ']' | '&' | '-' | '~' | '^') {
        out.push('\\');
    }
    out.push(c);
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_replacement(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = Vec::new();
    let mut chars = text.chars();
    let mut buf = [0u8; 4];
    while let Some(c) = chars.next() {
        if c != '\\' {
            lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let piece = match chars.next() {
            Some(d @ '0'..='9') => Piece::Group(usize::from(d as u8 - b'0')),
            Some('i') => Piece::ClientIp,
            Some('x') => Piece::ClientHex,
            Some('U') => Piece::Upper,
            Some('L') => Piece::Lower,
            Some('E') => Piece::NoCase,
            Some(other) => {
                lit.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            None => {
                lit.push(b'\\');
                continue;
            }
        };
        if !lit.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut lit)));
        }
        pieces.push(piece);
    }
    if !lit.is_empty() {
        pieces.push(Piece::Literal(lit));
    }
    pieces
}

#[derive(Clone, Copy)]
enum Case {
    Keep,
    Upper,
    Lower,
}

/// Expands a replacement for a match `caps` in `name` (no match for inverted rules).
fn expand(pieces: &[Piece], name: &[u8], caps: Option<&Captures<'_>>, client: IpAddr) -> Vec<u8> {
    let mut out = Vec::new();
    let mut case = Case::Keep;
    let push = |out: &mut Vec<u8>, bytes: &[u8], case: Case| {
        out.extend(bytes.iter().map(|&b| match case {
            Case::Keep => b,
            Case::Upper => b.to_ascii_uppercase(),
            Case::Lower => b.to_ascii_lowercase(),
        }))
    };
    for p in pieces {
        match p {
            Piece::Literal(l) => push(&mut out, l, case),
            Piece::Group(n) => {
                if let Some(m) = caps.and_then(|c| c.get(*n)) {
                    push(&mut out, &name[m.range()], case);
                }
            }
            Piece::ClientIp => push(&mut out, client.to_string().as_bytes(), case),
            Piece::ClientHex => push(&mut out, hex_address(client).as_bytes(), case),
            Piece::Upper => case = Case::Upper,
            Piece::Lower => case = Case::Lower,
            Piece::NoCase => case = Case::Keep,
        }
    }
    out
}

/// The address in upper-case hex, network byte order: 8 digits for IPv4, 32 for IPv6.
fn hex_address(ip: IpAddr) -> String {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests;
