// Sessions: the live list, the launcher and one session's page.
import { api, ApiError, listSessions, getSession } from './api.js';
import { h, replace, badge, slotText, when, ago, table, field, showFieldError, clearErrors,
  formError, flash, FINAL } from './ui.js';
import { follow, STATUS_OF } from './events.js';
import { state } from './app.js';

const PAGE = 50;
const ACTIVE = 'PENDING,SCHEDULED,PREPARING,PULLING,PREPARED,CREATING,RUNNING,RESTARTING,RESIZING,SUSPENDED,TERMINATING';
const TABS = { active: ['Active', ACTIVE], finished: ['Finished', 'TERMINATED,CANCELLED,ERROR'], all: ['All', null] };

function sched(s) { return (s.status_data && s.status_data.scheduler) || {}; }

export async function terminate(s) {
  const verb = s.status === 'PENDING' ? 'Cancel' : 'Terminate';
  if (!confirm(`${verb} the session ${s.name}?`)) return false;
  try {
    await api('DELETE', `/session/${s.id}`);
    flash(`${s.name}: ${verb === 'Cancel' ? 'cancelled' : 'terminating'}.`);
    return true;
  } catch (e) {
    flash(`${s.name}: ${e.message}`, 'error');
    return false;
  }
}

function actionButton(s) {
  if (FINAL.has(s.status) || s.status === 'TERMINATING') return '';
  const label = s.status === 'PENDING' ? 'Cancel' : 'Terminate';
  return h('button', { type: 'button', class: 'small danger', 'aria-label': `${label} ${s.name}`,
    onclick: () => terminate(s) }, label);
}

export function sessionRow(s, { owner = false } = {}) {
  const sc = sched(s);
  const pending = s.status === 'PENDING';
  return h('tr', { dataset: { sessionId: s.id, status: s.status } },
    h('td', {}, h('a', { href: `#/session/${s.id}` }, s.name)),
    owner ? h('td', {}, s.user_email || s.access_key) : null,
    h('td', { class: 'status' }, badge(s.status)),
    h('td', { class: 'info' }, s.status_info || ''),
    h('td', { class: 'num' }, pending && sc.position != null ? `#${sc.position}` : ''),
    h('td', {}, pending && sc.estimated_start ? h('time', { datetime: sc.estimated_start, title: when(sc.estimated_start) }, ago(sc.estimated_start)) : ''),
    h('td', {}, s.image),
    h('td', {}, slotText(s.requested_slots)),
    h('td', {}, h('time', { datetime: s.created_at, title: when(s.created_at) }, ago(s.created_at))),
    h('td', {}, actionButton(s)));
}

// Apply one event to a session record; true when something shown changed.
export function applyEvent(s, name, ev) {
  const status = ev.status || STATUS_OF[name];
  if (!status || !name.startsWith('session_')) return false;
  s.status = status;
  if (ev.statusInfo !== undefined) s.status_info = ev.statusInfo;
  else if (ev.reason !== undefined) s.status_info = ev.reason;
  s.status_data = s.status_data || {};
  if (name === 'session_pending') {
    s.status_data = { scheduler: { ...(ev.scheduler || {}), position: ev.queuePosition, estimated_start: ev.estimatedStart } };
  } else if (status !== 'PENDING') {
    s.status_data = {};
  }
  return true;
}

export async function sessionsView(root) {
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const tab = TABS[params.get('tab')] ? params.get('tab') : 'active';
  let page = Math.max(0, Number(params.get('page')) || 0);
  const owner = state.me.user.is_admin;
  const heads = ['Name', owner ? 'Owner' : null, 'Status', 'Reason', 'Queue', 'Est. start', 'Image', 'Resources', 'Created', ''].filter((x) => x !== null);
  const rows = new Map();
  const body = h('tbody', {});
  const count = h('p', { class: 'muted', id: 'session-count', 'aria-live': 'polite' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  let total = 0;
  let list = [];

  const render = () => {
    body.replaceChildren(...(list.length ? list.map((s) => sessionRow(s, { owner }))
      : [h('tr', {}, h('td', { colspan: heads.length, class: 'muted' }, 'No sessions here. Launch one.'))]));
    count.textContent = `${total} session${total === 1 ? '' : 's'}`;
    const link = (p, text) => h('a', { href: `#/sessions?tab=${tab}&page=${p}`, class: 'button small' }, text);
    replace(pager, page > 0 ? link(page - 1, '← Newer') : '',
      h('span', {}, ` page ${page + 1} of ${Math.max(1, Math.ceil(total / PAGE))} `),
      (page + 1) * PAGE < total ? link(page + 1, 'Older →') : '');
  };
  const load = async () => {
    const got = await listSessions({ status: TABS[tab][1], limit: PAGE, offset: page * PAGE });
    total = got.total;
    list = got.items;
    rows.clear();
    for (const s of list) rows.set(s.id, s);
    render();
  };
  const fits = (status) => tab === 'all' || (tab === 'active' ? !FINAL.has(status) : FINAL.has(status));

  replace(root,
    h('div', { class: 'title-row' }, h('h1', {}, 'Sessions'), h('a', { href: '#/launch', class: 'button' }, 'Launch a session')),
    h('nav', { class: 'tabs', 'aria-label': 'Which sessions' }, Object.entries(TABS).map(([key, [text]]) =>
      h('a', { href: `#/sessions?tab=${key}`, 'aria-current': key === tab ? 'page' : null }, text))),
    count,
    h('div', { class: 'table-wrap' }, h('table', { id: 'sessions', class: 'sessions' },
      h('thead', {}, h('tr', {}, heads.map((x) => h('th', { scope: 'col' }, x)))), body)),
    pager);
  await load();

  let pendingFetch = new Set();
  const stop = follow(null, async (name, ev) => {
    const id = ev.sessionId;
    if (!id) return;
    const known = rows.get(id);
    if (known) {
      if (!applyEvent(known, name, ev)) return;
      if (!fits(known.status)) { list = list.filter((x) => x.id !== id); rows.delete(id); total -= 1; }
      render();
      return;
    }
    if (name !== 'session_enqueued' || page !== 0 || pendingFetch.has(id)) return;
    const status = ev.status || STATUS_OF[name];
    if (!fits(status)) return;
    pendingFetch.add(id);
    const s = await getSession(id).catch(() => null);
    pendingFetch.delete(id);
    if (!s || rows.has(id)) return;
    rows.set(id, s);
    list = [s, ...list].slice(0, PAGE);
    total += 1;
    render();
  }, { onReconnect: load });
  document.body.dataset.live = '1';
  return () => { stop(); delete document.body.dataset.live; };
}

// ------------------------------------------------------------------ launcher

function parseMem(text) {
  const m = String(text).trim().toLowerCase().match(/^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?$/);
  if (!m) return null;
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]];
  return Math.round(Number(m[1]) * mult);
}

export async function launchView(root) {
  const me = state.me;
  const imageList = h('datalist', { id: 'image-list' },
    me.images.flatMap((i) => [...i.aliases.map((a) => h('option', { value: a }, `${a} → ${i.name}`)), h('option', { value: i.name })]));
  const image = h('input', { name: 'image', list: 'image-list', required: true, autocomplete: 'off',
    value: me.images.length ? (me.images[0].aliases[0] || me.images[0].name) : '' });
  const type = h('select', { name: 'type' }, h('option', { value: 'interactive' }, 'Interactive'), h('option', { value: 'batch' }, 'Batch'));
  const name = h('input', { name: 'name', maxlength: 64, autocomplete: 'off', placeholder: 'optional' });
  const cpu = h('input', { name: 'cpu', type: 'number', min: '0', step: 'any', value: '1', inputmode: 'decimal' });
  const mem = h('input', { name: 'mem', value: '1g', autocomplete: 'off' });
  const accels = me.slots.filter((k) => k !== 'cpu' && k !== 'mem').map((k) =>
    h('input', { name: k, type: 'number', min: '0', step: k.endsWith('.device') ? '1' : 'any', value: '0', dataset: { slot: k } }));
  const command = h('input', { name: 'startup_command', autocomplete: 'off', placeholder: 'e.g. python main.py' });
  const mounts = mountRows();
  const commandField = field('Startup command (batch)', command);
  commandField.hidden = true;
  type.addEventListener('change', () => { commandField.hidden = type.value !== 'batch'; });
  const idle = me.policy && me.policy.idle_timeout
    ? `Idle sessions end after ${Math.round(me.policy.idle_timeout / 60)} min without activity (policy ${me.policy.name}).`
    : 'No idle timeout applies to your sessions.';
  const form = h('form', { class: 'card', id: 'launch-form', novalidate: true },
    imageList,
    h('div', { class: 'grid' },
      field('Image or alias', image), field('Type', type), field('Name', name, 'Letters, digits, - and _; unique among your live sessions.'),
      field('CPU cores', cpu), field('Memory', mem, 'e.g. 512m, 2g'),
      accels.map((a) => field(a.name, a)),
      commandField),
    mounts.box,
    h('p', { class: 'hint', id: 'idle-hint' }, idle),
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    h('button', { type: 'submit' }, 'Launch'));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!image.value.trim()) return showFieldError(form, 'image', 'Choose an image or an alias.');
    const cores = Number(cpu.value);
    if (!(cores > 0)) return showFieldError(form, 'cpu', 'Ask for more than 0 CPU cores.');
    const bytes = parseMem(mem.value);
    if (!(bytes > 0)) return showFieldError(form, 'mem', 'Give the memory as a size above 0, e.g. 512m or 2g.');
    if (name.value && !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name.value)) return showFieldError(form, 'name', 'Use letters, digits, ".", "-" and "_", starting with a letter or digit.');
    if (type.value === 'batch' && !command.value.trim()) return showFieldError(form, 'startup_command', 'A batch session needs a startup command.');
    const resources = { cpu: String(cores), mem: String(bytes) };
    for (const a of accels) {
      const v = Number(a.value);
      if (!(v >= 0)) return showFieldError(form, a.name, 'Give 0 or more.');
      if (v > 0) resources[a.dataset.slot] = String(v);
    }
    // reuseIfExists: false: a taken name is an error next to the name field, not the old session
    const body = { image: image.value.trim(), type: type.value, enqueueOnly: true, reuseIfExists: false, config: { resources } };
    if (name.value) body.name = name.value;
    if (type.value === 'batch') body.startupCommand = command.value;
    const asked = mounts.read(form);
    if (!asked) return;
    if (asked.mounts.length) Object.assign(body.config, asked);
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const answer = await api('POST', '/session', body);
      flash(`${answer.sessionName || 'The session'} is queued.`);
      location.hash = `#/session/${answer.sessionId}`;
    } catch (e) {
      button.disabled = false;
      showServerError(form, e);
    }
  });
  replace(root, h('h1', {}, 'Launch a session'), form);
  image.focus();
}

// The launcher's storage folders: one row per folder (name, mount path, read-only), as the
// CLI's -m NAME:PATH:ro; sent as config.mounts, config.mount_map and config.mount_options.
function mountRows() {
  const rows = h('div', { id: 'mount-rows' });
  let seq = 0;
  const add = () => {
    const i = seq++;
    const name = h('input', { name: `mount-name-${i}`, autocomplete: 'off', placeholder: 'folder name', dataset: { mount: 'name' } });
    const path = h('input', { name: `mount-path-${i}`, autocomplete: 'off', placeholder: '/home/work/NAME', dataset: { mount: 'path' } });
    const ro = h('input', { name: `mount-ro-${i}`, type: 'checkbox', dataset: { mount: 'ro' } });
    const remove = h('button', { type: 'button', class: 'link', 'aria-label': `Remove folder row ${i + 1}` }, 'Remove');
    const row = h('div', { class: 'mount-row', dataset: { row: String(i) } },
      field('Folder', name), field('Mount path', path, 'Optional; a relative path goes under /home/work.'),
      h('label', { class: 'check' }, ro, ' Read-only'), remove);
    remove.addEventListener('click', () => row.remove());
    rows.append(row);
    return name;
  };
  add();
  const more = h('button', { type: 'button', class: 'small', id: 'add-mount' }, 'Add a folder');
  more.addEventListener('click', () => add().focus());
  const box = h('fieldset', { class: 'mounts' }, h('legend', {}, 'Storage folders to mount'),
    h('p', { class: 'hint' }, 'Each folder is mounted at /home/work/NAME unless you give a path.'), rows, more);
  // {mounts, mount_map, mount_options} of the rows, or null after showing an error next to a field
  const read = (form) => {
    const out = { mounts: [], mount_map: {}, mount_options: {} };
    for (const row of rows.querySelectorAll('.mount-row')) {
      const [name, path, ro] = ['name', 'path', 'ro'].map((k) => row.querySelector(`[data-mount=${k}]`));
      const n = name.value.trim();
      const p = path.value.trim();
      if (!n) {
        if (p || ro.checked) return showFieldError(form, name.name, 'Name the folder to mount here.') && null;
        continue;
      }
      if (out.mounts.includes(n)) return showFieldError(form, name.name, `${n} is already mounted above.`) && null;
      if (p.split('/').includes('..')) return showFieldError(form, path.name, 'A mount path may not contain "..".') && null;
      out.mounts.push(n);
      if (p) out.mount_map[n] = p;
      if (ro.checked) out.mount_options[n] = { permission: 'ro' };
    }
    return out;
  };
  return { box, read };
}

// The field of the folder row a refusal names (its path when the refusal is about where or how it
// is mounted), else the first row's folder field.
function mountField(form, msg) {
  for (const row of form.querySelectorAll('.mount-row')) {
    const name = row.querySelector('[data-mount=name]');
    const n = name.value.trim().toLowerCase();
    if (!n) continue;
    const esc = n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    if (!new RegExp(`(^|[\\s'":])${esc}($|[\\s'":,.])`).test(msg)) continue;
    const where = /mount(ed)? (at|path)|cannot mount|inside the other|mode/.test(msg);
    return where ? row.querySelector('[data-mount=path]').name : name.name;
  }
  const first = form.querySelector('.mount-row [data-mount=name]');
  return first ? first.name : null;
}

// Put a refusal of POST /session next to the field it is about.
function showServerError(form, e) {
  if (!(e instanceof ApiError)) return formError(form, e.message);
  const text = e.detail ? `${e.title} ${e.detail}` : e.title;
  const f = String(e.field || '');
  const msg = `${e.title} ${e.detail}`.toLowerCase();
  let target = null;
  if (e.code === 'image-not-found' || f === 'image' || f === 'lang') target = 'image';
  else if (e.code === 'session-already-exists' || f === 'name' || f === 'session_name') target = 'name';
  else if (f.includes('mount') || e.code.includes('vfolder') || msg.includes('folder')) target = mountField(form, msg);
  else if (f.startsWith('config.resources') || msg.includes('resource') || msg.includes('slot')) {
    const slot = f.split('.').slice(2).join('.');
    target = slot || ['cpu', 'mem', ...state.me.slots].find((k) => msg.includes(`'${k}'`) || msg.includes(` ${k} `) || msg.includes(`${k}:`)) || 'cpu';
  } else if (f.toLowerCase().includes('startup')) target = 'startup_command';
  if (!target || !showFieldError(form, target, text)) formError(form, text);
}

// ------------------------------------------------------------------ one session

// Open an app of a session in a new tab: the terminal is our own page; a web app gets a ticket
// for the app proxy. The tab is opened at the click (no popup blocker) and loses its opener
// before it leaves for the app's origin.
function openButton(id, a) {
  if (a.protocol === 'pty') {
    return h('a', { class: 'button small', id: `open-${a.name}`, target: '_blank', rel: 'noopener',
      href: `/dashboard/terminal?session=${encodeURIComponent(id)}` }, 'Open terminal');
  }
  if (a.protocol !== 'http' && a.protocol !== 'preopen') return '';
  return h('button', { type: 'button', class: 'small', id: `open-${a.name}`, onclick: async () => {
    const tab = window.open('', '_blank');
    try {
      const { url } = await api('POST', `/stream/session/${id}/apps/${encodeURIComponent(a.name)}/ticket`);
      if (tab) { tab.opener = null; tab.location.href = url; } else location.assign(url);
    } catch (e) {
      if (tab) tab.close();
      flash(`Cannot open ${a.name}: ${e.message}`, 'error');
    }
  } }, `Open ${a.name}`);
}

export async function sessionView(root, id) {
  const info = await api('GET', `/session/${id}`);
  const s = { id, name: info.sessionName, status: info.status, status_info: info.statusInfo,
    status_data: info.statusData || {}, image: info.image };
  const head = h('div', { class: 'title-row' });
  const facts = h('dl', { class: 'facts' });
  const historyBox = h('div', {});
  const eventsList = h('ol', { class: 'events', id: 'session-events', 'aria-live': 'polite' });
  const logBox = h('pre', { class: 'log', id: 'session-log', tabindex: '0' }, '');
  const appsBox = h('div', { id: 'session-apps' });

  const renderHead = () => replace(head, h('h1', {}, s.name, ' ', h('span', { id: 'session-status' }, badge(s.status))),
    FINAL.has(s.status) || s.status === 'TERMINATING' ? ''
      : h('button', { type: 'button', class: 'danger', id: 'terminate', onclick: async () => { await terminate(s); } },
        s.status === 'PENDING' ? 'Cancel' : 'Terminate'));
  const renderFacts = () => {
    const sc = sched(s);
    const rows = [['Status info', s.status_info || '-'], ['Image', info.image], ['Type', info.type],
      ['Created', when(info.creationTime)], ['Requested', slotText(info.requestedSlots)],
      ['Agent', (info.agentIds || []).join(', ') || '-'],
      ['Idle timeout', info.idleTimeout ? `${Math.round(info.idleTimeout / 60)} min` : 'none'],
      ['Session id', h('code', {}, id)]];
    if (s.status === 'PENDING') rows.splice(1, 0, ['Queue position', sc.position != null ? `#${sc.position}` : '-'], ['Estimated start', sc.estimated_start ? `${when(sc.estimated_start)} (${ago(sc.estimated_start)})` : 'unknown']);
    replace(facts, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  };
  const loadHistory = async () => {
    const hist = (await api('GET', `/session/${id}/history`)).result;
    replace(historyBox, table(['When', 'From', 'To', 'Reason', 'Cause'], hist.map((x) =>
      h('tr', {}, h('td', {}, when(x.at)), h('td', {}, x.from ? badge(x.from) : '-'), h('td', {}, badge(x.to)), h('td', {}, x.reason), h('td', {}, x.cause))),
    { class: 'compact', caption: 'Status history' }));
  };
  const loadLog = async () => {
    try {
      logBox.textContent = (await api('GET', `/session/${id}/logs`)).result.logs || '(no output yet)';
    } catch (e) {
      logBox.textContent = `(no console log: ${e.message})`;
    }
  };
  // The apps the session offers (GET /stream/session/{id}/apps, once it runs). A web app
  // (jupyter, a user's http service) opens in a new tab on the manager's app proxy, another
  // origin (api/webapps.py): a one-use ticket signs that tab in to that app only. The terminal
  // is bai's own page (terminal.html) on this origin. The CLI command stays for a local port.
  const renderApps = async () => {
    if (s.status !== 'RUNNING') {
      replace(appsBox, h('p', { class: 'muted' }, 'Apps open once the session runs.'));
      return;
    }
    let apps = [];
    try { apps = await api('GET', `/stream/session/${id}/apps`); } catch (e) {
      replace(appsBox, h('p', { class: 'muted' }, `No apps: ${e.message}`));
      return;
    }
    replace(appsBox, apps.length
      ? h('ul', { class: 'apps' }, apps.map((a) => h('li', { class: 'card', dataset: { app: a.name } },
        h('strong', {}, a.name), ` (${a.protocol}, port ${(a.ports || []).join(', ')}) `,
        openButton(id, a), ' ',
        h('code', {}, `backend.ai app ${s.name} ${a.name} -b 8080`))))
      : h('p', { class: 'muted' }, 'This session offers no apps.'));
  };
  renderHead(); renderFacts(); renderApps();
  replace(root, head, facts,
    h('section', {}, h('h2', {}, 'Apps'), appsBox),
    h('section', {}, historyBox),
    h('section', {}, h('h2', {}, 'Events'), eventsList),
    h('section', {}, h('div', { class: 'title-row' }, h('h2', {}, 'Console log'),
      h('button', { type: 'button', class: 'small', onclick: loadLog }, 'Refresh log')), logBox));
  await Promise.all([loadHistory(), loadLog()]);

  const stop = follow({ sessionId: id }, (name, ev) => {
    const at = new Date().toLocaleTimeString();
    eventsList.append(h('li', {}, h('code', {}, name), ' ', ev.status ? badge(ev.status) : '', ' ', ev.statusInfo || ev.reason || '', h('span', { class: 'muted' }, ` ${at}`)));
    if (applyEvent(s, name, ev)) {
      renderHead(); renderFacts();
      loadHistory().catch(() => {});
      if (name === 'session_started' || FINAL.has(s.status)) {
        api('GET', `/session/${id}`).then((x) => { Object.assign(info, x); renderFacts(); }).catch(() => {});
        renderApps();
        loadLog();
      }
    }
  });
  return stop;
}
