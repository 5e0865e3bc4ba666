// Small DOM helpers, number formats, and the scope a view's streams and timers live in.

export const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4",
  "#6e7781", "#e16f24", "#4d2d00"];
export const view = document.getElementById("view");

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    // through the CSSOM: the Content-Security-Policy refuses inline style attributes
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const fmt = (value, digits = 4) => (value === null || value === undefined || Number.isNaN(value))
  ? "–" : Number(value).toFixed(digits);
export const fmtInt = (value) => (value === null || value === undefined) ? "–"
  : Math.round(value).toLocaleString("en-US");
export const mean = (values) => values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

// replaceChildren, leaving out the nulls of optional parts (it would print "null").
export function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

export const statusTag = (status) => el("span", { class: `status ${status}`, "data-status": status }, status);
export const mark = (passed) => passed === null || passed === undefined ? el("span", { class: "muted" }, "–")
  : el("span", { class: passed ? "ok" : "bad" }, passed ? "✓" : "✗");

export function progressCell(run) {
  const p = run.progress;
  if (run.status !== "running" || !p) {
    return el("span", { class: "muted" }, `${run.current_epoch}/${run.num_epochs}`);
  }
  const per = p.steps_per_epoch || 0;
  const done = per ? ((p.epoch - 1) * per + p.step) / (run.num_epochs * per) : run.current_epoch / run.num_epochs;
  const phase = p.phase === "training" ? `step ${p.step}/${per}` : p.phase.replace("_", " ");
  return el("span", { class: "run-progress", "data-step": p.step },
    el("span", { class: "progress" }, el("span", { style: `width:${Math.min(100, 100 * done).toFixed(1)}%` })),
    ` epoch ${p.epoch}/${run.num_epochs} · ${phase} · ETA ${duration(p.eta_seconds)}`);
}

// Everything a view started (streams, timers, charts) ends when another view replaces it.
let viewScope = null;
export function newScope() {
  if (viewScope) viewScope.abort();
  viewScope = new AbortController();
  return viewScope.signal;
}

export function every(ms, fn, signal) {
  const timer = setInterval(() => { if (!document.hidden) fn(); }, ms);
  signal.addEventListener("abort", () => clearInterval(timer));
}

export const scopeSignal = () => viewScope.signal;

// A table wrapped so that, on a narrow screen, it scrolls inside its box, not the page.
export const scroller = (table) => el("div", { class: "scroll" }, table);

// Sortable columns: a click on a header sorts the body's rows by that column (again:
// reversed). A cell sorts by its data-sort, else its text, as a number where both are.
// Rows marked data-group (a study's heading row) drop out of a sorted table. sortRows
// applies the table's last sort again, for a body refilled since.
export function sortable(table) {
  const heads = [...table.querySelectorAll("thead th")];
  heads.forEach((th, column) => {
    if (!th.textContent.trim()) return;
    th.classList.add("sortable");
    th.tabIndex = 0;
    const sortBy = () => {
      const dir = table.dataset.sortColumn === String(column) && table.dataset.sortDir === "asc" ? "desc" : "asc";
      table.dataset.sortColumn = column;
      table.dataset.sortDir = dir;
      heads.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
      sortRows(table);
    };
    th.addEventListener("click", sortBy);
    th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(); });
  });
  return table;
}

export function sortRows(table) {
  if (table.dataset.sortColumn === undefined) return;
  const column = Number(table.dataset.sortColumn);
  const sign = table.dataset.sortDir === "desc" ? -1 : 1;
  const body = table.tBodies[0];
  const key = (row) => {
    const cell = row.cells[column];
    const text = cell ? (cell.dataset.sort ?? cell.textContent.trim()) : "";
    const number = Number(text.replace(/[,%+]/g, ""));
    return text !== "" && text !== "–" && Number.isFinite(number) ? number : text;
  };
  const rows = [...body.rows].filter((row) => !row.dataset.group);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x === "number" && typeof y === "number") return sign * (x - y);
    if (typeof x === "number") return -1;  // numbers before blanks, either way
    if (typeof y === "number") return 1;
    return sign * String(x).localeCompare(String(y));
  });
  body.replaceChildren(...rows);
}
