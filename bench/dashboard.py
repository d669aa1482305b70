"""Issue 18: the web dashboard's figures, in Debian's headless chromium against an embedded stack.

    python bench/dashboard.py [--sessions 10000] [--loads 7] [--changes 20] [--dashboards 100]

An embedded stack (``backend.ai server start``, process runtime, SQLite) with an agent of one
cpu, held by a blocker; then ``--sessions`` sessions of the user, queued in one request
(``start --array``), so that the database holds that many and every one of them is PENDING with
a queue line (the scheduler's deepest case).

1. First page load: chromium (logged in) opens ``/dashboard/#/sessions`` from scratch
   (``--loads`` times, the first cold): time from ``goto`` until the first page of 50 rows is
   in the table (HTML, the ES modules, ``/dashboard/api/me``, the GraphQL page and its count).
   Target: <= 1 s.
2. Status change -> open list: the list is open (tab "All"); ``--changes`` sessions on it are
   cancelled one by one with ``DELETE /session/{id}`` (the login cookie); a MutationObserver in
   the page stamps ``Date.now()`` when the row shows CANCELLED. Latency = that stamp minus the
   CANCELLED transition's time in the session history (the manager stamps it inside its
   transaction; one clock, this machine's). Also from the moment the request was sent.
   Target: <= 200 ms.
3. Memory of 100 open dashboards: the manager's RSS before and after ``--dashboards`` clients
   each do what an open sessions page does (log in, the page and its modules, ``me``, the
   GraphQL page of 50, and the event stream ``/events/session``, held open), then after a few
   status changes went out to all of them. The clients are aiohttp, not 100 chromium tabs
   (2 cores could not drive those); the manager sees the same requests. Target: <= 50 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time

from harness import CLI, EmbeddedStack, figures, line, print_conditions, rss_mb

CHROMIUM = os.environ.get("BAI_TEST_CHROMIUM", "/usr/bin/chromium")
OBSERVER = """() => {
  window.__seen = {};
  const body = document.querySelector('#sessions tbody');
  const mark = () => { for (const tr of body.querySelectorAll('tr[data-session-id]')) {
      const k = tr.dataset.sessionId + ' ' + tr.dataset.status;
      if (!(k in window.__seen)) window.__seen[k] = Date.now(); } };
  new MutationObserver(mark).observe(body, {childList: true, subtree: true, attributes: true});
  mark();
}"""
MODULES = ["index.html", "app.js", "api.js", "ui.js", "events.js", "sessions.js", "admin.js",
           "folders.js", "style.css"]


def user_cli(st: EmbeddedStack, *args: str) -> str:
    env = {**st.env, "BAI_PROFILE": "user"}
    proc = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"backend.ai {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def page_loads(page, st: EmbeddedStack, loads: int) -> list[float]:
    out = []
    for i in range(loads):
        page.goto("about:blank")
        t0 = time.perf_counter()
        page.goto(f"{st.endpoint}/dashboard/#/sessions?tab=all")
        page.wait_for_selector("#sessions tbody tr[data-session-id]:nth-child(50)", timeout=120_000)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def status_changes(page, st: EmbeddedStack, n: int, cookie: str, csrf: str) -> tuple[list[float], list[float]]:
    import http.client
    from datetime import datetime

    page.evaluate(OBSERVER)
    ids = page.eval_on_selector_all(
        "#sessions tbody tr[data-status=PENDING]", "rows => rows.map(r => r.dataset.sessionId)")[:n]
    from_change, from_request = [], []
    for sid in ids:
        conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=60)
        sent = time.time()
        conn.request("DELETE", f"/session/{sid}", headers={"Cookie": f"bai_session={cookie}",
                                                            "X-BAI-CSRF": csrf})
        conn.getresponse().read()
        conn.close()
        # polled from here, not wait_for_function: its string predicate runs through eval once
        # it has to wait, which the dashboard's CSP refuses (the run failed whenever the change
        # took longer to arrive than the call); the page stamps the time it saw the change
        key = f"{sid} CANCELLED"
        deadline = time.monotonic() + 60
        while (stamp := page.evaluate("key => window.__seen[key] ?? null", key)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dashboard never showed {key}")
            time.sleep(0.005)
        seen = stamp / 1000
        conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=60)
        conn.request("GET", f"/session/{sid}/history", headers={"Cookie": f"bai_session={cookie}"})
        hist = json.loads(conn.getresponse().read())["result"]
        conn.close()
        at = datetime.fromisoformat(next(h["at"] for h in hist if h["to"] == "CANCELLED")).timestamp()
        from_change.append((seen - at) * 1000)
        from_request.append((seen - sent) * 1000)
    return from_change, from_request


async def dashboards(st: EmbeddedStack, n: int, password: str, mgr: int) -> dict[str, float]:
    import aiohttp

    base = st.endpoint
    out: dict[str, float] = {}
    clients = [aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) for _ in range(n)]
    streams = []
    try:
        sem = asyncio.Semaphore(4)

        async def login(c):
            async with sem:
                async with c.post(f"{base}/dashboard/api/login",
                                  json={"email": "user@bai.local", "password": password}) as r:
                    assert r.status == 200, await r.text()
                    return (await r.json())["csrf"]

        csrfs = await asyncio.gather(*(login(c) for c in clients))
        await asyncio.sleep(2)
        out["after_logins"] = rss_mb(mgr)
        query = ("query($limit:Int!,$offset:Int!){compute_session_list(limit:$limit,offset:$offset)"
                 "{total_count items{id name status status_info status_data image requested_slots"
                 " created_at}}}")

        async def open_page(c, csrf):
            async with sem:
                for m in MODULES:
                    path = "/dashboard/" if m == "index.html" else f"/dashboard/static/{m}"
                    async with c.get(base + path) as r:
                        await r.read()
                async with c.get(f"{base}/dashboard/api/me") as r:
                    await r.read()
                async with c.post(f"{base}/admin/gql", headers={"X-BAI-CSRF": csrf},
                                  json={"query": query, "variables": {"limit": 50, "offset": 0}}) as r:
                    assert r.status == 200
                    await r.read()
                resp = await c.get(f"{base}/events/session")
                assert resp.status == 200
                streams.append(resp)

        await asyncio.gather(*(open_page(c, s) for c, s in zip(clients, csrfs)))

        async def drain(resp):
            try:
                async for _ in resp.content.iter_any():
                    pass
            except (aiohttp.ClientError, asyncio.CancelledError):
                pass

        readers = [asyncio.create_task(drain(r)) for r in streams]
        await asyncio.sleep(3)
        out["open"] = rss_mb(mgr)
        for i in range(5):  # a few status changes go out to every stream
            user_cli(st, "start", "--enqueue-only", "-t", f"mem-probe-{i}", "-r", "cpu=1", "python")
            user_cli(st, "rm", f"mem-probe-{i}")
        await asyncio.sleep(3)
        out["open_after_events"] = rss_mb(mgr)
        for t in readers:
            t.cancel()
    finally:
        for r in streams:
            r.close()
        for c in clients:
            await c.close()
    await asyncio.sleep(2)
    out["closed"] = rss_mb(mgr)
    return out


def browser_parts(st: EmbeddedStack, args: argparse.Namespace, password: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{st.endpoint}/dashboard/")
        page.fill("input[name=email]", "user@bai.local")
        page.fill("input[name=password]", password)
        page.keyboard.press("Enter")
        page.wait_for_selector("#sessions", timeout=120_000)
        loads = page_loads(page, st, args.loads)
        count = page.text_content("#session-count")
        print(line(f"1. first page load, 50 of {count}, from goto (first one cold)", loads,
                   target="<= 1000 ms"))
        print(f"   cold (first) load: {loads[0]:.0f} ms")
        cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "bai_session")
        csrf = page.evaluate("fetch('/dashboard/api/me').then(r => r.json()).then(j => j.csrf)")
        from_change, from_request = status_changes(page, st, args.changes, cookie, csrf)
        print(line("2. status change -> row shows it (transition time in history)",
                   from_change, target="<= 200 ms"))
        print(line("   same, from the DELETE request being sent", from_request))
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--loads", type=int, default=7)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--dashboards", type=int, default=100)
    args = ap.parse_args()
    print_conditions("dashboard (issue 18)", sessions=args.sessions, loads=args.loads,
                     changes=args.changes, dashboards=args.dashboards, runtime="process",
                     db="sqlite", browser=CHROMIUM)
    with EmbeddedStack(runtime="process", slots=["cpu=1", "mem=8g"]) as st:
        st.cli("start", "-t", "blocker", "-r", "cpu=1", "python")
        t0 = time.perf_counter()
        user_cli(st, "start", "--enqueue-only", "--array", f"1-{args.sessions}", "-t", "queued",
                 "-r", "cpu=1", "-r", "mem=64m", "python")
        print(f"   stored {args.sessions + 1} sessions in {time.perf_counter() - t0:.1f} s")
        time.sleep(5)  # the scheduler's first passes write every queue line
        mgr = st.pid("manager")
        password = st.keys()["user"]["password"]
        if not os.path.exists(CHROMIUM):
            print(f"   no chromium at {CHROMIUM}: parts 1 and 2 skipped")
        else:
            browser_parts(st, args, password)
        gc.collect()
        before = rss_mb(mgr)
        mem = asyncio.run(dashboards(st, args.dashboards, password, mgr))
        print(f"3. manager RSS: {before:.1f} MB before; {mem['after_logins']:.1f} MB after "
              f"{args.dashboards} logins; {mem['open']:.1f} MB with {args.dashboards} dashboards "
              f"open (page, me, GraphQL page, event stream); {mem['open_after_events']:.1f} MB "
              f"after 10 status changes went to every stream; {mem['closed']:.1f} MB when closed")
        print(f"   cost of {args.dashboards} open dashboards: "
              f"{mem['open_after_events'] - before:+.1f} MB from before the logins, "
              f"{mem['open_after_events'] - mem['after_logins']:+.1f} MB from after them "
              f"(target <= 50 MB)")
        st.cli("rm", "blocker", check=False)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
