// In-page layout editing for users with edit rights: add, move, resize and remove panels,
// then save the whole layout (POST /api/v1/dashboards/<slug>/layout; rights checked on the server).

import { postJSON } from "./alerts.js";

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

// What the metrics field will draw: per pattern, how many readable series it matches.
export function previewMatches(text, keys) {
  const patterns = String(text).split(",").map((s) => s.trim()).filter(Boolean);
  return patterns.map((p) => ({ pattern: p, count: keys.filter((k) => globMatch(p, k)).length }));
}

export class LayoutEditor {
  constructor(page) {
    this.page = page;
    this.bar = document.getElementById("editor-bar");
    this.toggle = document.getElementById("edit-toggle");
    this.status = document.getElementById("edit-status");
    if (!this.bar || !this.toggle) return;
    this.toggle.addEventListener("click", () => this.setEditing(!this.editing));
    document.getElementById("edit-cancel").addEventListener("click", () => { this.page.rebuild(this.saved); this.setEditing(false); });
    document.getElementById("edit-save").addEventListener("click", () => this.save());
    this.bar.addEventListener("submit", (e) => { e.preventDefault(); this.add(new FormData(this.bar)); });
    this.metricsInput = this.bar.querySelector("input[name=metrics]");
    this.preview = document.getElementById("metrics-preview");
    this.metricsInput.addEventListener("input", () => this.showPreview());
  }

  // The metrics the user may read, once per editing session: suggestions and the match preview.
  async loadMetrics() {
    if (this.metrics) return;
    try {
      const response = await fetch("/api/v1/metrics", { credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      this.metrics = (await response.json()).metrics;
    } catch (err) { console.warn("pulseboard: metric list", err); this.metrics = []; return; }
    const list = document.getElementById("metric-keys");
    const globs = new Set(this.metrics.map((m) => `${m.source.split(".")[0]}.*.${m.name}`));
    for (const value of [...globs].sort().concat(this.metrics.map((m) => m.key).sort())) list.append(new Option(value, value));
    this.showPreview();
  }

  showPreview() {
    if (!this.preview || !this.metrics) return;
    const found = previewMatches(this.metricsInput.value, this.metrics.map((m) => m.key));
    const none = found.filter((f) => f.count === 0).map((f) => f.pattern);
    const total = found.reduce((n, f) => n + f.count, 0);
    this.preview.dataset.state = none.length ? "none" : "ok";
    this.preview.textContent = !found.length ? "" : none.length ? `${none.join(", ")} matches nothing you may read: check the spelling` : `${total} series`;
    const units = [...new Set(this.metrics.filter((m) => found.some((f) => globMatch(f.pattern, m.key))).map((m) => m.unit))];
    this.bar.querySelector("input[name=unit]").placeholder = units.length === 1 && units[0] ? units[0] : "Unit";
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
      for (const [text, title, apply] of TOOLS) {
        const b = document.createElement("button");
        b.type = "button"; b.textContent = text; b.title = title; b.dataset.tool = title;
        b.addEventListener("click", () => {
          apply(spec);
          for (const other of settle(this.page.config.panels, spec)) this.page.place(this.page.panelRoots[this.page.config.panels.indexOf(other)], other);
          this.page.place(root, spec);
          this.dirty();
        });
        tools.append(b);
      }
      const remove = document.createElement("button");
      remove.type = "button"; remove.textContent = "✕"; remove.title = "remove panel"; remove.dataset.tool = "remove";
      remove.className = "danger";
      remove.addEventListener("click", () => { this.page.config.panels.splice(index, 1); this.page.rebuild(this.page.config); this.decorate(); this.dirty(); });
      tools.append(remove);
      root.prepend(tools);
    });
  }

  dirty() { this.status.textContent = "unsaved changes"; }

  async add(form) {
    const metrics = String(form.get("metrics")).split(",").map((s) => s.trim()).filter(Boolean);
    const bottom = Math.max(0, ...this.page.config.panels.map((p) => p.y + p.h));
    const none = previewMatches(metrics.join(","), (this.metrics || []).map((m) => m.key)).filter((f) => !f.count);
    if (this.metrics && this.metrics.length && none.length) {
      this.status.textContent = `not added: ${none.map((f) => f.pattern).join(", ")} matches no metric you may read`;
      return;
    }
    const options = form.get("unit") ? { unit: String(form.get("unit")) } : {};
    this.page.config.panels.push({ title: String(form.get("title")), kind: String(form.get("kind")), metrics, options, x: 0, y: bottom, w: 6, h: 4 });
    await this.save(); // the server resolves the new panel's globs to series
    this.bar.reset();
  }

  async save() {
    const broken = this.page.config.panels.find((p) => p.kind === "broken");
    if (broken) { this.status.textContent = `not saved: remove the broken panel "${broken.title}" (✕) or fix it in the admin first`; return; }
    for (const p of this.page.config.panels) settle(this.page.config.panels, p); // never send overlaps
    this.status.textContent = "saving…";
    const panels = this.page.config.panels.map(({ id, title, kind, metrics, options, x, y, w, h }) => ({ id, title, kind, metrics, options, x, y, w, h }));
    try {
      const config = await postJSON(`/api/v1/dashboards/${this.page.config.slug}/layout`, { panels });
      this.page.rebuild({ ...this.page.config, ...config });
      this.saved = structuredClone(this.page.config);
      this.status.textContent = "saved";
      this.decorate();
    } catch (err) {
      this.status.textContent = "not saved: " + err.message;
      this.page.config.panels = this.page.config.panels.filter((p) => p.id !== undefined || p.series);
    }
  }
}
