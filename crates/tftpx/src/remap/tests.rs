use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 169));
const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

fn rules(text: &str) -> RemapRules {
    RemapRules::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The remapped name of an RRQ from 192.0.2.169, as text.
fn get(r: &RemapRules, name: &str) -> String {
    name_of(r.apply(name.as_bytes(), V4, Kind::Rrq))
}

fn name_of(m: Remapped) -> String {
    match m {
        Remapped::Name(n) => String::from_utf8(n).unwrap(),
        Remapped::Refused(r) => panic!("refused: {r:?}"),
    }
}

fn refusal(m: Remapped) -> Refusal {
    match m {
        Remapped::Refused(r) => r,
        Remapped::Name(n) => panic!("not refused: {:?}", String::from_utf8_lossy(&n)),
    }
}

fn parse_err(text: &str) -> ParseError {
    RemapRules::parse(text).expect_err(text)
}

#[test]
fn windows_paths_become_lower_case_slashes() {
    let r = rules(
        "# Windows Deployment Services ask for \\Boot\\BCD\n\
         rg \\\\ /      # every backslash\n\
         r ^/           # no leading slash\n\
         r .* \\L\\0    # lower case\n",
    );
    assert_eq!(r.len(), 3);
    assert_eq!(get(&r, "\\Boot\\BCD"), "boot/bcd");
    assert_eq!(get(&r, "\\Boot\\x64\\WDSNBP.COM"), "boot/x64/wdsnbp.com");
    assert_eq!(get(&r, "pxelinux.0"), "pxelinux.0");
}

#[test]
fn prefix_stripped_and_case_insensitive() {
    let r = rules("r ^/tftpboot/\nri ^PXELINUX\\.0$ pxelinux.0\n");
    assert_eq!(get(&r, "/tftpboot/boot/vmlinuz"), "boot/vmlinuz");
    assert_eq!(get(&r, "/tftpboot/PxeLinux.0"), "pxelinux.0");
    // Only the leftmost match is replaced without g, and only at ^.
    assert_eq!(get(&r, "a/tftpboot/b"), "a/tftpboot/b");
    // Without i, case matters.
    let r = rules("r ^PXELINUX\\.0$ pxelinux.0");
    assert_eq!(get(&r, "PxeLinux.0"), "PxeLinux.0");
    assert_eq!(get(&r, "PXELINUX.0"), "pxelinux.0");
}

#[test]
fn client_address_escapes() {
    let r = rules("r ^pxelinux\\.cfg/default$ pxelinux.cfg/\\x\nr ^who$ \\i");
    assert_eq!(get(&r, "pxelinux.cfg/default"), "pxelinux.cfg/C00002A9");
    assert_eq!(get(&r, "who"), "192.0.2.169");
    let v6 = |n: &str| name_of(r.apply(n.as_bytes(), V6, Kind::Rrq));
    assert_eq!(
        v6("pxelinux.cfg/default"),
        "pxelinux.cfg/20010DB8000000000000000000000001"
    );
    assert_eq!(v6("who"), "2001:db8::1");
    // An IPv4-mapped IPv6 client is its IPv4 address.
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
    assert_eq!(
        name_of(r.apply(b"pxelinux.cfg/default", mapped, Kind::Rrq)),
        "pxelinux.cfg/0A000001"
    );
    assert_eq!(name_of(r.apply(b"who", mapped, Kind::Rrq)), "10.0.0.1");
    // \U, \L and \E apply to whatever follows.
    let r = rules("r ^(.*)-(.*)$ \\U\\1\\E-\\2-\\L\\x-ABC");
    assert_eq!(get(&r, "ab-cd"), "AB-cd-c00002a9-abc");
}

#[test]
fn groups_and_escapes_in_the_replacement() {
    let r = rules(r"r ^([a-z]+)/([0-9]+)(x)?$ \2\ \1\#\\\0\9\q");
    // \9 and the unmatched \3 are empty; \q is a literal q.
    assert_eq!(get(&r, "abc/42"), "42 abc#\\abc/42q");
    // A trailing lone backslash is literal.
    let r = rules(r"r ^a$ b\");
    assert_eq!(get(&r, "a"), "b\\");
}

#[test]
fn abort_rules_refuse_with_their_message() {
    let r = rules("# deny\n\na ^secret/ Go\\ away\\ \\0\nPa ^ro/\n");
    assert_eq!(
        refusal(r.apply(b"secret/key", V4, Kind::Rrq)),
        Refusal::Rule {
            line: 3,
            message: b"Go away secret/".to_vec()
        }
    );
    assert_eq!(
        refusal(r.apply(b"secret/key", V4, Kind::Rrq)).message(),
        "Go away secret/"
    );
    let ro = refusal(r.apply(b"ro/x", V4, Kind::Wrq));
    assert_eq!(
        ro,
        Refusal::Rule {
            line: 4,
            message: Vec::new()
        }
    );
    assert_eq!(ro.message(), "Access denied");
    assert_eq!(get(&r, "ro/x"), "ro/x");
}

#[test]
fn inverted_rules() {
    // Only boot/ and pxelinux.* may be read; nothing else.
    let r = rules("a~ ^(boot/|pxelinux\\.) only\\ \\1boot\\ files");
    assert_eq!(get(&r, "boot/vmlinuz"), "boot/vmlinuz");
    assert_eq!(get(&r, "pxelinux.0"), "pxelinux.0");
    let refused = refusal(r.apply(b"etc/passwd", V4, Kind::Rrq));
    // No match, so \1 is empty.
    assert_eq!(refused.message(), "only boot files");
    // ~ with e: stop unless the name is under boot/.
    let r = rules("e~ ^boot/\nr ^boot/ b/");
    assert_eq!(get(&r, "x/boot/y"), "x/boot/y");
    assert_eq!(get(&r, "boot/y"), "b/y");
}

#[test]
fn exit_restart_and_global() {
    // e: the first matching e rule ends processing.
    let r = rules("re ^a b\nr ^b c");
    assert_eq!(get(&r, "a"), "b");
    assert_eq!(get(&r, "b"), "c");
    // Without e both apply.
    let r = rules("r ^a b\nr ^b c");
    assert_eq!(get(&r, "a"), "c");
    // s: after a match, start over from the first rule.
    let r = rules("r ^b c\nrs ^a b");
    assert_eq!(get(&r, "a"), "c");
    assert_eq!(get(&r, "aa"), "ca");
    // g: repeat until the regex no longer matches; without g only the first match.
    let r = rules("rg \\\\ /");
    assert_eq!(get(&r, "a\\b\\c"), "a/b/c");
    let r = rules("r \\\\ /");
    assert_eq!(get(&r, "a\\b\\c"), "a/b\\c");
    // g repeats on the result: "aab" -> "ab" -> "b".
    let r = rules("rg ^a");
    assert_eq!(get(&r, "aab"), "b");
    // g without r means nothing (as in tftp-hpa).
    let r = rules("eg ^a\nr ^a b");
    assert_eq!(get(&r, "a"), "a");
}

#[test]
fn loops_are_refused_after_max_steps() {
    // s loop: every pass matches again.
    let r = rules("rs ^a a");
    assert_eq!(refusal(r.apply(b"a", V4, Kind::Rrq)), Refusal::TooManySteps);
    assert_eq!(
        refusal(r.apply(b"a", V4, Kind::Rrq)).message(),
        "Remap table failure"
    );
    // g loop: the replacement always matches again (tftpd-hpa 5.2 does not count g rounds: it never ends).
    let r = rules("rg a a");
    assert_eq!(refusal(r.apply(b"a", V4, Kind::Rrq)), Refusal::TooManySteps);
    // A name that doubles each round is refused long before it is 2^1024 bytes.
    let r = rules("rg .+ \\0\\0");
    assert_eq!(refusal(r.apply(b"ab", V4, Kind::Rrq)), Refusal::TooLong);
    let long = vec![b'a'; MAX_REMAP_LEN + 1];
    assert_eq!(refusal(r.apply(&long, V4, Kind::Rrq)), Refusal::TooLong);
    // A finite restart chain well inside the budget is fine: 500 restarts.
    let r = rules("rs ^x(.*)y$ \\1");
    let name = format!("{}{}", "x".repeat(500), "y".repeat(500));
    assert_eq!(get(&r, &name), "");
}

#[test]
fn get_put_and_address_family_rules() {
    let r = rules("rG ^f$ get\nrP ^f$ put\nr4 ^g$ v4\nr6 ^g$ v6");
    assert_eq!(name_of(r.apply(b"f", V4, Kind::Rrq)), "get");
    assert_eq!(name_of(r.apply(b"f", V4, Kind::Wrq)), "put");
    assert_eq!(name_of(r.apply(b"g", V4, Kind::Rrq)), "v4");
    assert_eq!(name_of(r.apply(b"g", V6, Kind::Wrq)), "v6");
}

#[test]
fn posix_bracket_expressions() {
    // In POSIX brackets a backslash is literal.
    let r = rules(r"rg [\] /");
    assert_eq!(get(&r, "a\\b"), "a/b");
    let r = rules(r"rg [\/]+ _");
    assert_eq!(get(&r, "a\\/b/c"), "a_b_c");
    // ']' first is literal; '-' last is literal; classes work.
    let r = rules("rg []a-] X\nrg [[:digit:]] D");
    assert_eq!(get(&r, "]a-b1"), "XXXbD");
    let r = rules("rg [^[:alnum:]._] _");
    assert_eq!(get(&r, "a b&c.d"), "a_b_c.d");
    // Characters the regex crate treats specially inside a class are literal.
    let r = rules("rg [&~] _");
    assert_eq!(get(&r, "a&&b~~c"), "a__b__c");
}

#[test]
fn byte_names_and_case() {
    // Names are bytes: '.' matches any byte, invalid UTF-8 included.
    let r = rules("r ^a.b$ ok");
    assert_eq!(name_of(r.apply(b"a\xffb", V4, Kind::Rrq)), "ok");
    assert_eq!(name_of(r.apply(b"a\nb", V4, Kind::Rrq)), "ok");
    // A non-ASCII literal matches its UTF-8 bytes; i folds ASCII only.
    let r = rules("ri ^é/X$ y");
    assert_eq!(get(&r, "é/x"), "y");
    assert_eq!(get(&r, "É/x"), "É/x");
}

#[test]
fn leftmost_first_not_leftmost_longest() {
    // Documented difference from POSIX (which would give "X"): the first alternative wins.
    let r = rules("r (a|ab) X");
    assert_eq!(get(&r, "ab"), "Xb");
    let r = rules("r (ab|a) X");
    assert_eq!(get(&r, "ab"), "X");
}

#[test]
fn comments_blank_lines_and_empty_files() {
    assert!(rules("").is_empty());
    assert!(rules("# only a comment\n\n   \t\n").is_empty());
    let r = rules("r a\\#b c#d # comment\r\n");
    assert_eq!(get(&r, "a#b"), "c");
    let r = rules("r a\\ b c");
    assert_eq!(get(&r, "xa by"), "xcy");
}

#[test]
fn parse_errors_name_the_line() {
    let e = parse_err("# c\nr ^a b\nrz ^a b\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("unknown flag 'z'"), "{e}");
    assert_eq!(e.to_string().split(':').next(), Some("line 3"));
    let e = parse_err("\n\nr\n");
    assert_eq!((e.line, e.message.contains("no regex")), (3, true), "{e}");
    let e = parse_err("r (a b");
    assert_eq!(e.line, 1);
    let e = parse_err("r ^a(b c");
    assert!(e.message.contains("regex \"^a(b\""), "{e}");
    for (text, what) in [
        ("r~ a b", "r and ~"),
        ("ra a b", "r and a"),
        ("as a", "a and s"),
        ("ae a", "a and e"),
        ("es a", "e and s"),
        ("GPr a b", "G and P"),
        ("46r a b", "4 and 6"),
        ("rgg a b", "gg"),
        ("rj a b", "not supported"),
        ("r a b c", "after the replacement"),
        ("r (a)\\1 b", "back-reference"),
        ("r [[.a.]] b", "collating"),
        ("r [ab b", "unterminated"),
        ("r a\\", "lone backslash"),
    ] {
        let e = parse_err(text);
        assert_eq!(e.line, 1, "{text}");
        assert!(e.message.contains(what), "{text}: {e}");
    }
}

#[test]
fn readme_example() {
    let r = rules(
        r"rg \\ /                          # \Boot\BCD -> /Boot/BCD
r ^/(tftpboot/)?                 # drop a leading / or /tftpboot/
ri ^boot/bcd$ boot/bcd           # any case
r ^pxelinux\.cfg/mine$ pxelinux.cfg/\x
a ^secret/                       # ERROR 2 'Access denied'
",
    );
    assert_eq!(get(&r, "\\Boot\\BCD"), "boot/bcd");
    assert_eq!(get(&r, "/tftpboot/vmlinuz"), "vmlinuz");
    assert_eq!(get(&r, "/pxelinux.cfg/mine"), "pxelinux.cfg/C00002A9");
    assert_eq!(
        refusal(r.apply(b"/secret/x", V4, Kind::Rrq)).message(),
        "Access denied"
    );
}

#[test]
fn a_classic_rules_file() {
    // The kind of file tftp-hpa's sample rules show: drive letters, backslashes, hash marks,
    // dot-dot, an exit, a prefix and a refusal, with tabs between fields.
    let r = rules(
        "#\n# classic\n#\n\
         ri\t^[a-z]:\t\t\t\t# drive letters\n\
         rg\t\\\\\t\t/\t\t# backslashes\n\
         rg\t\\#\t\t@\t\t# hash marks\n\
         rg\t/\\.\\./\t\t/..no../\t# dot-dot\n\
         e\t^ok/\t\t\t\t# always ok\n\
         r\t^[^/]\t\t/tftpboot/\\0\t# relative names\n\
         a\t\\.pvt$\t\t\t\t# private files\n",
    );
    assert_eq!(r.len(), 7);
    assert_eq!(get(&r, "C:\\Boot\\bcd"), "/Boot/bcd");
    assert_eq!(get(&r, "a#b#c"), "/tftpboot/a@b@c");
    assert_eq!(get(&r, "/a/../../b"), "/a/..no../..no../b");
    assert_eq!(get(&r, "ok/x.pvt"), "ok/x.pvt");
    assert_eq!(get(&r, "x"), "/tftpboot/x");
    assert_eq!(
        refusal(r.apply(b"d:\\keys\\a.pvt", V4, Kind::Rrq)),
        Refusal::Rule {
            line: 10,
            message: Vec::new()
        }
    );
}
