// Admin views: the cluster at a glance (agents with their capacity and use, utilisation and
// queue plots, the pending queue, live) and the accounts (users, keypairs, policies, images,
// aliases).
import { api, ApiError, listSessions, getSession } from './api.js';
import { h, s, replace, bar, bytes, slotText, table, when, ago, badge, field, showFieldError,
  clearErrors, formError, flash } from './ui.js';
import { follow } from './events.js';
import { sessionRow, applyEvent } from './sessions.js';

const num = (v) => Number(v || 0);
const fmtSlot = (k) => (k === 'mem' ? bytes : (v) => String(Math.round(v * 100) / 100));

function agentCard(a) {
  const cap = a.available_slots || {};
  const used = a.occupied_slots || {};
  return h('article', { class: 'card agent', dataset: { agentId: a.id } },
    h('h3', {}, a.id, ' ', h('span', { class: `badge ${a.status === 'ALIVE' ? 'st-running' : 'st-error'}` }, a.status),
      a.schedulable ? '' : h('span', { class: 'badge st-suspended' }, 'not schedulable')),
    h('p', { class: 'muted' }, `${a.runtime} runtime · ${a.address} · heartbeat ${ago(a.last_heartbeat)}`),
    Object.keys(cap).sort().map((k) => bar(k, num(used[k]), num(cap[k]), fmtSlot(k))));
}

// A line plot as inline SVG: one or more series over the same times.
export function plot(title, times, series, { max = null, unit = '' } = {}) {
  const W = 560, H = 180, L = 44, B = 24, T = 10, R = 10;
  const all = series.flatMap((x) => x.values);
  const top = max != null ? max : Math.max(1, ...all);
  const x = (i) => L + (i * (W - L - R)) / Math.max(1, times.length - 1);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const ticks = [0, top / 2, top];
  const label = (v) => (unit === '%' ? `${Math.round(v * 100)}%` : String(Math.round(v * 10) / 10));
  const first = times.length ? new Date(times[0]) : null;
  const last = times.length ? new Date(times[times.length - 1]) : null;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, class: 'plot' },
    s('title', {}, title),
    ticks.map((v) => [s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'gridline' }),
      s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'tick' }, label(v))]),
    first ? s('text', { x: L, y: H - 6, class: 'tick' }, first.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })) : null,
    last ? s('text', { x: W - R, y: H - 6, 'text-anchor': 'end', class: 'tick' }, last.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })) : null,
    series.map((ser, i) => s('polyline', { class: `line c${i}`, fill: 'none',
      points: ser.values.map((v, j) => `${x(j).toFixed(1)},${y(Math.min(v, top)).toFixed(1)}`).join(' ') })));
  return h('figure', { class: 'card plot-card' }, svg,
    h('figcaption', {}, title, ' ', series.map((ser, i) => h('span', { class: `key c${i}` }, ser.name))));
}

export async function adminView(root) {
  const agentsBox = h('div', { class: 'agents', id: 'agents' });
  const plotsBox = h('div', { class: 'plots', id: 'plots' });
  const queueBody = h('tbody', {});
  const queueCount = h('p', { class: 'muted', id: 'queue-count' });
  const hours = h('select', { name: 'hours', 'aria-label': 'Plot window' },
    [1, 6, 24, 72].map((n) => h('option', { value: n, selected: n === 6 }, `last ${n} h`)));
  let queue = [];
  let total = 0;
  const heads = ['Name', 'Owner', 'Status', 'Reason', 'Queue', 'Est. start', 'Image', 'Resources', 'Created', ''];
  const renderQueue = () => {
    queueBody.replaceChildren(...(queue.length ? queue.map((x) => sessionRow(x, { owner: true }))
      : [h('tr', {}, h('td', { colspan: heads.length, class: 'muted' }, 'The queue is empty.'))]));
    queueCount.textContent = `${total} pending`;
  };
  const loadAgents = async () => {
    const agents = (await api('GET', '/admin/agents')).agents;
    replace(agentsBox, agents.length ? agents.map(agentCard) : h('p', { class: 'muted' }, 'No agents.'));
  };
  const loadQueue = async () => {
    const got = await listSessions({ status: 'PENDING', limit: 100 });
    queue = got.items.sort((a, b) => (a.status_data.scheduler?.position ?? 1e9) - (b.status_data.scheduler?.position ?? 1e9));
    total = got.total;
    renderQueue();
  };
  const loadPlots = async () => {
    const st = await api('GET', `/dashboard/api/stats?hours=${hours.value}`);
    const util = Object.entries(st.utilisation).map(([k, v]) => ({ name: k, values: v }));
    replace(plotsBox,
      plot(`Cluster utilisation, last ${st.hours} h`, st.times, util, { max: 1, unit: '%' }),
      plot(`Queue length, last ${st.hours} h`, st.times, [{ name: 'pending sessions', values: st.queue }]));
  };
  hours.addEventListener('change', () => loadPlots().catch((e) => flash(e.message, 'error')));
  replace(root, h('h1', {}, 'Cluster'),
    h('section', {}, h('h2', {}, 'Agents'), agentsBox),
    h('section', {}, h('div', { class: 'title-row' }, h('h2', {}, 'Utilisation and queue'), hours), plotsBox),
    h('section', {}, h('h2', {}, 'Pending queue'), queueCount,
      h('div', { class: 'table-wrap' }, h('table', { id: 'queue', class: 'sessions' },
        h('thead', {}, h('tr', {}, heads.map((x) => h('th', { scope: 'col' }, x)))), queueBody))));
  await Promise.all([loadAgents(), loadQueue(), loadPlots()]);

  // live: queue lines from session_pending events; agents' use changes when sessions start/end
  let agentsTimer = null;
  const stop = follow(null, async (name, ev) => {
    const id = ev.sessionId;
    const known = queue.find((x) => x.id === id);
    if (known) {
      applyEvent(known, name, ev);
      if (known.status !== 'PENDING') { queue = queue.filter((x) => x !== known); total -= 1; }
      renderQueue();
    } else if (name === 'session_enqueued' && queue.length < 100) {
      const got = await getSession(id).catch(() => null);
      if (got && got.status === 'PENDING' && !queue.some((x) => x.id === id)) { queue.push(got); total += 1; renderQueue(); }
    }
    if (name === 'session_started' || name === 'session_terminated' || name === 'session_scheduled') {
      clearTimeout(agentsTimer); // one refresh per burst of placements
      agentsTimer = setTimeout(() => loadAgents().catch(() => {}), 300);
    }
  }, { onReconnect: () => { loadQueue(); loadAgents(); } });
  return () => { stop(); clearTimeout(agentsTimer); };
}

function passwordForm(email) {
  const pw = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', 'aria-label': `New password for ${email}` });
  const form = h('form', { class: 'inline', novalidate: true },
    h('div', { class: 'field', dataset: { field: 'password' } }, pw,
      h('p', { class: 'field-error', role: 'alert', hidden: true })),
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    h('button', { type: 'submit', class: 'small' }, 'Set password'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (pw.value.length < 8) return showFieldError(form, 'password', 'Use at least 8 characters.');
    try {
      await api('PATCH', `/admin/users/${encodeURIComponent(email)}`, { password: pw.value });
      form.reset();
      flash(`The password of ${email} is set.`);
    } catch (e) {
      if (!showFieldError(form, 'password', e.detail || e.title)) formError(form, e.message);
    }
  });
  return form;
}

export async function accountsView(root) {
  const [users, keypairs, policies, images, aliases] = await Promise.all([
    api('GET', '/admin/users'), api('GET', '/admin/keypairs'), api('GET', '/admin/resource-policies'),
    api('GET', '/admin/images'), api('GET', '/admin/aliases')]);
  replace(root, h('h1', {}, 'Accounts and images'),
    h('section', {}, h('h2', {}, 'Users'), table(['Email', 'Role', 'Groups', 'Active', 'Keypairs', 'Password', 'Set password'],
      users.users.map((u) => h('tr', {}, h('td', {}, u.email), h('td', {}, u.role), h('td', {}, (u.groups || []).join(', ')),
        h('td', {}, u.is_active ? 'yes' : 'no'), h('td', { class: 'num' }, u.keypairs), h('td', {}, u.has_password ? 'set' : 'none'),
        h('td', {}, passwordForm(u.email)))), { class: 'compact' })),
    h('section', {}, h('h2', {}, 'Keypairs'), table(['Access key', 'User', 'Admin', 'Active', 'Policy', 'Last used'],
      keypairs.keypairs.map((k) => h('tr', {}, h('td', {}, h('code', {}, k.access_key)), h('td', {}, k.user_email),
        h('td', {}, k.is_admin ? 'yes' : 'no'), h('td', {}, k.is_active ? 'yes' : 'no'), h('td', {}, k.resource_policy), h('td', {}, when(k.last_used)))),
      { class: 'compact' })),
    h('section', {}, h('h2', {}, 'Resource policies'), table(['Name', 'Max sessions', 'Total slots', 'Idle timeout', 'Min slots', 'Keypairs'],
      policies.resource_policies.map((p) => h('tr', {}, h('td', {}, p.name), h('td', { class: 'num' }, p.max_concurrent_sessions || 'unlimited'),
        h('td', {}, slotText(p.total_resource_slots) === '-' ? 'unlimited' : slotText(p.total_resource_slots)),
        h('td', {}, p.idle_timeout ? `${Math.round(p.idle_timeout / 60)} min` : 'none'), h('td', {}, slotText(p.min_resource_slots)),
        h('td', { class: 'num' }, p.keypairs))), { class: 'compact' })),
    h('section', {}, h('h2', {}, 'Images'), table(['Name', 'Aliases', 'Runtimes', 'Minimum', 'Apps'],
      images.images.map((i) => h('tr', {}, h('td', {}, i.name), h('td', {}, i.aliases.join(', ')), h('td', {}, i.runtimes.join(', ')),
        h('td', {}, slotText(i.min_slots)), h('td', {}, (i.service_ports || []).map((p) => p.name).join(', ')))), { class: 'compact' })),
    h('section', {}, h('h2', {}, 'Aliases'), table(['Alias', 'Image'],
      aliases.aliases.map((a) => h('tr', {}, h('td', {}, a.alias), h('td', {}, a.target))), { class: 'compact' })));
}
