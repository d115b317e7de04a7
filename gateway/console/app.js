// The operator console: login, overview, alarms, threshold rules, where the data went, and node
// pages, kept live by the gateway's event stream. Views are hash routes: #/overview, #/alarms,
// #/rules, #/data, #/node/{id}.

import { h, replace, byTestId, idPart } from './dom.js';
import { t, has, lang, setLang, onLangChange, translateStatic, label, locale } from './i18n.js';
import * as api from './api.js';
import { follow } from './stream.js';
import { trendChart } from './chart.js';

// ---------------------------------------------------------------------------------------------
// Vocabulary

const LEVELS = ['normal', 'blue', 'yellow', 'orange', 'red'];
const ALARM_LEVELS = ['blue', 'yellow', 'orange', 'red'];
/** China's four warning colours (IV blue … I red). */
const LEVEL_COLOURS = { blue: '#0070C0', yellow: '#FFD200', orange: '#FF7F00', red: '#E60012' };
const STATES = [
  'active_unacked',
  'active_acked',
  'cleared_unacked',
  'latched_unacked',
  'latched_acked',
  'shelved',
  'out_of_service',
];
/** States an operator may acknowledge. */
const ACKABLE = new Set(['active_unacked', 'cleared_unacked', 'latched_unacked']);
/** States an operator may shelve. */
const SHELVABLE = new Set([
  'active_unacked',
  'active_acked',
  'cleared_unacked',
  'latched_unacked',
  'latched_acked',
]);
/** States whose level colours a channel (as the API's channel `level`). */
const COLOURING = new Set(['active_unacked', 'active_acked', 'latched_unacked', 'latched_acked']);
const TREND_HOURS = [0.25, 1, 6, 24, 72, 168];
/** How often the data page (and a node page's completeness figures) are fetched again, ms. */
const COMPLETENESS_REFRESH_MS = 3000;
/** A sink's backlog rising at this many refreshes in a row is shown as growing. */
const BACKLOG_RISES = 3;
/** Backlog samples older than this are forgotten, ms. */
const BACKLOG_MEMORY_MS = 120000;

const levelRank = (l) => Math.max(0, LEVELS.indexOf(l));
const alarmKey = (a) => `${a.node}/${a.ch}/${a.condition}`;

// ---------------------------------------------------------------------------------------------
// State

const state = {
  me: null,
  gateway: '',
  sites: [],
  nodes: new Map(),
  alarms: new Map(),
  /** Value and time of each alarm's last transition seen live, by alarm key. */
  alarmLive: new Map(),
  rules: null,
  history: null,
  filters: { state: '', level: '', node: '' },
  route: { view: '', node: '' },
  trend: { ch: null, hours: 6, data: null, node: '' },
  editing: null,
  /** The last `GET /api/completeness` reply, its time, or the error that came instead. */
  completeness: null,
  completenessAt: 0,
  completenessError: null,
  /** The last `GET /api/outbox/dead-letters` reply (engineers), or `{ error }`. */
  deadLetters: null,
  /** Each sink's backlog in batches at recent refreshes: [{ at, sinks: { name: behind } }]. */
  backlog: [],
  stopStream: null,
  timers: [],
};

// ---------------------------------------------------------------------------------------------
// Formatting

function fmtNumber(v, digits = 2) {
  if (v === null || v === undefined || !Number.isFinite(Number(v))) return t('common.none');
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(Number(v));
}

function fmtTime(ms) {
  if (!ms) return t('common.never');
  return new Intl.DateTimeFormat(locale(), {
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  }).format(ms);
}

function fmtAge(ms) {
  if (!ms) return t('common.never');
  // A device clock running ahead: its time, rather than a misleading "0 s ago".
  if (ms > Date.now() + 5000) return fmtTime(ms);
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return t('age.s', { n: s });
  if (s < 90 * 60) return t('age.min', { n: Math.round(s / 60) });
  if (s < 36 * 3600) return t('age.h', { n: Math.round(s / 3600) });
  return t('age.d', { n: Math.round(s / 86400) });
}

/** An element showing how long ago `ms` was, refreshed every second. */
function age(ms, testid) {
  return h('span', {
    class: 'age',
    'data-testid': testid,
    'data-age-ms': ms || '',
    title: ms ? fmtTime(ms) : '',
    text: fmtAge(ms),
  });
}

function refreshAges() {
  for (const el of document.querySelectorAll('[data-age-ms]')) {
    const ms = Number(el.dataset.ageMs);
    el.textContent = fmtAge(ms);
  }
}

function levelBadge(level, testid) {
  const l = LEVELS.includes(level) ? level : 'normal';
  return h('span', {
    class: `badge level-${l}`,
    'data-testid': testid,
    'data-level': l,
    text: t(`level.${l}`),
  });
}

function qualityText(q) {
  if (!q) return t('common.none');
  const key = String(q).toLowerCase();
  if (t(`quality.${key}`) !== `quality.${key}`) return t(`quality.${key}`);
  const cls = key.split(/[:\s_]/)[0];
  const word = t(`quality.${cls}`);
  return word === `quality.${cls}` ? q : `${word} (${q})`;
}

function qualityClass(q) {
  const cls = String(q || '').toLowerCase().split(/[:\s_]/)[0];
  return ['good', 'uncertain', 'bad'].includes(cls) ? `quality-${cls}` : '';
}

function channelOf(node, ch) {
  const n = state.nodes.get(node);
  return n && Array.isArray(n.channels) ? n.channels.find((c) => Number(c.ch) === Number(ch)) : undefined;
}

function channelName(node, ch) {
  const c = channelOf(node, ch);
  return c ? `${ch} · ${label(c, c.quantity)}` : String(ch);
}

function alarmName(a) {
  return `${a.node} / ${channelName(a.node, a.ch)} / ${t(`condition.${a.condition}`)}`;
}

function roleName(role) {
  return t(`role.${role}`);
}

/** A whole count with the language's digit grouping. */
function fmtCount(v) {
  return fmtNumber(v, 0);
}

function fmtBytes(b) {
  const n = Number(b);
  if (!Number.isFinite(n)) return t('common.none');
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${fmtNumber(v, i === 0 ? 0 : 1)} ${units[i]}`;
}

/** A sink's name in the current language when the dictionaries know it, else as configured. */
function sinkName(sink) {
  return has(`sink.${sink}`) ? t(`sink.${sink}`) : sink;
}

/** Why readings were dropped, in words. */
function dropReason(reason) {
  return has(`drop.${reason}`) ? t(`drop.${reason}`) : reason;
}

// ---------------------------------------------------------------------------------------------
// Toasts and errors

let toastTimer = null;

function toast(message, kind = 'info') {
  const el = byTestId('toast');
  el.textContent = message;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    el.hidden = true;
  }, kind === 'error' ? 10000 : 5000);
}

function errorText(e) {
  if (e instanceof api.ApiError) {
    if (e.status === 0) return t('error.network', { msg: e.message });
    return t('error.http', { status: e.status, msg: e.message });
  }
  return String(e && e.message ? e.message : e);
}

// ---------------------------------------------------------------------------------------------
// Session

function showLogin(message) {
  stopLive();
  state.me = null;
  byTestId('view').hidden = true;
  byTestId('nav').hidden = true;
  byTestId('session').hidden = true;
  byTestId('logout').hidden = true;
  byTestId('stream-status').hidden = true;
  byTestId('login-view').hidden = false;
  const err = byTestId('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  const user = byTestId('login-user');
  setTimeout(() => user.focus(), 0);
}

async function submitLogin(event) {
  event.preventDefault();
  const form = byTestId('login-form');
  const user = form.elements.user.value.trim();
  const password = form.elements.password.value;
  const button = byTestId('login-submit');
  const err = byTestId('login-error');
  err.hidden = true;
  button.disabled = true;
  button.textContent = t('login.busy');
  try {
    const r = await api.post('/api/login', { user, password });
    api.setToken(r.token);
    form.elements.password.value = '';
    await startSession({ user, role: r.role });
  } catch (e) {
    err.textContent = errorText(e);
    err.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = t('login.submit');
  }
}

/** Who is signed in: GET /api/me, or what the login said when the gateway has no /api/me. */
async function whoAmI(fallback) {
  try {
    const me = await api.get('/api/me');
    return { ...fallback, ...me };
  } catch (e) {
    if (e instanceof api.ApiError && e.status === 404 && fallback) return fallback;
    throw e;
  }
}

async function startSession(fromLogin) {
  const me = await whoAmI(fromLogin || rememberedMe());
  if (!me || !me.role) throw new api.ApiError(401, t('error.session'));
  state.me = me;
  try {
    sessionStorage.setItem('tianzhong.console.me', JSON.stringify({ user: me.user, role: me.role }));
  } catch (_) {
    // Only a fallback for gateways without /api/me.
  }
  if (me.gateway) state.gateway = me.gateway;
  byTestId('login-view').hidden = true;
  byTestId('view').hidden = false;
  byTestId('nav').hidden = false;
  byTestId('session').hidden = false;
  byTestId('logout').hidden = false;
  byTestId('stream-status').hidden = false;
  renderHeader();
  await Promise.allSettled([loadNodes(), loadAlarms()]);
  startLive();
  if (!location.hash || location.hash === '#' || location.hash === '#/') {
    location.hash = '#/overview';
  } else {
    route();
  }
}

function rememberedMe() {
  try {
    return JSON.parse(sessionStorage.getItem('tianzhong.console.me') || 'null');
  } catch (_) {
    return null;
  }
}

function hideToast() {
  clearTimeout(toastTimer);
  byTestId('toast').hidden = true;
}

function logout() {
  hideToast();
  api.setToken(null);
  try {
    sessionStorage.removeItem('tianzhong.console.me');
  } catch (_) {
    // Nothing remembered.
  }
  state.nodes = new Map();
  state.alarms = new Map();
  state.alarmLive = new Map();
  state.rules = null;
  state.history = null;
  state.editing = null;
  state.completeness = null;
  state.completenessAt = 0;
  // Campaigns are engineers' business: nothing of them stays for the next user.
  stopCampaignRefresh();
  Object.assign(campaignView, { list: null, one: null, error: null });
  state.completenessError = null;
  state.deadLetters = null;
  state.backlog = [];
  replace(byTestId('view'));
  showLogin();
}

function renderHeader() {
  // The gateway's name when the API gives one, else the address it is reached at.
  byTestId('gateway-name').textContent = state.gateway || location.host;
  if (state.me) {
    byTestId('current-user').textContent = state.me.user || '';
    const role = byTestId('current-role');
    role.textContent = roleName(state.me.role);
    role.dataset.role = state.me.role;
  }
  const n = [...state.alarms.values()].filter((a) => ACKABLE.has(a.state)).length;
  const count = byTestId('alarm-count');
  count.textContent = n ? String(n) : '';
  count.hidden = !n;
  const top = [...state.alarms.values()]
    .filter((a) => ACKABLE.has(a.state))
    .reduce((m, a) => (levelRank(a.level) > levelRank(m) ? a.level : m), 'normal');
  count.className = `count level-${top}`;
  for (const a of document.querySelectorAll('nav.tabs a')) {
    a.classList.toggle('active', a.dataset.route === state.route.view);
  }
}

// ---------------------------------------------------------------------------------------------
// Data

function setNodes(reply) {
  const sites = Array.isArray(reply && reply.sites) ? reply.sites : [];
  state.sites = sites.map((s) => s.site);
  const nodes = new Map();
  for (const s of sites) {
    for (const n of s.nodes || []) nodes.set(n.node, { ...n, site: n.site || s.site });
  }
  state.nodes = nodes;
  if (reply && reply.gateway) state.gateway = reply.gateway;
}

async function loadNodes() {
  try {
    setNodes(await api.get('/api/nodes'));
  } catch (e) {
    if (!(e instanceof api.ApiError && e.status === 401)) toast(errorText(e), 'error');
  }
}

async function loadAlarms() {
  try {
    const r = await api.get('/api/alarms');
    const alarms = new Map();
    for (const a of r.alarms || []) alarms.set(alarmKey(a), a);
    state.alarms = alarms;
    recomputeLevels();
  } catch (e) {
    if (!(e instanceof api.ApiError && e.status === 401)) toast(errorText(e), 'error');
  }
}

async function loadRules() {
  const [rules, history] = await Promise.allSettled([
    api.get('/api/rules'),
    api.get('/api/rules/history'),
  ]);
  if (rules.status === 'fulfilled') state.rules = rules.value;
  else throw rules.reason;
  state.history = history.status === 'fulfilled' ? history.value : { error: history.reason };
}

/** Channel and node colours from the alarms known now. */
function recomputeLevels() {
  const byChannel = new Map();
  for (const a of state.alarms.values()) {
    if (!COLOURING.has(a.state)) continue;
    const k = `${a.node}/${a.ch}`;
    if (levelRank(a.level) > levelRank(byChannel.get(k))) byChannel.set(k, a.level);
  }
  for (const n of state.nodes.values()) {
    let top = 'normal';
    for (const c of n.channels || []) {
      c.level = byChannel.get(`${n.node}/${c.ch}`) || 'normal';
      if (levelRank(c.level) > levelRank(top)) top = c.level;
    }
    n.level = top;
  }
}

// ---------------------------------------------------------------------------------------------
// Live updates

function setStreamStatus(status, detail) {
  const el = byTestId('stream-status');
  el.dataset.status = status;
  el.className = `stream stream-${status}`;
  el.textContent =
    status === 'live'
      ? t('stream.live')
      : status === 'retry'
        ? t('stream.retry', { s: detail })
        : status === 'connecting'
          ? t('stream.connecting')
          : t('stream.off');
  el.dataset.detail = detail ?? '';
}

let reconcileTimer = null;

/** Fetches the alarm list again a little later (several transitions arrive together). */
function reconcileSoon(delay = 1500) {
  clearTimeout(reconcileTimer);
  reconcileTimer = setTimeout(async () => {
    await loadAlarms();
    alarmsChanged();
  }, delay);
}

function startLive() {
  stopLive();
  let first = true;
  state.stopStream = follow(['/api/stream', '/api/alarms/stream'], {
    onEvent: handleEvent,
    onStatus: (status, detail) => {
      if (status === 'unauthorized') {
        logout();
        showLogin(t('error.session'));
        return;
      }
      setStreamStatus(status, detail);
    },
    onOpen: () => {
      // After a reconnect, catch up with what happened while away.
      if (!first) {
        loadNodes().then(() => {
          recomputeLevels();
          dataChanged();
        });
        reconcileSoon(0);
      }
      first = false;
    },
  });
  state.timers.push(setInterval(refreshAges, 1000));
  state.timers.push(
    setInterval(async () => {
      await Promise.allSettled([loadNodes(), loadAlarms()]);
      dataChanged();
    }, 30000),
  );
}

function stopLive() {
  if (state.stopStream) state.stopStream();
  state.stopStream = null;
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  clearTimeout(reconcileTimer);
  stopCompletenessRefresh();
}

function handleEvent(e) {
  let data;
  try {
    data = JSON.parse(e.data);
  } catch (_) {
    return;
  }
  // Counted for tests and for the curious: data-readings-events, data-alarm-events.
  const counter = `${e.type.replace(/[^a-z]/g, '')}Events`;
  document.body.dataset[counter] = String(Number(document.body.dataset[counter] || 0) + 1);
  if (e.type === 'readings') onReadings(Array.isArray(data) ? data : [data]);
  else if (e.type === 'alarm') onAlarm(data);
  else if (e.type === 'lagged') {
    loadNodes().then(dataChanged);
    reconcileSoon(0);
  }
}

function onReadings(readings) {
  let unknown = false;
  for (const r of readings) {
    const n = state.nodes.get(r.node);
    const c = n && (n.channels || []).find((x) => Number(x.ch) === Number(r.ch));
    if (!c) {
      unknown = true;
      continue;
    }
    if (c.ts && r.ts < c.ts) continue;
    Object.assign(c, { value: r.value, quality: r.quality, quality_detail: r.quality_detail, ts: r.ts, seq: r.seq });
    if (r.unit) c.unit = r.unit;
    if (!n.last_seen || r.ts > n.last_seen) n.last_seen = r.ts;
    patchChannel(n, c);
    if (state.route.view === 'node' && state.route.node === r.node) liveTrendPoint(r);
  }
  if (unknown) refreshNodesSoon();
}

let nodesTimer = null;

/** A reading from a node or channel not known yet: the list of nodes is fetched again. */
function refreshNodesSoon() {
  if (nodesTimer) return;
  nodesTimer = setTimeout(async () => {
    nodesTimer = null;
    await loadNodes();
    recomputeLevels();
    dataChanged();
  }, 2000);
}

function onAlarm(ev) {
  if (!ev || !ev.node) return;
  const key = alarmKey(ev);
  state.alarmLive.set(key, { value: ev.value, at: ev.at, user: ev.user, comment: ev.comment });
  if (ev.state === 'normal') {
    state.alarms.delete(key);
  } else {
    state.alarms.set(key, {
      node: ev.node,
      ch: ev.ch,
      condition: ev.condition,
      state: ev.state,
      level: ev.level,
      side: ev.side ?? null,
      shelved_until: ev.until ?? null,
      changed_ms: ev.at ?? null,
    });
  }
  recomputeLevels();
  alarmsChanged();
  reconcileSoon();
}

// ---------------------------------------------------------------------------------------------
// Routing

function parseRoute() {
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  const [view, ...rest] = hash.split('/');
  if (view === 'node' && rest.length) return { view: 'node', node: rest.join('/') };
  if (view === 'campaigns' && rest.length) return { view: 'campaigns', node: rest.join('/') };
  if (['overview', 'alarms', 'rules', 'data', 'campaigns'].includes(view)) return { view, node: '' };
  return { view: 'overview', node: '' };
}

function route() {
  if (!state.me) return;
  const r = parseRoute();
  const changed = r.view !== state.route.view || r.node !== state.route.node;
  state.route = r;
  const dialog = byTestId('action-dialog');
  if (changed && dialog.open) {
    actionTarget = null;
    dialog.close();
  }
  if (changed && r.view === 'node' && state.trend.node !== r.node) {
    state.trend = { ch: null, hours: state.trend.hours, data: null, node: r.node };
  }
  renderHeader();
  renderView();
  if (r.view === 'data' || r.view === 'node') startCompletenessRefresh(changed);
  else stopCompletenessRefresh();
  if (r.view === 'campaigns') startCampaignRefresh();
  else stopCampaignRefresh();
}

function renderView() {
  const view = byTestId('view');
  view.dataset.view = state.route.view;
  switch (state.route.view) {
    case 'alarms':
      return renderAlarmsView(view);
    case 'rules':
      return renderRulesView(view);
    case 'node':
      return renderNodeView(view);
    case 'data':
      return renderDataView(view);
    case 'campaigns':
      return renderCampaignsView(view);
    default:
      return renderOverview(view);
  }
}

/** Values, nodes or alarms changed: views that show them are drawn again. */
function dataChanged() {
  renderHeader();
  if (state.route.view === 'overview') renderOverview(byTestId('view'));
  else if (state.route.view === 'alarms') fillAlarmTable();
  else if (state.route.view === 'node') fillNodeDetails();
}

function alarmsChanged() {
  dataChanged();
}

// ---------------------------------------------------------------------------------------------
// Overview

function channelRow(n, c) {
  const id = idPart(n.node, c.ch);
  return h(
    'tr',
    { class: `level-row-${c.level || 'normal'}`, 'data-testid': `channel-${id}` },
    h('td', { class: 'num', text: c.ch }),
    h('td', { 'data-testid': `label-${id}`, text: label(c, c.quantity) }),
    h('td', { class: 'num value', 'data-testid': `value-${id}`, text: fmtNumber(c.value) }),
    h('td', { class: 'unit', text: c.unit || '' }),
    h('td', {
      class: qualityClass(c.quality),
      'data-testid': `quality-${id}`,
      title: c.quality_detail || null,
      text: qualityText(c.quality),
    }),
    h('td', {}, levelBadge(c.level, `level-${id}`)),
    h('td', {}, age(c.ts, `ts-${id}`)),
  );
}

function channelTable(n) {
  return h(
    'table',
    { class: 'channels' },
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        ['channel.ch', 'channel.quantity', 'channel.value', 'channel.unit', 'channel.quality', 'channel.level', 'channel.time'].map(
          (k) => h('th', { text: t(k) }),
        ),
      ),
    ),
    h('tbody', {}, (n.channels || []).map((c) => channelRow(n, c))),
  );
}

/** Updates one channel's cells in place (live readings arrive many times a second). */
function patchChannel(n, c) {
  const id = idPart(n.node, c.ch);
  const value = byTestId(`value-${id}`);
  const text = fmtNumber(c.value);
  if (value && value.textContent !== text) {
    value.textContent = text;
    // A changed value is highlighted briefly (the animation restarted).
    value.classList.remove('flash');
    void value.offsetWidth;
    value.classList.add('flash');
  }
  const q = byTestId(`quality-${id}`);
  if (q) {
    q.textContent = qualityText(c.quality);
    q.className = qualityClass(c.quality);
    q.title = c.quality_detail || '';
  }
  const ts = byTestId(`ts-${id}`);
  if (ts) {
    ts.dataset.ageMs = c.ts || '';
    ts.textContent = fmtAge(c.ts);
    ts.title = c.ts ? fmtTime(c.ts) : '';
  }
  const seen = byTestId(`last-seen-${idPart(n.node)}`);
  if (seen) {
    seen.dataset.ageMs = n.last_seen || '';
    seen.textContent = fmtAge(n.last_seen);
    seen.title = n.last_seen ? fmtTime(n.last_seen) : '';
  }
}

function nodeCard(n) {
  const id = idPart(n.node);
  return h(
    'article',
    { class: `panel node-card level-border-${n.level || 'normal'}`, 'data-testid': `node-card-${id}` },
    h(
      'header',
      {},
      h('a', {
        href: `#/node/${encodeURIComponent(n.node)}`,
        class: 'node-link',
        'data-testid': `node-link-${id}`,
        title: t('overview.open_node', { node: n.node }),
        text: n.node,
      }),
      n.group ? h('span', { class: 'tag', text: `${t('overview.group')}: ${n.group}` }) : null,
      h('span', { class: 'tag', text: t(`source.${n.source}`) }),
      levelBadge(n.level, `node-level-${id}`),
      h(
        'span',
        { class: 'seen' },
        `${t('overview.last_seen')}: `,
        age(n.last_seen, `last-seen-${id}`),
      ),
      n.health && n.health.quarantined ? h('span', { class: 'tag warn', text: t('node.quarantined') }) : null,
    ),
    channelTable(n),
  );
}

function renderOverview(view) {
  const bySite = new Map();
  for (const n of state.nodes.values()) {
    if (!bySite.has(n.site)) bySite.set(n.site, []);
    bySite.get(n.site).push(n);
  }
  const sites = [...bySite.keys()].sort();
  replace(
    view,
    h(
      'div',
      { 'data-testid': 'overview', class: 'overview' },
      h('h1', { text: t('overview.title') }),
      sites.length ? null : h('p', { class: 'empty', text: t('overview.empty') }),
      sites.map((site) =>
        h(
          'section',
          { class: 'site', 'data-testid': `site-${idPart(site)}` },
          h('h2', { text: t('overview.site', { site }) }),
          h(
            'div',
            { class: 'node-grid' },
            bySite
              .get(site)
              .sort((a, b) => levelRank(b.level) - levelRank(a.level) || a.node.localeCompare(b.node))
              .map(nodeCard),
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Alarms

function filterSelect(name, options) {
  return h(
    'label',
    {},
    h('span', { text: t(`alarms.filter.${name}`) }),
    h(
      'select',
      {
        'data-testid': `filter-${name}`,
        onchange: (e) => {
          state.filters[name] = e.target.value;
          fillAlarmTable();
        },
      },
      options.map(([value, text]) => h('option', { value, selected: state.filters[name] === value, text })),
    ),
  );
}

function renderAlarmsView(view) {
  const nodes = [...new Set([...state.nodes.keys(), ...[...state.alarms.values()].map((a) => a.node)])].sort();
  replace(
    view,
    h(
      'div',
      { class: 'alarms-view' },
      h('h1', { text: t('alarms.title') }),
      h(
        'div',
        { class: 'filters panel', 'data-testid': 'alarm-filters' },
        filterSelect('state', [['', t('common.all')], ...STATES.map((st) => [st, t(`state.${st}`)])]),
        filterSelect('level', [['', t('common.any')], ...ALARM_LEVELS.map((l) => [l, t(`level.${l}`)])]),
        filterSelect('node', [['', t('common.all')], ...nodes.map((n) => [n, n])]),
        h('span', { class: 'muted', 'data-testid': 'alarm-total' }),
      ),
      h('div', { 'data-testid': 'alarm-list-holder' }),
    ),
  );
  fillAlarmTable();
}

function sortedAlarms(filter = () => true) {
  return [...state.alarms.values()]
    .filter(filter)
    .sort(
      (a, b) =>
        Number(ACKABLE.has(b.state)) - Number(ACKABLE.has(a.state)) ||
        levelRank(b.level) - levelRank(a.level) ||
        a.node.localeCompare(b.node) ||
        a.ch - b.ch ||
        a.condition.localeCompare(b.condition),
    );
}

function actionButton(kind, a) {
  const role = state.me ? state.me.role : 'viewer';
  let why = '';
  if (!api.atLeast(role, 'operator')) why = t('alarms.need_operator', { role: roleName(role) });
  else if (kind === 'ack' && !ACKABLE.has(a.state)) why = t('alarms.cannot_ack', { state: t(`state.${a.state}`) });
  else if (kind === 'shelve' && !SHELVABLE.has(a.state)) {
    why = t('alarms.cannot_shelve', { state: t(`state.${a.state}`) });
  }
  const button = h('button', {
    type: 'button',
    class: kind === 'ack' ? 'primary small' : 'small',
    'data-testid': `${kind}-${idPart(a.node, a.ch, a.condition)}`,
    disabled: Boolean(why),
    title: why || null,
    'aria-disabled': why ? 'true' : null,
    text: t(kind === 'ack' ? 'alarms.ack' : 'alarms.shelve'),
    onclick: () => openActionDialog(kind, a),
  });
  // A disabled button gets no pointer events in some browsers: the wrapper shows the reason.
  return h('span', { class: 'tip', title: why || null }, button);
}

function alarmTable(list, testid) {
  if (!list.length) return h('p', { class: 'empty', 'data-testid': `${testid}-empty`, text: t('alarms.empty') });
  return h(
    'table',
    { class: 'alarms', 'data-testid': testid },
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        ['level', 'node', 'channel', 'condition', 'state', 'value', 'since', 'actions'].map((k) =>
          h('th', { text: t(`alarms.col.${k}`) }),
        ),
      ),
    ),
    h(
      'tbody',
      {},
      list.map((a) => {
        const live = state.alarmLive.get(alarmKey(a));
        const c = channelOf(a.node, a.ch);
        const value = live && live.value !== undefined && live.value !== null ? live.value : c && c.value;
        return h(
          'tr',
          {
            class: `alarm-row level-row-${a.level} ${ACKABLE.has(a.state) ? 'unacked' : ''}`,
            'data-testid': `alarm-row-${idPart(a.node, a.ch, a.condition)}`,
            'data-level': a.level,
            'data-state': a.state,
          },
          h('td', {}, levelBadge(a.level)),
          h(
            'td',
            {},
            h('a', { href: `#/node/${encodeURIComponent(a.node)}`, text: a.node }),
          ),
          h('td', { text: channelName(a.node, a.ch) }),
          h('td', {
            text: a.side
              ? t('alarms.with_side', { c: t(`condition.${a.condition}`), s: t(`side.${a.side}`) })
              : t(`condition.${a.condition}`),
          }),
          h(
            'td',
            { 'data-testid': `alarm-state-${idPart(a.node, a.ch, a.condition)}` },
            t(`state.${a.state}`),
            a.shelved_until ? h('div', { class: 'muted', text: t('alarms.shelved_until', { t: fmtTime(a.shelved_until) }) }) : null,
          ),
          h('td', { class: 'num', text: `${fmtNumber(value)} ${(c && c.unit) || ''}` }),
          h(
            'td',
            {},
            // What the stream brought, else when the gateway says the alarm last changed (a
            // list opened after the fact has seen none of its transitions live).
            (live && live.at) || a.changed_ms
              ? age((live && live.at) || a.changed_ms, `alarm-changed-${idPart(a.node, a.ch, a.condition)}`)
              : t('common.none'),
          ),
          h('td', { class: 'actions' }, actionButton('ack', a), actionButton('shelve', a)),
        );
      }),
    ),
  );
}

function fillAlarmTable() {
  const holder = byTestId('alarm-list-holder');
  if (!holder) return;
  const f = state.filters;
  const list = sortedAlarms(
    (a) =>
      (!f.state || a.state === f.state) &&
      (!f.level || levelRank(a.level) >= levelRank(f.level)) &&
      (!f.node || a.node === f.node),
  );
  replace(holder, alarmTable(list, 'alarm-list'));
  const total = byTestId('alarm-total');
  if (total) total.textContent = t('alarms.count', { n: list.length });
}

// The acknowledge / shelve form.

let actionTarget = null;

function openActionDialog(kind, a) {
  actionTarget = { kind, alarm: a };
  const dialog = byTestId('action-dialog');
  dialog.dataset.kind = kind;
  byTestId('action-title').textContent = t(kind === 'ack' ? 'action.ack.title' : 'action.shelve.title', {
    alarm: alarmName(a),
  });
  byTestId('action-comment').value = '';
  byTestId('action-minutes').value = '60';
  byTestId('action-minutes-field').hidden = kind !== 'shelve';
  byTestId('action-error').hidden = true;
  const submit = byTestId('action-submit');
  submit.disabled = false;
  submit.textContent = t(kind === 'ack' ? 'action.submit.ack' : 'action.submit.shelve');
  dialog.showModal();
  byTestId('action-comment').focus();
}

async function submitAction(event) {
  event.preventDefault();
  if (!actionTarget) return;
  const { kind, alarm } = actionTarget;
  const comment = byTestId('action-comment').value.trim();
  const err = byTestId('action-error');
  const fail = (message) => {
    err.textContent = message;
    err.hidden = false;
  };
  if (!comment) return fail(t('action.need_comment'));
  const body = { node: alarm.node, ch: Number(alarm.ch), condition: alarm.condition, comment };
  if (kind === 'shelve') {
    const minutes = Number(byTestId('action-minutes').value);
    if (!Number.isFinite(minutes) || minutes <= 0) return fail(t('action.need_minutes'));
    body.minutes = minutes;
  }
  const submit = byTestId('action-submit');
  submit.disabled = true;
  try {
    const r = await api.post(kind === 'ack' ? '/api/alarms/ack' : '/api/alarms/shelve', body);
    byTestId('action-dialog').close();
    actionTarget = null;
    if (r && r.node) onAlarm(r);
    toast(t(kind === 'ack' ? 'action.done.ack' : 'action.done.shelve', { alarm: alarmName(alarm) }), 'ok');
  } catch (e) {
    fail(errorText(e));
  } finally {
    submit.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Threshold rules

function ruleApplies(rule) {
  const sel = rule.selector || {};
  if (sel.node !== undefined && sel.node !== null) return t('rules.selector.node', { node: sel.node, ch: sel.ch });
  const parts = [];
  if (sel.quantity) parts.push(t('rules.selector.quantity', { q: quantityLabel(sel.quantity) }));
  if (sel.site) parts.push(t('rules.selector.site', { site: sel.site }));
  if (sel.group) parts.push(t('rules.selector.group', { group: sel.group }));
  return parts.join(', ') || t('rules.selector.everywhere');
}

/** A quantity's label as some channel of the API gave it, else its key. */
function quantityLabel(q) {
  for (const n of state.nodes.values()) {
    const c = (n.channels || []).find((x) => x.quantity === q);
    if (c) return label(c, q);
  }
  return q;
}

function setPointsText(side, unit) {
  if (!side) return t('common.none');
  const items = ALARM_LEVELS.filter((l) => side[l] !== null && side[l] !== undefined).map((l) =>
    h('span', { class: `sp level-text-${l}`, title: t(`level.${l}`), text: fmtNumber(side[l], 4) }),
  );
  if (!items.length) return t('common.none');
  return h('span', {}, items, unit ? h('span', { class: 'unit', text: ` ${unit}` }) : null);
}

function renderRulesView(view) {
  replace(
    view,
    h(
      'div',
      { class: 'rules-view' },
      h('h1', { text: t('rules.title') }),
      h('p', { class: 'error', 'data-testid': 'rules-error', hidden: true }),
      h('p', { class: 'ok', 'data-testid': 'rule-message', hidden: true }),
      h('div', { 'data-testid': 'rule-editor-holder' }),
      h('div', { 'data-testid': 'rules-holder' }, h('p', { class: 'muted', text: t('common.loading') })),
      h('h2', { text: t('rules.history') }),
      h('div', { 'data-testid': 'history-holder' }),
    ),
  );
  if (state.rules) fillRules();
  reloadRules();
}

async function reloadRules() {
  try {
    await loadRules();
    if (state.route.view !== 'rules') return;
    byTestId('rules-error').hidden = true;
    fillRules();
  } catch (e) {
    const err = byTestId('rules-error');
    if (err) {
      err.textContent = errorText(e);
      err.hidden = false;
    }
  }
}

function fillRules() {
  const holder = byTestId('rules-holder');
  if (!holder || !state.rules) return;
  const rules = state.rules.rules || [];
  const canEdit = api.atLeast(state.me.role, 'engineer');
  replace(
    holder,
    h('p', { class: 'muted', 'data-testid': 'rules-version', 'data-version': state.rules.version, text: t('rules.version', { v: state.rules.version }) }),
    h(
      'table',
      { class: 'rules', 'data-testid': 'rules-table' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          ['name', 'applies', 'high', 'low', 'deadband', 'delays'].map((k) => h('th', { text: t(`rules.col.${k}`) })),
          h('th', {}),
        ),
      ),
      h(
        'tbody',
        {},
        rules.map((r) =>
          h(
            'tr',
            {
              'data-testid': `rule-row-${idPart(r.name)}`,
              'data-name': r.name,
              class: state.editing && state.editing.name === r.name ? 'selected' : '',
            },
            h('td', {}, h('strong', { text: r.name }), r.source ? h('div', { class: 'muted small', text: r.source }) : null),
            h('td', { text: ruleApplies(r) }),
            h('td', {}, setPointsText(r.high, r.unit)),
            h('td', {}, setPointsText(r.low, r.unit)),
            h('td', { class: 'num', text: fmtNumber(r.deadband, 4) }),
            h('td', { class: 'num', text: `${fmtNumber(r.on_delay_s, 1)} / ${fmtNumber(r.off_delay_s, 1)}` }),
            h(
              'td',
              {},
              h('button', {
                type: 'button',
                class: 'small',
                'data-testid': `rule-edit-${idPart(r.name)}`,
                text: canEdit ? t('rules.edit') : t('rules.view'),
                onclick: () => openRuleEditor(r.name),
              }),
            ),
          ),
        ),
      ),
    ),
  );
  fillHistory();
  if (state.editing) fillRuleEditor();
}

function openRuleEditor(name) {
  state.editing = { name, base: state.rules.version };
  byTestId('rule-message').hidden = true;
  fillRules();
  fillRuleEditor(true);
  window.scrollTo({ top: 0 });
}

function numberInput(testid, value, disabled, title) {
  return h('input', {
    type: 'text',
    inputmode: 'decimal',
    'data-testid': testid,
    value: value === null || value === undefined ? '' : String(value),
    disabled,
    title,
    placeholder: t('rules.editor.empty'),
  });
}

/** Draws the editor of the rule being edited, unless it is shown already (`force`: anyway). */
function fillRuleEditor(force = false) {
  const holder = byTestId('rule-editor-holder');
  if (!holder || !state.editing) return;
  const rule = (state.rules.rules || []).find((r) => r.name === state.editing.name);
  if (!rule) {
    state.editing = null;
    replace(holder);
    return;
  }
  const shown = byTestId('rule-editor');
  if (!force && shown && shown.dataset.name === rule.name && Number(shown.dataset.base) === state.editing.base) return;
  const role = state.me.role;
  const canEdit = api.atLeast(role, 'engineer');
  const why = canEdit ? null : t('rules.need_engineer', { role: roleName(role) });
  const unit = rule.unit ? ` (${rule.unit})` : '';
  const sideRow = (side) =>
    h(
      'fieldset',
      { class: 'setpoints' },
      h('legend', { text: t(`rules.editor.${side}`) + unit }),
      ALARM_LEVELS.map((l) =>
        h(
          'label',
          { class: `sp-field level-edge-${l}` },
          h('span', { text: t(`level.${l}`) }),
          numberInput(`rule-${side}-${l}`, rule[side] ? rule[side][l] : null, !canEdit, why),
        ),
      ),
    );
  replace(
    holder,
    h(
      'form',
      {
        class: 'panel rule-editor',
        'data-testid': 'rule-editor',
        'data-name': rule.name,
        'data-base': state.editing.base,
        novalidate: true,
        onsubmit: saveRule,
      },
      h('h2', { text: t('rules.editor.title', { name: rule.name }) }),
      h('p', { class: 'muted' }, rule.source ? `${t('rules.editor.source')}: ${rule.source} · ` : '', ruleApplies(rule), ' · ', t('rules.editor.base', { v: state.editing.base })),
      why ? h('p', { class: 'notice', 'data-testid': 'rule-readonly', text: why }) : null,
      sideRow('high'),
      sideRow('low'),
      h(
        'div',
        { class: 'row' },
        h('label', {}, h('span', { text: t('rules.editor.deadband') + unit }), numberInput('rule-deadband', rule.deadband, !canEdit, why)),
        h('label', {}, h('span', { text: t('rules.editor.on_delay') }), numberInput('rule-on-delay', rule.on_delay_s, !canEdit, why)),
        h('label', {}, h('span', { text: t('rules.editor.off_delay') }), numberInput('rule-off-delay', rule.off_delay_s, !canEdit, why)),
      ),
      h(
        'label',
        { class: 'wide' },
        h('span', { text: t('rules.editor.reason') }),
        h('input', {
          type: 'text',
          'data-testid': 'rule-reason',
          placeholder: t('rules.editor.reason.placeholder'),
          disabled: !canEdit,
          title: why,
        }),
      ),
      h('div', { class: 'error', 'data-testid': 'rule-error', role: 'alert', hidden: true }),
      h(
        'div',
        { class: 'buttons' },
        h('button', {
          type: 'button',
          class: 'ghost',
          'data-testid': 'rule-cancel',
          text: t('common.close'),
          onclick: () => {
            state.editing = null;
            replace(holder);
            fillRules();
          },
        }),
        h(
          'span',
          { class: 'tip', title: why },
          h('button', {
            type: 'submit',
            class: 'primary',
            'data-testid': 'rule-save',
            disabled: !canEdit,
            title: why,
            text: t('common.save'),
          }),
        ),
      ),
    ),
  );
}

function readNumber(testid, field, errors, nullable) {
  const raw = byTestId(testid).value.trim().replace(',', '.');
  if (raw === '') {
    if (nullable) return null;
    errors.push(t('rules.editor.not_number', { field }));
    return undefined;
  }
  const v = Number(raw);
  if (!Number.isFinite(v)) {
    errors.push(t('rules.editor.not_number', { field }));
    return undefined;
  }
  return v;
}

function showRuleError(message, conflict) {
  const err = byTestId('rule-error');
  replace(err, ...(Array.isArray(message) ? message : [message]));
  err.dataset.kind = conflict ? 'conflict' : 'invalid';
  err.hidden = false;
  err.scrollIntoView({ block: 'nearest' });
}

async function saveRule(event) {
  event.preventDefault();
  const original = (state.rules.rules || []).find((r) => r.name === state.editing.name);
  if (!original) return;
  const rule = JSON.parse(JSON.stringify(original));
  const errors = [];
  for (const side of ['high', 'low']) {
    rule[side] = rule[side] || {};
    for (const l of ALARM_LEVELS) {
      rule[side][l] = readNumber(`rule-${side}-${l}`, `${t(`rules.editor.${side}`)} ${t(`level.${l}`)}`, errors, true);
    }
  }
  rule.deadband = readNumber('rule-deadband', t('rules.editor.deadband'), errors, false);
  rule.on_delay_s = readNumber('rule-on-delay', t('rules.editor.on_delay'), errors, false);
  rule.off_delay_s = readNumber('rule-off-delay', t('rules.editor.off_delay'), errors, false);
  const reason = byTestId('rule-reason').value.trim();
  if (!reason) errors.push(t('rules.editor.need_reason'));
  if (errors.length) {
    showRuleError(h('ul', {}, errors.map((e) => h('li', { text: e }))));
    return;
  }
  const save = byTestId('rule-save');
  save.disabled = true;
  const base = state.editing.base;
  try {
    const r = await api.put(`/api/rules/${encodeURIComponent(original.name)}`, { base_version: base, rule, reason });
    state.editing = null;
    replace(byTestId('rule-editor-holder'));
    await reloadRules();
    const msg = byTestId('rule-message');
    msg.textContent = t('rules.editor.saved', { v: r && r.version !== undefined ? r.version : state.rules.version });
    msg.hidden = false;
    toast(msg.textContent, 'ok');
  } catch (e) {
    save.disabled = false;
    if (e instanceof api.ApiError && e.status === 409) {
      showRuleError(
        [
          h('p', { text: t('rules.editor.conflict', { mine: base }) }),
          h('p', { class: 'muted', text: e.message }),
          h('button', {
            type: 'button',
            'data-testid': 'rule-reload',
            text: t('common.reload'),
            onclick: async () => {
              await reloadRules();
              if (state.editing) {
                state.editing.base = state.rules.version;
                fillRuleEditor(true);
              }
            },
          }),
        ],
        true,
      );
    } else if (e instanceof api.ApiError && e.status === 400) {
      showRuleError([h('p', { text: t('rules.editor.invalid') }), h('pre', { text: e.message })]);
    } else {
      showRuleError(errorText(e));
    }
  }
}

function ruleDiff(oldRule, newRule) {
  if (!oldRule || !newRule) return '';
  const out = [];
  for (const side of ['high', 'low']) {
    for (const l of ALARM_LEVELS) {
      const a = oldRule[side] ? oldRule[side][l] : null;
      const b = newRule[side] ? newRule[side][l] : null;
      if ((a ?? null) !== (b ?? null)) {
        out.push(`${t(`rules.editor.${side}`).split(' (')[0].split('（')[0]} ${t(`level.${l}`)}: ${fmtNumber(a, 4)} → ${fmtNumber(b, 4)}`);
      }
    }
  }
  for (const [k, name] of [
    ['deadband', 'rules.editor.deadband'],
    ['on_delay_s', 'rules.editor.on_delay'],
    ['off_delay_s', 'rules.editor.off_delay'],
  ]) {
    if (oldRule[k] !== newRule[k]) out.push(`${t(name)}: ${fmtNumber(oldRule[k], 4)} → ${fmtNumber(newRule[k], 4)}`);
  }
  return out.join('; ');
}

function fillHistory() {
  const holder = byTestId('history-holder');
  if (!holder) return;
  const hist = state.history;
  if (!hist) return replace(holder, h('p', { class: 'muted', text: t('common.loading') }));
  if (hist.error) return replace(holder, h('p', { class: 'error', text: errorText(hist.error) }));
  const changes = hist.changes || [];
  if (!changes.length) {
    return replace(holder, h('p', { class: 'muted', 'data-testid': 'rules-history-empty', text: t('rules.history.empty') }));
  }
  replace(
    holder,
    h(
      'table',
      { class: 'history', 'data-testid': 'rules-history' },
      h(
        'thead',
        {},
        h('tr', {}, ['version', 'at', 'user', 'action', 'rule', 'changes', 'reason'].map((k) => h('th', { text: t(`rules.history.col.${k}`) }))),
      ),
      h(
        'tbody',
        {},
        changes.map((c) =>
          h(
            'tr',
            { 'data-testid': `history-${c.version}` },
            h('td', { class: 'num', text: c.version }),
            h('td', { text: fmtTime(c.at) }),
            h('td', { text: c.user }),
            h('td', { text: t(`rules.action.${c.action}`) }),
            h('td', { text: c.rule }),
            h('td', { class: 'small', text: ruleDiff(c.old, c.new) }),
            h('td', { text: c.reason }),
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Where the data went: the outbox, each node's account from sample to sink, dead letters

let completenessTimer = null;
let completenessBusy = false;

/** Fetches the completeness figures now (`now`) and then every few seconds while shown. */
function startCompletenessRefresh(now = true) {
  if (!completenessTimer) {
    completenessTimer = setInterval(refreshCompleteness, COMPLETENESS_REFRESH_MS);
    refreshCompleteness();
  } else if (now) {
    refreshCompleteness();
  }
}

function stopCompletenessRefresh() {
  clearInterval(completenessTimer);
  completenessTimer = null;
}

async function refreshCompleteness() {
  if (completenessBusy || !state.me) return;
  completenessBusy = true;
  const letters = state.route.view === 'data' && api.atLeast(state.me.role, 'engineer');
  try {
    const [c, d] = await Promise.allSettled([
      api.get('/api/completeness'),
      letters ? api.get('/api/outbox/dead-letters') : Promise.resolve(null),
    ]);
    if (!state.me) return;
    if (c.status === 'fulfilled') {
      state.completeness = c.value;
      state.completenessAt = Date.now();
      state.completenessError = null;
      noteBacklog(c.value);
    } else {
      state.completenessError = c.reason;
    }
    if (letters) state.deadLetters = d.status === 'fulfilled' ? d.value : { error: d.reason };
  } finally {
    completenessBusy = false;
  }
  if (state.route.view === 'data') fillDataView();
  else if (state.route.view === 'node') fillNodeCompleteness();
}

/** Remembers each sink's backlog, to tell a growing one from one that keeps up. */
function noteBacklog(reply) {
  const o = reply && reply.outbox;
  if (!o) return;
  const now = Date.now();
  const sinks = {};
  for (const k of o.sinks || []) sinks[k.sink] = Number(k.behind_batches) || 0;
  state.backlog.push({ at: now, sinks });
  state.backlog = state.backlog.filter((x) => now - x.at <= BACKLOG_MEMORY_MS).slice(-(BACKLOG_RISES + 8));
}

/** A sink's backlog change since the previous refresh, and whether it rose at each of the last few. */
function backlogTrend(sink) {
  const seen = state.backlog.filter((x) => sink in x.sinks).map((x) => x.sinks[sink]);
  const delta = seen.length >= 2 ? seen[seen.length - 1] - seen[seen.length - 2] : null;
  const recent = seen.slice(-(BACKLOG_RISES + 1));
  const growing = recent.length === BACKLOG_RISES + 1 && recent.every((v, i) => i === 0 || v > recent[i - 1]);
  return { delta, growing };
}

const sum = (obj) => Object.values(obj || {}).reduce((a, b) => a + (Number(b) || 0), 0);

/** The sinks to show: the outbox's, then any other a node's counts name. */
function sinkNames(reply) {
  const names = [];
  const add = (n) => {
    if (!names.includes(n)) names.push(n);
  };
  for (const k of (reply && reply.outbox && reply.outbox.sinks) || []) add(k.sink);
  const extra = new Set();
  for (const a of (reply && reply.nodes) || []) {
    for (const k of Object.keys(a.delivered || {})) extra.add(k);
    for (const k of Object.keys(a.dead_lettered || {})) extra.add(k);
  }
  [...extra].sort().forEach(add);
  return names;
}

/** What is wrong with a node's account: missing samples, drops, dead letters. */
function accountProblems(a) {
  return {
    missing: Number(a.missing) > 0,
    dropped: sum(a.dropped) > 0,
    dead: sum(a.dead_lettered) > 0,
  };
}

/** Missing samples as a share of the samples made ("p % of samples made"), or ''. */
function missingShare(a) {
  const missing = Number(a.missing) || 0;
  const made = (Number(a.samples) || 0) + missing;
  if (!missing || !made) return '';
  return t('data.missing.share', { p: fmtNumber((missing / made) * 100, missing / made < 0.001 ? 3 : 1) });
}

/** ["reason n", …] from counts by key. */
function breakdown(counts, name) {
  return Object.entries(counts || {})
    .filter(([, n]) => Number(n) > 0)
    .map(([k, n]) => `${name(k)} ${fmtCount(n)}`);
}

/**
 * A table cell with a count, its raw value in `data-value`, highlighted when `warn`; `detail`:
 * a line or lines of small print below.
 */
function countCell(value, testid, warn = false, detail = []) {
  const lines = (Array.isArray(detail) ? detail : [detail]).filter(Boolean);
  return h(
    'td',
    { class: ['num', warn ? 'warn-cell' : ''], 'data-testid': testid, 'data-value': Number(value) || 0 },
    fmtCount(value || 0),
    lines.map((l) => h('div', { class: 'small muted', text: l })),
  );
}

function renderDataView(view) {
  replace(
    view,
    h(
      'div',
      { class: 'data-view', 'data-testid': 'data-view' },
      h('h1', { text: t('data.title') }),
      h('p', { class: 'muted intro', text: t('data.intro') }),
      h('p', { class: 'error', 'data-testid': 'data-error', hidden: true }),
      h(
        'section',
        { class: 'panel' },
        h('h2', { text: t('data.outbox') }),
        h('div', { 'data-testid': 'outbox-holder' }, h('p', { class: 'muted', text: t('common.loading') })),
      ),
      h(
        'section',
        { class: 'panel' },
        h('h2', { text: t('data.nodes') }),
        h('p', { class: 'muted small', text: t('data.nodes.explain') }),
        h('div', { 'data-testid': 'completeness-holder' }, h('p', { class: 'muted', text: t('common.loading') })),
      ),
      h(
        'section',
        { class: 'panel' },
        h('h2', { text: t('data.dead') }),
        h('div', { 'data-testid': 'dead-letters-holder' }),
      ),
      h('p', { class: 'muted small', 'data-testid': 'data-updated' }),
    ),
  );
  fillDataView();
}

function fillDataView() {
  if (!byTestId('data-view')) return;
  const err = byTestId('data-error');
  err.hidden = !state.completenessError;
  err.textContent = state.completenessError ? errorText(state.completenessError) : '';
  const updated = byTestId('data-updated');
  replace(
    updated,
    state.completenessAt
      ? [t('data.updated'), ' ', age(state.completenessAt, 'data-updated-age'), ' · ', t('data.refresh', { s: COMPLETENESS_REFRESH_MS / 1000 })]
      : null,
  );
  fillDeadLetters();
  const reply = state.completeness;
  if (!reply) return;
  fillOutbox(reply);
  fillCompletenessTable(reply);
}

/** A figure in a box: its name above, the value large, red when `warn`. */
function statBox(name, value, testid, warn = false, detail = '') {
  return h(
    'div',
    { class: ['stat', warn ? 'warn-stat' : ''] },
    h('span', { class: 'k', text: name }),
    h('span', { class: 'v', 'data-testid': testid }, value),
    detail ? h('span', { class: 'small muted', text: detail }) : null,
  );
}

function fillOutbox(reply) {
  const holder = byTestId('outbox-holder');
  const o = reply.outbox;
  if (!o) {
    replace(holder, h('p', { class: 'notice', 'data-testid': 'outbox-disabled', text: t('data.outbox.disabled') }));
    return;
  }
  const stat = (key, value, testid, warn = false) => statBox(t(key), value, testid, warn);
  const sinks = o.sinks || [];
  replace(
    holder,
    h(
      'div',
      { class: 'stats', 'data-testid': 'outbox-stats' },
      stat('data.outbox.size', fmtBytes(o.bytes), 'outbox-bytes'),
      stat('data.outbox.file', fmtBytes(o.file_bytes), 'outbox-file-bytes'),
      stat('data.outbox.batches', fmtCount(o.batches), 'outbox-batches'),
      stat('data.outbox.durable', fmtCount(o.durable_batch), 'outbox-durable'),
      stat('data.outbox.pending', fmtBytes(o.pending_bytes), 'outbox-pending'),
      stat('data.outbox.dead_letters', fmtCount(o.dead_letters), 'outbox-dead-letters', Number(o.dead_letters) > 0),
      stat('data.outbox.dropped', fmtCount(o.dropped_readings), 'outbox-dropped', Number(o.dropped_readings) > 0),
    ),
    sinks.length
      ? h(
          'table',
          { class: 'sinks', 'data-testid': 'outbox-sinks' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              h('th', { text: t('data.sink') }),
              h('th', { class: 'num', text: t('data.sink.confirmed') }),
              h('th', { class: 'num', text: t('data.sink.behind') }),
              h('th', { class: 'num', text: t('data.sink.change') }),
              h('th', { text: t('data.sink.state') }),
            ),
          ),
          h(
            'tbody',
            {},
            sinks.map((k) => {
              const { delta, growing } = backlogTrend(k.sink);
              const behind = Number(k.behind_batches) || 0;
              const stateKey = growing ? 'data.sink.growing' : behind ? 'data.sink.catching_up' : 'data.sink.up_to_date';
              return h(
                'tr',
                {
                  class: growing ? 'attention' : '',
                  'data-testid': `sink-${idPart(k.sink)}`,
                  'data-growing': growing ? 'true' : 'false',
                },
                h('td', {}, h('strong', { text: sinkName(k.sink) }), k.sink !== sinkName(k.sink) ? h('span', { class: 'muted small', text: ` ${k.sink}` }) : null),
                h('td', { class: 'num', text: fmtCount(k.confirmed_batch) }),
                h('td', { class: ['num', growing ? 'warn-cell' : ''], 'data-testid': `sink-behind-${idPart(k.sink)}`, 'data-value': behind, text: fmtCount(behind) }),
                h('td', {
                  class: 'num muted',
                  text: delta === null ? t('common.none') : delta > 0 ? `▲ ${fmtCount(delta)}` : delta < 0 ? `▼ ${fmtCount(-delta)}` : '0',
                }),
                h('td', {
                  class: growing ? 'warn' : behind ? '' : 'ok-text',
                  title: growing ? t('data.sink.growing.title', { n: BACKLOG_RISES }) : null,
                  text: t(stateKey),
                }),
              );
            }),
          ),
        )
      : h('p', { class: 'muted', text: t('data.outbox.no_sinks') }),
  );
}

function fillCompletenessTable(reply) {
  const holder = byTestId('completeness-holder');
  const nodes = reply.nodes || [];
  const sinks = sinkNames(reply);
  const other = Object.entries(reply.dropped_other || {}).filter(([, d]) => sum(d) > 0);
  if (!nodes.length && !other.length) {
    replace(holder, h('p', { class: 'empty', 'data-testid': 'completeness-empty', text: t('data.nodes.empty') }));
    return;
  }
  const attention = nodes.filter((a) => Object.values(accountProblems(a)).some(Boolean)).length;
  replace(
    holder,
    h(
      'p',
      { class: attention ? 'warn' : 'ok', 'data-testid': 'completeness-summary', 'data-attention': attention },
      attention ? t('data.nodes.attention', { n: nodes.length, m: attention }) : t('data.nodes.all_well', { n: nodes.length }),
    ),
    h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        { class: 'completeness', 'data-testid': 'completeness-table' },
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            h('th', { rowspan: 2, text: t('data.col.node') }),
            h('th', { rowspan: 2, class: 'num', title: t('data.col.samples.title'), text: t('data.col.samples') }),
            h('th', { rowspan: 2, class: 'num', title: t('data.col.missing.title'), text: t('data.col.missing') }),
            h('th', { rowspan: 2, class: 'num', title: t('data.col.late.title'), text: t('data.col.late') }),
            h('th', { rowspan: 2, class: 'num', text: t('data.col.restarts') }),
            h('th', { rowspan: 2, class: 'num', title: t('data.col.stored.title'), text: t('data.col.stored') }),
            sinks.length ? h('th', { colspan: sinks.length, class: 'group', text: t('data.col.delivered_to') }) : null,
            h('th', { rowspan: 2, class: 'num', title: t('data.col.dead.title'), text: t('data.col.dead') }),
            h('th', { rowspan: 2, class: 'num', title: t('data.col.dropped.title'), text: t('data.col.dropped') }),
          ),
          h('tr', {}, sinks.map((k) => h('th', { class: 'num', title: k, text: sinkName(k) }))),
        ),
        h(
          'tbody',
          {},
          nodes.map((a) => {
            const id = idPart(a.node);
            const p = accountProblems(a);
            const flagged = p.missing || p.dropped || p.dead;
            return h(
              'tr',
              {
                class: flagged ? 'attention' : '',
                'data-testid': `completeness-${id}`,
                'data-attention': flagged ? 'true' : 'false',
              },
              h('td', {}, h('a', { href: `#/node/${encodeURIComponent(a.node)}`, class: 'node-id', 'data-testid': `completeness-link-${id}`, text: a.node })),
              countCell(a.samples, `samples-${id}`, false, a.last_seq !== null && a.last_seq !== undefined ? t('data.last_seq', { n: a.last_seq }) : ''),
              countCell(a.missing, `missing-${id}`, p.missing, missingShare(a)),
              countCell(a.out_of_order, `late-${id}`),
              countCell(a.restarts, `restarts-${id}`),
              countCell(a.stored, `stored-${id}`, false, t('data.of_readings', { n: fmtCount(a.readings) })),
              sinks.map((k) => countCell((a.delivered || {})[k], `delivered-${id}-${idPart(k)}`)),
              countCell(sum(a.dead_lettered), `dead-${id}`, p.dead, breakdown(a.dead_lettered, sinkName)),
              countCell(sum(a.dropped), `dropped-${id}`, p.dropped, breakdown(a.dropped, dropReason)),
            );
          }),
        ),
      ),
    ),
    other.length
      ? h(
          'div',
          { class: 'dropped-other', 'data-testid': 'dropped-other' },
          h('h3', { text: t('data.dropped_other') }),
          h(
            'ul',
            {},
            other.map(([node, d]) => h('li', {}, h('strong', { text: node || t('data.no_node') }), `: ${breakdown(d, dropReason).join(' · ')}`)),
          ),
        )
      : null,
  );
}

function fillDeadLetters() {
  const holder = byTestId('dead-letters-holder');
  if (!holder) return;
  const role = state.me ? state.me.role : 'viewer';
  const o = state.completeness && state.completeness.outbox;
  if (!api.atLeast(role, 'engineer')) {
    replace(
      holder,
      h('p', { class: 'notice', 'data-testid': 'dead-letters-need-engineer', text: t('data.dead.need_engineer', { role: roleName(role) }) }),
      o ? h('p', { class: 'muted', text: t('data.dead.count', { n: fmtCount(o.dead_letters) }) }) : null,
    );
    return;
  }
  const d = state.deadLetters;
  if (!d) return replace(holder, h('p', { class: 'muted', text: t('common.loading') }));
  if (d.error) {
    if (d.error instanceof api.ApiError && d.error.status === 404) {
      return replace(holder, h('p', { class: 'muted', 'data-testid': 'dead-letters-none', text: t('data.outbox.disabled') }));
    }
    return replace(holder, h('p', { class: 'error', 'data-testid': 'dead-letters-error', text: errorText(d.error) }));
  }
  const list = d.dead_letters || [];
  if (!list.length) {
    return replace(holder, h('p', { class: 'ok', 'data-testid': 'dead-letters-empty', text: t('data.dead.empty') }));
  }
  replace(
    holder,
    h('p', { class: 'muted', text: t('data.dead.explain') }),
    Number(d.total) > list.length ? h('p', { class: 'muted', text: t('data.dead.newest', { n: list.length, total: fmtCount(d.total) }) }) : null,
    h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        { class: 'dead-letters', 'data-testid': 'dead-letters' },
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            ['at', 'sink', 'batch', 'nodes', 'readings', 'bytes', 'reason'].map((k) =>
              h('th', { class: ['batch', 'readings', 'bytes'].includes(k) ? 'num' : '', text: t(`data.dead.col.${k}`) }),
            ),
          ),
        ),
        h(
          'tbody',
          {},
          list.map((x) =>
            h(
              'tr',
              { 'data-testid': `dead-letter-${idPart(x.sink, x.batch)}` },
              h('td', { class: 'nowrap', text: fmtTime(x.at) }),
              h('td', { text: sinkName(x.sink) }),
              h('td', { class: 'num', text: fmtCount(x.batch) }),
              h(
                'td',
                {},
                (x.nodes || []).map((n, i) => [i ? ', ' : '', h('a', { href: `#/node/${encodeURIComponent(n)}`, text: n })]),
              ),
              h('td', { class: 'num', text: typeof x.readings === 'number' ? fmtCount(x.readings) : String(x.readings) }),
              h('td', { class: 'num', text: fmtBytes(x.bytes) }),
              h('td', { class: 'reason', text: x.reason }),
            ),
          ),
        ),
      ),
    ),
  );
}

/** The node page's completeness figures, from the same reply. */
function fillNodeCompleteness() {
  const holder = byTestId('node-completeness');
  if (!holder) return;
  const reply = state.completeness;
  if (!reply) {
    replace(holder, state.completenessError ? h('p', { class: 'error', text: errorText(state.completenessError) }) : h('p', { class: 'muted', text: t('common.loading') }));
    return;
  }
  const node = state.route.node;
  const a = (reply.nodes || []).find((x) => x.node === node);
  const droppedBefore = (reply.dropped_other || {})[node];
  if (!a) {
    replace(
      holder,
      h('p', { class: 'muted', 'data-testid': 'node-completeness-none', text: t('node.completeness.none') }),
      droppedBefore && sum(droppedBefore) ? info('data.dropped_other', breakdown(droppedBefore, dropReason).join(' · '), 'node-dropped') : null,
    );
    return;
  }
  const p = accountProblems(a);
  const sinks = sinkNames(reply);
  replace(
    holder,
    h(
      'div',
      { class: 'stats', 'data-attention': p.missing || p.dropped || p.dead ? 'true' : 'false' },
      statBox(t('data.col.samples'), fmtCount(a.samples), 'node-samples', false, a.last_seq !== null && a.last_seq !== undefined ? t('data.last_seq', { n: a.last_seq }) : ''),
      statBox(t('data.col.missing'), fmtCount(a.missing), 'node-missing', p.missing, missingShare(a)),
      statBox(t('data.col.late'), fmtCount(a.out_of_order), 'node-late'),
      statBox(t('data.col.restarts'), fmtCount(a.restarts), 'node-restarts'),
      statBox(t('data.col.stored'), fmtCount(a.stored), 'node-stored', false, t('data.of_readings', { n: fmtCount(a.readings) })),
      sinks.map((k) =>
        statBox(t('data.col.delivered', { sink: sinkName(k) }), fmtCount((a.delivered || {})[k] || 0), `node-delivered-${idPart(k)}`),
      ),
      statBox(t('data.col.dead'), fmtCount(sum(a.dead_lettered)), 'node-dead', p.dead, breakdown(a.dead_lettered, sinkName).join(' · ')),
      statBox(t('data.col.dropped'), fmtCount(sum(a.dropped)), 'node-dropped', p.dropped, breakdown(a.dropped, dropReason).join(' · ')),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Node page

function renderNodeView(view) {
  const node = state.route.node;
  replace(
    view,
    h(
      'div',
      { class: 'node-view', 'data-testid': 'node-view', 'data-node': node },
      h('p', {}, h('a', { href: '#/overview', text: t('node.back') })),
      h('h1', { 'data-testid': 'node-title', text: t('node.title', { node }) }),
      h('p', { class: 'error', 'data-testid': 'node-error', hidden: true }),
      h(
        'div',
        { class: 'node-top' },
        h('section', { class: 'panel', 'data-testid': 'node-info' }),
        h('section', { class: 'panel', 'data-testid': 'node-health' }),
      ),
      h('section', { class: 'panel' }, h('h2', { text: t('node.channels') }), h('div', { 'data-testid': 'node-channels' })),
      h(
        'section',
        { class: 'panel' },
        h(
          'div',
          { class: 'panel-head' },
          h('h2', { text: t('node.completeness') }),
          h('a', { href: '#/data', 'data-testid': 'node-completeness-all', text: t('node.completeness.all') }),
        ),
        h('div', { 'data-testid': 'node-completeness' }),
      ),
      h(
        'section',
        { class: 'panel' },
        h('h2', { text: t('node.trend') }),
        h('div', { class: 'row', 'data-testid': 'trend-controls' }),
        h('p', { class: 'muted', 'data-testid': 'trend-status' }),
        h('div', { class: 'chart', 'data-testid': 'trend-holder' }),
      ),
      h('section', { class: 'panel' }, h('h2', { text: t('node.alarms') }), h('div', { 'data-testid': 'node-alarms' })),
    ),
  );
  fillNodeDetails();
  fillNodeCompleteness();
  loadNodeDetail(node);
  if (!state.rules) loadRules().then(drawTrend).catch(() => {});
}

async function loadNodeDetail(node) {
  try {
    const detail = await api.get(`/api/nodes/${encodeURIComponent(node)}`);
    const known = state.nodes.get(node);
    // Keep live values newer than the reply.
    if (known) {
      for (const c of detail.channels || []) {
        const k = (known.channels || []).find((x) => Number(x.ch) === Number(c.ch));
        if (k && k.ts && (!c.ts || k.ts > c.ts)) Object.assign(c, { value: k.value, quality: k.quality, ts: k.ts });
      }
    }
    const { alarms, ...rest } = detail;
    state.nodes.set(node, rest);
    for (const a of alarms || []) state.alarms.set(alarmKey(a), a);
    recomputeLevels();
    byTestId('node-error').hidden = true;
  } catch (e) {
    const err = byTestId('node-error');
    if (err) {
      err.textContent = e instanceof api.ApiError && e.status === 404 ? t('node.unknown', { node }) : errorText(e);
      err.hidden = false;
    }
  }
  if (state.route.view === 'node' && state.route.node === node) fillNodeDetails();
}

function info(labelKey, value, testid) {
  return h('div', { class: 'kv' }, h('span', { class: 'k', text: t(labelKey) }), h('span', { class: 'v', 'data-testid': testid }, value));
}

function fillNodeDetails() {
  const n = state.nodes.get(state.route.node);
  const infoEl = byTestId('node-info');
  if (!infoEl) return;
  if (!n) return;
  replace(
    infoEl,
    info('node.site', n.site || t('common.none')),
    info('node.group', n.group || t('common.none')),
    info('node.source', t(`source.${n.source}`)),
    info('channel.level', levelBadge(n.level, 'node-level')),
    info('node.last_seen', age(n.last_seen, 'node-last-seen')),
  );
  const hl = n.health;
  replace(
    byTestId('node-health'),
    h('h2', { text: t('node.health') }),
    hl
      ? [
          info(
            'node.success_ratio',
            `${hl.success_ratio === null || hl.success_ratio === undefined ? t('common.none') : `${fmtNumber(hl.success_ratio * 100, 1)} %`} (${t('node.polls', { ok: hl.polls_ok, failed: hl.polls_failed })})`,
            'health-success',
          ),
          info('node.latency', hl.latency_ms_mean === null || hl.latency_ms_mean === undefined ? t('common.none') : `${fmtNumber(hl.latency_ms_mean, 1)} ms`, 'health-latency'),
          info('node.quarantined', h('span', { class: hl.quarantined ? 'warn' : '', text: hl.quarantined ? t('common.yes') : t('common.no') }), 'health-quarantined'),
          hl.bus ? info('node.bus', `${hl.bus} / ${hl.unit ?? t('common.none')}`, 'health-bus') : null,
        ]
      : h('p', { class: 'muted', 'data-testid': 'health-source', text: t(`node.health.${n.source}`) }),
  );
  replace(byTestId('node-channels'), channelTable(n));
  replace(
    byTestId('node-alarms'),
    (() => {
      const list = sortedAlarms((a) => a.node === n.node);
      return list.length ? alarmTable(list, 'node-alarm-list') : h('p', { class: 'muted', text: t('node.no_alarms') });
    })(),
  );
  fillTrendControls(n);
}

function fillTrendControls(n) {
  const holder = byTestId('trend-controls');
  if (!holder || holder.dataset.node === n.node) return;
  holder.dataset.node = n.node;
  const channels = n.channels || [];
  if (state.trend.ch === null && channels.length) state.trend.ch = channels[0].ch;
  replace(
    holder,
    h(
      'label',
      {},
      h('span', { text: t('node.trend.channel') }),
      h(
        'select',
        {
          'data-testid': 'trend-channel',
          onchange: (e) => {
            state.trend.ch = Number(e.target.value);
            loadTrend();
          },
        },
        channels.map((c) => h('option', { value: c.ch, selected: Number(c.ch) === Number(state.trend.ch), text: `${c.ch} · ${label(c, c.quantity)}` })),
      ),
    ),
    h(
      'label',
      {},
      h('span', { text: t('node.trend.hours') }),
      h(
        'select',
        {
          'data-testid': 'trend-hours',
          onchange: (e) => {
            state.trend.hours = Number(e.target.value);
            loadTrend();
          },
        },
        TREND_HOURS.map((n2) =>
          h('option', {
            value: n2,
            selected: n2 === state.trend.hours,
            text: n2 < 1 ? t('node.trend.minutes_n', { n: Math.round(n2 * 60) }) : t('node.trend.hours_n', { n: n2 }),
          }),
        ),
      ),
    ),
  );
  loadTrend();
}

async function loadTrend() {
  const node = state.route.node;
  const { ch, hours } = state.trend;
  if (ch === null) return;
  const status = byTestId('trend-status');
  status.textContent = t('common.loading');
  try {
    const data = await api.get(`/api/nodes/${encodeURIComponent(node)}/trend${api.query({ ch, hours })}`);
    if (state.route.node !== node || state.trend.ch !== ch || state.trend.hours !== hours) return;
    state.trend.data = data;
    drawTrend();
  } catch (e) {
    state.trend.data = null;
    status.textContent = t('node.trend.unavailable', { msg: e.message });
    replace(byTestId('trend-holder'));
  }
}

/** The rule that applies to a channel: one for the node and channel, else the most specific one for its quantity. */
function ruleFor(n, c) {
  if (!state.rules || !n || !c) return null;
  let best = null;
  let bestScore = -1;
  for (const r of state.rules.rules || []) {
    const sel = r.selector || {};
    let score = -1;
    if (sel.node !== undefined && sel.node !== null) {
      if (sel.node === n.node && Number(sel.ch) === Number(c.ch)) score = 10;
    } else if (sel.quantity === c.quantity && (!sel.site || sel.site === n.site) && (!sel.group || sel.group === n.group)) {
      score = 1 + (sel.site ? 1 : 0) + (sel.group ? 2 : 0);
    }
    if (score > bestScore) {
      best = r;
      bestScore = score;
    }
  }
  return best;
}

function drawTrend() {
  const data = state.trend.data;
  const holder = byTestId('trend-holder');
  if (!holder || !data) return;
  const n = state.nodes.get(state.route.node);
  const c = n && (n.channels || []).find((x) => Number(x.ch) === Number(data.ch));
  const rule = ruleFor(n, c);
  const setPoints = [];
  if (rule) {
    for (const side of ['high', 'low']) {
      for (const l of ALARM_LEVELS) {
        const v = rule[side] ? rule[side][l] : null;
        if (v !== null && v !== undefined) {
          setPoints.push({ level: l, value: v, colour: LEVEL_COLOURS[l], label: t(`level.${l}`) });
        }
      }
    }
  }
  const points = data.points || [];
  const status = byTestId('trend-status');
  if (!points.length) {
    status.textContent = t('node.trend.empty');
  } else {
    const values = points.map((p) => p[1]);
    const mean = values.reduce((a, b) => a + b, 0) / values.length;
    status.textContent = `${t('node.trend.points', { n: points.length, from: fmtTime(data.from), to: fmtTime(data.to) })} · ${t('node.trend.summary', {
      min: fmtNumber(Math.min(...values)),
      mean: fmtNumber(mean),
      max: fmtNumber(Math.max(...values)),
      unit: data.unit || '',
    })}`;
  }
  replace(
    holder,
    trendChart({
      points,
      from: data.from,
      to: Math.max(data.to || 0, points.length ? points[points.length - 1][0] : 0),
      unit: data.unit,
      setPoints,
      locale: locale(),
      title: `${n ? n.node : ''} ${c ? label(c, c.quantity) : ''}`,
    }),
  );
}

let trendDrawTimer = null;

/** A live reading of the charted channel joins the chart (redrawn at most every 2 s). */
function liveTrendPoint(r) {
  const data = state.trend.data;
  if (!data || Number(data.ch) !== Number(r.ch) || !Number.isFinite(r.value)) return;
  const pts = data.points || (data.points = []);
  if (pts.length && r.ts <= pts[pts.length - 1][0]) return;
  pts.push([r.ts, r.value]);
  data.to = Math.max(data.to || 0, r.ts);
  const from = data.to - state.trend.hours * 3600e3;
  data.from = Math.max(data.from || from, from);
  while (pts.length && pts[0][0] < data.from) pts.shift();
  if (!trendDrawTimer) {
    trendDrawTimer = setTimeout(() => {
      trendDrawTimer = null;
      drawTrend();
    }, 2000);
  }
}

// ---------------------------------------------------------------------------------------------
// Start

function applyLanguage() {
  hideToast();
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
  translateStatic();
  byTestId('lang-toggle').dataset.lang = lang();
  if (state.me) {
    renderHeader();
    const streamEl = byTestId('stream-status');
    setStreamStatus(streamEl.dataset.status || 'off', streamEl.dataset.detail);
    if (state.route.view === 'rules') {
      renderRulesView(byTestId('view'));
      fillRuleEditor(true);
    } else {
      const trendHolder = byTestId('trend-controls');
      if (trendHolder) delete trendHolder.dataset.node;
      renderView();
    }
  }
}

function init() {
  applyLanguage();
  onLangChange(applyLanguage);
  byTestId('lang-toggle').addEventListener('click', () => setLang(lang() === 'zh' ? 'en' : 'zh'));
  byTestId('logout').addEventListener('click', logout);
  byTestId('login-form').addEventListener('submit', submitLogin);
  byTestId('action-form').addEventListener('submit', submitAction);
  byTestId('action-cancel').addEventListener('click', () => {
    actionTarget = null;
    byTestId('action-dialog').close();
  });
  window.addEventListener('hashchange', route);
  api.setUnauthorizedHandler(() => {
    logout();
    showLogin(t('error.session'));
  });
  if (api.token()) {
    startSession().catch((e) => {
      api.setToken(null);
      showLogin(e instanceof api.ApiError && e.status === 401 ? t('error.session') : errorText(e));
    });
  } else {
    showLogin();
  }
  document.body.dataset.ready = 'true';
}

init();

// ---------------------------------------------------------------------------------------------
// Firmware campaigns (engineers): the list, and one campaign's nodes, refreshed while shown.
// The route `#/campaigns/{id}` selects a campaign. Other roles see why they cannot.

const CAMPAIGN_REFRESH_MS = 2000;
const NODE_STATES = ['pending', 'transferring', 'staged', 'verifying', 'updated', 'failed', 'skipped'];
let campaignTimer = null;
let campaignBusy = false;
const campaignView = { list: null, one: null, error: null };

function startCampaignRefresh() {
  if (campaignTimer) return;
  campaignTimer = setInterval(refreshCampaigns, CAMPAIGN_REFRESH_MS);
  refreshCampaigns();
}

function stopCampaignRefresh() {
  clearInterval(campaignTimer);
  campaignTimer = null;
}

async function refreshCampaigns() {
  if (campaignBusy || !state.me || !api.atLeast(state.me.role, 'engineer')) return;
  campaignBusy = true;
  const id = state.route.node;
  try {
    const [l, o] = await Promise.allSettled([
      api.get('/api/campaigns'),
      id ? api.get(`/api/campaigns/${encodeURIComponent(id)}`) : Promise.resolve(null),
    ]);
    campaignView.list = l.status === 'fulfilled' ? l.value : campaignView.list;
    campaignView.one = o.status === 'fulfilled' ? o.value : null;
    campaignView.error = l.status === 'rejected' ? l.reason : o.status === 'rejected' ? o.reason : null;
  } finally {
    campaignBusy = false;
  }
  if (state.route.view === 'campaigns') fillCampaigns();
}

function renderCampaignsView(view) {
  const role = state.me.role;
  if (!api.atLeast(role, 'engineer')) {
    return replace(
      view,
      h(
        'div',
        { class: 'campaigns-view', 'data-testid': 'campaigns-view' },
        h('h1', { text: t('campaigns.title') }),
        h('p', { class: 'notice', 'data-testid': 'campaigns-need-engineer', text: t('campaigns.need_engineer', { role: roleName(role) }) }),
      ),
    );
  }
  replace(
    view,
    h(
      'div',
      { class: 'campaigns-view', 'data-testid': 'campaigns-view' },
      h('h1', { text: t('campaigns.title') }),
      h('p', { class: 'muted intro', text: t('campaigns.intro') }),
      h('p', { class: 'error', 'data-testid': 'campaigns-error', hidden: true }),
      h('section', { class: 'panel' }, h('div', { 'data-testid': 'campaigns-holder' }, h('p', { class: 'muted', text: t('common.loading') }))),
      h('section', { class: 'panel', 'data-testid': 'campaign-panel', hidden: !state.route.node }, h('div', { 'data-testid': 'campaign-holder' })),
    ),
  );
  fillCampaigns();
}

function campaignCounts(c) {
  const n = c.counts || {};
  return t('campaigns.counts', {
    updated: n.updated ?? 0,
    failed: n.failed ?? 0,
    in_flight: n.in_flight ?? 0,
    pending: n.pending ?? 0,
    skipped: n.skipped ?? 0,
  });
}

function fillCampaigns() {
  const holder = byTestId('campaigns-holder');
  if (!holder) return;
  const err = byTestId('campaigns-error');
  err.hidden = !campaignView.error;
  err.textContent = campaignView.error ? errorText(campaignView.error) : '';
  const l = campaignView.list;
  if (!l) return;
  const list = l.campaigns || [];
  replace(
    holder,
    list.length
      ? h(
          'div',
          { class: 'scroll' },
          h(
            'table',
            { 'data-testid': 'campaigns' },
            h('thead', {}, h('tr', {}, ['id', 'status', 'image', 'nodes', 'created', 'halt'].map((k) => h('th', { text: t(`campaigns.col.${k}`) })))),
            h(
              'tbody',
              {},
              list.map((c) =>
                h(
                  'tr',
                  { 'data-testid': `campaign-${c.id}`, class: String(c.id) === state.route.node ? 'selected' : '' },
                  h('td', {}, h('a', { href: `#/campaigns/${c.id}`, text: `#${c.id}` })),
                  h('td', {}, h('span', { class: `badge campaign-${c.status}`, text: t(`campaigns.status.${c.status}`) }), c.active && c.status !== 'running' ? ` ${t('campaigns.finishing')}` : ''),
                  h('td', { text: `${c.image.model} ${c.image.version}` }),
                  h('td', { text: campaignCounts(c) }),
                  h('td', { class: 'nowrap', text: `${fmtTime(c.created_ms)} · ${c.created_by}` }),
                  h('td', { class: 'small', text: c.halt_reason || '' }),
                ),
              ),
            ),
          ),
        )
      : h('p', { class: 'muted', 'data-testid': 'campaigns-empty', text: t('campaigns.empty') }),
    h('p', { class: 'muted small', text: t('campaigns.refused', l.refused || {}) }),
  );
  fillCampaign();
}

async function campaignAction(c, action) {
  const reason = window.prompt(t(`campaigns.${action}.prompt`, { id: c.id }));
  if (reason === null) return;
  try {
    await api.post(`/api/campaigns/${c.id}/${action}`, { reason });
    toast(t(`campaigns.${action}.done`, { id: c.id }), 'ok');
  } catch (e) {
    toast(errorText(e), 'error');
  }
  refreshCampaigns();
}

function nodeProgress(n) {
  if (n.state === 'transferring' && n.total) return `${Math.floor((100 * n.done) / n.total)} % (${fmtCount(n.done)} / ${fmtCount(n.total)} B)`;
  if (n.state === 'updated') return n.version || '';
  return n.reason || '';
}

function fillCampaign() {
  const panel = byTestId('campaign-panel');
  const holder = byTestId('campaign-holder');
  if (!holder) return;
  panel.hidden = !state.route.node;
  const c = campaignView.one;
  if (!state.route.node) return;
  if (!c) return replace(holder, h('p', { class: 'muted', text: t('common.loading') }));
  const waves = c.waves.map((n, i) => (i === 0 ? t('campaigns.canary', { n }) : String(n))).join(' → ');
  const threshold = [
    c.threshold.max_failures != null ? t('campaigns.max_failures', { n: c.threshold.max_failures }) : null,
    c.threshold.max_failure_ratio != null ? t('campaigns.max_ratio', { r: c.threshold.max_failure_ratio }) : null,
  ].filter(Boolean).join(', ');
  replace(
    holder,
    h('h2', { text: t('campaigns.one', { id: c.id, model: c.image.model, version: c.image.version }) }),
    h(
      'dl',
      { class: 'facts' },
      h('dt', { text: t('campaigns.col.status') }), h('dd', { 'data-testid': 'campaign-status', text: t(`campaigns.status.${c.status}`) }),
      h('dt', { text: t('campaigns.waves') }), h('dd', { text: `${waves} (${t('campaigns.wave_now', { n: c.wave })})` }),
      h('dt', { text: t('campaigns.threshold') }), h('dd', { text: threshold }),
      h('dt', { text: t('campaigns.reason') }), h('dd', { text: `${c.reason} · ${c.run_by}` }),
      c.halt_reason ? [h('dt', { text: t('campaigns.col.halt') }), h('dd', { 'data-testid': 'campaign-halt-reason', text: c.halt_reason })] : null,
    ),
    h(
      'div',
      { class: 'buttons' },
      h('button', { type: 'button', class: 'danger', 'data-testid': 'campaign-halt', disabled: c.status !== 'running', text: t('campaigns.halt'), onclick: () => campaignAction(c, 'halt') }),
      h('button', { type: 'button', class: 'primary', 'data-testid': 'campaign-resume', disabled: c.status !== 'halted' || c.active, text: t('campaigns.resume'), onclick: () => campaignAction(c, 'resume') }),
    ),
    h(
      'div',
      { class: 'scroll' },
      h(
        'table',
        { 'data-testid': 'campaign-nodes' },
        h('thead', {}, h('tr', {}, ['node', 'bus', 'unit', 'wave', 'state', 'detail'].map((k) => h('th', { text: t(`campaigns.node.${k}`) })))),
        h(
          'tbody',
          {},
          c.nodes.map((n) =>
            h(
              'tr',
              { 'data-testid': `campaign-node-${idPart(n.node)}`, dataset: { state: n.state } },
              h('td', {}, h('a', { href: `#/node/${encodeURIComponent(n.node)}`, text: n.node })),
              h('td', { text: n.bus }),
              h('td', { class: 'num', text: String(n.unit) }),
              h('td', { class: 'num', text: n.wave === 0 ? t('campaigns.canary_short') : String(n.wave) }),
              h('td', {}, h('span', { class: `badge node-${n.state}`, text: NODE_STATES.includes(n.state) ? t(`campaigns.state.${n.state}`) : n.state })),
              h('td', { class: 'small', text: nodeProgress(n) }),
            ),
          ),
        ),
      ),
    ),
  );
}
