// A terminal in a running session, in its own tab: xterm.js (vendor/, MIT) on the manager's pty
// wire, the same the CLI's `backend.ai shell` uses: GET /stream/session/{id}/pty (a WebSocket,
// the login cookie + CSRF token in the query); BINARY frames are the terminal's bytes both ways,
// TEXT frames control: {"type":"resize","rows","cols"} up, {"type":"exit","exit_code"} down.
import './terminal-csp.js';
import { Terminal } from './vendor/xterm.mjs';

const status = document.getElementById('term-status');
const say = (text) => { status.textContent = text; };

async function main() {
  const id = new URLSearchParams(location.search).get('session') || '';
  if (!/^[0-9a-f-]{36}$/.test(id)) { say('No session named: open the terminal from a session page.'); return; }
  const me = await fetch('/dashboard/api/me', { credentials: 'same-origin' });
  if (me.status === 401) { say('Not logged in: log in to the dashboard, then open the terminal again.'); return; }
  const { csrf } = await me.json();
  const info = await fetch(`/session/${id}`, { credentials: 'same-origin' });
  if (info.ok) {
    const name = (await info.json()).sessionName;
    document.getElementById('term-title').textContent = `terminal: ${name}`;
    document.title = `${name} — bai terminal`;
  }
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000,
    theme: { background: '#000000', foreground: '#e6e6e6' } });
  const box = document.getElementById('terminal');
  term.open(box);
  window.baiTerminal = term; // the browser tests read the screen through it
  const fit = () => {
    const core = term._core && term._core._renderService && term._core._renderService.dimensions;
    const cell = core && core.css && core.css.cell;
    if (!cell || !cell.width || !cell.height) return;
    const cols = Math.max(20, Math.floor(box.clientWidth / cell.width));
    const rows = Math.max(5, Math.floor(box.clientHeight / cell.height));
    if (cols !== term.cols || rows !== term.rows) term.resize(cols, rows);
  };
  fit();
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  fit(); // the cell size is known once the terminal has drawn
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams({ rows: term.rows, cols: term.cols, term: 'xterm-256color', csrf: csrf || '' });
  const ws = new WebSocket(`${proto}//${location.host}/stream/session/${id}/pty?${q}`);
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  ws.onopen = () => { say('connected'); term.focus(); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === 'string') {
      let msg = {};
      try { msg = JSON.parse(ev.data); } catch { msg = {}; }
      if (msg.type === 'exit') say(`the shell exited (code ${msg.exit_code})`);
      return;
    }
    term.write(new Uint8Array(ev.data));
  };
  ws.onclose = (ev) => {
    if (!status.textContent.startsWith('the shell exited')) say(ev.code === 1000 ? 'closed' : `disconnected (${ev.code})`);
  };
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(data)); });
  term.onBinary((data) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 255));
  });
  term.onResize(({ rows, cols }) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', rows, cols }));
  });
  window.addEventListener('resize', fit);
}

main().catch((e) => say(`The terminal failed: ${e.message}`));
