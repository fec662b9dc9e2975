// Runs the pure parts of panels.js and timerange.js in Node and prints the results as JSON
// for tests/test_panels_js.py: gap alignment, threshold colours, the URL time state.

const [panelsUrl, rangeUrl] = process.argv.slice(2);
globalThis.location = { search: "", pathname: "/d/host/" };
let replaced = null;
globalThis.history = { replaceState: (s, t, url) => { replaced = url; } };

const { alignWithGaps, thresholdColor } = await import(panelsUrl);
const { readTimeState, writeTimeState, bounds } = await import(rangeUrl);

const plain = (data) => data.map((col) => Array.from(col, (v) => (v === undefined ? "u" : v)));
const out = {};
// Two series sharing timestamps; b is silent from t=3 to t=9 (gap 5 s).
out.shared = plain(alignWithGaps([
  { t: [1, 2, 3, 4, 5, 6, 7, 8, 9], v: [1, 1, 1, 1, 1, 1, 1, 1, 1] },
  { t: [1, 2, 3, 9], v: [2, 2, 2, 2] },
], 5));
// Interleaved timestamps, no silences: the lines join across each other's samples.
out.interleaved = plain(alignWithGaps([{ t: [1, 3, 5], v: [1, 1, 1] }, { t: [2, 4, 6], v: [2, 2, 2] }], 5));
out.single = plain(alignWithGaps([{ t: [1, 2, 20, 21], v: [1, 2, 3, 4] }], 5));
const th = [{ value: 90, color: "red" }, { value: 75, color: "amber" }];
out.colors = [thresholdColor(50, th, "ok"), thresholdColor(80, th, "ok"), thresholdColor(95, th, "ok")];
out.states = ["", "?range=1h&paused=1", "?range=7d", "?from=1000&to=5000", "?range=bogus"].map((q) => readTimeState(q));
writeTimeState({ mode: "history", range: "custom", fromMs: 1000.4, toMs: 5000 });
out.written = replaced;
out.bounds = bounds({ mode: "live", range: "5m", windowS: 300 }, 1_000_000);
console.log(JSON.stringify(out));
