// A live time-series chart around uPlot (window.uPlot, copied from npm by `make static`).

import { formatValue, viewerTimeZone } from "./format.js";

const COLORS = ["#4f9cf9", "#f5a524", "#3ccf91", "#f3616d", "#b48cf2", "#37c6d0", "#e879b9", "#a3a3a3"];

export class LiveChart {
  constructor(el, { title, unit = "", keys, labels, height = 220, gapS = 30 }) {
    this.el = el;
    this.keys = keys;
    this.unit = unit;
    this.gapS = gapS;
    const zone = viewerTimeZone();
    const opts = {
      title,
      width: Math.max(el.clientWidth, 280),
      height,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), zone),
      scales: { x: { time: true } },
      axes: [
        { stroke: "#9aa4b2", grid: { stroke: "#2a3140" } },
        { stroke: "#9aa4b2", grid: { stroke: "#2a3140" }, size: 70, values: (u, vals) => vals.map((v) => formatValue(v, unit)) },
      ],
      series: [
        {},
        ...keys.map((k, i) => ({
          label: labels ? labels[i] : k,
          stroke: COLORS[i % COLORS.length],
          width: 1.5,
          spanGaps: false,
          value: (u, v) => formatValue(v, unit),
        })),
      ],
      legend: { live: true },
    };
    this.plot = new uPlot(opts, [[], ...keys.map(() => [])], el);
    new ResizeObserver(() => this.plot.setSize({ width: Math.max(el.clientWidth, 280), height })).observe(el);
  }

  // Draw from a SeriesStore; a silence longer than gapS seconds becomes a visible gap.
  update(store, windowS) {
    const data = store.aligned(this.keys);
    const withGaps = insertGaps(data, this.gapS);
    const now = Date.now() / 1000;
    this.plot.setData(withGaps, false);
    this.plot.setScale("x", { min: now - windowS, max: now });
  }
}

function insertGaps(data, gapS) {
  const xs = data[0];
  if (xs.length < 2) return data;
  const out = data.map(() => []);
  for (let i = 0; i < xs.length; i++) {
    if (i > 0 && xs[i] - xs[i - 1] > gapS) {
      out[0].push(xs[i - 1] + gapS / 2);
      for (let s = 1; s < data.length; s++) out[s].push(null);
    }
    for (let s = 0; s < data.length; s++) out[s].push(data[s][i]);
  }
  return out;
}
