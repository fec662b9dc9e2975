// Share page (kiosk): one live chart per panel of the shared dashboard, over the share link's own socket.

import { LiveChart } from "./chart.js";
import { LiveConnection, showState } from "./connection.js";
import { SeriesStore } from "./store.js";

const WINDOW_S = 900;
const panels = JSON.parse(document.getElementById("share-panels").textContent);
const container = document.getElementById("charts");
const scheme = location.protocol === "https:" ? "wss" : "ws";
const conn = new LiveConnection(`${scheme}://${location.host}${container.dataset.socket}`);
const store = new SeriesStore({ windowS: WINDOW_S });
const charts = [];

// Panels name keys or globs; a chart is made per panel once the server says which keys they resolve to.
const patterns = [...new Set(panels.flatMap((p) => p.metrics))];
const keysByPattern = new Map();
conn.on("subscribed", (event) => {
  for (const m of event.metrics) keysByPattern.set(m.key, m);
  if (charts.length) return;
  for (const panel of panels) {
    const keys = [...keysByPattern.keys()].filter((k) => panel.metrics.some((p) => globMatch(p, k)));
    if (!keys.length) continue;
    const el = document.createElement("section");
    el.className = "chart-panel";
    container.appendChild(el);
    const unit = (panel.options && panel.options.unit) || keysByPattern.get(keys[0]).unit;
    charts.push(new LiveChart(el, { title: panel.title, unit, keys }));
  }
});
conn.on("data", (event) => { for (const b of event.batches) store.add(b.k, b.t, b.v); });
showState(conn);
conn.subscribe(patterns, { historyS: WINDOW_S });
conn.start();

function globMatch(pattern, key) {
  const re = new RegExp("^" + pattern.replace(/[.+^${}()|\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$");
  return re.test(key);
}

setInterval(() => { for (const chart of charts) chart.update(store, WINDOW_S); }, 1000);
