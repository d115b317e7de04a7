// The gateway's JSON API: the session token (kept in this tab's sessionStorage), requests
// with `Authorization: Bearer`, and errors as thrown ApiError carrying the API's message.

const TOKEN_KEY = 'tianzhong.console.token';

/** A refused or failed request. `status` is 0 when the gateway did not answer. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return null;
  }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) {
    // The session then lasts until reload only.
  }
}

let onUnauthorized = () => {};

/** Called when the gateway answers 401 to a request made with a token. */
export function setUnauthorizedHandler(f) {
  onUnauthorized = f;
}

/** Headers for an authenticated request. */
export function authHeaders(extra = {}) {
  const h = { ...extra };
  const tk = token();
  if (tk) h.Authorization = `Bearer ${tk}`;
  return h;
}

/**
 * Sends a request and returns the parsed JSON body; throws ApiError with the API's
 * `{"error"}` message (or the status text) otherwise.
 */
export async function request(method, path, body) {
  const init = { method, headers: authHeaders({ Accept: 'application/json' }), cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, e && e.message ? e.message : String(e));
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = null;
    }
  }
  if (!response.ok) {
    const message = (data && typeof data.error === 'string' && data.error) || text.trim() || response.statusText;
    if (response.status === 401 && path !== '/api/login' && token()) onUnauthorized();
    throw new ApiError(response.status, message);
  }
  return data;
}

export const get = (path) => request('GET', path);
export const post = (path, body) => request('POST', path, body);
export const put = (path, body) => request('PUT', path, body);

/** Query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const ROLES = ['viewer', 'operator', 'engineer', 'admin'];

/** Whether `role` is at least `need`. */
export function atLeast(role, need) {
  return ROLES.indexOf(role) >= ROLES.indexOf(need) && ROLES.indexOf(need) >= 0;
}
