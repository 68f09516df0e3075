#!/usr/bin/env python3
"""A small HTTP origin for crates/origin/tests/http.rs (standard library only).

Serves files below --dir over HTTP/1.1 on 127.0.0.1 (or --bind) at a port the OS picks (written to
--port-file), and appends one JSON line per request to --log: the raw request path and the
X-TFTP-* headers. PUT stores the body under --dir. Special paths: /forbidden/... -> 403, /broken -> 500; /slow.bin sends
its headers and first half, logs "paused", waits (at most 120 s) until --release exists,
then sends the rest and logs "done". So does every file below /slow/.

Files carry an ETag ("MTIME_NS-SIZE") and Last-Modified; a GET whose If-None-Match names the
current ETag gets 304 and logs "not-modified". While the file --die exists (if given), every
body stops after its first half and the connection closes (an origin dying mid-body), logged
as "died".
"""
import argparse
import email.utils
import json
import os
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--log", required=True)
ap.add_argument("--port-file", required=True)
ap.add_argument("--release", required=True)
ap.add_argument("--die")
ap.add_argument("--bind", default="127.0.0.1", help="address to listen on (bench/fleet.sh)")
args = ap.parse_args()
root = os.path.realpath(args.dir)


def log(entry):
    with open(args.log, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        log({
            "event": "request",
            "path": self.path,
            "ip": self.headers.get("X-TFTP-Client-IP"),
            "port": self.headers.get("X-TFTP-Client-Port"),
            "file": self.headers.get("X-TFTP-File"),
            "inm": self.headers.get("If-None-Match"),
            "ims": self.headers.get("If-Modified-Since"),
        })
        if self.path.startswith("/forbidden/"):
            return self.empty(403)
        if self.path == "/broken":
            return self.empty(500)
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(root + "/") or not os.path.isfile(full):
            return self.empty(404)
        with open(full, "rb") as f:
            st = os.fstat(f.fileno())
            body = f.read()
        etag = '"%x-%x"' % (st.st_mtime_ns, st.st_size)
        if self.headers.get("If-None-Match") == etag:
            log({"event": "not-modified", "path": self.path})
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.end_headers()
        if args.die and os.path.exists(args.die):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            log({"event": "died", "path": self.path})
            return
        if self.path == "/slow.bin" or self.path.startswith("/slow/"):
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            log({"event": "paused", "sent": half})
            deadline = time.monotonic() + 120
            while not os.path.exists(args.release) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.wfile.write(body[half:])
            self.wfile.flush()
            log({"event": "done"})
        else:
            self.wfile.write(body)

    def do_PUT(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        log({
            "event": "put",
            "path": self.path,
            "len": len(body),
            "ip": self.headers.get("X-TFTP-Client-IP"),
            "file": self.headers.get("X-TFTP-File"),
        })
        if self.path.startswith("/forbidden/"):
            return self.empty(403)
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(root + "/"):
            return self.empty(403)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(body)
        self.empty(201)

    def empty(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = ThreadingHTTPServer((args.bind, 0), Handler)
tmp = args.port_file + ".tmp"
with open(tmp, "w") as f:
    f.write(str(server.server_address[1]))
os.rename(tmp, args.port_file)
server.serve_forever()
