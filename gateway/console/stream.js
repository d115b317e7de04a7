// Live updates: server-sent events read with fetch() and a ReadableStream (EventSource cannot
// send the Authorization header), reconnecting with a doubling backoff when the stream ends.

import { authHeaders } from './api.js';

/**
 * Parses the SSE wire format incrementally. `feed(text)` takes any chunk; `dispatch` is
 * called with {type, data, id} for every complete event (a blank line ends one).
 */
export class SseParser {
  constructor(dispatch) {
    this.dispatch = dispatch;
    this.buffer = '';
    this.reset();
  }

  reset() {
    this.type = '';
    this.data = [];
    this.id = '';
  }

  feed(chunk) {
    this.buffer += chunk;
    // A lone '\r' at the end may be the first half of '\r\n': keep it for the next chunk.
    let start = 0;
    for (;;) {
      const m = /\r\n|\r|\n/g;
      m.lastIndex = start;
      const found = m.exec(this.buffer);
      if (!found) break;
      if (found[0] === '\r' && found.index === this.buffer.length - 1) break;
      this.line(this.buffer.slice(start, found.index));
      start = found.index + found[0].length;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        this.dispatch({ type: this.type || 'message', data: this.data.join('\n'), id: this.id });
      }
      this.reset();
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.type = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id') this.id = value;
  }
}

/**
 * Follows `paths[0]` (falling back to the next path on 404) and calls `onEvent({type, data})`
 * for each event; `onStatus(status, detail)` with 'connecting', 'live', 'retry' (detail:
 * seconds) or 'unauthorized'. Returns a function that stops it.
 */
export function follow(paths, { onEvent, onStatus, onOpen }) {
  let stopped = false;
  let controller = null;
  let timer = null;
  let backoff = 1000;
  let pathIndex = 0;

  async function connect() {
    if (stopped) return;
    onStatus('connecting');
    controller = new AbortController();
    let gotData = false;
    try {
      const response = await fetch(paths[pathIndex], {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        cache: 'no-store',
        signal: controller.signal,
      });
      if (response.status === 401) {
        onStatus('unauthorized');
        return;
      }
      if (response.status === 404 && pathIndex + 1 < paths.length) {
        pathIndex += 1;
        backoff = 0;
        throw new Error('not found');
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      onStatus('live');
      if (onOpen) onOpen();
      const parser = new SseParser((e) => {
        gotData = true;
        onEvent(e);
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(value);
        if (gotData) backoff = 1000;
      }
    } catch (e) {
      if (stopped) return;
    }
    if (stopped) return;
    const wait = backoff;
    backoff = Math.min(Math.max(backoff, 500) * 2, 30000);
    onStatus('retry', Math.round(wait / 1000));
    timer = setTimeout(connect, wait);
  }

  connect();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    if (controller) controller.abort();
    onStatus('off');
  };
}
