// Dashboards in the page: new, rename, duplicate, delete (after a confirmation), export and import,
// through the dashboards JSON API (dashboard/pages/dashboards.py; rights are checked there, whatever is shown).
// The list page (/d/) binds itself; the dashboard page calls bindBoardMenu(config).

import { csrfToken } from "./alerts.js";

// A JSON request with the session's CSRF token; an error answer throws its message (and field).
export async function sendJSON(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    const err = new Error(error.field ? `${error.field}: ${error.message}` : error.message || `HTTP ${response.status}`);
    err.field = error.field;
    throw err;
  }
  return data;
}

// The one board dialog: a question, optionally a title to type; resolves to the title (or true) on OK, null on cancel.
// `run` does the work while the dialog stays open, so a refusal is shown where the operator typed.
export function askBoard({ heading, text = "", title = null, ok = "OK", danger = false, run }) {
  const dialog = document.getElementById("board-dialog");
  const form = document.getElementById("board-form");
  const input = form.elements.title;
  const error = document.getElementById("board-dialog-error");
  document.getElementById("board-dialog-title").textContent = heading;
  document.getElementById("board-dialog-text").textContent = text;
  document.getElementById("board-title-field").hidden = title === null;
  input.value = title ?? "";
  input.required = title !== null;
  const okButton = document.getElementById("board-dialog-ok");
  okButton.textContent = ok;
  okButton.className = danger ? "danger" : "primary";
  error.textContent = "";
  return new Promise((resolve) => {
    const close = (value) => {
      form.removeEventListener("submit", submit);
      cancel.removeEventListener("click", onCancel);
      dialog.close();
      resolve(value);
    };
    const submit = async (e) => {
      e.preventDefault();
      const value = title === null ? true : input.value.trim();
      if (title !== null && !value) { error.textContent = "a title is needed"; return; }
      okButton.disabled = true;
      try { close(run ? await run(value) : value); }
      catch (err) { error.textContent = err.message; }
      finally { okButton.disabled = false; }
    };
    const cancel = document.getElementById("board-dialog-cancel");
    const onCancel = () => close(null);
    form.addEventListener("submit", submit);
    cancel.addEventListener("click", onCancel);
    dialog.showModal();
    if (title !== null) input.select();
  });
}

function status(text, state = "") {
  const node = document.getElementById("board-status");
  if (node) { node.textContent = text; node.dataset.state = state; }
}

// Upload a board file: the server checks it whole; a refusal names the field (panels[2].metrics).
export async function importFile(file, { replace = false } = {}) {
  let data;
  try { data = JSON.parse(await file.text()); }
  catch (err) { throw new Error(`${file.name} is not JSON: ${err.message}`); }
  return sendJSON("POST", `/api/v1/dashboards/import${replace ? "?replace=1" : ""}`, data);
}

function bindListPage() {
  const add = document.getElementById("new-board");
  if (add) {
    add.addEventListener("click", () => askBoard({
      heading: "New dashboard",
      title: "",
      ok: "Create",
      run: (title) => sendJSON("POST", "/api/v1/dashboards", { title }),
    }).then((board) => { if (board) location.href = `${board.url}?edit=1`; }));
  }
  const file = document.getElementById("import-file");
  if (file) {
    file.addEventListener("change", async () => {
      const chosen = file.files[0];
      file.value = "";
      if (!chosen) return;
      status(`importing ${chosen.name}…`);
      try {
        const board = await importFile(chosen);
        status(`imported ${board.title}`, "ok");
        location.href = board.url;
      } catch (err) { status(`not imported: ${err.message}`, "error"); }
    });
  }
}

// The dashboard page's Board menu.
export function bindBoardMenu(config) {
  const on = (id, fn) => { const node = document.getElementById(id); if (node) node.addEventListener("click", fn); };
  const closeMenu = () => { const menu = document.getElementById("board-menu"); if (menu) menu.open = false; };
  on("board-export", () => setTimeout(closeMenu)); // after the download has started
  on("board-rename", () => {
    closeMenu();
    askBoard({
      heading: "Rename dashboard",
      title: config.title,
      ok: "Rename",
      run: (title) => sendJSON("PATCH", `/api/v1/dashboards/${config.slug}`, { title }),
    }).then((board) => {
      if (!board) return;
      config.title = board.title;
      document.querySelector(".page-head h1").firstChild.textContent = board.title;
      document.title = `${board.title} · Pulseboard`;
    });
  });
  on("board-duplicate", () => {
    closeMenu();
    askBoard({
      heading: "Duplicate dashboard",
      text: "A copy with the same panels, variables and groups, owned by you.",
      title: `${config.title} (copy)`,
      ok: "Duplicate",
      run: (title) => sendJSON("POST", `/api/v1/dashboards/${config.slug}/duplicate`, { title }),
    }).then((board) => { if (board) location.href = board.url; });
  });
  on("board-delete", () => {
    closeMenu();
    const n = config.panels.length;
    askBoard({
      heading: `Delete “${config.title}”?`,
      text: `Its ${n} panel${n === 1 ? "" : "s"} and share links go too. Export it first to keep a copy.`,
      ok: "Delete",
      danger: true,
      run: () => sendJSON("DELETE", `/api/v1/dashboards/${config.slug}`),
    }).then((done) => { if (done) location.href = "/d/"; });
  });
}

bindListPage();
