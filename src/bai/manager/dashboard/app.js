// The dashboard's shell: who is logged in, the navigation, and a hash router (#/sessions,
// #/session/ID, #/launch, #/folders, #/admin, #/admin/accounts, #/account). Each view renders
// into <main> and returns a function that stops what it started (event streams).
import { api, ApiError, setCsrf } from './api.js';
import { h, replace, field, showFieldError, clearErrors, formError, flash } from './ui.js';
import { sessionsView, sessionView, launchView } from './sessions.js';
import { adminView, accountsView } from './admin.js';
import { foldersView } from './folders.js';

export const state = { me: null };
const main = () => document.getElementById('main');
let cleanup = null;

const ROUTES = [
  [/^#\/sessions$/, sessionsView],
  [/^#\/launch$/, launchView],
  [/^#\/session\/([0-9a-f-]{36})$/, sessionView],
  [/^#\/folders$/, foldersView],
  [/^#\/admin$/, adminView, true],
  [/^#\/admin\/accounts$/, accountsView, true],
  [/^#\/account$/, accountView],
];

function nav() {
  const links = [['#/sessions', 'Sessions'], ['#/launch', 'Launch'], ['#/folders', 'Folders']];
  if (state.me.user.is_admin) links.push(['#/admin', 'Cluster'], ['#/admin/accounts', 'Accounts']);
  links.push(['#/account', 'Account']);
  const here = location.hash.split('?')[0];
  replace(document.getElementById('nav'), h('ul', {}, links.map(([href, text]) =>
    h('li', {}, h('a', { href, 'aria-current': here === href || (href === '#/sessions' && here.startsWith('#/session/')) ? 'page' : null }, text)))));
  replace(document.getElementById('who'),
    h('span', { class: 'email' }, state.me.user.email),
    h('button', { type: 'button', class: 'link', id: 'logout', onclick: logout }, 'Log out'));
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  if (!state.me) return loginView();
  let hash = location.hash || '#/sessions';
  const found = ROUTES.find(([re]) => re.test(hash.split('?')[0]));
  if (!found) { location.replace('#/sessions'); return; }
  const [re, view, adminOnly] = found;
  nav();
  const root = main();
  replace(root);
  if (adminOnly && !state.me.user.is_admin) {
    replace(root, h('h1', {}, 'Not allowed'), h('p', {}, 'This page is for admins.'));
    return;
  }
  try {
    cleanup = (await view(root, ...(hash.split('?')[0].match(re).slice(1)))) || null;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) { state.me = null; return loginView(); }
    replace(root, h('h1', {}, 'Something went wrong'), h('p', { class: 'error' }, e.message));
  }
}

function loginView() {
  replace(document.getElementById('nav'));
  replace(document.getElementById('who'));
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'username', required: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const form = h('form', { class: 'card narrow', id: 'login-form', novalidate: true },
    h('h1', {}, 'Log in to bai'),
    field('Email', email), field('Password', password),
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    h('button', { type: 'submit' }, 'Log in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!email.value.trim()) return showFieldError(form, 'email', 'Give your email.');
    if (!password.value) return showFieldError(form, 'password', 'Give your password.');
    try {
      await api('POST', '/dashboard/api/login', { email: email.value.trim(), password: password.value });
      await loadMe();
      if (!location.hash || location.hash === '#/login') location.hash = '#/sessions';
      else route();
    } catch (e) {
      if (!(e instanceof ApiError) || !showFieldError(form, e.field || 'password', e.detail || e.title)) formError(form, e.message);
    }
  });
  replace(main(), form);
  email.focus();
}

async function logout() {
  try { await api('POST', '/dashboard/api/logout'); } catch { /* logged out already */ }
  state.me = null;
  setCsrf(null);
  if (cleanup) { cleanup(); cleanup = null; }
  location.hash = '#/login';
  loginView();
  flash('You are logged out.');
}

function accountView(root) {
  const cur = h('input', { name: 'current_password', type: 'password', autocomplete: 'current-password' });
  const pw = h('input', { name: 'new_password', type: 'password', autocomplete: 'new-password' });
  const again = h('input', { name: 'again', type: 'password', autocomplete: 'new-password' });
  const form = h('form', { class: 'card narrow', id: 'password-form', novalidate: true },
    h('h2', {}, 'Change your password'),
    field('Current password', cur), field('New password', pw, 'At least 8 characters.'),
    field('New password again', again),
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    h('button', { type: 'submit' }, 'Change password'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (pw.value.length < 8) return showFieldError(form, 'new_password', 'Use at least 8 characters.');
    if (pw.value !== again.value) return showFieldError(form, 'again', 'The two new passwords differ.');
    try {
      await api('POST', '/dashboard/api/password', { current_password: cur.value, new_password: pw.value });
      form.reset();
      flash('Your password is changed; your other logins have ended.');
    } catch (e) {
      if (!(e instanceof ApiError) || !showFieldError(form, e.field || '', e.detail || e.title)) formError(form, e.message);
    }
  });
  const u = state.me.user;
  replace(root, h('h1', {}, 'Account'),
    h('dl', { class: 'facts' }, h('dt', {}, 'Email'), h('dd', {}, u.email), h('dt', {}, 'Role'), h('dd', {}, u.role),
      h('dt', {}, 'Access key'), h('dd', {}, h('code', {}, u.access_key)),
      h('dt', {}, 'Resource policy'), h('dd', {}, u.resource_policy)),
    form);
}

export async function loadMe() {
  state.me = await api('GET', '/dashboard/api/me');
  setCsrf(state.me.csrf);
}

async function boot() {
  try {
    await loadMe();
  } catch (e) {
    state.me = null;
  }
  window.addEventListener('hashchange', route);
  await route();
  document.body.dataset.ready = '1';
}

boot();
