// Bounded per-metric series: a ring of (t, v) evicted by age and by count,
// so a tab open for days holds the same memory as one open for minutes.

export class SeriesStore {
  constructor({ windowS = 300, maxPoints = 20000 } = {}) {
    this.windowS = windowS;
    this.maxPoints = maxPoints;
    this.series = new Map(); // key -> {t: number[] (seconds), v: number[]}
  }

  add(key, tsUs, values) {
    let s = this.series.get(key);
    if (!s) { s = { t: [], v: [] }; this.series.set(key, s); }
    for (let i = 0; i < tsUs.length; i++) {
      const t = tsUs[i] / 1e6;
      const n = s.t.length;
      if (n === 0 || t > s.t[n - 1]) { s.t.push(t); s.v.push(values[i]); }
      else if (t < s.t[n - 1]) { // late or back-filled sample: insert in order, skip exact duplicates
        let lo = 0, hi = n;
        while (lo < hi) { const mid = (lo + hi) >> 1; if (s.t[mid] < t) lo = mid + 1; else hi = mid; }
        if (s.t[lo] !== t) { s.t.splice(lo, 0, t); s.v.splice(lo, 0, values[i]); }
      }
    }
    this.evict(s);
  }

  evict(s, nowS = Date.now() / 1000) {
    const cutoff = nowS - this.windowS;
    let drop = 0;
    while (drop < s.t.length && s.t[drop] < cutoff) drop++;
    drop = Math.max(drop, s.t.length - this.maxPoints);
    if (drop > 0) { s.t.splice(0, drop); s.v.splice(0, drop); }
  }

  get(key) { return this.series.get(key) || { t: [], v: [] }; }

  latest(key) {
    const s = this.series.get(key);
    return s && s.t.length ? { t: s.t[s.t.length - 1], v: s.v[s.v.length - 1] } : null;
  }

  // Align several series on one time axis for uPlot; missing points are null (drawn as gaps).
  aligned(keys) {
    const times = new Set();
    for (const k of keys) for (const t of this.get(k).t) times.add(t);
    const xs = Float64Array.from([...times].sort((a, b) => a - b));
    const index = new Map(Array.from(xs, (t, i) => [t, i]));
    const ys = keys.map((k) => {
      const out = new Array(xs.length).fill(null);
      const s = this.get(k);
      for (let i = 0; i < s.t.length; i++) out[index.get(s.t[i])] = s.v[i];
      return out;
    });
    return [xs, ...ys];
  }
}
