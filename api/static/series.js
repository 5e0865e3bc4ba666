// Any series a run logged, by key, and charts of them that a person adds with a picker (the
// run page: one line a series; the compare page: one line a run).
//
// A key names one series of the run's records: "epoch:val.ce_loss" (a figure of each epoch,
// GET /metrics), "step:grad_norm" (a figure of each step point, GET /steps),
// "expert_stats:imbalance:2" (a routing statistic of MoE layer 2 over each epoch's training
// steps; eval_expert_stats: over the validation set), "expert_stats:imbalance:*" (that
// statistic of every layer). The keys come from the records themselves, so a figure the
// engine starts to log is on the picker without a change here.

import { el } from "./dom.js";
import { epochAxes, lineChart } from "./charts.js";
import { stepAxes } from "./steps.js";

const ROUTING = { expert_stats: "train routing", eval_expert_stats: "eval routing" };
const GROUPS = ["epoch", "step", ...Object.values(ROUTING)];
const STEP_AXES = new Set(["step", "epoch", "tokens", "wall_time"]);  // a point's x, not a series
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

// Every key in a run's epochs and step points (union over several runs': seriesKeys of all
// their records), each {key, group, label, title}: in the picker's order.
export function seriesKeys(epochs, points) {
  const keys = new Map();
  const add = (key, group, label, order) => {
    if (!keys.has(key)) keys.set(key, { key, group, label, title: `${group}: ${label}`, order });
  };
  for (const e of epochs) {
    for (const [name, value] of Object.entries(e)) {
      if (name === "epoch") continue;
      if (isNumber(value)) add(`epoch:${name}`, "epoch", name, [keys.size]);
      else if (ROUTING[name] && Array.isArray(value)) {
        for (const row of value) {
          for (const [field, v] of Object.entries(row)) {
            if (field === "layer" || !isNumber(v)) continue;  // usage, per expert: the heatmaps
            add(`${name}:${field}:*`, ROUTING[name], `${field}, every layer`, [field, -1]);
            add(`${name}:${field}:${row.layer}`, ROUTING[name], `${field}, layer ${row.layer}`, [field, row.layer]);
          }
        }
      } else if (value && typeof value === "object" && !Array.isArray(value)) {
        for (const [field, v] of Object.entries(value)) {
          if (isNumber(v)) add(`epoch:${name}.${field}`, "epoch", `${name}.${field}`, [keys.size]);
        }
      }
    }
  }
  for (const p of points) {
    for (const [name, v] of Object.entries(p)) {
      if (!STEP_AXES.has(name) && isNumber(v)) add(`step:${name}`, "step", name, [keys.size]);
    }
  }
  const compare = (a, b) => GROUPS.indexOf(a.group) - GROUPS.indexOf(b.group)
    || (a.order[0] < b.order[0] ? -1 : a.order[0] > b.order[0] ? 1 : (a.order[1] ?? 0) - (b.order[1] ?? 0));
  return [...keys.values()].sort(compare).map(({ order, ...k }) => k);
}

// The lines of one key in one run's records ({run, epochs, points}): none where the run has
// no such series. name: the run's, to label its lines by (the compare page); else a line is
// labelled by its figure (or its layer).
export function seriesLines(key, { run, epochs, points }, name = "") {
  const [kind, path, layer] = key.split(":");
  const given = (values) => (values.some((v) => v !== null) ? values : null);
  if (kind === "step") {
    const y = given(points.map((p) => (isNumber(p[path]) ? p[path] : null)));
    return y ? [{ label: name || `${path} per step`, x: stepAxes(points, epochs, run), y, steps: true }] : [];
  }
  const x = epochAxes(epochs, run);
  if (kind === "epoch") {
    const [outer, inner] = path.split(".");
    const y = given(epochs.map((e) => {
      const v = inner === undefined ? e[outer] : e[outer] && e[outer][inner];
      return isNumber(v) ? v : null;
    }));
    return y ? [{ label: name || path, x, y }] : [];
  }
  const layers = layer === "*"
    ? [...new Set(epochs.flatMap((e) => (e[kind] || []).map((r) => r.layer)))].sort((a, b) => a - b)
    : [Number(layer)];
  return layers.flatMap((l, i) => {
    const y = given(epochs.map((e) => {
      const row = (e[kind] || []).find((r) => r.layer === l);
      return row && isNumber(row[path]) ? row[path] : null;
    }));
    const label = !name ? `layer ${l}` : layer === "*" ? `${name} · layer ${l}` : name;
    return y ? [{ label, x, y, ...(layer === "*" && i ? { dash: [[6, 4], [2, 3], [10, 3, 2, 3]][(i - 1) % 3] } : {}) }] : [];
  });
}

// The keys a person added on this page (by its address), kept for the session: a live page
// builds its charts anew with each epoch, and a reload keeps them too.
const STORE_KEY = "moe-lab-added-charts";
const stored = () => JSON.parse(sessionStorage.getItem(STORE_KEY) || "{}");
export const addedKeys = () => stored()[location.hash] || [];
function keep(keys) {
  const all = stored();
  all[location.hash] = keys;
  sessionStorage.setItem(STORE_KEY, JSON.stringify(all));
}

// The picker ("chart any series": every key, by group) and the charts added with it. lines:
// key → the series to draw for it (seriesLines, over one run or several).
export function chartPicker(keys, lines) {
  const charts = el("div", { class: "charts", id: "added-charts" });
  const known = new Map(keys.map((k) => [k.key, k]));
  const draw = () => {
    const added = addedKeys().filter((key) => known.has(key));
    charts.replaceChildren(...added.map((key) => lineChart(known.get(key).title, lines(key), {
      key, onRemove: () => { keep(addedKeys().filter((k) => k !== key)); draw(); } })));
  };
  const select = el("select", { id: "series-picker", name: "series", "aria-label": "series to chart" },
    GROUPS.map((group) => {
      const inGroup = keys.filter((k) => k.group === group);
      return inGroup.length ? el("optgroup", { label: group }, inGroup.map((k) => el("option", { value: k.key }, k.label))) : null;
    }));
  const form = el("form", { class: "filters series-picker", id: "chart-picker", onsubmit: (e) => {
    e.preventDefault();
    if (!addedKeys().includes(select.value)) keep([...addedKeys(), select.value]);
    draw();
  } }, el("label", {}, "chart any series ", select), el("button", { type: "submit" }, "add chart"));
  draw();
  return el("div", { class: "added-charts" }, keys.length ? form : null, charts);
}
