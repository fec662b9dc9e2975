// Drives connection.js through sign-out and a return from Server-Sent Events to WebSocket with fake
// WebSocket, EventSource and fetch (Node has none of them), and prints what happened as JSON for
// tests/test_connection_js.py.

const sockets = [];
const streams = [];
globalThis.location = { protocol: "http:", host: "pulse.test", pathname: "/dashboards/ops/", search: "?range=6h&panel=2", href: "" };
globalThis.window = { location: globalThis.location };
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn) => realSetTimeout(fn, 0); // backoff without the waiting
globalThis.setInterval = () => 0;
let fetchStatus = 200;
const fetched = [];
globalThis.fetch = async (url, options) => { fetched.push(url); return { status: fetchStatus }; };

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
  refuse() { this.readyState = 2; this.onerror?.(); }
}
globalThis.WebSocket = FakeWebSocket;
globalThis.EventSource = FakeEventSource;

const { LiveConnection } = await import(process.argv[2]);
const tick = () => new Promise((resolve) => realSetTimeout(resolve, 5));
const hello = { type: "hello", protocol: 1, limits: { ack_window: 4 } };
const out = {};

// Down for more than ~3.5 s: three sockets that never open, then Server-Sent Events.
async function toSse(conn) {
  const first = sockets[sockets.length - 1];
  first.open();
  first.deliver(hello);
  first.deliver({ type: "data", batches: [{ k: "iot.a.t", t: [10], v: [1] }] });
  first.drop(1006);
  for (let i = 0; i < 3; i++) { await tick(); sockets[sockets.length - 1].drop(1006); }
  await tick();
  return conn;
}

// 1. On SSE, WebSocket is probed at 1, 2, 4 ... s and the first probe the server greets takes over,
//    resuming from the cursors SSE advanced; the stream is closed.
let conn = new LiveConnection();
conn.subscribe(["iot.*"], { historyS: 60 });
conn.start();
await toSse(conn);
out.transportAfterOutage = conn.transport;
const stream = streams[streams.length - 1];
stream.deliver(hello);
stream.deliver({ type: "data", batches: [{ k: "iot.a.t", t: [20, 30], v: [2, 3] }] });
const probeDelays = [conn.lastProbeDelay];
for (let i = 0; i < 3; i++) {
  await tick(); // the probe opens a socket the server does not greet (still down)
  sockets[sockets.length - 1].drop(1006);
  probeDelays.push(conn.lastProbeDelay);
}
out.probeDelays = probeDelays;
await tick();
const probe = sockets[sockets.length - 1];
probe.open();
probe.deliver(hello);
out.transportAfterProbe = conn.transport;
out.streamClosed = stream.readyState === 2;
out.probeIsTheConnection = conn.ws === probe;
out.resumeOnProbe = probe.sent[0];
out.socketsAfterProbe = sockets.length;
await tick();
out.socketsLater = sockets.length; // no second socket after the probe

// 2. Close 4001 on the socket: the sign-in page, with next back to this page and its query.
probe.drop(4001);
out.hrefAfter4001 = location.href;
out.stateAfter4001 = conn.state;

// 3. On SSE, the stream refused with 401 (the session ended): sign in instead of retrying forever.
location.href = "";
conn = new LiveConnection();
conn.subscribe(["iot.*"], { historyS: 60 });
conn.start();
await toSse(conn);
const refused = streams[streams.length - 1];
const streamsBefore = streams.length;
fetchStatus = 401;
refused.refuse();
await tick();
await tick();
out.fetchedOn401 = fetched[fetched.length - 1];
out.hrefAfter401 = location.href;
out.stateAfter401 = conn.state;
out.streamsOpenedAfter401 = streams.length - streamsBefore;

// 4. A refused stream that is not 401 (server down): the retries go on.
location.href = "";
fetchStatus = 502;
conn = new LiveConnection();
conn.subscribe(["iot.*"], { historyS: 60 });
conn.start();
await toSse(conn);
const down = streams[streams.length - 1];
const before = streams.length;
down.refuse();
await tick();
await tick();
out.hrefAfter502 = location.href;
out.streamsOpenedAfter502 = streams.length - before;

console.log(JSON.stringify(out));
process.exit(0);
