// The runs table, as a tracker's: any field a column (the run's own, its summary's, its
// config's and base's: runcolumns.js), chosen in Columns; sorted by a click on a header and
// filtered by conditions (`top_k = 2`, `val_ce < 5`) on the server (GET /experiments
// ?sort= ?where=: over every run, not only the page shown); grouped by study, sweep, preset
// or any column, each group folding. The whole view is kept in the URL
// (#/?cols=...&where=...&sort=...&group=...), so a link or a reload shows the same. And the
// studies.

import { api, conditional } from "./http.js";
import { el, every, fill, scopeSignal, scroller, sortable, statusTag, view } from "./dom.js";
import { fieldNames, presetNames } from "./presets.js";
import { DEFAULT_COLUMNS, RUN_COLUMNS, SUMMARY_LABELS, columnOf, groupValue, presetOf } from "./runcolumns.js";

const FILTERS = ["status", "name", "tag", "preset", "dense"];  // the API's own, as it names them
const GROUPS = { study: "study", sweep: "sweep", preset: "preset" };
const LIMIT = 500;  // the API's largest page; "N runs, 500 shown" says when there are more

// The view's state from the URL's query: what a link to it carries.
function readState(query) {
  const list = (name) => (query.get(name) || "").split(",").filter(Boolean);
  const cols = list("cols").filter((key) => columnOf(key) !== null);
  return {
    cols: cols.length ? cols : DEFAULT_COLUMNS.slice(),
    chosen: cols.length > 0,  // columns of the user's choice: kept in the URL
    mine: query.get("mine") === "1",
    filters: Object.fromEntries(FILTERS.filter((f) => query.get(f)).map((f) => [f, query.get(f)])),
    where: query.getAll("where").filter(Boolean),
    sort: query.get("sort") || "",
    group: query.get("group") || "study",
    fold: new Set(list("fold")),
  };
}

function stateQuery(state) {
  const query = new URLSearchParams();
  if (state.mine) query.set("mine", "1");
  for (const [name, value] of Object.entries(state.filters)) query.set(name, value);
  for (const condition of state.where) query.append("where", condition);
  if (state.sort) query.set("sort", state.sort);
  if (state.group !== "study") query.set("group", state.group);
  if (state.chosen) query.set("cols", state.cols.join(","));
  if (state.fold.size) query.set("fold", [...state.fold].join(","));
  return query.toString().replaceAll("%2C", ",").replaceAll("%3A", ":");
}

export async function runsView(query) {
  const signal = scopeSignal();
  const [presetOptions, fields] = await Promise.all([
    presetNames().catch(() => []), fieldNames().catch(() => ({ config: [], base: [] }))]);
  const state = readState(query);
  const keepInUrl = () => {
    const text = stateQuery(state);
    history.replaceState(null, "", text ? `#/?${text}` : "#/");
  };
  const selected = new Set();
  const table = el("table", { id: "runs" });
  const body = el("tbody");
  const error = el("p", { class: "error", id: "runs-error", role: "alert" });
  let list = null;

  const changed = () => { keepInUrl(); load(true); };
  const filter = (name, node, live = false) => {
    node.value = state.filters[name] || "";
    node.name = name;
    node.id = `filter-${name}`;
    const apply = () => {
      if (node.value) state.filters[name] = node.value; else delete state.filters[name];
      changed();
    };
    let timer = null;  // a text box applies as one types, a moment after the last key
    node.addEventListener(live ? "input" : "change", live ? () => { clearTimeout(timer); timer = setTimeout(apply, 250); } : apply);
    return node;
  };
  const options = (values, blank) => [el("option", { value: "" }, blank), ...values.map((v) => el("option", { value: v }, v))];
  const compare = el("button", { disabled: true, onclick: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; } }, "Compare selected");
  const selectionChanged = () => {
    compare.disabled = selected.size < 1;
    for (const box of body.querySelectorAll("input[data-runs]")) box.checked = box.dataset.runs.split(",").every((id) => selected.has(Number(id)));
  };

  // Conditions on any field, one chip each: added with Enter (several at once, comma
  // separated), removed with its ×. One the API refuses is not added, and says why.
  const chips = el("span", { class: "chips", id: "where-chips" });
  const whereBox = el("input", { id: "where", size: 22, placeholder: "filter: top_k = 2, val_ce < 5",
    title: "FIELD OP VALUE: OP one of = != < <= > >= ~ (contains); FIELD a column's (val_ce, config.top_k, base.seed, min_usage)",
    onkeydown: async (e) => {
      if (e.key !== "Enter") return;
      const added = whereBox.value.split(",").map((c) => c.trim()).filter(Boolean);
      if (!added.length) return;
      if (await load(true, [...state.where, ...added])) {  // kept only once the API takes it
        whereBox.value = "";
        keepInUrl();
      }
      renderChips();
    } });
  const renderChips = () => fill(chips, state.where.map((c) => el("span", { class: "chip", "data-where": c }, c,
    el("button", { type: "button", "aria-label": `remove filter ${c}`, onclick: () => {
      state.where = state.where.filter((w) => w !== c);
      renderChips();
      changed();
    } }, "×"))));

  // The column chooser: the run's own columns, its summary's, its config's and base's
  // fields, each a box; a search box narrows the list. The choice goes into the URL.
  const choices = [
    ["run", Object.entries(RUN_COLUMNS).map(([key, c]) => [key, c.label])],
    ["summary", Object.entries(SUMMARY_LABELS).map(([name, label]) => [`summary.${name}`, label])],
    ["config", fields.config.map((name) => [`config.${name}`, name])],
    ["base", fields.base.map((name) => [`base.${name}`, name])],
  ];
  const find = el("input", { id: "column-find", placeholder: "find a field", size: 14, oninput: () => {
    const text = find.value.trim().toLowerCase();
    for (const label of chooser.querySelectorAll("label[data-key]")) {
      label.hidden = text !== "" && !label.dataset.key.toLowerCase().includes(text) && !label.textContent.toLowerCase().includes(text);
    }
  } });
  const chooser = el("details", { class: "columns", id: "columns" }, el("summary", {}, "Columns"),
    el("div", {}, find, choices.map(([section, entries]) => el("fieldset", {}, el("legend", {}, section),
      entries.map(([key, label]) => el("label", { "data-key": key },
        el("input", { type: "checkbox", name: key, checked: state.cols.includes(key), onchange: (e) => {
          if (e.target.checked) state.cols.push(key); else state.cols.splice(state.cols.indexOf(key), 1);
          state.chosen = true;
          renderHead();
          renderGroupChoice();
          changed();
        } }), ` ${label}`))))));

  // Grouping: by study (each under its name), sweep, preset, or any column shown.
  const groupChoice = el("select", { id: "group", "aria-label": "group by", onchange: () => {
    state.group = groupChoice.value;
    state.fold.clear();
    changed();
  } });
  const renderGroupChoice = () => {
    fill(groupChoice, el("option", { value: "none" }, "no groups"),
      Object.keys(GROUPS).map((g) => el("option", { value: g }, `by ${g}`)),
      el("optgroup", { label: "by a column" }, state.cols.filter((k) => !(k in GROUPS))
        .map((k) => el("option", { value: k }, `by ${columnOf(k).label}`))));
    if (state.group !== "none" && !(state.group in GROUPS) && columnOf(state.group) !== null && !state.cols.includes(state.group)) {
      groupChoice.append(el("option", { value: state.group }, `by ${columnOf(state.group).label}`));
    }
    groupChoice.value = state.group;
  };

  const renderHead = () => {
    const numeric = (key, c) => c.num || (c.value && list !== null && list.items.some((r) => typeof c.value(r) === "number"));
    // a list or a schedule (moe_layers) is shown, not sorted: the API sorts single values
    const single = (c) => !(c.value && list !== null && list.items.some((r) => typeof c.value(r) === "object" && c.value(r) !== null));
    const heads = state.cols.map((key) => {
      const col = columnOf(key);
      const c = single(col) ? col : { ...col, field: undefined };
      const dir = state.sort === c.field ? "ascending" : state.sort === `-${c.field}` ? "descending" : null;
      return el("th", { class: [numeric(key, c) ? "num" : "", c.field ? "sortable" : ""].join(" ").trim() || null,
        "data-column": key, title: c.title || null, "aria-sort": c.field ? (dir || "none") : null, tabindex: c.field ? 0 : null,
        onclick: c.field ? () => sortBy(c) : null,
        onkeydown: c.field ? (e) => { if (e.key === "Enter") sortBy(c); } : null }, c.label);
    });
    table.replaceChildren(el("thead", {}, el("tr", {}, el("th", { class: "select" }), heads)), body);
  };
  // A click sorts by the column, lowest first; again, highest first (on the server).
  const sortBy = (c) => {
    state.sort = state.sort === c.field ? `-${c.field}` : c.field;
    renderHead();
    changed();
  };

  fill(view,
    el("h1", {}, "Runs"),
    el("div", { class: "filters" },
      el("label", { class: "mine", title: "only the runs you submitted" },
        el("input", { type: "checkbox", id: "mine", checked: state.mine, onchange: (e) => {
          state.mine = e.target.checked;
          changed();
        } }), " mine"),
      filter("status", el("select", {}, options(["queued", "running", "succeeded", "failed", "cancelled"], "any status"))),
      filter("name", el("input", { placeholder: "name contains", size: 14 }), true),
      filter("tag", el("input", { placeholder: "tag", size: 10 })),
      filter("preset", el("select", {}, options(presetOptions, "any preset"))),
      filter("dense", el("select", {}, el("option", { value: "" }, "dense and MoE"),
        el("option", { value: "true" }, "dense only"), el("option", { value: "false" }, "MoE only"))),
      whereBox, groupChoice, chooser, compare),
    chips, error,
    scroller(table),
    el("p", { class: "muted", id: "runs-total" }));
  renderChips();
  renderGroupChoice();
  renderHead();

  const names = () => ({ studies: list.study_names || {}, sweeps: list.sweep_names || {} });
  const box = (ids, label) => el("input", { type: "checkbox", "aria-label": label, "data-runs": ids.join(","),
    checked: ids.every((id) => selected.has(id)), onchange: (e) => {
      for (const id of ids) { if (e.target.checked) selected.add(id); else selected.delete(id); }
      selectionChanged();
    } });
  const row = (run, member) => el("tr", { class: member ? "member" : null, "data-run": run.id },
    el("td", { class: "select" }, box([run.id], `select run ${run.id}`)), state.cols.map((key) => {
      const c = columnOf(key);
      const number = c.num || (c.value && typeof c.value(run) === "number");
      return el("td", { class: number ? "num" : null }, c.cell(run, names()));
    }));

  // The group a run falls in under the chosen grouping: [key, heading], or null for none
  // (a run of no study when grouping by study, or no grouping).
  const groupOf = (run) => {
    if (state.group === "study") {
      return run.study_id === null ? null : [`study:${run.study_id}`, el("a", { href: `#/study/${run.study_id}` }, names().studies[run.study_id] || `study ${run.study_id}`)];
    }
    if (state.group === "sweep") {
      return run.sweep_id === null ? null : [`sweep:${run.sweep_id}`, el("a", { href: `#/sweep/${run.sweep_id}` }, names().sweeps[run.sweep_id] || `sweep ${run.sweep_id}`)];
    }
    if (state.group === "preset") return [`preset:${presetOf(run)}`, presetOf(run)];
    const c = columnOf(state.group);
    if (state.group === "none" || c === null) return null;
    const value = groupValue(c, run, names());
    return [`${state.group}:${value}`, `${c.label} = ${value}`];
  };

  const render = () => {
    // Groups in the order their first run comes (the sort's, newest first by default); in
    // a study or sweep without a sort of the user's, its runs in their own order (by id).
    const groups = new Map();
    const rows = [];
    for (const run of list.items) {
      const group = groupOf(run);
      if (group === null) { rows.push(run); continue; }
      const [key, heading] = group;
      if (!groups.has(key)) { groups.set(key, { key, heading, runs: [] }); rows.push(groups.get(key)); }
      groups.get(key).runs.push(run);
    }
    const ownOrder = !state.sort && (state.group === "study" || state.group === "sweep");
    fill(body, rows.flatMap((item) => {
      if (!item.runs) return [row(item, false)];
      const runs = ownOrder ? item.runs.slice().sort((a, b) => a.id - b.id) : item.runs;
      const folded = state.fold.has(item.key);
      const ids = runs.map((r) => r.id);
      const head = el("tr", { class: "group-head", "data-group": item.key },
        el("td", { class: "select" }, box(ids, `select the ${ids.length} runs of ${item.key}`)),
        el("td", { colspan: state.cols.length },
          el("button", { type: "button", class: "fold", "aria-expanded": String(!folded), "aria-label": folded ? "show its runs" : "hide its runs", onclick: () => {
            if (folded) state.fold.delete(item.key); else state.fold.add(item.key);
            keepInUrl();
            render();
          } }, folded ? "▸" : "▾"), " ", item.heading, el("span", { class: "muted" }, ` · ${runs.length} run${runs.length === 1 ? "" : "s"}`)));
      return [head, ...(folded ? [] : runs.map((r) => row(r, true)))];
    }));
    renderHead();
    const total = document.getElementById("runs-total");
    total.textContent = `${list.total} runs${list.total > list.items.length ? `, ${list.items.length} shown` : ""}`;
    table.dataset.view = stateQuery(state);  // what the rows show (tests wait on it)
  };

  const poll = conditional();
  let latest = 0;  // the last load asked: an answer to an earlier one is not drawn
  let asked = 0;  // the user's loads under way: a poll waits for them
  // Reads the runs the state asks for (`where`: the conditions, tried before they are
  // kept) and draws them; false when the API refused the filters (its message is shown: a
  // condition on no field, a text where a number goes).
  async function load(redraw = false, where = state.where) {
    if (!redraw && asked) return true;
    const ticket = ++latest;
    const ask = new URLSearchParams();
    for (const [name, value] of Object.entries(state.filters)) ask.set(name, value);
    for (const condition of where) ask.append("where", condition);
    if (state.sort) ask.set("sort", state.sort);
    if (state.mine) ask.set("owner", "me");
    ask.set("limit", String(LIMIT));
    let fresh;
    if (redraw) asked++;
    try {
      fresh = await poll(`/experiments?${ask}`, { signal });
    } catch (failure) {
      if (failure.status !== 422) throw failure;
      error.textContent = `The filter was refused: ${failure.message.replace(/^422: /, "").replaceAll("query.", "")}`;
      if (list === null) fill(body, el("tr", {}, el("td", { colspan: state.cols.length + 1, class: "muted" }, "No runs shown: change or remove the filter above.")));
      return false;
    } finally {
      if (redraw) asked--;
    }
    if (ticket !== latest) return true;  // a later load draws
    if (redraw) error.textContent = "";  // a poll leaves a refusal's message up
    state.where = where;
    if (fresh === null && !redraw) return true;  // unchanged since the last look
    if (fresh !== null) list = fresh;
    if (list !== null) render();
    return true;
  }
  await load();
  every(2000, () => load().catch(() => {}), signal);
}

export async function studiesView() {
  const list = await api("/studies?limit=200", { signal: scopeSignal() });
  fill(view, el("h1", {}, "Studies"), scroller(sortable(el("table", { id: "studies" },
    el("thead", {}, el("tr", {}, ...["id", "name", "owner", "status", "seeds", "runs", "created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.items.map((s) => el("tr", { "data-study": s.id },
      el("td", {}, s.id), el("td", {}, el("a", { href: `#/study/${s.id}` }, s.name)),
      el("td", { class: "owner" }, s.owner), el("td", {}, statusTag(s.status)), el("td", {}, s.seeds), el("td", {}, s.member_ids.length),
      el("td", { class: "muted", "data-sort": s.created_at }, new Date(s.created_at).toLocaleString()))))))));
}
