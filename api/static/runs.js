// The runs (a study's runs together, under the study) with the columns the user chose and
// whether only theirs, kept in the URL (#/?mine=1&cols=id,name,...); and the studies.

import { api, conditional } from "./http.js";
import { duration, el, every, fill, fmt, fmtInt, progressCell, scopeSignal, scroller, sortRows, sortable, statusTag, view } from "./dom.js";
import { presetNames } from "./presets.js";

// Every column the runs table can show: its header, whether it is a number, its cell.
export const RUN_COLUMNS = {
  id: { label: "id", num: true, cell: (r) => r.id },
  name: { label: "name", cell: (r) => el("a", { href: `#/run/${r.id}` }, r.name) },
  owner: { label: "owner", cell: (r) => r.owner },
  status: { label: "status", cell: (r) => statusTag(r.status) },
  progress: { label: "progress", cell: (r) => progressCell(r), sort: (r) => r.current_epoch / r.num_epochs },
  preset: { label: "preset", cell: (r) => r.dense ? "dense" : (r.preset || "custom") },
  base: { label: "base", cell: (r) => r.base_preset || "custom" },
  val_ce: { label: "best val CE", num: true, cell: (r) => fmt(r.best_val_ce_loss) },
  test_ce: { label: "test CE", num: true, cell: (r) => fmt(r.test_ce_loss) },
  tokens_per_sec: { label: "tokens/s", num: true, cell: (r) => fmtInt(r.tokens_per_sec), sort: (r) => r.tokens_per_sec },
  params: { label: "params", num: true, cell: (r) => fmtInt(r.params), sort: (r) => r.params },
  active_params: { label: "active params", num: true, cell: (r) => fmtInt(r.active_params), sort: (r) => r.active_params },
  epochs: { label: "epochs", num: true, cell: (r) => `${r.current_epoch}/${r.num_epochs}`, sort: (r) => r.current_epoch },
  seed: { label: "seed", num: true, cell: (r) => r.base.seed },
  worker: { label: "worker", cell: (r) => r.worker_name || "–" },
  tags: { label: "tags", cell: (r) => r.tags.join(", ") },
  created: { label: "created", cell: (r) => el("span", { class: "muted" }, new Date(r.created_at).toLocaleString()), sort: (r) => r.created_at },
  duration: { label: "duration", num: true, cell: (r) => r.started_at && r.finished_at ? duration((new Date(r.finished_at) - new Date(r.started_at)) / 1000) : "–",
    sort: (r) => r.started_at && r.finished_at ? new Date(r.finished_at) - new Date(r.started_at) : null },
};
export const DEFAULT_COLUMNS = ["id", "name", "owner", "status", "progress", "preset", "val_ce", "tokens_per_sec", "tags", "created"];

export async function runsView(query) {
  const signal = scopeSignal();
  const presetOptions = await presetNames().catch(() => []);
  const asked = (query.get("cols") || "").split(",").filter((c) => c in RUN_COLUMNS);
  const columns = asked.length ? asked : DEFAULT_COLUMNS.slice();
  let chosen = asked.length > 0;  // columns of the user's choice: kept in the URL
  let mine = query.get("mine") === "1";  // only the runs of whoever is signed in (?owner=me)
  const keepInUrl = () => {
    const state = new URLSearchParams();
    if (mine) state.set("mine", "1");
    if (chosen) state.set("cols", columns.join(","));
    const text = state.toString().replaceAll("%2C", ",");
    history.replaceState(null, "", text ? `#/?${text}` : "#/");
  };
  const params = new URLSearchParams(sessionStorage.getItem("moe-lab-filters") || "order=newest");
  const selected = new Set();
  const table = el("table", { id: "runs" });
  const body = el("tbody");
  const field = (name, node) => {
    node.value = params.get(name) || "";
    node.name = name;
    node.addEventListener("change", () => {
      if (node.value) params.set(name, node.value); else params.delete(name);
      sessionStorage.setItem("moe-lab-filters", params.toString());
      load(true);
    });
    return node;
  };
  const options = (values, blank) => [el("option", { value: "" }, blank), ...values.map((v) => el("option", { value: v }, v))];
  const compare = el("button", { disabled: true, onclick: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; } }, "Compare selected");

  // The column chooser: a box per column; the choice goes into the URL, so a link or a
  // reload shows the same columns.
  const chooser = el("details", { class: "columns", id: "columns" }, el("summary", {}, "Columns"),
    el("div", {}, Object.entries(RUN_COLUMNS).map(([key, c]) => el("label", {},
      el("input", { type: "checkbox", name: key, checked: columns.includes(key), onchange: (e) => {
        if (e.target.checked) columns.splice(Object.keys(RUN_COLUMNS).filter((k) => columns.includes(k) || k === key).indexOf(key), 0, key);
        else columns.splice(columns.indexOf(key), 1);
        chosen = true;
        keepInUrl();
        delete table.dataset.sortColumn;
        renderHead();
        load(true);
      } }), ` ${c.label}`))));

  const renderHead = () => {
    const head = el("thead", {}, el("tr", {}, el("th"), columns.map((key) => el("th", { class: RUN_COLUMNS[key].num ? "num" : null, "data-column": key }, RUN_COLUMNS[key].label))));
    table.replaceChildren(head, body);
    sortable(table);
  };

  fill(view,
    el("h1", {}, "Runs"),
    el("div", { class: "filters" },
      el("label", { class: "mine", title: "only the runs you submitted" },
        el("input", { type: "checkbox", id: "mine", checked: mine, onchange: (e) => {
          mine = e.target.checked;
          keepInUrl();
          load(true);
        } }), " mine"),
      field("status", el("select", {}, options(["queued", "running", "succeeded", "failed", "cancelled"], "any status"))),
      field("name", el("input", { placeholder: "name contains", size: 14 })),
      field("tag", el("input", { placeholder: "tag", size: 10 })),
      field("preset", el("select", {}, options(presetOptions, "any preset"))),
      field("dense", el("select", {}, el("option", { value: "" }, "dense and MoE"),
        el("option", { value: "true" }, "dense only"), el("option", { value: "false" }, "MoE only"))),
      field("order", el("select", {}, el("option", { value: "newest" }, "newest first"),
        el("option", { value: "val_ce" }, "best validation CE"))),
      chooser, compare),
    scroller(table),
    el("p", { class: "muted", id: "runs-total" }));
  renderHead();

  const row = (run, member) => {
    const box = el("input", { type: "checkbox", checked: selected.has(run.id), "aria-label": `select run ${run.id}`, onchange: (e) => {
      if (e.target.checked) selected.add(run.id); else selected.delete(run.id);
      compare.disabled = selected.size < 1;
    } });
    return el("tr", { class: member ? "member" : null, "data-run": run.id },
      el("td", {}, box), columns.map((key) => {
        const c = RUN_COLUMNS[key];
        const sortKey = c.sort ? c.sort(run) : null;
        return el("td", { class: c.num ? "num" : null, "data-sort": sortKey === null || sortKey === undefined ? null : sortKey }, c.cell(run));
      }));
  };

  const poll = conditional();
  let list = null;
  async function load(redraw = false) {
    const query = new URLSearchParams(params);
    if (mine) query.set("owner", "me");
    query.set("limit", "200");
    const fresh = await poll(`/experiments?${query}`, { signal });
    if (fresh === null && !redraw) return;  // unchanged since the last look
    if (fresh !== null) list = fresh;
    if (list === null) return;
    // A study's runs are shown together, under the study, where its newest run falls.
    const rows = [];
    const shown = new Set();
    for (const run of list.items) {
      if (shown.has(run.id)) continue;
      if (run.study_id === null) {
        rows.push(row(run, false));
        shown.add(run.id);
        continue;
      }
      const members = list.items.filter((r) => r.study_id === run.study_id);
      rows.push(el("tr", { class: "study-head", "data-study": run.study_id, "data-group": "study" },
        el("td"), el("td", { colspan: columns.length }, el("a", { href: `#/study/${run.study_id}` }, `study ${run.study_id}`),
          el("span", { class: "muted" }, ` · ${members.length} runs`))));
      for (const member of members.sort((a, b) => a.id - b.id)) {
        rows.push(row(member, true));
        shown.add(member.id);
      }
    }
    fill(body, ...rows);
    sortRows(table);  // a sort the user chose holds across polls
    document.getElementById("runs-total").textContent = `${list.total} runs${list.total > list.items.length ? `, ${list.items.length} shown` : ""}`;
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
