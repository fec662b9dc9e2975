// The live connection of one tab: one WebSocket carries every subscription
// (docs/protocol.md). It reconnects with backoff and resumes from the last
// cursor of each metric, so a reconnect back-fills instead of leaving a gap.

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
const STALE_AFTER_MS = 60000; // two missed heartbeats (25 s) and some slack

export class LiveConnection extends EventTarget {
  constructor(url = defaultUrl()) {
    super();
    this.url = url;
    this.state = "connecting";
    this.subscriptions = new Map(); // pattern -> {historyS, maxRate}
    this.cursors = new Map(); // metric key -> newest ts (µs) received
    this.attempt = 0;
    this.lastFrameAt = Date.now();
    this.staleSince = null;
    this.backfilled = 0;
    this.handlers = new Map();
    this.nextId = 1;
    setInterval(() => this.checkStale(), 5000);
  }

  on(type, fn) { this.addEventListener(type, (e) => fn(e.detail)); return this; }

  start() { this.open(); return this; }

  open() {
    this.setState(this.attempt ? "reconnecting" : "connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => { this.attempt = 0; };
    ws.onmessage = (msg) => this.dispatch(JSON.parse(msg.data));
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      if (ev.code === 4001) { this.setState("signed-out"); window.location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname); return; }
      const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)] * (0.8 + Math.random() * 0.4);
      this.attempt += 1;
      if (!this.staleSince) this.staleSince = Date.now();
      this.setState("reconnecting");
      setTimeout(() => this.open(), delay);
    };
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  subscribe(patterns, { historyS = 300, maxRate } = {}) {
    for (const p of patterns) this.subscriptions.set(p, { historyS, maxRate });
    this.sendSubscribe(patterns, historyS, maxRate, false);
  }

  sendSubscribe(patterns, historyS, maxRate, resume) {
    const msg = { type: "subscribe", id: this.nextId++, metrics: patterns, history_s: historyS };
    if (maxRate) msg.max_rate = maxRate;
    if (resume && this.cursors.size) msg.since = Object.fromEntries(this.cursors);
    this.send(msg);
  }

  dispatch(event) {
    this.lastFrameAt = Date.now();
    switch (event.type) {
      case "hello": {
        const resume = this.cursors.size > 0;
        const groups = new Map();
        for (const [p, o] of this.subscriptions) {
          const k = `${o.historyS}|${o.maxRate || ""}`;
          if (!groups.has(k)) groups.set(k, { o, patterns: [] });
          groups.get(k).patterns.push(p);
        }
        for (const { o, patterns } of groups.values()) this.sendSubscribe(patterns, o.historyS, o.maxRate, resume);
        this.setState("live");
        break;
      }
      case "data":
        for (const b of event.batches) {
          const last = b.t[b.t.length - 1];
          if (!(this.cursors.get(b.k) >= last)) this.cursors.set(b.k, last);
          if (event.replay && this.staleSince) this.backfilled += b.t.length;
        }
        if (this.state !== "live") this.setState("live");
        break;
      case "heartbeat":
        if (this.state === "stale") this.setState("live");
        break;
      case "error":
        console.warn("pulseboard:", event.code, event.message);
        break;
    }
    if (event.type === "subscribed" || (event.type === "data" && !event.replay)) this.staleSince = null;
    this.dispatchEvent(new CustomEvent(event.type, { detail: event }));
  }

  checkStale() {
    if (this.state === "live" && Date.now() - this.lastFrameAt > STALE_AFTER_MS) {
      this.staleSince = this.lastFrameAt;
      this.setState("stale");
    }
  }

  setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, staleSince: this.staleSince, backfilled: this.backfilled } }));
  }
}

export function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws/live/`;
}

// Show the connection state in the top bar: live / reconnecting / stale since T / back-filled N.
export function showState(conn, el = document.getElementById("conn-state")) {
  conn.on("state", ({ state, staleSince, backfilled }) => {
    if (!el) return;
    el.dataset.state = state;
    let text = state;
    if (state !== "live" && staleSince) text += " · stale since " + new Date(staleSince).toLocaleTimeString();
    if (state === "live" && backfilled) text += ` · back-filled ${backfilled}`;
    el.textContent = text;
  });
}
