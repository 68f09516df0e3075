# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tftpx_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_tftpx_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tftpx_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tftpx_using_subcommand
    set -l cmd (__fish_tftpx_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tftpx -n "__fish_tftpx_needs_command" -s v -l verbose -d 'More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints the address used, the options asked and in force and the transfer\'s counters, -vv a packet trace (direction, opcode, block, size, time since start)'
complete -c tftpx -n "__fish_tftpx_needs_command" -s q -l quiet -d 'Less log output (-q warnings only, -qq errors only)'
complete -c tftpx -n "__fish_tftpx_needs_command" -s h -l help -d 'Print help'
complete -c tftpx -n "__fish_tftpx_needs_command" -s V -l version -d 'Print version'
complete -c tftpx -n "__fish_tftpx_needs_command" -f -a "serve" -d 'Serve a directory or an origin: `tftpx serve ./boot --listen 127.0.0.1:6969`'
complete -c tftpx -n "__fish_tftpx_needs_command" -f -a "get" -d 'Download files: `tftpx get HOST[:PORT] REMOTE... [-o LOCAL]` or `tftpx get tftp://HOST/PATH`'
complete -c tftpx -n "__fish_tftpx_needs_command" -f -a "pull" -d 'Download files: `tftpx get HOST[:PORT] REMOTE... [-o LOCAL]` or `tftpx get tftp://HOST/PATH`'
complete -c tftpx -n "__fish_tftpx_needs_command" -f -a "put" -d 'Upload files: `tftpx put HOST[:PORT] LOCAL [REMOTE]` or `tftpx put HOST LOCAL LOCAL LOCAL...`'
complete -c tftpx -n "__fish_tftpx_needs_command" -f -a "push" -d 'Upload files: `tftpx put HOST[:PORT] LOCAL [REMOTE]` or `tftpx put HOST LOCAL LOCAL LOCAL...`'
complete -c tftpx -n "__fish_tftpx_needs_command" -f -a "completions" -d 'Print a shell completion script: `tftpx completions bash`'
complete -c tftpx -n "__fish_tftpx_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -s l -l listen -d 'Address and port to listen on; repeat for several [default: 0.0.0.0:69 and [::]:69]. ADDR:PORT, [IPV6]:PORT, HOST:PORT (every address HOST resolves to), an address alone (port 69), or PORT / :PORT (every address of both families). [::]:PORT alone serves IPv4 too. Ignored, with a warning, when systemd passes listen sockets' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l timeout -d 'Retransmission timeout when the client negotiates none (e.g. 1s, 500ms)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l retries -d 'Retransmissions before a transfer is abandoned' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-blksize -d 'Largest blksize granted to clients, in bytes (8..=65464)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-windowsize -d 'Largest windowsize granted to clients, in blocks (1..=65535)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-upload-size -d 'Largest upload accepted, in bytes (a bigger announced tsize gets ERROR 3)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-transfers -d 'Transfers running at once; more requests get "server busy"' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-transfers-per-client -d 'Transfers running at once for one client IP address; 0 = no limit' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l rate-limit -d 'Requests per second accepted from one source IP address (bursts of twice that); beyond it requests are dropped and the source is told once per 10 s. 0 = no limit' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-unanswered-retries -d 'Retransmissions to a client that has not yet acknowledged DATA (or sent DATA): its address may be forged, so this bounds how much a spoofed request can reflect' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l busy-poll -d 'How long a transfer waiting for its client polls its socket before it sleeps, e.g. 100us, 50us; 0 = never. Saves the sleep and wake-up per block of lock-step transfers on quiet (above all virtual) machines; only while the server runs at most half as many transfers as it has CPUs, and polls that miss back off' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-timeout -d 'Longest timeout a client may negotiate (RFC 2349 allows up to 255 s); a longer one is left out of the OACK' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l max-memory -d 'Memory for transfer buffers, all transfers together (e.g. 256M, 1G); when spent, new transfers get a smaller blksize x windowsize instead of a refusal' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l client-prefix-v4 -d 'IPv4 addresses sharing this many leading bits count as one client for --rate-limit and --max-transfers-per-client' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l client-prefix-v6 -d 'IPv6 addresses sharing this many leading bits count as one client for --rate-limit and --max-transfers-per-client (a host may send from its whole /64; use 128 on a LAN where many clients share one /64)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l user -d 'Started as root: the account to run as once the sockets are bound and DIR is open (files are then opened with its rights, with no capability left) [default: tftp if that account exists, else nobody]. `--user root` keeps root (not recommended). Started as another user, only that user' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l group -d 'Started as root: the group to run as [default: the --user\'s primary group]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l map -d 'Remap requested file names with the rules in FILE, tftpd-hpa\'s `--map-file` syntax (`OPERATION REGEX [REPLACEMENT]` per line; see README "Remap rules"). A bad file stops start-up with FILE:LINE and what is wrong' -r -F
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l allow -d 'Serve clients in this address block (CIDR, or an address alone); repeatable. --allow and --deny rules apply in the order given, the first that matches decides; no match: allowed' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l deny -d 'Drop every datagram from this address block without an answer (counted, logged once per 10 s per client); repeatable, see --allow' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l allow-write-from -d 'Accept uploads (WRQ) only from this address block (CIDR, or an address alone); repeat for several. Others get ERROR 2. Default: from anyone allowed to talk' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l refuse -d 'Ignore this option in requests, as if not sent, so it never appears in an OACK (for boot ROMs that mishandle it); repeat for several. One of blksize, tsize, timeout, windowsize, utimeout (case-insensitive)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l umask -d 'File mode creation mask (octal) for uploaded files: new files get 0644 less it' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l port-range -d 'Bind transfer sockets (TIDs) to ports LOW..=HIGH only (for firewalls); with every port taken, requests get "Server busy". 1 <= LOW <= HIGH <= 65535' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l metrics -d 'Serve Prometheus metrics (OpenMetrics text) at http://ADDR:PORT/metrics and the running transfers as JSON at /transfers (port 0: one the OS picks, logged at start). Bound before privileges are dropped; keep it on loopback or a management network' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l cache -d 'With an origin (http://, https://, s3://): keep each fetched file in this directory (created if missing, owned by --user), revalidate it with the origin\'s ETag / Last-Modified on each request, and let concurrent requests for one file share one origin fetch. The least recently used files go beyond --cache-size. Ignored, with a warning, when the root is a directory' -r -F
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l cache-size -d 'Most bytes --cache keeps (e.g. 512M, 10G; 4 KiB per file included)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l log-format -d 'Log line form: text, or json (one object per line with the transfer\'s fields)' -r -f -a "text\t'`TIME LEVEL message field=value...`, for people'
json\t'One JSON object per line: `timestamp`, `level`, `message` and the event\'s fields (`peer`, `kind`, `file`, `bytes`, `outcome`, `error_code`...), for programs'"
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l log-filter -d 'Which lines to log, per module, in RUST_LOG syntax (e.g. `warn`, `info,tftpx::server=warn`). Overrides RUST_LOG, -v and -q' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l drain -d 'On SIGTERM/SIGINT, stop answering requests and let running transfers finish for up to this long (e.g. 30s) before ending the rest with ERROR 0; 0: end them at once' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l config -d 'Read settings from this TOML file: its keys are these long flags without the dashes (`listen = ["0.0.0.0:69"]`, `allow-create = true`) and `root` for DIR. Flags on the command line win (their list replaces the file\'s). SIGHUP re-reads it' -r -F
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l allow-write -d 'Let clients overwrite existing files'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l allow-create -d 'Let clients create new files (implies --allow-write)'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l allow-hard-links -d 'Serve files that have more than one hard link (refused by default: another name of the same file may lie outside DIR)'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l no-landlock -d 'Do not confine the server with Landlock (where the kernel has it, the server may then only read, and with uploads write, files beneath DIR)'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l single-port -d 'Single-port mode: every transfer answers from the listen address and port (no port per transfer), so transfers cross NATs without a TFTP helper and ECMP (anycast) routers that hash on ports. dnsmasq\'s --tftp-single-port'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l shared-socket -d 'With --single-port: every datagram is read from the listen socket by the listener, which runs the directory\'s downloads itself, batched across transfers (no task woken per datagram), and routes the rest to their transfers. Without it each transfer gets a socket of its own connected to its peer (SO_REUSEADDR on the listen port)'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -l check-config -d 'Check the settings (the --config file, DIR, the --map file, --user) and exit: 0 when they are good, 1 with the reason. Binds nothing'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -s v -l verbose -d 'More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints the address used, the options asked and in force and the transfer\'s counters, -vv a packet trace (direction, opcode, block, size, time since start)'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -s q -l quiet -d 'Less log output (-q warnings only, -qq errors only)'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c tftpx -n "__fish_tftpx_using_subcommand serve" -s V -l version -d 'Print version'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -s o -l output -d 'Where to write it [default: the remote file\'s base name; a remote named `-` becomes a file named `-`]. `-o -` or `-o /dev/stdout` writes to stdout; an existing directory gets the file under its remote base name (with several REMOTEs, -o must be one); a device or FIFO is written, never replaced; a symlink is written through; a regular file is replaced only once the download is complete, keeping its mode and owner' -r -F
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l max-size -d 'Largest download accepted, in bytes; suffixes K, M, G, T multiply by 1024 (10M = 10 MiB). A bigger file, or one whose announced tsize is bigger, is stopped with ERROR 3 and nothing is kept. Without it the announced tsize still caps the download' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l blksize -d 'Block size to ask for, in bytes (8..=65464; 1468 fits a 1500-byte Ethernet MTU)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l windowsize -d 'Window size to ask for, in blocks (1..=65535, RFC 7440)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l timeout -d 'Retransmission timeout, e.g. 1s or 500ms; whole seconds are also sent as the timeout option' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l retries -d 'Retransmissions before giving up' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l mode -d 'Transfer mode: octet (bytes as they are) or netascii (text, CR LF on the wire)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l dally -d 'After a download\'s final ACK, linger this long to re-acknowledge a repeated last DATA (RFC 1350 section 6), e.g. 1s; the command (and a regular file\'s rename into place) ends after it [default: 0, the command ends when the file is complete and in place, as curl and tftp-hpa do]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l busy-poll -d 'How long a wait for the server polls the socket before it sleeps, e.g. 100us; 0 = never. Saves a sleep and wake-up per block in lock-step on quiet (above all virtual) machines; polls that miss back off [default: 100us]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l tsize -d 'Ask for (get) or announce (put) the transfer size [default: on]'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -l no-tsize -d 'Do not send the tsize option'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -s 4 -l ipv4 -d 'Use IPv4 addresses only: a host name\'s IPv6 addresses are skipped, an IPv6 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -s 6 -l ipv6 -d 'Use IPv6 addresses only: a host name\'s IPv4 addresses are skipped, an IPv4 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -s v -l verbose -d 'More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints the address used, the options asked and in force and the transfer\'s counters, -vv a packet trace (direction, opcode, block, size, time since start)'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -s q -l quiet -d 'Less log output (-q warnings only, -qq errors only)'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -s h -l help -d 'Print help'
complete -c tftpx -n "__fish_tftpx_using_subcommand get" -s V -l version -d 'Print version'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -s o -l output -d 'Where to write it [default: the remote file\'s base name; a remote named `-` becomes a file named `-`]. `-o -` or `-o /dev/stdout` writes to stdout; an existing directory gets the file under its remote base name (with several REMOTEs, -o must be one); a device or FIFO is written, never replaced; a symlink is written through; a regular file is replaced only once the download is complete, keeping its mode and owner' -r -F
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l max-size -d 'Largest download accepted, in bytes; suffixes K, M, G, T multiply by 1024 (10M = 10 MiB). A bigger file, or one whose announced tsize is bigger, is stopped with ERROR 3 and nothing is kept. Without it the announced tsize still caps the download' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l blksize -d 'Block size to ask for, in bytes (8..=65464; 1468 fits a 1500-byte Ethernet MTU)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l windowsize -d 'Window size to ask for, in blocks (1..=65535, RFC 7440)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l timeout -d 'Retransmission timeout, e.g. 1s or 500ms; whole seconds are also sent as the timeout option' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l retries -d 'Retransmissions before giving up' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l mode -d 'Transfer mode: octet (bytes as they are) or netascii (text, CR LF on the wire)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l dally -d 'After a download\'s final ACK, linger this long to re-acknowledge a repeated last DATA (RFC 1350 section 6), e.g. 1s; the command (and a regular file\'s rename into place) ends after it [default: 0, the command ends when the file is complete and in place, as curl and tftp-hpa do]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l busy-poll -d 'How long a wait for the server polls the socket before it sleeps, e.g. 100us; 0 = never. Saves a sleep and wake-up per block in lock-step on quiet (above all virtual) machines; polls that miss back off [default: 100us]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l tsize -d 'Ask for (get) or announce (put) the transfer size [default: on]'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -l no-tsize -d 'Do not send the tsize option'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -s 4 -l ipv4 -d 'Use IPv4 addresses only: a host name\'s IPv6 addresses are skipped, an IPv6 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -s 6 -l ipv6 -d 'Use IPv6 addresses only: a host name\'s IPv4 addresses are skipped, an IPv4 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -s v -l verbose -d 'More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints the address used, the options asked and in force and the transfer\'s counters, -vv a packet trace (direction, opcode, block, size, time since start)'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -s q -l quiet -d 'Less log output (-q warnings only, -qq errors only)'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -s h -l help -d 'Print help'
complete -c tftpx -n "__fish_tftpx_using_subcommand pull" -s V -l version -d 'Print version'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l blksize -d 'Block size to ask for, in bytes (8..=65464; 1468 fits a 1500-byte Ethernet MTU)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l windowsize -d 'Window size to ask for, in blocks (1..=65535, RFC 7440)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l timeout -d 'Retransmission timeout, e.g. 1s or 500ms; whole seconds are also sent as the timeout option' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l retries -d 'Retransmissions before giving up' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l mode -d 'Transfer mode: octet (bytes as they are) or netascii (text, CR LF on the wire)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l dally -d 'After a download\'s final ACK, linger this long to re-acknowledge a repeated last DATA (RFC 1350 section 6), e.g. 1s; the command (and a regular file\'s rename into place) ends after it [default: 0, the command ends when the file is complete and in place, as curl and tftp-hpa do]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l busy-poll -d 'How long a wait for the server polls the socket before it sleeps, e.g. 100us; 0 = never. Saves a sleep and wake-up per block in lock-step on quiet (above all virtual) machines; polls that miss back off [default: 100us]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l each -d 'Every file after SERVER is a LOCAL sent under its base name, even when there are exactly two'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l tsize -d 'Ask for (get) or announce (put) the transfer size [default: on]'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -l no-tsize -d 'Do not send the tsize option'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -s 4 -l ipv4 -d 'Use IPv4 addresses only: a host name\'s IPv6 addresses are skipped, an IPv6 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -s 6 -l ipv6 -d 'Use IPv6 addresses only: a host name\'s IPv4 addresses are skipped, an IPv4 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -s v -l verbose -d 'More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints the address used, the options asked and in force and the transfer\'s counters, -vv a packet trace (direction, opcode, block, size, time since start)'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -s q -l quiet -d 'Less log output (-q warnings only, -qq errors only)'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -s h -l help -d 'Print help'
complete -c tftpx -n "__fish_tftpx_using_subcommand put" -s V -l version -d 'Print version'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l blksize -d 'Block size to ask for, in bytes (8..=65464; 1468 fits a 1500-byte Ethernet MTU)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l windowsize -d 'Window size to ask for, in blocks (1..=65535, RFC 7440)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l timeout -d 'Retransmission timeout, e.g. 1s or 500ms; whole seconds are also sent as the timeout option' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l retries -d 'Retransmissions before giving up' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l mode -d 'Transfer mode: octet (bytes as they are) or netascii (text, CR LF on the wire)' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l dally -d 'After a download\'s final ACK, linger this long to re-acknowledge a repeated last DATA (RFC 1350 section 6), e.g. 1s; the command (and a regular file\'s rename into place) ends after it [default: 0, the command ends when the file is complete and in place, as curl and tftp-hpa do]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l busy-poll -d 'How long a wait for the server polls the socket before it sleeps, e.g. 100us; 0 = never. Saves a sleep and wake-up per block in lock-step on quiet (above all virtual) machines; polls that miss back off [default: 100us]' -r
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l each -d 'Every file after SERVER is a LOCAL sent under its base name, even when there are exactly two'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l tsize -d 'Ask for (get) or announce (put) the transfer size [default: on]'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -l no-tsize -d 'Do not send the tsize option'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -s 4 -l ipv4 -d 'Use IPv4 addresses only: a host name\'s IPv6 addresses are skipped, an IPv6 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -s 6 -l ipv6 -d 'Use IPv6 addresses only: a host name\'s IPv4 addresses are skipped, an IPv4 literal is refused'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -s v -l verbose -d 'More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints the address used, the options asked and in force and the transfer\'s counters, -vv a packet trace (direction, opcode, block, size, time since start)'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -s q -l quiet -d 'Less log output (-q warnings only, -qq errors only)'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -s h -l help -d 'Print help'
complete -c tftpx -n "__fish_tftpx_using_subcommand push" -s V -l version -d 'Print version'
complete -c tftpx -n "__fish_tftpx_using_subcommand completions" -s v -l verbose -d 'More output: for serve, -v debug and -vv trace logs; for get/put, -v also prints the address used, the options asked and in force and the transfer\'s counters, -vv a packet trace (direction, opcode, block, size, time since start)'
complete -c tftpx -n "__fish_tftpx_using_subcommand completions" -s q -l quiet -d 'Less log output (-q warnings only, -qq errors only)'
complete -c tftpx -n "__fish_tftpx_using_subcommand completions" -s h -l help -d 'Print help'
complete -c tftpx -n "__fish_tftpx_using_subcommand completions" -s V -l version -d 'Print version'
complete -c tftpx -n "__fish_tftpx_using_subcommand help; and not __fish_seen_subcommand_from serve get put completions help" -f -a "serve" -d 'Serve a directory or an origin: `tftpx serve ./boot --listen 127.0.0.1:6969`'
complete -c tftpx -n "__fish_tftpx_using_subcommand help; and not __fish_seen_subcommand_from serve get put completions help" -f -a "get" -d 'Download files: `tftpx get HOST[:PORT] REMOTE... [-o LOCAL]` or `tftpx get tftp://HOST/PATH`'
complete -c tftpx -n "__fish_tftpx_using_subcommand help; and not __fish_seen_subcommand_from serve get put completions help" -f -a "put" -d 'Upload files: `tftpx put HOST[:PORT] LOCAL [REMOTE]` or `tftpx put HOST LOCAL LOCAL LOCAL...`'
complete -c tftpx -n "__fish_tftpx_using_subcommand help; and not __fish_seen_subcommand_from serve get put completions help" -f -a "completions" -d 'Print a shell completion script: `tftpx completions bash`'
complete -c tftpx -n "__fish_tftpx_using_subcommand help; and not __fish_seen_subcommand_from serve get put completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
