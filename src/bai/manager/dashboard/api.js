// The API the CLI uses, called with the login cookie; every request that may change state
// carries the login's CSRF token (the manager refuses it otherwise).
let csrf = null;
export function setCsrf(token) { csrf = token; }

export class ApiError extends Error {
  constructor(status, problem) {
    const p = problem || {};
    super(p.msg || p.title || `HTTP ${status}`);
    this.status = status;
    this.title = p.title || `HTTP ${status}`;
    this.detail = p.msg || '';
    this.code = String(p.type || '').split('/').pop();
    this.field = p.data && typeof p.data === 'object' ? p.data.field : undefined;
  }
}

export async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  if (method !== 'GET' && method !== 'HEAD' && csrf) opts.headers['X-BAI-CSRF'] = csrf;
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

const SESSION_FIELDS = `id name type image status status_info status_data status_changed
  created_at scheduled_at terminated_at requested_slots occupying_slots access_key user_email
  service_ports mounts scaling_group result`;

export async function gql(query, variables) {
  const data = await api('POST', '/admin/gql', { query, variables });
  if (data && data.errors && data.errors.length) throw new ApiError(400, { title: data.errors[0].message });
  return data.data;
}

export function parseJson(v, fallback) {
  if (v == null) return fallback;
  if (typeof v !== 'string') return v;
  try { return JSON.parse(v); } catch { return fallback; }
}

function normalise(s) {
  s.status_data = parseJson(s.status_data, {}) || {};
  s.requested_slots = parseJson(s.requested_slots, {}) || {};
  s.occupying_slots = parseJson(s.occupying_slots, {}) || {};
  s.service_ports = parseJson(s.service_ports, []) || [];
  return s;
}

export async function listSessions({ status, limit = 50, offset = 0, accessKey } = {}) {
  const d = await gql(`query($limit:Int!,$offset:Int!,$status:String,$ak:String){
    compute_session_list(limit:$limit,offset:$offset,status:$status,access_key:$ak){
      total_count items{ ${SESSION_FIELDS} } } }`,
  { limit, offset, status: status || null, ak: accessKey || null });
  const list = d.compute_session_list;
  return { total: list.total_count, items: list.items.map(normalise) };
}

export async function getSession(id) {
  const d = await gql(`query($id:UUID!){ compute_session(id:$id){ ${SESSION_FIELDS} } }`, { id });
  return d.compute_session ? normalise(d.compute_session) : null;
}
