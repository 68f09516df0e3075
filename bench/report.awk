# Turns compare.sh's raw samples (TSV: setting server client rep ok bytes secs client_cpu
# server_cpu) into markdown tables. Plain POSIX awk (Debian's mawk has no asort).
# Variables: titles="key=title;..." and order="row,row,...".

function median(list,    a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return -1
    for (i = 2; i <= n; i++) {
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    if (n % 2) return a[(n + 1) / 2] + 0
    return (a[n / 2] + a[n / 2 + 1]) / 2
}
function maxof(list,    a, n, i, m) {
    n = split(list, a, " ")
    m = -1
    for (i = 1; i <= n; i++) if (a[i] + 0 > m) m = a[i] + 0
    return m
}
function fmt(x) { return x < 0 ? "-" : (x >= 100 ? sprintf("%.0f", x) : sprintf("%.1f", x)) }
function ratio(a, b) { return (a > 0 && b <= 0) ? "only tftpx completes" : ((a < 0 || b <= 0) ? "-" : sprintf("%.2fx", a / b)) }

BEGIN {
    nt = split(titles, tl, ";")
    for (i = 1; i <= nt; i++) if (tl[i] != "") { split(tl[i], kv, "="); title[kv[1]] = kv[2] }
    nrows = split(order, rows, ",")
}
NR == 1 { next }
{
    k = $1 SUBSEP $2 SUBSEP $3
    if (!(k in total)) { keys[++nk] = k }
    total[k]++
    if ($5 == 1) {
        good[k]++
        mbs[k] = mbs[k] " " ($6 / $7 / 1e6)
        ccpu[k] = ccpu[k] " " $8
        scpu[k] = scpu[k] " " $9
        bytes[$1] = $6
    }
}
END {
    for (i = 1; i <= nk; i++) {
        k = keys[i]; split(k, p, SUBSEP)
        med[k] = median(mbs[k]); best[k] = maxof(mbs[k])
        if (med[k] < 0 || good[k] < total[k]) med[k] = (good[k] > 0 && good[k] == total[k]) ? med[k] : -1
        st = p[1]; s = p[2]; c = p[3]
        # tftpx-sp (tftpx in single-port mode) is tftpx too: never a "best peer".
        if (s !~ /^tftpx/ && med[k] > bestsrv[st SUBSEP c]) bestsrv[st SUBSEP c] = med[k]
        if (c != "tftpx" && s != "tftpx-sp" && med[k] > bestcli[st SUBSEP s]) bestcli[st SUBSEP s] = med[k]
        if (s !~ /^tftpx/ && c != "tftpx" && med[k] > bestpair[st]) { bestpair[st] = med[k]; bestpairname[st] = s " + " c }
    }
    summary = ""
    for (r = 1; r <= nrows; r++) {
        st = rows[r]
        if (!(st in bytes) && !((st SUBSEP "tftpx" SUBSEP "tftpx") in total)) continue
        printf "#### %s (%s)\n\n", st, title[st]
        print "| server | client | MB/s median | MB/s best | client CPU s | server CPU s | ok | ratio tftpx / best peer |"
        print "| --- | --- | --- | --- | --- | --- | --- | --- |"
        minsrv = ""; mincli = ""; minsp = ""
        for (i = 1; i <= nk; i++) {
            k = keys[i]; split(k, p, SUBSEP)
            if (p[1] != st) continue
            s = p[2]; c = p[3]
            rt = ""
            if (s == "tftpx-sp") {
                mp = st SUBSEP "tftpx" SUBSEP c
                rt = ((mp in med) ? ratio(med[k], med[mp]) : "-") " (single-port / multi-port)"
                if ((mp in med) && med[mp] > 0) { q = (med[k] < 0 ? 0 : med[k] / med[mp]); if (minsp == "" || q < minsp) { minsp = q; minspc = c } }
            }
            else if (s == "tftpx" && c == "tftpx") rt = ratio(med[k], bestpair[st]) " (pair)"
            else if (s == "tftpx") {
                rt = ratio(med[k], bestsrv[st SUBSEP c]) " (server)"
                if (bestsrv[st SUBSEP c] > 0) { q = (med[k] < 0 ? 0 : med[k] / bestsrv[st SUBSEP c]); if (minsrv == "" || q < minsrv) { minsrv = q; minsrvc = c } }
            } else if (c == "tftpx") {
                rt = ratio(med[k], bestcli[st SUBSEP s]) " (client)"
                if (bestcli[st SUBSEP s] > 0) { q = (med[k] < 0 ? 0 : med[k] / bestcli[st SUBSEP s]); if (mincli == "" || q < mincli) { mincli = q; minclis = s } }
            }
            printf "| %s | %s | %s | %s | %s | %s | %d/%d | %s |\n", s, c, (good[k] == total[k] ? fmt(med[k]) : "fail"), fmt(best[k]), \
                (good[k] ? sprintf("%.2f", median(ccpu[k])) : "-"), (good[k] ? sprintf("%.2f", median(scpu[k])) : "-"), good[k], total[k], rt
            if (s == "tftpx" || s == "tftpd-hpa") srvcpu[st SUBSEP s SUBSEP c] = (good[k] ? median(scpu[k]) : -1)
        }
        print ""
        kk = st SUBSEP "tftpx" SUBSEP "tftpx"
        cpu = ""
        if (st == "512" && bytes[st] > 0) {
            # server CPU per GiB served, with the same client, tftpx vs tftpd-hpa (tftp-hpa client: no options)
            a = srvcpu[st SUBSEP "tftpx" SUBSEP "tftp-hpa"]; b = srvcpu[st SUBSEP "tftpd-hpa" SUBSEP "tftp-hpa"]
            if (a != "" && b != "" && a >= 0 && b >= 0) cpu = sprintf("server CPU s/GiB with tftp-hpa client: tftpx %.2f, tftpd-hpa %.2f", a * 1073741824 / bytes[st], b * 1073741824 / bytes[st])
        }
        summary = summary sprintf("| %s | %s %s | %s | %s | %s | %s | %s | %s |\n", st, bestpairname[st], fmt(bestpair[st] > 0 ? bestpair[st] : -1), \
            fmt((kk in med) ? med[kk] : -1), ((kk in med) ? ratio(med[kk], bestpair[st]) : "-"), \
            (minsrv == "" ? "-" : sprintf("%.2fx (client %s)", minsrv, minsrvc)), (mincli == "" ? "-" : sprintf("%.2fx (server %s)", mincli, minclis)), \
            (minsp == "" ? "-" : sprintf("%.2fx (client %s)", minsp, minspc)), cpu)
    }
    print "#### Summary (medians, MB/s)\n"
    print "| row | best peer pair | tftpx + tftpx | pair ratio | worst tftpx server ratio | worst tftpx client ratio | worst single-port / multi-port | note |"
    print "| --- | --- | --- | --- | --- | --- | --- | --- |"
    printf "%s", summary
}
