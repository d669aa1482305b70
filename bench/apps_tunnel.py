"""Benchmark: the apps tunnel (issue 15) against the same service on plain loopback.

    python bench/apps_tunnel.py [--requests 300] [--gib 1] [--connections 100] [--rounds 3]

An embedded stack (``backend.ai server start``, process runtime) and one session that runs a small
server (stdlib): HTTP/1.1 keep-alive answering ``ok`` on one port, and on another a TCP source
that sends ``--gib`` GiB and closes. The same server code also runs on the host's loopback: the
direct baseline. ``backend.ai app`` tunnels to the session's ports: on this one machine the
manager hands the CLI the socket the kernel's runner connected (the local path, no relay); the
relay path (client -> manager -> agent -> the service, as for an agent or a CLI elsewhere) is
measured in the same run through a second tunnel started while the manager's unix socket is
away. The figures:

* added latency per small HTTP request (one keep-alive connection, median of ``--requests``
  through the tunnel minus the direct median); target <= 1 ms;
* bulk throughput of ``--gib`` GiB through the tunnel (and the relay path) vs direct,
  ``--rounds`` times in turns (the median of the rounds' ratios: the load of a shared machine
  moves); target >= 50 %; with the CPU seconds per GiB of the manager, the agent and the CLI
  together (what the load does not move much);
* the bound: the same bytes through the least a userspace proxy can do on this machine (a process
  of its own, one blocking thread per direction, ``splice(2)`` through a pipe: no byte enters
  Python) from a loopback port to the direct server, in the same rounds. Two loopback TCP hops
  and a third busy process cost what they cost whatever the proxy; bai's tunnel is put beside it;
* manager memory per held connection: RSS with ``--connections`` tunnelled connections open
  (each has done one request) minus RSS before, divided by their number; target <= 100 KB.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time

from harness import CLI, EmbeddedStack, cpu_seconds, free_port, line, print_conditions, rss_mb

SERVER = r'''
import http.server, socket, socketserver, sys, threading
web, blob, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 512
class Blob(socketserver.BaseRequestHandler):
    def handle(self):
        chunk, left = b"x" * (1 << 20), size
        try:
            while left > 0:
                self.request.sendall(chunk[:left]); left -= len(chunk)
        except OSError:  # the reader went away (wait_port only connects)
            pass
class T(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
threading.Thread(target=T(("127.0.0.1", blob), Blob).serve_forever, daemon=True).start()
S(("127.0.0.1", web), H).serve_forever()
'''

# the least a userspace proxy does: accept, connect, splice each direction in a blocking thread
BOUND = r'''
import contextlib, fcntl, os, socket, sys, threading
listen, target = int(sys.argv[1]), int(sys.argv[2])
def pump(a, b):
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    with contextlib.suppress(OSError):  # a peer gone (the bench's wait_port) ends it
        while n := os.splice(a.fileno(), w, 1 << 20, flags=os.SPLICE_F_MOVE):
            while n:
                n -= os.splice(r, b.fileno(), n, flags=os.SPLICE_F_MOVE)
        b.shutdown(socket.SHUT_WR)
ls = socket.create_server(("127.0.0.1", listen))
while True:
    c, _ = ls.accept()
    s = socket.create_connection(("127.0.0.1", target))
    for a, b in ((c, s), (s, c)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
'''


def wait_port(port: int, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def wait_served(port: int, deadline: float = 120) -> None:
    """Until a request through ``port`` is answered (the session's server may still start)."""
    end = time.monotonic() + deadline
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/")
            if conn.getresponse().read() == b"ok":
                conn.close()
                return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > end:
                raise
        time.sleep(0.5)


def latencies(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for i in range(n + 20):
        t = time.perf_counter()
        conn.request("GET", "/")
        body = conn.getresponse().read()
        if i >= 20:  # the first ones warm up (and start the tunnel's WebSocket)
            out.append((time.perf_counter() - t) * 1000)
        assert body == b"ok", body
    conn.close()
    return out


def throughput(port: int, size: int) -> float:
    """MB/s reading ``size`` bytes from ``port``."""
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        t = time.perf_counter()
        while chunk := s.recv(1 << 20):
            got += len(chunk)
        took = time.perf_counter() - t
    if got != size:
        raise RuntimeError(f"read {got} of {size} bytes")
    return size / took / 1e6


def tunnel(stack: EmbeddedStack, app: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([CLI, "app", "bench", app, "-b", f"127.0.0.1:{port}"], env=stack.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_port(port)
    return proc


def stop_all(procs: list[subprocess.Popen]) -> None:
    """End the servers and tunnels: a tunnel (its own session) as Ctrl-C does, others with
    SIGTERM; killed if still there after 10 s."""
    for p in procs:
        if p.poll() is None:
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, signal.SIGINT)
            else:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3,
                    help="direct and tunnelled bulk reads, in turns (median ratio)")
    args = ap.parse_args()
    size = int(args.gib * 2**30)
    print_conditions("apps tunnel vs direct loopback", requests=args.requests, bytes=size,
                     connections=args.connections)
    procs: list[subprocess.Popen] = []
    web, blob = free_port(), free_port()
    procs.append(subprocess.Popen([sys.executable, "-c", SERVER, str(web), str(blob), str(size)]))
    # the servers end even when the stack does not start (left running, they kept the caller's
    # pipes open and the bench smoke test waited for them)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(stop_all, procs)
        stack = cleanup.enter_context(EmbeddedStack(slots=["cpu=8", "mem=8g"]))
        cleanup.callback(stop_all, procs)  # the tunnels end before the stack
        stack.cli("start", "-t", "bench", "--service", "web:8000", "--service",
                  "blob:tcp:8002", "-r", "cpu=2", "-r", "mem=1g", "python")
        stack.cli("run", "-t", "bench", "-c",
                  "import subprocess, sys\n"
                  f"subprocess.Popen([sys.executable, '-c', {SERVER!r}, '8000', '8002', "
                  f"'{size}'], start_new_session=True)\n", "python")
        wait_port(web)
        tweb, tblob = free_port(), free_port()
        blob_tunnel = tunnel(stack, "blob", tblob)
        procs += [tunnel(stack, "web", tweb), blob_tunnel]
        wait_served(tweb)

        direct = latencies(web, args.requests)
        through = latencies(tweb, args.requests)
        print(line("small HTTP request, direct", direct))
        print(line("small HTTP request, through the tunnel", through))
        added = sorted(through)[len(through) // 2] - sorted(direct)[len(direct) // 2]
        print(f"{'added latency (median)':<38} {added:.2f} ms  target <= 1 ms")

        # the relay path in the same run: a tunnel started while the manager's unix socket
        # is away cannot take the local path and keeps to the relays
        local_sock = stack.state / "storage.sock"
        away = local_sock.with_name("storage.sock.away")
        local_sock.rename(away)
        try:
            trelay = free_port()
            relay_tunnel = tunnel(stack, "blob", trelay)
            procs.append(relay_tunnel)
            time.sleep(1)
        finally:
            away.rename(local_sock)
        daemons = [stack.pid("manager"), stack.pid("agent")]
        tbound = free_port()
        bound = subprocess.Popen([sys.executable, "-c", BOUND, str(tbound), str(blob)])
        procs.append(bound)
        wait_port(tbound)

        def timed(port: int, cli: subprocess.Popen | None,
                  pids: list[int] | None = None) -> tuple[float, float]:
            """(MB/s, CPU seconds per GiB of ``pids``: by default the manager, the agent
            and the CLI)."""
            if pids is None:
                pids = daemons + ([cli.pid] if cli else [])
            before = sum(cpu_seconds(p, children=False) for p in pids)
            rate = throughput(port, size)
            return rate, (sum(cpu_seconds(p, children=False) for p in pids) - before) / (
                size / 2**30)

        # direct and tunnelled in turns: on a shared machine the load moves between runs
        rows = []
        for r in range(args.rounds):
            d, _ = timed(blob, None)
            t, tcpu = timed(tblob, blob_tunnel)
            x, xcpu = timed(trelay, relay_tunnel)
            b, bcpu = timed(tbound, None, [bound.pid])
            rows.append((d, t, x, tcpu, xcpu, b))
            print(f"{f'bulk, round {r + 1} (load {os.getloadavg()[0]:.1f})':<38} direct "
                  f"{d:6.0f} MB/s, tunnel {t:6.0f} MB/s: {t / d:.0%} (bai CPU {tcpu:.2f} s/GiB)"
                  f"; relay path {x:6.0f} MB/s: {x / d:.0%} (bai CPU {xcpu:.2f} s/GiB)"
                  f"; bound {b:6.0f} MB/s: {b / d:.0%} (its CPU {bcpu:.2f} s/GiB)")

        def med(values) -> float:
            values = sorted(values)
            return values[len(values) // 2]

        d, t, x, b = (med(row[i] for row in rows) for i in (0, 1, 2, 5))
        print(f"{'bulk, direct (median)':<38} {d:8.0f} MB/s")
        print(f"{'bulk, through the tunnel (median)':<38} {t:8.0f} MB/s  "
              f"({med(r[1] / r[0] for r in rows):.0%} of direct, median of the rounds' ratios;"
              f" target >= 50 %); bai CPU {med(r[3] for r in rows):.2f} s/GiB")
        print(f"{'bulk, the relay path (median)':<38} {x:8.0f} MB/s  "
              f"({med(r[2] / r[0] for r in rows):.0%} of direct: manager or agent elsewhere, "
              f"the official client); bai CPU {med(r[4] for r in rows):.2f} s/GiB")
        print(f"{'bulk, the bound (median)':<38} {b:8.0f} MB/s  "
              f"({med(r[5] / r[0] for r in rows):.0%} of direct: the least a userspace proxy "
              f"does here); bai's tunnel at {med(r[1] / r[5] for r in rows):.0%} of it")

        manager = stack.pid("manager")
        before = rss_mb(manager)
        held = []
        for _ in range(args.connections):
            c = http.client.HTTPConnection("127.0.0.1", tweb, timeout=60)
            c.request("GET", "/")
            assert c.getresponse().read() == b"ok"
            held.append(c)
        time.sleep(1)
        after = rss_mb(manager)
        per = (after - before) * 1024 / max(1, len(held))
        print(f"{'manager RSS':<38} {before:.1f} MB -> {after:.1f} MB with {len(held)} "
              f"connections held: {per:.0f} KB each (target <= 100 KB)")
        for c in held:
            c.close()


if __name__ == "__main__":
    main()
