// A trend chart drawn as inline SVG: one series of [time ms, value] points, a time axis, a
// value axis with round ticks, and the alarm set points as dashed lines in their colours.

import { s } from './dom.js';

const W = 860;
const H = 280;
const PAD = { left: 64, right: 20, top: 16, bottom: 36 };

/** Round tick values covering [lo, hi], about `count` of them. */
export function ticks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) {
    const d = Math.abs(lo) || 1;
    lo -= d / 2;
    hi += d / 2;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

function timeTicks(from, to) {
  const span = to - from;
  const steps = [60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3];
  const step = steps.find((st) => span / st <= 8) || 86400e3;
  const out = [];
  // Ticks on round local times.
  const offset = new Date(from).getTimezoneOffset() * 60e3;
  for (let v = Math.ceil((from - offset) / step) * step + offset; v <= to; v += step) out.push(v);
  return out;
}

/**
 * The chart. `opts`: points ([[ms, value]...], oldest first), from, to (ms), unit,
 * setPoints ([{level, value, colour, label}]), locale, title (for screen readers).
 */
export function trendChart(opts) {
  const pts = (opts.points || []).filter((p) => Number.isFinite(p[1]));
  const from = opts.from ?? (pts.length ? pts[0][0] : Date.now() - 3600e3);
  const to = opts.to ?? (pts.length ? pts[pts.length - 1][0] : Date.now());
  const values = pts.map((p) => p[1]);
  const lines = (opts.setPoints || []).filter((sp) => Number.isFinite(sp.value));
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!values.length) {
    lo = 0;
    hi = 1;
  }
  // Show the set points that are near the data (within the span again), so the margin to
  // the next alarm level is visible without flattening the curve.
  const span = Math.max(hi - lo, Math.abs(hi) * 0.1, 1e-6);
  for (const sp of lines) {
    if (sp.value >= lo - span && sp.value <= hi + span) {
      lo = Math.min(lo, sp.value);
      hi = Math.max(hi, sp.value);
    }
  }
  const yt = ticks(lo, hi, 5);
  if (yt.length) {
    lo = Math.min(lo, yt[0]);
    hi = Math.max(hi, yt[yt.length - 1]);
  }
  if (hi === lo) hi = lo + 1;
  const x = (ms) => PAD.left + ((ms - from) / Math.max(to - from, 1)) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  const nf = new Intl.NumberFormat(opts.locale, { maximumSignificantDigits: 4 });
  const tf = new Intl.DateTimeFormat(opts.locale, {
    hour: '2-digit',
    minute: '2-digit',
    ...(to - from > 86400e3 ? { month: '2-digit', day: '2-digit' } : {}),
  });

  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`,
    class: 'trend',
    role: 'img',
    'aria-label': opts.title || '',
    'data-testid': 'trend-chart',
    'data-points': pts.length,
  });
  svg.append(s('title', { text: opts.title || '' }));
  const grid = s('g', { class: 'grid' });
  for (const v of yt) {
    if (v < lo || v > hi) continue;
    grid.append(s('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    grid.append(
      s('text', { x: PAD.left - 8, y: y(v) + 4, 'text-anchor': 'end', class: 'tick', text: nf.format(v) }),
    );
  }
  for (const ms of timeTicks(from, to)) {
    grid.append(s('line', { x1: x(ms), x2: x(ms), y1: PAD.top, y2: H - PAD.bottom }));
    grid.append(
      s('text', { x: x(ms), y: H - PAD.bottom + 18, 'text-anchor': 'middle', class: 'tick', text: tf.format(ms) }),
    );
  }
  svg.append(grid);
  svg.append(
    s('rect', {
      x: PAD.left,
      y: PAD.top,
      width: W - PAD.left - PAD.right,
      height: H - PAD.top - PAD.bottom,
      class: 'frame',
    }),
  );
  if (opts.unit) svg.append(s('text', { x: 8, y: PAD.top + 4, class: 'unit', text: opts.unit }));
  for (const sp of lines) {
    if (sp.value < lo || sp.value > hi) continue;
    svg.append(
      s('line', {
        x1: PAD.left,
        x2: W - PAD.right,
        y1: y(sp.value),
        y2: y(sp.value),
        stroke: sp.colour,
        class: 'setpoint',
        'data-level': sp.level,
      }),
    );
    svg.append(
      s('text', {
        x: PAD.left + 6,
        y: y(sp.value) - 5,
        'text-anchor': 'start',
        class: 'setpoint-label',
        'data-level': sp.level,
        fill: sp.colour,
        text: sp.label ? `${sp.label} ${nf.format(sp.value)}` : nf.format(sp.value),
      }),
    );
  }
  if (pts.length) {
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
    svg.append(s('path', { d, class: 'series' }));
    if (pts.length < 60) {
      for (const p of pts) svg.append(s('circle', { cx: x(p[0]), cy: y(p[1]), r: 2.5, class: 'dot' }));
    }
  }
  return svg;
}
