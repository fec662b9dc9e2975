// Source page: one live chart per metric, starting from the last minutes of history.

import { LiveChart } from "./chart.js";
import { AlertBanner } from "./alerts.js";
import { LiveConnection, showState } from "./connection.js";
import { SeriesStore } from "./store.js";

const metrics = JSON.parse(document.getElementById("metrics-config").textContent);
const windowSelect = document.getElementById("window");
const pauseButton = document.getElementById("pause");
const params = new URLSearchParams(location.search);
if (params.get("window")) windowSelect.value = params.get("window");
let windowS = Number(windowSelect.value);
let paused = false;

const store = new SeriesStore({ windowS: 3600 });
const container = document.getElementById("charts");
const charts = metrics.map((m) => {
  const panel = document.createElement("section");
  panel.className = "chart-panel";
  panel.dataset.key = m.key;
  container.appendChild(panel);
  return new LiveChart(panel, { title: `${m.name}${m.unit ? " (" + m.unit + ")" : ""}`, unit: m.unit, keys: [m.key], labels: [m.name] });
});

const conn = new LiveConnection();
showState(conn);
let dirty = false;
conn.on("data", (event) => {
  for (const b of event.batches) store.add(b.k, b.t, b.v);
  dirty = true;
});
conn.subscribe(metrics.map((m) => m.key), { historyS: 3600 });
conn.start();

// Active alerts in the banner, whatever page the operator is on.
const banner = new AlertBanner(undefined, { canOperate: document.body.dataset.operator === "1" });
banner.load();
conn.on("alert", (alert) => banner.update(alert));

function draw() {
  if (dirty && !paused) {
    for (const chart of charts) chart.update(store, windowS);
    dirty = false;
  }
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);
setInterval(() => { dirty = true; }, 1000); // keep the window sliding even when a metric is quiet

windowSelect.addEventListener("change", () => {
  windowS = Number(windowSelect.value);
  params.set("window", String(windowS));
  history.replaceState(null, "", "?" + params);
  dirty = true;
});
pauseButton.addEventListener("click", () => {
  paused = !paused;
  pauseButton.textContent = paused ? "Resume" : "Pause";
  dirty = true;
});
