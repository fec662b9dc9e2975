// Drives dashboard/static/dashboard/connection.js with fake WebSocket and EventSource
// (Node has neither) and prints what happened as JSON for tests/test_connection_js.py.

const sockets = [];
const streams = [];
globalThis.location = { protocol: "http:", host: "pulse.test", pathname: "/" };
globalThis.window = { location: globalThis.location };
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn) => realSetTimeout(fn, 0); // backoff without the waiting
globalThis.setInterval = () => 0;

class FakeWebSocket {
  static OPEN = 1;
  constructor(url) { this.url = url; this.sent = []; this.readyState = 0; sockets.push(this); }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  open() { this.readyState = 1; this.onopen?.(); }
  deliver(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose?.({ code }); }
}
class FakeEventSource {
  static CONNECTING = 0;
  static CLOSED = 2;
  constructor(url) { this.url = url; this.readyState = 0; streams.push(this); }
  close() { this.readyState = 2; }
  deliver(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
}
globalThis.WebSocket = FakeWebSocket;
globalThis.EventSource = FakeEventSource;

const { LiveConnection, describeState } = await import(process.argv[2]);
const tick = () => new Promise((resolve) => realSetTimeout(resolve, 5));
const out = {};

// 1. Acks: frames are counted per socket and acknowledged every ack_window/2 frames, a burst with one ack.
const conn = new LiveConnection();
const states = [];
conn.on("state", (s) => states.push(describeState(s)));
conn.subscribe(["iot.*"], { historyS: 60 });
conn.start();
const ws = sockets[0];
ws.open();
ws.deliver({ type: "hello", protocol: 1, limits: { ack_window: 4 } });
ws.deliver({ type: "subscribed", id: 1, metrics: [] });
ws.deliver({ type: "data", batches: [{ k: "iot.a.t", t: [10, 20], v: [1, 2] }] });
ws.deliver({ type: "data", batches: [{ k: "iot.a.t", t: [30], v: [3] }] });
await tick();
ws.deliver({ type: "data", batches: [{ k: "iot.a.t", t: [40], v: [4] }] });
await tick(); // frame 3: one unacknowledged, under half the window
ws.deliver({ type: "data", batches: [{ k: "iot.a.t", t: [40], v: [4] }] });
await tick();
out.sentOnFirstSocket = ws.sent;

// 2. A drop, then a resume that back-fills: cursors go in `since`, the state says how much came back.
ws.drop(1006);
await tick();
const again = sockets[1];
again.open();
again.deliver({ type: "hello", protocol: 1, limits: { ack_window: 4 } });
out.resumeSubscribe = again.sent[0];
again.deliver({ type: "data", replay: true, batches: [{ k: "iot.a.t", t: [50, 60, 70], v: [5, 6, 7] }] });
out.stateAfterBackfill = states[states.length - 1];
again.deliver({ type: "data", batches: [{ k: "iot.a.t", t: [80], v: [8] }] });
await tick();
out.acksOnSecondSocket = again.sent.filter((m) => m.type === "ack").map((m) => m.frame);

// 3. WebSocket upgrades blocked: after 3 sockets that never open, Server-Sent Events with the cursors.
again.drop(1006);
for (let i = 0; i < 3; i++) { await tick(); sockets[sockets.length - 1].drop(1006); }
await tick();
out.transport = conn.transport;
out.sseUrl = streams.length ? streams[0].url : null;
streams[0].deliver({ type: "hello", protocol: 1, limits: { ack_window: 0 } });
streams[0].deliver({ type: "data", batches: [{ k: "iot.a.t", t: [90], v: [9] }] });
out.cursorAfterSse = conn.cursors.get("iot.a.t");
out.stateOnSse = states[states.length - 1];
out.socketsOpened = sockets.length;
out.stale = describeState({ state: "reconnecting", transport: "websocket", staleSince: Date.UTC(2026, 0, 1, 12, 0, 0), backfilled: 0 });

// 4. The server's degraded and stale notices reach the top bar and the affected panels, as words, and clear.
const noticed = new LiveConnection();
const noticedStates = [];
noticed.on("state", (s) => noticedStates.push(describeState(s)));
noticed.subscribe(["iot.*"], { historyS: 60 });
noticed.start();
const ws4 = sockets[sockets.length - 1];
ws4.open();
ws4.deliver({ type: "hello", protocol: 1, limits: { ack_window: 4 } });
ws4.deliver({ type: "degraded", reason: "layer", state: "degraded", since: Date.UTC(2026, 0, 1, 12, 0, 0) * 1000 });
ws4.deliver({ type: "stale", metrics: ["iot.a.t"], state: "stale", since: Date.UTC(2026, 0, 1, 12, 0, 5) * 1000 });
out.degradedState = noticedStates[noticedStates.length - 1];
out.panelNotice = noticed.noticeFor(["iot.a.t", "iot.b.t"]);
out.otherPanelNotice = noticed.noticeFor(["iot.b.t"]);
ws4.deliver({ type: "degraded", reason: "layer", state: "ok", since: Date.UTC(2026, 0, 1, 12, 0, 0) * 1000 });
ws4.deliver({ type: "stale", metrics: ["iot.a.t"], state: "ok", since: Date.UTC(2026, 0, 1, 12, 0, 9) * 1000 });
out.recoveredState = noticedStates[noticedStates.length - 1];
out.recoveredNotice = noticed.noticeFor(["iot.a.t"]);
console.log(JSON.stringify(out));
process.exit(0);
