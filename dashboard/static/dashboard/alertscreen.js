// The alerts screen: every visible rule with its state and active instances, live over the tab's
// one socket (`alert` frames), history per rule, acknowledge/silence, and the rule editor with a
// live preview of the metrics a pattern matches. Rights are checked again on the server.

import { csrfToken } from "./alerts.js";
import { LiveConnection, showState } from "./connection.js";
import { formatTime, formatValue, viewerTimeZone } from "./format.js";

const SILENCES = [[900, "15 min"], [3600, "1 h"], [4 * 3600, "4 h"], [86400, "1 day"]];
const PREVIEW_DELAY_MS = 200; // typing pauses this long before the preview asks the server
const REFRESH_DELAY_MS = 150; // frames arriving together cost one reload of the list
const STATE_WORDS = { ok: "ok", pending: "pending", firing: "firing", silenced: "silenced", disabled: "disabled", nodata: "no data" };

const config = JSON.parse(document.getElementById("alerts-config").textContent);
const list = document.getElementById("rule-list");
const announcer = document.getElementById("alert-announcer");
const editor = document.getElementById("rule-editor");
const form = document.getElementById("rule-form");
const history = new Map(); // rule id -> {el, page}: open history sections survive a re-render
let rules = config.rules;

// --- Server ---------------------------------------------------------------------

async function request(method, url, body) {
  const init = { method, credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() } };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const response = await fetch(url, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error((data.error && data.error.message) || `HTTP ${response.status}`);
    err.detail = data.error || {};
    throw err;
  }
  return data;
}

let refreshTimer = null;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, REFRESH_DELAY_MS);
}

async function refresh() {
  try {
    const data = await request("GET", "/api/v1/alert-rules");
    announceRuleChanges(rules, data.rules);
    rules = data.rules;
    render();
    for (const [id, entry] of history) {
      const rule = rules.find((r) => r.id === id);
      if (rule) loadHistory(rule, entry); else history.delete(id);
    }
  } catch (err) { console.warn("pulseboard: reloading alert rules failed", err); }
}

// --- Announcements (aria-live) ---------------------------------------------------

function announce(text) {
  // Re-setting the same text is not announced again: clear first.
  announcer.textContent = "";
  requestAnimationFrame(() => { announcer.textContent = text; });
}

function announceRuleChanges(before, after) {
  const old = new Map(before.map((r) => [r.id, r.state]));
  const said = [];
  for (const r of after) {
    if (old.has(r.id) && old.get(r.id) !== r.state) said.push(`${r.name} is now ${STATE_WORDS[r.state] || r.state}`);
  }
  if (said.length) announce(said.join(". "));
}

// --- Rendering -------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function formatDateTime(ms, zone = viewerTimeZone()) {
  return new Date(ms).toLocaleString("en-GB", {
    timeZone: zone, hour12: false, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

function sinceText(us) {
  const ms = us / 1000;
  return Date.now() - ms < 20 * 3600 * 1000 ? formatTime(ms) : formatDateTime(ms);
}

function render() {
  list.replaceChildren();
  if (!rules.length) {
    list.append(el("p", { class: "empty", text: config.can_add ? "No alert rules yet: write one with New rule." : "No alert rules on metrics you may read." }));
    return;
  }
  for (const rule of rules) list.append(ruleCard(rule));
}

function ruleCard(rule) {
  const card = el("article", { class: `rule-card state-${rule.state} severity-${rule.severity}`, "data-rule-id": String(rule.id), "data-state": rule.state });
  const title = el("h2", { class: "rule-name", text: rule.name });
  const head = el("header", {},
    el("span", { class: "rule-state", text: STATE_WORDS[rule.state] || rule.state }),
    title,
    el("span", { class: "rule-severity", text: rule.severity }),
  );
  const what = el("p", { class: "rule-condition" },
    el("code", { class: "rule-pattern", text: rule.metric_pattern }),
    el("span", { text: " " + rule.condition_text }),
    el("span", { class: "rule-matches", text: ` · ${rule.matches} metric${rule.matches === 1 ? "" : "s"}` }),
  );
  card.append(head, what);
  if (rule.instances.length) card.append(instanceTable(rule));
  const tools = el("div", { class: "rule-tools" });
  const historyButton = el("button", { type: "button", class: "history-toggle", text: "History" });
  historyButton.setAttribute("aria-expanded", history.has(rule.id) ? "true" : "false");
  historyButton.addEventListener("click", () => toggleHistory(rule, card, historyButton));
  tools.append(historyButton);
  if (config.can_change) {
    const edit = el("button", { type: "button", class: "edit-rule", text: "Edit" });
    edit.setAttribute("aria-label", `Edit ${rule.name}`);
    edit.addEventListener("click", () => openEditor(rule));
    const toggle = el("button", { type: "button", class: "toggle-rule", text: rule.enabled ? "Disable" : "Enable" });
    toggle.setAttribute("aria-label", `${rule.enabled ? "Disable" : "Enable"} ${rule.name}`);
    toggle.addEventListener("click", () => act(toggle, () => request("PATCH", `/api/v1/alert-rules/${rule.id}`, { enabled: !rule.enabled })));
    tools.append(edit, toggle);
  }
  if (config.can_delete) {
    const del = el("button", { type: "button", class: "delete-rule danger", text: "Delete" });
    del.setAttribute("aria-label", `Delete ${rule.name}`);
    del.addEventListener("click", () => {
      if (!window.confirm(`Delete the rule "${rule.name}" and its history?`)) return;
      act(del, () => request("DELETE", `/api/v1/alert-rules/${rule.id}`));
    });
    tools.append(del);
  }
  card.append(tools);
  const open = history.get(rule.id);
  if (open) card.append(open.el);
  return card;
}

function instanceTable(rule) {
  const table = el("table", { class: "instances" });
  table.append(el("caption", { class: "sr-only", text: `Active alerts of ${rule.name}` }));
  table.append(el("thead", {}, el("tr", {}, ...["Metric", "State", "Value", "Since", ""].map((h) => el("th", { scope: "col", text: h })))));
  const body = el("tbody");
  for (const inst of rule.instances) {
    const row = el("tr", { class: `instance state-${inst.state}`, "data-instance": String(inst.id), "data-metric": inst.metric, "data-state": inst.state });
    row.append(
      el("td", { class: "metric" }, el("code", { text: inst.metric })),
      el("td", { class: "state", text: STATE_WORDS[inst.state] || inst.state }),
      el("td", { class: "value", text: formatValue(inst.value, inst.unit) }),
      el("td", { class: "since", "data-since": String(inst.since), text: sinceText(inst.since) }),
      el("td", { class: "ops" }, ...instanceOps(rule, inst)),
    );
    body.append(row);
  }
  table.append(body);
  return table;
}

function instanceOps(rule, inst) {
  const out = [];
  if (inst.acknowledged_by) out.push(el("span", { class: "ack-by", text: `✓ acknowledged by ${inst.acknowledged_by}` }));
  if (inst.silenced_until && inst.silenced_until / 1000 > Date.now()) out.push(el("span", { class: "silenced", text: `silenced until ${formatTime(inst.silenced_until / 1000)}` }));
  if (!config.can_operate) return out;
  if (!inst.acknowledged_by) {
    const ack = el("button", { type: "button", class: "ack", text: "Acknowledge" });
    ack.setAttribute("aria-label", `Acknowledge ${rule.name} on ${inst.metric}`);
    ack.addEventListener("click", () => act(ack, () => request("POST", `/api/v1/alerts/${inst.id}/ack`, {})));
    out.push(ack);
  }
  const select = el("select", { class: "silence" });
  select.setAttribute("aria-label", `Silence ${rule.name} on ${inst.metric}`);
  select.append(new Option("Silence…", ""));
  for (const [s, label] of SILENCES) select.append(new Option(`Silence ${label}`, String(s)));
  if (inst.silenced_until) select.append(new Option("Lift silence", "0"));
  select.addEventListener("change", () => {
    if (select.value !== "") act(select, () => request("POST", `/api/v1/alerts/${inst.id}/silence`, { duration_s: Number(select.value) }));
  });
  out.push(select);
  return out;
}

async function act(control, call) {
  control.disabled = true;
  try {
    await call();
    await refresh();
  } catch (err) {
    control.disabled = false;
    control.title = err.message;
    control.classList.add("failed");
    announce(err.message);
  }
}

// --- History ---------------------------------------------------------------------

function toggleHistory(rule, card, button) {
  const open = history.get(rule.id);
  if (open) {
    open.el.remove();
    history.delete(rule.id);
    button.setAttribute("aria-expanded", "false");
    return;
  }
  const section = el("section", { class: "rule-history", "aria-label": `History of ${rule.name}` });
  const entry = { el: section, page: 1 };
  history.set(rule.id, entry);
  card.append(section);
  button.setAttribute("aria-expanded", "true");
  loadHistory(rule, entry);
}

async function loadHistory(rule, entry) {
  let data;
  try {
    data = await request("GET", `/api/v1/alert-rules/${rule.id}/history?page=${entry.page}`);
  } catch (err) {
    entry.el.replaceChildren(el("p", { class: "error", text: err.message }));
    return;
  }
  const table = el("table", { class: "history" });
  table.append(el("thead", {}, el("tr", {}, ...["When", "Metric", "Change", "Value", "Message"].map((h) => el("th", { scope: "col", text: h })))));
  const body = el("tbody");
  for (const e of data.events) {
    body.append(el("tr", { "data-event": String(e.id) },
      el("td", { class: "at", text: formatDateTime(e.at / 1000) }),
      el("td", {}, el("code", { text: e.metric })),
      el("td", { text: `${STATE_WORDS[e.from_state] || e.from_state} → ${STATE_WORDS[e.to_state] || e.to_state}` }),
      el("td", { class: "value", text: formatValue(e.value, e.unit) }),
      el("td", { class: "message", text: e.message }),
    ));
  }
  table.append(body);
  const pager = el("div", { class: "pager" });
  const newer = el("button", { type: "button", class: "newer", text: "Newer", disabled: data.page <= 1 });
  const older = el("button", { type: "button", class: "older", text: "Older", disabled: data.page >= data.pages });
  newer.addEventListener("click", () => { entry.page -= 1; loadHistory(rule, entry); });
  older.addEventListener("click", () => { entry.page += 1; loadHistory(rule, entry); });
  pager.append(newer, el("span", { class: "page-of", text: `page ${data.page} of ${data.pages} · ${data.total} changes` }), older);
  entry.el.replaceChildren(data.events.length ? table : el("p", { class: "empty", text: "No state changes yet." }), pager);
}

// --- Editor ----------------------------------------------------------------------

const fields = {
  name: document.getElementById("rule-name"),
  metric_pattern: document.getElementById("rule-pattern"),
  condition: document.getElementById("rule-condition"),
  threshold: document.getElementById("rule-threshold"),
  threshold_high: document.getElementById("rule-threshold-high"),
  for_s: document.getElementById("rule-for"),
  nodata_s: document.getElementById("rule-nodata"),
  severity: document.getElementById("rule-severity"),
  webhook_url: document.getElementById("rule-webhook"),
  email_to: document.getElementById("rule-email"),
  enabled: document.getElementById("rule-enabled"),
  allow_empty_match: document.getElementById("rule-allow-empty"),
};
const previewEl = document.getElementById("rule-preview");
const errorEl = document.getElementById("rule-error");
let editing = null; // the rule being edited, null for a new one

for (const [value, label] of config.conditions) fields.condition.append(new Option(label, value));
for (const [value, label] of config.severities) fields.severity.append(new Option(label, value));
fields.severity.value = "warning";

function openEditor(rule = null) {
  editing = rule;
  document.getElementById("rule-editor-title").textContent = rule ? `Edit ${rule.name}` : "New rule";
  form.reset();
  clearErrors();
  const r = rule || { name: "", metric_pattern: "", condition: "above", threshold: null, threshold_high: null, for_s: 0, nodata_s: 60, severity: "warning", enabled: true, webhook_url: "", email_to: "" };
  for (const name of ["name", "metric_pattern", "condition", "severity", "webhook_url", "email_to"]) fields[name].value = r[name] ?? "";
  for (const name of ["threshold", "threshold_high", "for_s", "nodata_s"]) fields[name].value = r[name] === null || r[name] === undefined ? "" : String(r[name]);
  fields.enabled.checked = r.enabled;
  fields.allow_empty_match.checked = false;
  editor.hidden = false;
  fields.name.focus();
  updatePreview();
}

function closeEditor() { editor.hidden = true; editing = null; }

function clearErrors() {
  errorEl.textContent = "";
  for (const input of Object.values(fields)) input.removeAttribute("aria-invalid");
}

function numberOrNull(input) { return input.value.trim() === "" ? null : Number(input.value); }

function formBody() {
  return {
    name: fields.name.value.trim(),
    metric_pattern: fields.metric_pattern.value.trim(),
    condition: fields.condition.value,
    threshold: numberOrNull(fields.threshold),
    threshold_high: numberOrNull(fields.threshold_high),
    for_s: numberOrNull(fields.for_s) ?? 0,
    nodata_s: numberOrNull(fields.nodata_s) ?? 60,
    severity: fields.severity.value,
    enabled: fields.enabled.checked,
    webhook_url: fields.webhook_url.value.trim(),
    email_to: fields.email_to.value,
    allow_empty_match: fields.allow_empty_match.checked,
  };
}

let previewTimer = null;
let previewSeq = 0;
function updatePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(async () => {
    const pattern = fields.metric_pattern.value.trim();
    const seq = ++previewSeq;
    if (!pattern) { previewEl.replaceChildren(); return; }
    let data;
    try { data = await request("GET", `/api/v1/alert-rules/preview?pattern=${encodeURIComponent(pattern)}`); }
    catch (err) { if (seq === previewSeq) previewEl.textContent = err.message; return; }
    if (seq !== previewSeq) return; // an older answer arriving late
    showPreview(data);
  }, PREVIEW_DELAY_MS);
}

function showPreview(data) {
  previewEl.replaceChildren();
  previewEl.dataset.count = String(data.count);
  if (!data.count) {
    previewEl.append(el("span", { class: "preview-none", text: "Matches no metric you may read." }));
    if (data.suggestions && data.suggestions.length) previewEl.append(" Did you mean ", ...suggestionButtons(data.suggestions), "?");
    return;
  }
  previewEl.append(el("span", { class: "preview-count", text: `Matches ${data.count} metric${data.count === 1 ? "" : "s"}` }));
  const keys = el("ul", { class: "preview-keys" }, ...data.keys.map((k) => el("li", {}, el("code", { text: k }))));
  if (data.count > data.keys.length) keys.append(el("li", { class: "more", text: `… and ${data.count - data.keys.length} more` }));
  previewEl.append(keys);
}

function suggestionButtons(suggestions) {
  return suggestions.map((s) => {
    const b = el("button", { type: "button", class: "suggestion", text: s });
    b.setAttribute("aria-label", `Use ${s}`);
    b.addEventListener("click", () => { fields.metric_pattern.value = s; updatePreview(); fields.metric_pattern.focus(); });
    return b;
  });
}

fields.metric_pattern.addEventListener("input", updatePreview);
document.getElementById("rule-cancel").addEventListener("click", closeEditor);
document.getElementById("new-rule")?.addEventListener("click", () => openEditor(null));

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearErrors();
  const save = document.getElementById("rule-save");
  save.disabled = true;
  try {
    const body = formBody();
    if (editing) await request("PATCH", `/api/v1/alert-rules/${editing.id}`, body);
    else await request("POST", "/api/v1/alert-rules", body);
    closeEditor();
    await refresh();
    announce(`Rule ${body.name} saved`);
  } catch (err) {
    const field = err.detail && err.detail.field;
    errorEl.textContent = err.message;
    if (err.detail && err.detail.suggestions && err.detail.suggestions.length) errorEl.append(" ", ...suggestionButtons(err.detail.suggestions));
    if (field && fields[field]) { fields[field].setAttribute("aria-invalid", "true"); fields[field].focus(); }
  } finally {
    save.disabled = false;
  }
});

// --- Live ------------------------------------------------------------------------

render();
const conn = new LiveConnection();
showState(conn);
conn.on("alert", (frame) => {
  if (frame.previous !== frame.state) announce(frame.message || `${frame.rule_name}: ${frame.metric} ${STATE_WORDS[frame.state] || frame.state}`);
  scheduleRefresh();
});
conn.on("hello", () => scheduleRefresh()); // after a reconnect: what changed while away
conn.start();
