"""The client's HTTP transport: what one request costs a fresh process with each candidate.

    python bench/client_transport.py [--runs 9]

Every CLI command is a fresh process, so what a transport costs is mostly importing it. Each
case is a fresh ``python -c`` that imports its transport and sends one GET to a local HTTP
server (started here); the figure is that process's CPU time (user + system) from before the
import to after the answer. Cases: aiohttp (the server's library), httpx's async client (the
click path, ``bai.client.connection``; its command-line tool kept out as there), websockets'
import (added by the click path's executions only), and the express path's blocking client
(``bai.client.blocking``). The cases run interleaved, so load drifts hit them alike.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import subprocess
import sys
import threading

from harness import line, print_conditions

HTTPX = "import sys, types; sys.modules['httpx._main'] = types.ModuleType('httpx._main')\n"


def cases(url: str) -> dict[str, str]:
    return {
        "aiohttp ClientSession": f"""
import asyncio, aiohttp
async def main():
    async with aiohttp.ClientSession() as s:
        async with s.get({url!r}) as r:
            await r.read()
asyncio.run(main())""",
        "httpx AsyncClient (click path)": HTTPX + f"""
import asyncio, httpx
async def main():
    async with httpx.AsyncClient(verify=False, trust_env=False) as c:
        (await c.get({url!r})).content
asyncio.run(main())""",
        "  + import websockets (executions)": HTTPX + f"""
import asyncio, httpx, websockets.asyncio.client
async def main():
    async with httpx.AsyncClient(verify=False, trust_env=False) as c:
        (await c.get({url!r})).content
asyncio.run(main())""",
        "bai.client.blocking (express path)": f"""
from bai.client.blocking import BlockingHTTP
BlockingHTTP().request("GET", {url!r})""",
    }


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = b'{"version": "v4.20230615"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print_conditions("client transport: one GET from a fresh process", runs=args.runs)
    todo = cases(url)
    cpu: dict[str, list[float]] = {k: [] for k in todo}
    for _ in range(args.runs):
        for label, body in todo.items():
            code = ("import time\nt0 = time.process_time()\n" + body
                    + "\nprint((time.process_time() - t0) * 1000)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, timeout=120).stdout
            cpu[label].append(float(out))
    server.shutdown()
    for label, samples in cpu.items():
        print(line(f"{label}: process CPU", samples))
    base = statistics.median(cpu["bai.client.blocking (express path)"])
    print("   (medians over the express path's blocking client: "
          + ", ".join(f"{k.strip()} +{statistics.median(v) - base:.0f} ms"
                      for k, v in cpu.items() if not k.startswith("bai.")) + ")")


if __name__ == "__main__":
    main()
