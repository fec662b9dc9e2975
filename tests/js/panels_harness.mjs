// Runs the pure parts of panels.js and timerange.js in Node and prints the results as JSON
// for tests/test_panels_js.py: gap alignment, threshold colours, the URL time state.

const [panelsUrl, rangeUrl] = process.argv.slice(2);
globalThis.location = { search: "", pathname: "/d/host/" };
let replaced = null;
globalThis.history = { replaceState: (s, t, url) => { replaced = url; } };

const { alignWithGaps, gapSeconds, isolatedPoints, thresholdColor, yScale } = await import(panelsUrl);
const { readTimeState, writeTimeState, bounds } = await import(rangeUrl);
const { formatInputTime, parseInputTime, formatTime, formatDateTime, formatValue } = await import(new URL("format.js", panelsUrl).href);
const { settle, previewMatches, expandVariables } = await import(new URL("editor.js", panelsUrl).href);

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
// The gap rule: a 2 s sensor in 0.26 s history buckets (centres jitter by a bucket) is one line.
const sensor = { t: [], v: [] };
for (let i = 0; i < 120; i++) { sensor.t.push(1000 + i * 2 + (i % 3) * 0.26); sensor.v.push(20 + (i === 60 ? 9 : 0)); }
out.sensorGap = gapSeconds(sensor.t, { stepS: 0.26, expectedS: 2 });
out.sensorNulls = alignWithGaps([sensor], out.sensorGap)[1].filter((v) => v === null).length;
out.sensorOldNulls = alignWithGaps([sensor], 0.26 * 2.5)[1].filter((v) => v === null).length; // the old rule
out.fewPointsGap = gapSeconds([5], { stepS: 0, expectedS: 2 });
out.unknownGap = gapSeconds([], {});
out.bucketGap = gapSeconds([0, 600, 1200, 1800], { stepS: 600, expectedS: 10 });
// A 2 s sensor that lost 30 s: still a gap.
const lost = { t: [0, 2, 4, 6, 8, 40, 42, 44], v: [1, 1, 1, 1, 1, 1, 1, 1] };
out.lostNulls = alignWithGaps([lost], gapSeconds(lost.t, { expectedS: 2 }))[1].filter((v) => v === null).length;
// Per-series gaps: a fast and a slow series aligned together, each broken by its own interval.
out.perSeries = plain(alignWithGaps([{ t: [0, 1, 2, 3, 10, 11], v: [1, 1, 1, 1, 1, 1] }, { t: [0, 10], v: [2, 2] }], [3, 50]));
out.isolated = [
  isolatedPoints([5]),
  isolatedPoints([null, 5, null, 1, 2, null, 7]),
  isolatedPoints([1, undefined, null, undefined, 4, undefined, null]),
  isolatedPoints([1, undefined, 2]),
  isolatedPoints([null, 3, 4, null, 5, 6, 7], [0, 600, 1200, 1800, 2400, 3000, 9000], 700),
];
const th = [{ value: 90, color: "red" }, { value: 75, color: "amber" }];
out.colors = [thresholdColor(50, th, "ok"), thresholdColor(80, th, "ok"), thresholdColor(95, th, "ok")];
out.states = ["", "?range=1h&paused=1", "?range=7d", "?from=1000&to=5000", "?range=bogus"].map((q) => readTimeState(q));
writeTimeState({ mode: "history", range: "custom", fromMs: 1000.4, toMs: 5000 });
out.written = replaced;
out.bounds = bounds({ mode: "live", range: "5m", windowS: 300 }, 1_000_000);
// Times in the chosen zone, 24-hour, both ways (the custom-range inputs, "stale since", the banner).
const t = Date.UTC(2026, 6, 1, 22, 5, 9); // 2026-07-01 22:05:09 UTC
out.times = {
  input: [formatInputTime(t, "Europe/Berlin"), formatInputTime(t, "America/New_York"), formatInputTime(t, "UTC")],
  clock: [formatTime(t, "Asia/Tokyo"), formatTime(Date.UTC(2026, 0, 1, 0, 30), "UTC")],
  full: formatDateTime(t, "Asia/Tokyo"),
  parsed: [
    parseInputTime("2026-07-02 00:05", "Europe/Berlin") === t - 9000,
    parseInputTime("2026-07-01 18:05:09", "America/New_York") === t,
    parseInputTime("2026-03-29 03:30", "Europe/Berlin") === Date.UTC(2026, 2, 29, 1, 30), // the day clocks go forward
  ],
  refused: [parseInputTime("2026-02-30 10:00", "UTC"), parseInputTime("07/01/2026 10:00 PM", "UTC"), parseInputTime("2026-07-01 24:00", "UTC")],
};
// The editor's auto-placement: a panel widened over its neighbours pushes them (and theirs) down.
const board = [
  { title: "a", x: 0, y: 0, w: 4, h: 2 }, { title: "b", x: 4, y: 0, w: 4, h: 2 },
  { title: "c", x: 0, y: 2, w: 8, h: 5 }, { title: "d", x: 8, y: 0, w: 4, h: 7 },
];
board[0].w = 6; // now covers b
const pushed = settle(board, board[0]);
out.settled = { cells: board.map((p) => [p.title, p.x, p.y, p.w, p.h]), pushed: pushed.map((p) => p.title) };
// The editor's preview of what a metrics field matches, with the server's glob rules (fnmatch).
const keys = ["iot.sensor-01.temperature", "iot.sensor-02.temperature", "iot.sensor-01.humidity", "host.a.cpu.core1", "host.a.cpu.core2", "a.b(c)"];
const patterns = "iot.*.temperature, iot.*.temprature,host.a.cpu.core[12],host.a.cpu.core[!1], iot.sensor-0?.humidity, a.b(c), a?b*, a.b[(]c?, [";
out.preview = { keys, patterns: previewMatches(patterns, keys).map((f) => f.pattern), counts: previewMatches(patterns, keys).map((f) => f.count) };
// Board variables: `$device` stands for the current choice, or the glob's rest for All.
out.expanded = [expandVariables("iot.$device.temperature", { device: "boiler-1" }), expandVariables("iot.$device.t", { device: "*" }), expandVariables("iot.$room.t", { device: "*" })];
out.variableCounts = previewMatches("iot.$device.temperature", keys, { device: "*" }).map((f) => f.count)
  .concat(previewMatches("iot.$device.temperature", keys, { device: "sensor-02" }).map((f) => f.count));
// A panel's decimals, and its min/max as the value axis (a side left out follows the data).
out.decimals = [formatValue(21.456, "°C", 1), formatValue(21.456, "°C"), formatValue(0, "%", 2), formatValue(123456, "", 0), formatValue(2048, "B", 0)];
const range = (o, lo, hi) => { const s = yScale(o); return s.range ? s.range(null, lo, hi) : "auto"; };
out.yRanges = [range({}, 1, 2), range({ min: 0, max: 60 }, 20, 25), range({ min: 0 }, 20, 30), range({ max: 10 }, 20, 30), range({ min: 0, max: 5 }, null, null)];
console.log(JSON.stringify(out));
