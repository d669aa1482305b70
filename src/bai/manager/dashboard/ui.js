// Small DOM helpers. Text always goes in through textContent (never innerHTML), so nothing a
// user typed (session names, status messages) can become markup.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) { el.replaceChildren(); append(el, children); }

const SVG = 'http://www.w3.org/2000/svg';
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export function flash(message, kind = 'info') {
  const box = document.getElementById('flash');
  replace(box, h('p', { class: `flash ${kind}` }, message));
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => box.replaceChildren(), 6000);
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
export function bytes(n) {
  n = Number(n);
  if (!isFinite(n)) return '-';
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i += 1; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${UNITS[i]}`;
}

export function slotText(slots) {
  const parts = [];
  for (const [k, v] of Object.entries(slots || {})) {
    if (k === 'mem') parts.push(`mem ${bytes(v)}`);
    else parts.push(`${k} ${Number(v)}`);
  }
  return parts.join(', ') || '-';
}

export function when(iso) {
  if (!iso) return '-';
  const d = new Date(iso);
  if (isNaN(d)) return '-';
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

export function ago(iso) {
  if (!iso) return '';
  const secs = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!isFinite(secs)) return '';
  const fut = secs < 0, a = Math.abs(secs);
  const text = a < 60 ? `${Math.round(a)} s` : a < 3600 ? `${Math.round(a / 60)} min` : `${(a / 3600).toFixed(1)} h`;
  return fut ? `in ${text}` : `${text} ago`;
}

export const FINAL = new Set(['TERMINATED', 'CANCELLED', 'ERROR']);

export function badge(status) {
  return h('span', { class: `badge st-${String(status || '').toLowerCase()}` }, status || '?');
}

// A labelled form field with a place for its error message right below it.
export function field(label, input, hint) {
  const id = input.id || (input.id = `f-${Math.random().toString(36).slice(2, 9)}`);
  const err = h('p', { class: 'field-error', id: `${id}-err`, role: 'alert', hidden: true });
  input.setAttribute('aria-describedby', `${id}-err`);
  return h('div', { class: 'field', dataset: { field: input.name || '' } },
    h('label', { for: id }, label), input, hint ? h('p', { class: 'hint' }, hint) : null, err);
}

export function showFieldError(form, name, message) {
  const box = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
  if (!box) return false;
  const err = box.querySelector('.field-error');
  err.textContent = message;
  err.hidden = false;
  const input = box.querySelector('input, select, textarea');
  if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); }
  return true;
}

export function clearErrors(form) {
  for (const e of form.querySelectorAll('.field-error')) { e.hidden = true; e.textContent = ''; }
  for (const i of form.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
  const top = form.querySelector('.form-error');
  if (top) { top.hidden = true; top.textContent = ''; }
}

export function formError(form, message) {
  const top = form.querySelector('.form-error');
  top.textContent = message;
  top.hidden = false;
}

export function table(headers, rows, opts = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: opts.class || '' },
      opts.caption ? h('caption', {}, opts.caption) : null,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows.length ? rows
        : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, opts.empty || 'Nothing here.')))));
}

// A bar of used / capacity for one resource slot.
export function bar(label, used, capacity, fmt = (v) => String(v)) {
  const frac = capacity > 0 ? Math.min(used / capacity, 1) : 0;
  const pct = Math.round(frac * 100);
  const fill = h('span', { class: `bar-fill ${frac > 0.9 ? 'hot' : ''}` });
  fill.style.width = `${pct}%`; // CSSOM, not a style attribute: the CSP allows no inline styles
  return h('div', { class: 'bar-row' },
    h('span', { class: 'bar-label' }, label),
    h('span', { class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct,
      'aria-label': `${label} ${pct}% used` },
    fill),
    h('span', { class: 'bar-text' }, `${fmt(used)} / ${fmt(capacity)}`));
}
