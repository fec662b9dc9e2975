// The alert banner: active alerts (from GET /api/v1/alerts, then live `alert` frames),
// with acknowledge and silence for operators (POST endpoints, checked on the server).

import { formatTime } from "./format.js";

const ACTIVE = new Set(["pending", "firing", "nodata"]);
const SILENCES = [[900, "15 min"], [3600, "1 h"], [4 * 3600, "4 h"], [86400, "1 day"]];

export function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

export async function postJSON(url, body = {}) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((data.error && data.error.message) || `HTTP ${response.status}`);
  return data;
}

export class AlertBanner {
  constructor(el = document.getElementById("alert-banner"), { canOperate = false } = {}) {
    this.el = el;
    this.el.setAttribute("role", "alert"); // screen readers announce a new or changed alert
    this.canOperate = canOperate;
    this.alerts = new Map(); // "rule|metric" -> latest alert frame
  }

  async load() {
    try {
      const response = await fetch("/api/v1/alerts", { credentials: "same-origin" });
      if (!response.ok) return [];
      const { alerts } = await response.json();
      for (const a of alerts) this.alerts.set(`${a.rule}|${a.metric}`, a);
      this.render();
      return alerts;
    } catch { return []; }
  }

  // Apply one live `alert` frame; return it for the panels to annotate.
  update(alert) {
    const id = `${alert.rule}|${alert.metric}`;
    const known = this.alerts.get(id);
    // An acknowledgement or silence (state == previous) does not restart the alert: keep its "since".
    if (known && alert.previous === alert.state && known.state === alert.state) alert = { ...alert, at: known.at };
    if (ACTIVE.has(alert.state)) this.alerts.set(id, alert);
    else this.alerts.delete(id);
    this.render();
    if (alert.previous !== alert.state && alert.state === "firing") this.flash();
    return alert;
  }

  flash() { this.el.classList.remove("flash-in"); void this.el.offsetWidth; this.el.classList.add("flash-in"); }

  render() {
    const list = [...this.alerts.values()].sort((a, b) => rank(b) - rank(a) || b.at - a.at);
    this.el.hidden = list.length === 0;
    this.el.replaceChildren();
    this.el.dataset.worst = list.length ? list[0].state : "";
    for (const a of list) this.el.append(this.row(a));
  }

  row(a) {
    const row = document.createElement("div");
    row.className = `alert-row state-${a.state} severity-${a.severity}`;
    row.dataset.metric = a.metric;
    row.dataset.state = a.state;
    row.innerHTML = `<span class="alert-state"></span><strong class="alert-name"></strong><span class="alert-msg"></span><span class="alert-since"></span><span class="alert-actions"></span>`;
    row.querySelector(".alert-state").textContent = a.state === "nodata" ? "no data" : a.state;
    row.querySelector(".alert-name").textContent = a.rule_name;
    row.querySelector(".alert-msg").textContent = a.message;
    row.querySelector(".alert-since").textContent = "since " + formatTime(a.at / 1000);
    const actions = row.querySelector(".alert-actions");
    if (a.acknowledged_by) actions.append(tag("ack-by", `✓ acknowledged by ${a.acknowledged_by}`));
    if (a.silenced_until && a.silenced_until / 1000 > Date.now()) actions.append(tag("silenced", `🔕 silenced until ${formatTime(a.silenced_until / 1000)}`));
    if (this.canOperate && a.instance) {
      if (!a.acknowledged_by) {
        const ack = button("Acknowledge", "ack");
        ack.addEventListener("click", () => this.act(`/api/v1/alerts/${a.instance}/ack`, {}, ack));
        actions.append(ack);
      }
      const select = document.createElement("select");
      select.className = "silence";
      select.setAttribute("aria-label", "Silence notifications");
      select.append(new Option("Silence…", ""));
      for (const [s, label] of SILENCES) select.append(new Option(`Silence ${label}`, String(s)));
      if (a.silenced_until) select.append(new Option("Lift silence", "0"));
      select.addEventListener("change", () => { if (select.value !== "") this.act(`/api/v1/alerts/${a.instance}/silence`, { duration_s: Number(select.value) }, select); });
      actions.append(select);
    }
    return row;
  }

  async act(url, body, control) {
    control.disabled = true;
    try { this.update(await postJSON(url, body)); }
    catch (err) { control.disabled = false; control.title = err.message; control.classList.add("failed"); }
  }
}

function rank(a) { return a.state === "firing" ? 3 : a.state === "nodata" ? 2 : 1; }
function tag(cls, text) { const s = document.createElement("span"); s.className = cls; s.textContent = text; return s; }
function button(text, cls) { const b = document.createElement("button"); b.type = "button"; b.className = cls; b.textContent = text; return b; }
