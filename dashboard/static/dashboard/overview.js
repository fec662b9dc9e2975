// Overview page: latest value of every metric, updated live over the tab's one socket.

import { AlertBanner } from "./alerts.js";
import { LiveConnection, showState } from "./connection.js";
import { formatValue } from "./format.js";

const cells = new Map();
for (const row of document.querySelectorAll("tr[data-key]")) {
  const cell = row.querySelector(".value");
  cells.set(row.dataset.key, cell);
  if (cell.dataset.value !== "") cell.textContent = formatValue(Number(cell.dataset.value), cell.dataset.unit);
  row.querySelector(".unit").textContent = "";
}

const conn = new LiveConnection();
showState(conn);
conn.on("data", (event) => {
  for (const b of event.batches) {
    const cell = cells.get(b.k);
    if (!cell) continue;
    cell.textContent = formatValue(b.v[b.v.length - 1], cell.dataset.unit);
    cell.dataset.updated = String(Date.now());
    if (!event.replay) { cell.classList.remove("flash"); void cell.offsetWidth; cell.classList.add("flash"); }
  }
});
const sources = [...document.querySelectorAll(".source-card")].map((el) => el.dataset.source + ".*");
if (sources.length) conn.subscribe(sources, { historyS: 0, maxRate: 4 });
conn.start();

// Active alerts in the banner, whatever page the operator is on.
const banner = new AlertBanner(undefined, { canOperate: document.body.dataset.operator === "1" });
banner.load();
conn.on("alert", (alert) => banner.update(alert));

// A source silent for three expected intervals is marked stale.
setInterval(() => {
  const now = Date.now();
  for (const card of document.querySelectorAll(".source-card")) {
    let newest = Number(card.querySelector(".staleness").dataset.lastSeen || 0) * 1000;
    for (const cell of card.querySelectorAll(".value")) newest = Math.max(newest, Number(cell.dataset.updated || 0));
    const interval = Number(card.querySelector(".staleness").dataset.interval || 10) * 1000;
    const stale = now - newest > 3 * interval;
    card.classList.toggle("stale", stale);
    card.querySelector(".staleness").textContent = stale && newest ? "stale since " + new Date(newest).toLocaleTimeString() : stale ? "no data" : "";
  }
}, 2000);
