// The live connection of one tab: one WebSocket carries every subscription
// (docs/protocol.md). It acknowledges data frames (the server's flow control),
// reconnects with backoff and resumes from the last cursor of each metric, so
// a reconnect back-fills instead of leaving a gap. When WebSocket keeps
// failing (a proxy that blocks upgrades, or the server is down for more than
// ~3.5 s) it falls back to Server-Sent Events and probes WebSocket again with
// backoff (1, 2, 4 ... 60 s), switching back on the first probe the server
// greets; the probe becomes the connection and resumes from the cursors.
// Signed out (close 4001, or 401 on the Server-Sent Events stream), it goes to
// the sign-in page with `next` back to this page.

import { formatDateTime, formatTime } from "./format.js";

const RECONNECT = { startMs: 500, maxMs: 15000 }; // 0.5, 1, 2, 4, 8, 15 s between reconnects
const STALE_AFTER_MS = 60000; // two missed heartbeats (25 s) and some slack
const WS_FAILURES_BEFORE_SSE = 3; // sockets in a row that closed before the server's hello
const WS_PROBE = { startMs: 1000, maxMs: 60000 }; // WebSocket probes while on SSE: 1, 2, 4 ... 32 s, then every 60 s
const WS_PROBE_GIVE_UP_MS = 10000; // a probe the server has not greeted by then has failed
const BACKFILL_SHOWN_MS = 10000; // how long "back-filled N samples" stays in the status

export class LiveConnection extends EventTarget {
  constructor(url = defaultUrl(), { sseUrl = url === defaultUrl() ? "/api/v1/stream" : null } = {}) {
    super();
    this.url = url;
    this.sseUrl = sseUrl; // null: this endpoint has no SSE fallback (share links)
    this.transport = "websocket";
    this.state = "connecting";
    this.subscriptions = new Map(); // pattern -> {historyS, maxRate}
    this.cursors = new Map(); // metric key -> newest ts (µs) received
    this.attempt = 0;
    this.wsFailures = 0;
    this.probeAttempt = 0;
    this.lastProbeDelay = null; // for tests: the delay before the latest WebSocket probe
    this.lastFrameAt = Date.now();
    this.staleSince = null; // when data stopped being current (lost connection or silence)
    this.backfilled = 0; // samples replayed since the last reconnect or lag
    this.backfilledAt = 0;
    this.framesReceived = 0; // data frames on the current socket (acks count these)
    this.framesAcked = 0;
    this.ackEvery = 1; // half of hello's limits.ack_window
    this.ackPending = false;
    this.nextId = 1;
    this.degraded = new Map(); // reason ("layer", "database") -> since (µs): the server's degraded notices
    this.staleKeys = new Map(); // metric key -> since (µs): the server's stale notices
    setInterval(() => this.checkStale(), 5000);
  }

  on(type, fn) { this.addEventListener(type, (e) => fn(e.detail)); return this; }

  start() { this.open(); return this; }

  open() {
    if (this.state === "signed-out") return; // on the way to the sign-in page
    if (this.transport === "sse") return this.openSse();
    this.setState(this.attempt ? "reconnecting" : "connecting");
    this.attach(new WebSocket(this.url));
  }

  // Make ws the connection: a new socket, or a probe the server has already greeted (`greeted`).
  attach(ws, greeted = false) {
    this.ws = ws;
    this.framesReceived = 0;
    this.framesAcked = 0;
    ws.onmessage = (msg) => {
      const event = JSON.parse(msg.data);
      // some proxies accept the upgrade and then drop it: only a hello counts
      if (event.type === "hello" && !greeted) { greeted = true; this.attempt = 0; this.wsFailures = 0; }
      this.dispatch(event);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (ev.code === 4001) { this.signIn(); return; }
      if (ev.code === 4003 || ev.code === 4009) { this.setState("refused"); return; }
      if (!greeted) this.wsFailures += 1;
      this.lostConnection();
      if (this.sseUrl && this.wsFailures >= WS_FAILURES_BEFORE_SSE) {
        this.transport = "sse";
        this.probeAttempt = 0;
        this.openSse();
        this.scheduleProbe();
        return;
      }
      // 4008 (too slow) resumes at once; anything else backs off.
      const delay = ev.code === 4008 ? 0 : backoffDelay(this.attempt, { ...RECONNECT, jitter: 0.2 });
      this.attempt += 1;
      setTimeout(() => this.open(), delay);
    };
  }

  // The session is gone (password changed, signed out elsewhere): sign in again and come back here.
  signIn() {
    if (this.state === "signed-out") return;
    this.setState("signed-out");
    clearTimeout(this.probeTimer);
    if (this.es) this.es.close();
    this.es = null;
    window.location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname + location.search);
  }

  // --- Server-Sent Events fallback --------------------------------------
  sseQuery() {
    const patterns = [...this.subscriptions.keys()];
    const opts = [...this.subscriptions.values()];
    const q = new URLSearchParams({ metrics: patterns.join(",") });
    q.set("history_s", String(Math.max(0, ...opts.map((o) => o.historyS || 0))));
    const rates = opts.map((o) => o.maxRate).filter(Boolean);
    if (rates.length) q.set("max_rate", String(Math.max(...rates)));
    if (this.cursors.size) q.set("since", [...this.cursors].map(([k, t]) => `${k}:${t}`).join(","));
    return q;
  }

  openSse() {
    if (this.state === "signed-out") return;
    if (this.es) this.es.close();
    this.es = null;
    if (!this.subscriptions.size) { this.setState("live"); return; } // nothing to stream yet
    this.setState(this.attempt ? "reconnecting" : "connecting");
    const es = new EventSource(`${this.sseUrl}?${this.sseQuery()}`, { withCredentials: true });
    this.es = es;
    es.onopen = () => { this.attempt = 0; };
    es.onmessage = (msg) => this.dispatch(JSON.parse(msg.data));
    es.onerror = () => {
      if (this.es !== es) return;
      // A response that ended at its byte budget reconnects by itself with Last-Event-ID.
      if (es.readyState === EventSource.CONNECTING) { this.lostConnection(); return; }
      es.close();
      this.es = null;
      this.lostConnection();
      const delay = backoffDelay(this.attempt, RECONNECT);
      this.attempt += 1;
      // EventSource hides the status of a refused stream: retry only if it was not 401.
      this.checkSignedIn(es.url).then((signedIn) => {
        if (signedIn) setTimeout(() => { if (this.transport === "sse") this.openSse(); }, delay);
      });
    };
  }

  // A refused stream: 401 means the session ended, so sign in instead of retrying forever.
  // Resolves false when it went to the sign-in page.
  async checkSignedIn(url) {
    const abort = new AbortController();
    try {
      const response = await fetch(url, { credentials: "same-origin", signal: abort.signal, headers: { Accept: "text/event-stream" } });
      abort.abort(); // only the status was wanted, not the stream
      if (response.status === 401) { this.signIn(); return false; }
    } catch {
      // the server is unreachable: the retries go on
    }
    return this.state !== "signed-out";
  }

  scheduleProbe() {
    clearTimeout(this.probeTimer);
    const delay = backoffDelay(this.probeAttempt, WS_PROBE);
    this.probeAttempt += 1;
    this.lastProbeDelay = delay;
    this.probeTimer = setTimeout(() => this.probeWebSocket(), delay);
  }

  // While on SSE, try a WebSocket with backoff; the first one the server greets becomes the connection.
  probeWebSocket() {
    if (this.transport !== "sse" || this.state === "signed-out") return;
    const probe = new WebSocket(this.url);
    const giveUp = setTimeout(() => probe.close(), WS_PROBE_GIVE_UP_MS);
    probe.onmessage = (msg) => {
      const event = JSON.parse(msg.data);
      if (event.type !== "hello" || this.transport !== "sse") return;
      clearTimeout(giveUp);
      if (this.es) this.es.close();
      this.es = null;
      this.transport = "websocket";
      this.wsFailures = 0;
      this.attempt = 0;
      this.probeAttempt = 0;
      // Its hello subscribes again with `since` = the cursors SSE advanced: nothing between is lost.
      this.attach(probe, true);
      this.dispatch(event);
    };
    probe.onclose = (ev) => {
      clearTimeout(giveUp);
      if (ev?.code === 4001) { this.signIn(); return; }
      this.scheduleProbe();
    };
  }

  // --- Messages ---------------------------------------------------------
  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  subscribe(patterns, { historyS = 300, maxRate } = {}) {
    for (const p of patterns) this.subscriptions.set(p, { historyS, maxRate });
    if (this.transport === "sse") { this.openSse(); return; } // a stream's subscription is its URL
    this.sendSubscribe(patterns, historyS, maxRate, false);
  }

  sendSubscribe(patterns, historyS, maxRate, resume) {
    const msg = { type: "subscribe", id: this.nextId++, metrics: patterns, history_s: historyS };
    if (maxRate) msg.max_rate = maxRate;
    if (resume && this.cursors.size) msg.since = Object.fromEntries(this.cursors);
    this.send(msg);
  }

  // Acknowledge once half the server's window is unacknowledged (docs/protocol.md): an ack per
  // frame from every tab was a large part of a busy server's time. A burst of frames in one
  // task costs one ack.
  ack() {
    if (this.ackPending || !this.ws || this.framesReceived - this.framesAcked < this.ackEvery) return;
    this.ackPending = true;
    queueMicrotask(() => {
      this.ackPending = false;
      this.framesAcked = this.framesReceived;
      this.send({ type: "ack", frame: this.framesReceived });
    });
  }

  lostConnection() {
    if (!this.staleSince) this.staleSince = this.lastFrameAt;
    this.setState("reconnecting");
  }

  dispatch(event) {
    this.lastFrameAt = Date.now();
    switch (event.type) {
      case "hello": {
        this.ackEvery = Math.max(1, Math.floor((event.limits?.ack_window || 0) / 2));
        // A new connection: the server repeats whatever still holds (degraded, stale) after this.
        this.degraded.clear();
        this.staleKeys.clear();
        if (this.staleSince) this.backfilled = 0; // a new episode: count what this resume brings back
        if (this.transport === "websocket") {
          const resume = this.cursors.size > 0;
          const groups = new Map();
          for (const [p, o] of this.subscriptions) {
            const k = `${o.historyS}|${o.maxRate || ""}`;
            if (!groups.has(k)) groups.set(k, { o, patterns: [] });
            groups.get(k).patterns.push(p);
          }
          for (const { o, patterns } of groups.values()) this.sendSubscribe(patterns, o.historyS, o.maxRate, resume);
        }
        this.setState("live");
        break;
      }
      case "data":
        if (this.transport === "websocket") { this.framesReceived += 1; this.ack(); }
        for (const b of event.batches) {
          const last = b.t[b.t.length - 1];
          if (!(this.cursors.get(b.k) >= last)) this.cursors.set(b.k, last);
          if (event.replay && this.staleSince) { this.backfilled += b.t.length; this.backfilledAt = Date.now(); }
        }
        if (!event.replay) this.staleSince = null;
        if (this.state !== "live" || event.replay) this.setState("live");
        break;
      case "lag":
        // The server lost live samples for us and back-fills them; show it like a resume.
        if (!this.staleSince) this.staleSince = Date.now();
        this.backfilled = 0;
        break;
      case "heartbeat":
        if (this.state === "stale") { this.staleSince = null; this.setState("live"); }
        break;
      case "error":
        console.warn("pulseboard:", event.code, event.message);
        break;
      case "degraded": // the server cannot vouch for live data: its channel layer or database is failing
        if (event.state === "ok") this.degraded.delete(event.reason);
        else this.degraded.set(event.reason, event.since);
        this.setState(this.state);
        break;
      case "stale": // these metrics' sources missed three expected intervals (or sent again)
        for (const k of event.metrics) {
          if (event.state === "ok") this.staleKeys.delete(k);
          else this.staleKeys.set(k, event.since);
        }
        this.setState(this.state);
        break;
    }
    this.dispatchEvent(new CustomEvent(event.type, { detail: event }));
  }

  // The server's notice for a panel's keys, as words (null when none): degraded delivery wins, then stale sources.
  noticeFor(keys) {
    return describeNotice(this.degraded, keys.filter((k) => this.staleKeys.has(k)).map((k) => this.staleKeys.get(k)));
  }

  checkStale() {
    if (this.state === "live" && Date.now() - this.lastFrameAt > STALE_AFTER_MS) {
      this.staleSince = this.lastFrameAt;
      this.setState("stale");
    } else if (this.state === "live" && this.backfilled && Date.now() - this.backfilledAt > BACKFILL_SHOWN_MS) {
      this.backfilled = 0;
      this.setState("live");
    }
  }

  setState(state) {
    this.state = state;
    const detail = { state, transport: this.transport, staleSince: this.staleSince, backfilled: this.backfilled, degraded: this.degraded };
    this.dispatchEvent(new CustomEvent("state", { detail }));
  }
}

// The one retry schedule of the front end (the Python one, with the same four fields, is collectors/retry.py's
// Schedule): the wait before try `attempt` + 1 is startMs times factor per attempt, capped at maxMs, spread by
// ±jitter (a fraction) so tabs that lost the server together do not all come back in the same instant.
export function backoffDelay(attempt, { startMs, maxMs = Infinity, factor = 2, jitter = 0 }, random = Math.random) {
  const wait = Math.min(startMs * factor ** Math.min(attempt, 64), maxMs);
  return jitter ? wait * (1 - jitter + 2 * jitter * random()) : wait;
}

export function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws/live/`;
}

const DEGRADED_WORDS = { layer: "live delivery delayed (channel layer)", database: "database unreachable" };

// Words for the server's notices: degraded reasons (reason -> since µs), then the stale-since times of some keys.
export function describeNotice(degraded, staleSinces = []) {
  const parts = [];
  for (const [reason, since] of degraded || []) {
    parts.push(`${DEGRADED_WORDS[reason] || reason} since ${new Date(since / 1000).toLocaleTimeString()}`);
  }
  if (staleSinces.length) parts.push("source silent since " + new Date(Math.min(...staleSinces) / 1000).toLocaleTimeString());
  return parts.length ? parts.join(" · ") : null;
}

// The words the status shows for a state: live / reconnecting / stale since T / back-filled N samples / degraded.
export function describeState({ state, transport, staleSince, backfilled, degraded }) {
  let text = state === "live" && transport === "sse" ? "live (SSE fallback)" : state;
  if (state !== "live" && staleSince) text += " · stale since " + formatTime(staleSince);
  if (state === "live" && backfilled) text += ` · back-filled ${backfilled} sample${backfilled === 1 ? "" : "s"}`;
  const notice = describeNotice(degraded);
  if (notice) text += " · " + notice;
  return text;
}

// Show the connection state in the top bar.
export function showState(conn, el = document.getElementById("conn-state")) {
  conn.on("state", (detail) => {
    if (!el) return;
    el.dataset.state = detail.degraded?.size ? "degraded" : detail.state;
    el.dataset.transport = detail.transport;
    el.textContent = describeState(detail);
    el.title = detail.staleSince ? `data may be missing since ${formatDateTime(detail.staleSince)}` : "";
  });
}
