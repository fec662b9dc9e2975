// In-page layout editing for users with edit rights: add, edit, duplicate, move, resize and remove
// panels, declare the board's variables, then save the whole layout (POST
// /api/v1/dashboards/<slug>/layout; checked on the server by the one schema, dashboard/layout.py).
// The panel editor is a dialog: kind, title, metrics (suggestions and a live match count), unit,
// decimals, min/max, thresholds, series colours, legend options, and a live preview of the panel.

import { postJSON } from "./alerts.js";
import { COLORS, makePanel } from "./panels.js";

const COLUMNS = 12;
const TOOLS = [
  ["←", "move left", (p) => { p.x = Math.max(0, p.x - 1); }],
  ["→", "move right", (p) => { p.x = Math.min(COLUMNS - p.w, p.x + 1); }],
  ["↑", "move up", (p) => { p.y = Math.max(0, p.y - 1); }],
  ["↓", "move down", (p) => { p.y += 1; }],
  ["−w", "narrower", (p) => { p.w = Math.max(2, p.w - 1); }],
  ["+w", "wider", (p) => { p.w = Math.min(COLUMNS, p.w + 1); p.x = Math.min(p.x, COLUMNS - p.w); }],
  ["−h", "shorter", (p) => { p.h = Math.max(2, p.h - 1); }],
  ["+h", "taller", (p) => { p.h = Math.min(12, p.h + 1); }],
];

function overlap(a, b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

// Auto-place after a move or resize: every panel the moved one now covers slides down below it,
// and so on down the board, so a layout never has two panels in one cell (the server refuses that too).
// Returns the panels that moved.
export function settle(panels, moved) {
  const pushed = new Set();
  const queue = [moved];
  while (queue.length) {
    const p = queue.shift();
    for (const q of panels) {
      if (q === p || q === moved || !overlap(p, q)) continue;
      q.y = p.y + p.h;
      pushed.add(q);
      queue.push(q);
    }
  }
  return [...pushed];
}

// fnmatch as the server matches globs (dashboard/models.py glob_matches): * any run, ? one character, [...] a set.
export function globMatch(pattern, key) {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      const end = pattern.indexOf("]", i + 2);
      if (end < 0) { re += "\\["; continue; }
      let body = pattern.slice(i + 1, end).replace(/\\/g, "\\\\");
      if (body[0] === "!") body = "^" + body.slice(1);
      re += `[${body}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp(`^${re}$`, "s").test(key);
}

// `$name` in a pattern replaced by the variable's current pattern ({device: "*"}), as the server does.
export function expandVariables(pattern, values = {}) {
  return pattern.replace(/\$([A-Za-z_][A-Za-z0-9_]*)/g, (all, name) => (name in values ? values[name] : all));
}

// What the metrics field will draw: per pattern, how many readable series it matches.
export function previewMatches(text, keys, values = {}) {
  const patterns = String(text).split(",").map((s) => s.trim()).filter(Boolean);
  return patterns.map((p) => ({ pattern: p, count: keys.filter((k) => globMatch(expandVariables(p, values), k)).length }));
}

const MAX_PREVIEW_SERIES = 40; // panels.py MAX_KEYS_PER_PANEL
const PREVIEW_DRAW_MS = 500;
const EDITED_OPTIONS = ["unit", "decimals", "min", "max", "thresholds", "colors", "legend"];
const LEGEND_VALUES = ["latest", "min", "max"];

// The panel the dialog's form describes, on top of `base` (options the dialog does not edit stay).
export function specFromForm(form, base = {}, { colorsTouched = false } = {}) {
  const f = form.elements;
  const number = (name) => (f[name].value.trim() === "" ? null : Number(f[name].value));
  const options = { ...(base.options || {}) };
  for (const k of EDITED_OPTIONS) delete options[k];
  if (f.unit.value.trim()) options.unit = f.unit.value.trim();
  if (number("decimals") !== null) options.decimals = number("decimals");
  if (number("min") !== null) options.min = number("min");
  if (number("max") !== null) options.max = number("max");
  const thresholds = [...form.querySelectorAll(".threshold-row")]
    .map((row) => ({ value: row.querySelector("input[type=number]").value, color: row.querySelector("input[type=color]").value }))
    .filter((t) => t.value.trim() !== "")
    .map((t) => ({ value: Number(t.value), color: t.color }));
  if (thresholds.length) options.thresholds = thresholds;
  if (colorsTouched) options.colors = [...form.querySelectorAll("#color-list input[type=color]")].map((c) => c.value);
  const values = LEGEND_VALUES.filter((v) => f[`legend_${v}`].checked);
  if (!f.legend_show.checked || values.length < LEGEND_VALUES.length) options.legend = { show: f.legend_show.checked, values };
  return {
    title: f.title.value.trim(),
    kind: f.kind.value,
    metrics: f.metrics.value.split(",").map((s) => s.trim()).filter(Boolean),
    options,
  };
}

export class LayoutEditor {
  constructor(page) {
    this.page = page;
    this.bar = document.getElementById("editor-bar");
    this.toggle = document.getElementById("edit-toggle");
    this.status = document.getElementById("edit-status");
    if (!this.bar || !this.toggle) return;
    this.toggle.addEventListener("click", () => this.setEditing(!this.editing));
    document.getElementById("edit-cancel").addEventListener("click", () => { this.page.rebuild(this.saved); this.page.renderVariables(); this.renderVariables(); this.setEditing(false); });
    document.getElementById("edit-save").addEventListener("click", () => this.save());
    this.bar.addEventListener("submit", (e) => e.preventDefault());
    document.getElementById("add-panel").addEventListener("click", () => this.open(null));
    document.getElementById("add-variable").addEventListener("click", () => this.addVariable());
    this.dialog = document.getElementById("panel-dialog");
    this.form = document.getElementById("panel-form");
    this.metricsInput = this.form.elements.metrics;
    this.preview = document.getElementById("metrics-preview");
    this.form.addEventListener("input", (e) => {
      if (e.target.type === "color" && e.target.closest("#color-list")) this.colorsTouched = true;
      this.schedulePreview();
    });
    this.form.addEventListener("change", () => this.schedulePreview());
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.apply(); });
    document.getElementById("panel-cancel").addEventListener("click", () => this.closeDialog());
    this.dialog.addEventListener("close", () => this.stopPreview());
    document.getElementById("add-threshold").addEventListener("click", () => { this.addThreshold(); this.schedulePreview(); });
    this.renderVariables();
    if (new URLSearchParams(location.search).get("edit") === "1") this.setEditing(true);
  }

  // The metrics the user may read, once per editing session: suggestions and the match preview.
  async loadMetrics() {
    if (this.metrics) return;
    try {
      const response = await fetch("/api/v1/metrics", { credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      this.metrics = (await response.json()).metrics;
    } catch (err) { console.warn("pulseboard: metric list", err); this.metrics = []; return; }
    this.fillSuggestions();
    this.showPreview();
  }

  // Suggestions: per-name globs, the same through each board variable (iot.$device.temperature), every key.
  fillSuggestions() {
    if (!this.metrics) return;
    const list = document.getElementById("metric-keys");
    const globs = new Set(this.metrics.map((m) => `${m.source.split(".")[0]}.*.${m.name}`));
    for (const v of this.page.config.variables || []) {
      const prefix = v.glob.slice(0, v.glob.length - (v.pattern ?? v.glob).length);
      for (const m of this.metrics) if (m.key.startsWith(prefix)) globs.add(`${prefix}$${v.name}.${m.name}`);
    }
    list.replaceChildren(...[...globs].sort().concat(this.metrics.map((m) => m.key).sort()).map((value) => new Option(value, value)));
  }

  // Each variable's current pattern (its value, or its glob for All): what `$name` stands for now.
  variableValues() {
    return Object.fromEntries((this.page.config.variables || []).map((v) => [v.name, v.pattern ?? v.glob]));
  }

  // The readable metrics the dialog's patterns match now, as the server will resolve them.
  matched(patterns) {
    const values = this.variableValues();
    const found = [];
    for (const p of patterns) {
      for (const m of this.metrics || []) {
        if (found.length >= MAX_PREVIEW_SERIES) return found;
        if (!found.includes(m) && globMatch(expandVariables(p, values), m.key)) found.push(m);
      }
    }
    return found.sort((a, b) => a.key.localeCompare(b.key));
  }

  showPreview() {
    if (!this.preview || !this.metrics) return;
    const found = previewMatches(this.metricsInput.value, this.metrics.map((m) => m.key), this.variableValues());
    const none = found.filter((f) => f.count === 0).map((f) => f.pattern);
    const total = found.reduce((n, f) => n + f.count, 0);
    this.preview.dataset.state = none.length ? "none" : "ok";
    this.preview.textContent = !found.length ? "" : none.length ? `${none.join(", ")} matches nothing you may read: check the spelling` : `${total} series`;
    const units = [...new Set(this.matched(found.map((f) => f.pattern)).map((m) => m.unit))];
    this.form.elements.unit.placeholder = units.length === 1 && units[0] ? units[0] : "Unit";
  }

  setEditing(on) {
    this.editing = on;
    if (on) { this.saved = structuredClone(this.page.config); this.loadMetrics(); }
    this.bar.hidden = !on;
    this.toggle.textContent = on ? "Done" : "Edit";
    this.toggle.classList.toggle("primary", on);
    document.getElementById("panels").classList.toggle("editing", on);
    this.decorate();
  }

  // Tool strip on every panel while editing.
  decorate() {
    for (const node of document.querySelectorAll(".panel-tools")) node.remove();
    if (!this.editing) return;
    this.page.config.panels.forEach((spec, index) => {
      const root = this.page.panelRoots[index];
      const tools = document.createElement("div");
      tools.className = "panel-tools";
      const tool = (text, title, name, onClick) => {
        const b = document.createElement("button");
        b.type = "button"; b.textContent = text; b.title = title; b.dataset.tool = name;
        b.addEventListener("click", onClick);
        tools.append(b);
        return b;
      };
      if (spec.kind !== "broken") {
        tool("✎", "edit panel", "edit", () => this.open(index));
        tool("⧉", "duplicate panel", "duplicate", () => this.duplicate(index));
      }
      for (const [text, title, apply] of TOOLS) {
        tool(text, title, title, () => {
          apply(spec);
          for (const other of settle(this.page.config.panels, spec)) this.page.place(this.page.panelRoots[this.page.config.panels.indexOf(other)], other);
          this.page.place(root, spec);
          this.dirty();
        });
      }
      tool("✕", "remove panel", "remove", () => { this.page.config.panels.splice(index, 1); this.page.rebuild(this.page.config); this.decorate(); this.dirty(); })
        .className = "danger";
      root.prepend(tools);
    });
  }

  dirty() { this.status.textContent = "unsaved changes"; }

  bottom() { return Math.max(0, ...this.page.config.panels.map((p) => p.y + p.h)); }

  // A copy of a panel under the board's last row, saved at once.
  async duplicate(index) {
    const spec = structuredClone(this.page.config.panels[index]);
    delete spec.id;
    spec.title = `${spec.title} (copy)`.slice(0, 200);
    spec.y = this.bottom();
    this.page.config.panels.push(spec);
    await this.save();
  }

  // --- the panel dialog ---------------------------------------------------------

  open(index) {
    this.loadMetrics();
    this.editingIndex = index;
    const spec = index === null ? { title: "", kind: "timeseries", metrics: [], options: {} } : this.page.config.panels[index];
    const o = spec.options || {};
    const f = this.form.elements;
    document.getElementById("panel-dialog-title").textContent = index === null ? "Add panel" : `Edit “${spec.title}”`;
    f.title.value = spec.title;
    f.kind.value = spec.kind;
    f.metrics.value = spec.metrics.join(", ");
    f.unit.value = o.unit ?? "";
    f.decimals.value = o.decimals ?? "";
    f.min.value = o.min ?? "";
    f.max.value = o.max ?? "";
    document.getElementById("threshold-list").replaceChildren();
    for (const t of o.thresholds || []) this.addThreshold(t);
    this.colorsTouched = !!(o.colors && o.colors.length);
    this.colors = [...(o.colors || [])];
    const legend = o.legend || {};
    f.legend_show.checked = legend.show !== false;
    for (const v of LEGEND_VALUES) f[`legend_${v}`].checked = (legend.values || LEGEND_VALUES).includes(v);
    document.getElementById("panel-error").textContent = "";
    this.dialog.showModal();
    this.showPreview();
    this.drawPreview();
    this.previewTimer = setInterval(() => this.tickPreview(), PREVIEW_DRAW_MS);
  }

  addThreshold(t = { value: "", color: "#f3616d" }) {
    const row = document.createElement("span");
    row.className = "threshold-row";
    const value = document.createElement("input");
    value.type = "number"; value.step = "any"; value.value = t.value; value.size = 6;
    value.setAttribute("aria-label", "Threshold value");
    const color = document.createElement("input");
    color.type = "color"; color.value = /^#[0-9a-f]{6}$/i.test(t.color) ? t.color : "#f3616d";
    color.setAttribute("aria-label", "Threshold colour");
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "✕"; remove.title = "remove threshold";
    remove.addEventListener("click", () => { row.remove(); this.schedulePreview(); });
    row.append(value, color, remove);
    document.getElementById("threshold-list").append(row);
    return row;
  }

  // One colour input per series the patterns match now (the panel draws them in this order).
  renderColors(series) {
    const list = document.getElementById("color-list");
    const current = [...list.querySelectorAll("input[type=color]")].map((c) => c.value);
    if (current.length) this.colors = current;
    list.replaceChildren();
    series.slice(0, COLORS.length * 2).forEach((s, i) => {
      const input = document.createElement("input");
      input.type = "color";
      input.value = this.colors[i] && /^#[0-9a-f]{6}$/i.test(this.colors[i]) ? this.colors[i] : COLORS[i % COLORS.length];
      input.title = s.key;
      input.setAttribute("aria-label", `Colour of ${s.key}`);
      list.append(input);
    });
  }

  schedulePreview() {
    if (this.previewQueued) return;
    this.previewQueued = true;
    requestAnimationFrame(() => { this.previewQueued = false; this.showPreview(); this.drawPreview(); });
  }

  // The panel being edited, drawn as it will be on the board from the tab's live data.
  drawPreview() {
    if (!this.dialog.open) return;
    const spec = specFromForm(this.form, this.editingIndex === null ? {} : this.page.config.panels[this.editingIndex], { colorsTouched: this.colorsTouched });
    const matched = this.matched(spec.metrics);
    const listed = document.getElementById("color-list").children.length;
    if (listed !== Math.min(matched.length, COLORS.length * 2)) this.renderColors(matched);
    if (this.colorsTouched) spec.options.colors = [...document.querySelectorAll("#color-list input[type=color]")].map((c) => c.value);
    const series = matched.map((m) => ({ key: m.key, unit: m.unit, name: m.name, source: m.source }));
    this.page.subscribeKeys(series.map((s) => s.key));
    this.stopPreview(false);
    const root = document.getElementById("panel-preview");
    root.replaceChildren();
    const box = document.createElement("section");
    root.append(box);
    const cfg = { ...spec, id: "preview", title: spec.title || "Untitled", x: 0, y: 0, w: 6, h: 4, series };
    this.previewPanel = makePanel(box, cfg, { zoomTo: () => {} });
    this.tickPreview();
  }

  tickPreview() {
    if (!this.previewPanel) return;
    const toS = Date.now() / 1000;
    try {
      this.previewPanel.drawLive(this.page.store, toS - 900, toS);
      this.previewPanel.showStatus(this.page.conn, this.page.store, "live", false);
    } catch (err) { console.warn("pulseboard: preview", err); }
  }

  stopPreview(all = true) {
    if (this.previewPanel) { try { this.previewPanel.destroy(); } catch { /* already gone */ } this.previewPanel = null; }
    if (all) { clearInterval(this.previewTimer); document.getElementById("panel-preview").replaceChildren(); }
  }

  closeDialog() { this.dialog.close(); }

  async apply() {
    const base = this.editingIndex === null ? {} : this.page.config.panels[this.editingIndex];
    const spec = specFromForm(this.form, base, { colorsTouched: this.colorsTouched });
    const error = document.getElementById("panel-error");
    const none = previewMatches(spec.metrics.join(","), (this.metrics || []).map((m) => m.key), this.variableValues()).filter((f) => !f.count);
    if (this.metrics && this.metrics.length && none.length) {
      error.textContent = `${none.map((f) => f.pattern).join(", ")} matches no metric you may read`;
      this.status.textContent = `not added: ${none.map((f) => f.pattern).join(", ")} matches no metric you may read`;
      return;
    }
    const panels = this.page.config.panels;
    const before = structuredClone(panels);
    if (this.editingIndex === null) panels.push({ ...spec, x: 0, y: this.bottom(), w: 6, h: 4 });
    else Object.assign(panels[this.editingIndex], spec);
    const saved = await this.save();
    if (saved) this.closeDialog();
    else { error.textContent = this.status.textContent; this.page.config.panels = before; }
  }

  // --- variables ----------------------------------------------------------------

  renderVariables() {
    const list = document.getElementById("var-list");
    if (!list) return;
    list.replaceChildren();
    for (const v of this.page.config.variables || []) {
      const chip = document.createElement("span");
      chip.className = "var-chip";
      chip.textContent = `$${v.name} = ${v.glob} `;
      const remove = document.createElement("button");
      remove.type = "button"; remove.textContent = "✕"; remove.title = `remove $${v.name}`;
      remove.addEventListener("click", () => {
        this.page.config.variables = this.page.config.variables.filter((x) => x !== v);
        this.renderVariables();
        this.dirty();
      });
      chip.append(remove);
      list.append(chip);
    }
  }

  addVariable() {
    const name = this.bar.elements.var_name.value.trim().replace(/^\$/, "");
    const glob = this.bar.elements.var_glob.value.trim();
    if (!name || !glob) { this.status.textContent = "a variable needs a name and a glob over sources, e.g. device and iot.*"; return; }
    const variables = (this.page.config.variables || []).filter((v) => v.name !== name);
    variables.push({ name, glob, label: name, values: [], current: "All", pattern: glob });
    this.page.config.variables = variables;
    this.bar.elements.var_name.value = this.bar.elements.var_glob.value = "";
    this.renderVariables();
    return this.save();
  }

  // Send the whole layout and the variables; the answer is the board's new configuration. True when saved.
  async save() {
    const broken = this.page.config.panels.find((p) => p.kind === "broken");
    if (broken) { this.status.textContent = `not saved: remove the broken panel "${broken.title}" (✕) or fix it in the admin first`; return false; }
    for (const p of this.page.config.panels) settle(this.page.config.panels, p); // never send overlaps
    this.status.textContent = "saving…";
    const panels = this.page.config.panels.map(({ id, title, kind, metrics, options, x, y, w, h }) => ({ id, title, kind, metrics, options, x, y, w, h }));
    const variables = (this.page.config.variables || []).map(({ name, glob, label }) => (label && label !== name ? { name, glob, label } : { name, glob }));
    try {
      const config = await postJSON(`/api/v1/dashboards/${this.page.config.slug}/layout`, { panels, variables, chosen: this.page.chosenVariables() });
      this.page.rebuild({ ...this.page.config, ...config });
      this.page.renderVariables();
      this.renderVariables();
      this.fillSuggestions();
      this.saved = structuredClone(this.page.config);
      this.status.textContent = "saved";
      this.decorate();
      return true;
    } catch (err) {
      this.status.textContent = "not saved: " + err.message;
      this.page.config.panels = this.page.config.panels.filter((p) => p.id !== undefined || p.series);
      return false;
    }
  }
}
