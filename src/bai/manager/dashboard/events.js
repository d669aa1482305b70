// Live session events from GET /events/session (Server-Sent Events, the stream the CLI uses).
// One EventSource per view; on a dropped stream it reconnects after a pause of its own and
// tells the view (which reloads once, to catch what it missed). No polling anywhere.
const NAMES = ['session_enqueued', 'session_scheduled', 'session_preparing', 'session_pulling',
  'session_prepared', 'session_creating', 'session_started', 'session_terminating',
  'session_terminated', 'session_cancelled', 'session_success', 'session_failure',
  'session_error', 'session_pending', 'kernel_preparing', 'kernel_pulling', 'kernel_creating',
  'kernel_started', 'kernel_terminating', 'kernel_terminated', 'kernel_cancelled'];

export const STATUS_OF = {
  session_enqueued: 'PENDING', session_pending: 'PENDING', session_scheduled: 'SCHEDULED',
  session_preparing: 'PREPARING', session_pulling: 'PULLING', session_prepared: 'PREPARED',
  session_creating: 'CREATING', session_started: 'RUNNING', session_terminating: 'TERMINATING',
  session_terminated: 'TERMINATED', session_cancelled: 'CANCELLED', session_error: 'ERROR',
};

export function follow(query, onEvent, { onReconnect, onClose } = {}) {
  let es = null;
  let stopped = false;
  let timer = null;
  const url = `/events/session${query ? `?${new URLSearchParams(query)}` : ''}`;
  const open = (again) => {
    es = new EventSource(url, { withCredentials: true });
    for (const name of NAMES) {
      es.addEventListener(name, (e) => {
        let data = {};
        try { data = JSON.parse(e.data); } catch { /* the server sends JSON only */ }
        Promise.resolve().then(() => onEvent(name, data)).catch(() => { /* the view shows what it could */ });
      });
    }
    es.addEventListener('server_close', () => { es.close(); if (onClose) onClose(); });
    es.onopen = () => {
      if (again && onReconnect) Promise.resolve().then(onReconnect).catch(() => {});
      again = false;
    };
    es.onerror = () => {
      // the server's retry field is in seconds (the official client's unit); browsers read
      // milliseconds, so reconnect on our own schedule instead
      es.close();
      if (!stopped) timer = setTimeout(() => open(true), 3000);
    };
  };
  open(false);
  return () => { stopped = true; clearTimeout(timer); if (es) es.close(); };
}
