// Storage folders (the /folders API the CLI uses): list, create, browse, upload with progress
// (tus PATCH requests of 8 MiB slices: a large file is read from disk piece by piece, never
// whole into memory), download, share, delete.
import { api, ApiError, parseJson } from './api.js';
import { h, replace, table, when, bytes, field, showFieldError, clearErrors, formError, flash } from './ui.js';

const CHUNK = 8 * 1024 * 1024;
const enc = encodeURIComponent;

function params() { return new URLSearchParams(location.hash.split('?')[1] || ''); }
function go(name, path) {
  const q = new URLSearchParams();
  if (name) q.set('name', name);
  if (path && path !== '.') q.set('path', path);
  location.hash = `#/folders${q.toString() ? `?${q}` : ''}`;
}
function join(dir, name) { return dir && dir !== '.' ? `${dir}/${name}` : name; }

function putChunk(url, blob, offset, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PATCH', url);
    xhr.setRequestHeader('Tus-Resumable', '1.0.0');
    xhr.setRequestHeader('Upload-Offset', String(offset));
    xhr.setRequestHeader('Content-Type', 'application/offset+octet-stream');
    xhr.upload.onprogress = (e) => onProgress(offset + e.loaded);
    xhr.onload = () => {
      if (xhr.status === 204 || xhr.status === 200) resolve(Number(xhr.getResponseHeader('Upload-Offset')));
      else {
        let p = null;
        try { p = JSON.parse(xhr.responseText); } catch { p = null; }
        reject(new ApiError(xhr.status, p));
      }
    };
    xhr.onerror = () => reject(new Error('the upload was interrupted'));
    xhr.send(blob);
  });
}

export async function uploadFile(folder, dir, file, onProgress) {
  const ticket = await api('POST', `/folders/${enc(folder)}/request-upload`, { path: join(dir, file.name), size: file.size });
  const url = `${ticket.url}?token=${enc(ticket.token)}`;
  let offset = 0;
  onProgress(0);
  while (offset < file.size) { // an empty file is whole once requested (tus sends nothing)
    offset = await putChunk(url, file.slice(offset, offset + CHUNK), offset, onProgress);
  }
  onProgress(file.size);
}

async function download(folder, path) {
  const ticket = await api('POST', `/folders/${enc(folder)}/request-download`, { path });
  const a = h('a', { href: `${ticket.url}?token=${enc(ticket.token)}`, download: path.split('/').pop() });
  document.body.append(a);
  a.click();
  a.remove();
}

function createForm(hosts, reload) {
  const name = h('input', { name: 'name', autocomplete: 'off', maxlength: 64 });
  const host = h('select', { name: 'host' }, (hosts.allowed || []).map((x) => h('option', { value: x, selected: x === hosts.default }, x)));
  const form = h('form', { class: 'card inline-form', id: 'folder-create', novalidate: true },
    h('div', { class: 'grid' }, field('New folder', name), field('Storage host', host)),
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    h('button', { type: 'submit' }, 'Create folder'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!name.value.trim()) return showFieldError(form, 'name', 'Give the folder a name.');
    try {
      await api('POST', '/folders', { name: name.value.trim(), host: host.value });
      flash(`Folder ${name.value.trim()} is created.`);
      form.reset();
      await reload();
    } catch (e) {
      const f = e instanceof ApiError && e.field === 'host' ? 'host' : 'name';
      if (!showFieldError(form, f, e.detail ? `${e.title} ${e.detail}` : e.message)) formError(form, e.message);
    }
  });
  return form;
}

function shareForm(folder) {
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'off' });
  const perm = h('select', { name: 'permission' }, h('option', { value: 'ro' }, 'read only'), h('option', { value: 'rw' }, 'read and write'));
  const form = h('form', { class: 'card', id: 'folder-share', novalidate: true },
    h('h3', {}, 'Share'),
    h('div', { class: 'grid' }, field('With (email)', email), field('Permission', perm)),
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    h('button', { type: 'submit', class: 'small' }, 'Share'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!email.value.includes('@')) return showFieldError(form, 'email', 'Give the email of a user.');
    try {
      await api('POST', `/folders/${enc(folder)}/share`, { permission: perm.value, emails: [email.value.trim()] });
      flash(`${folder} is shared with ${email.value.trim()}.`);
      form.reset();
    } catch (e) {
      if (!showFieldError(form, 'email', e.detail ? `${e.title} ${e.detail}` : e.message)) formError(form, e.message);
    }
  });
  return form;
}

function uploader(folder, dir, reload) {
  const input = h('input', { type: 'file', name: 'file', multiple: true, id: 'upload-input' });
  const progress = h('ul', { class: 'uploads', id: 'uploads', 'aria-live': 'polite' });
  const err = h('p', { class: 'field-error', id: 'upload-error', role: 'alert', hidden: true });
  const drop = h('div', { class: 'drop', id: 'drop' }, 'Drop files here, or ', h('label', { for: 'upload-input', class: 'link-label' }, 'choose files'), input);
  const send = async (files) => {
    err.hidden = true;
    for (const file of files) {
      const bar = h('progress', { max: Math.max(file.size, 1), value: 0, class: 'progress', 'aria-label': `Upload of ${file.name}` });
      const text = h('span', {}, ` ${file.name}: 0 %`);
      progress.append(h('li', {}, bar, text));
      try {
        await uploadFile(folder, dir, file, (done) => {
          bar.value = done;
          text.textContent = ` ${file.name}: ${file.size ? Math.floor((done / file.size) * 100) : 100} %`;
        });
        text.textContent = ` ${file.name}: done (${bytes(file.size)})`;
      } catch (e) {
        text.textContent = ` ${file.name}: failed`;
        err.textContent = `${file.name}: ${e.detail ? `${e.title} ${e.detail}` : e.message}`;
        err.hidden = false;
      }
    }
    await reload();
  };
  input.addEventListener('change', () => { send([...input.files]); input.value = ''; });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); send([...e.dataTransfer.files]); });
  return h('section', { class: 'card' }, h('h3', {}, 'Upload'), drop, err, progress);
}

async function folderPanel(root, folder, dir) {
  const listing = h('div', { id: 'files' });
  const load = async () => {
    const got = await api('GET', `/folders/${enc(folder)}/files?path=${enc(dir || '.')}`);
    const files = parseJson(got.files, []) || [];
    replace(listing, table(['Name', 'Size', 'Modified', ''], files.map((f) => {
      const path = join(dir, f.name);
      const isDir = f.type === 'DIRECTORY';
      return h('tr', { dataset: { file: f.name } },
        h('td', {}, isDir ? h('a', { href: `#/folders?name=${enc(folder)}&path=${enc(path)}` }, `${f.name}/`) : f.name),
        h('td', { class: 'num' }, isDir ? '' : bytes(f.size)),
        h('td', {}, when(new Date(f.modified * 1000).toISOString())),
        h('td', {}, isDir ? '' : h('button', { type: 'button', class: 'small', 'aria-label': `Download ${f.name}`, onclick: () => download(folder, path).catch((e) => flash(e.message, 'error')) }, 'Download'), ' ',
          h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${f.name}`, onclick: async () => {
            if (!confirm(`Delete ${path}?`)) return;
            try { await api('DELETE', `/folders/${enc(folder)}/delete-files`, { files: [path], recursive: true }); await load(); } catch (e) { flash(e.message, 'error'); }
          } }, 'Delete')));
    }), { class: 'compact', empty: 'This folder is empty.' }));
  };
  const crumbs = [h('a', { href: `#/folders?name=${enc(folder)}` }, folder)];
  let acc = '';
  for (const part of (dir && dir !== '.' ? dir.split('/') : [])) {
    acc = join(acc, part);
    crumbs.push(' / ', h('a', { href: `#/folders?name=${enc(folder)}&path=${enc(acc)}` }, part));
  }
  replace(root, h('p', {}, h('a', { href: '#/folders' }, '← All folders')),
    h('h1', {}, 'Folder ', crumbs), listing, uploader(folder, dir, load), shareForm(folder));
  await load();
}

export async function foldersView(root) {
  const p = params();
  if (p.get('name')) return folderPanel(root, p.get('name'), p.get('path') || '.');
  const box = h('div', { id: 'folders' });
  const load = async () => {
    const folders = await api('GET', '/folders');
    replace(box, table(['Name', 'Host', 'Permission', 'Owner', 'Created', ''], folders.map((f) =>
      h('tr', { dataset: { folder: f.name } },
        h('td', {}, h('a', { href: `#/folders?name=${enc(f.name)}` }, f.name)),
        h('td', {}, f.host), h('td', {}, f.permission), h('td', {}, f.is_owner ? 'you' : (f.user_email || f.group_name || '')),
        h('td', {}, when(f.created_at)),
        h('td', {}, f.is_owner ? h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${f.name}`, onclick: async () => {
          if (!confirm(`Delete the folder ${f.name} and everything in it?`)) return;
          try { await api('DELETE', `/folders/${enc(f.name)}`); flash(`${f.name} is deleted.`); await load(); } catch (e) { flash(e.message, 'error'); }
        } }, 'Delete') : ''))), { empty: 'No folders yet.' }));
  };
  let hosts = { allowed: [], default: null };
  try { hosts = await api('GET', '/folders/_/hosts'); } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      replace(root, h('h1', {}, 'Storage folders'), h('p', { class: 'muted' }, 'This manager serves no storage folders.'));
      return null;
    }
    throw e;
  }
  replace(root, h('h1', {}, 'Storage folders'), createForm(hosts, load), h('h2', {}, 'Your folders'), box);
  await load();
  return null;
}
