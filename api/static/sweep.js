// Sweeps: the list, and a sweep's page: its trials ranked (objective ± SE, verdict), a
// parallel-coordinates view (one line per trial across its fields and the objective,
// coloured by the objective; pruned trials grey, collapsed routers dashed red) and the
// objective against each field. Plain SVG: a few dozen lines, nothing to vendor.

import { api } from "./http.js";
import { el, every, fill, fmt, mark, scopeSignal, scroller, sortable, view } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  node.append(...children.filter(Boolean));
  return node;
}

const STATE_NOTE = { tertiary_failed: "router collapsed", pruned: "pruned", failed: "failed", cancelled: "cancelled" };

// An axis for one field: where a value sits, 0 (bottom) to 1 (top), and its tick labels.
function fieldAxis(name, spec, values) {
  const shown = values.filter((v) => v !== undefined);
  if (spec && spec.choices) {
    const keys = spec.choices.map((c) => JSON.stringify(c));
    const at = (v) => keys.length === 1 ? 0.5 : keys.indexOf(JSON.stringify(v)) / (keys.length - 1);
    return { name, at, ticks: keys.map((k) => [at(JSON.parse(k)), k]) };
  }
  const log = spec && spec.log;
  const f = (v) => log ? Math.log10(v) : v;
  const lo = spec ? f(spec.low) : Math.min(...shown.map(f));
  const hi = spec ? f(spec.high) : Math.max(...shown.map(f));
  const at = (v) => hi === lo ? 0.5 : (f(v) - lo) / (hi - lo);
  const label = (x) => log ? (10 ** x).toPrecision(2) : Number(x.toPrecision(3)).toString();
  return { name, at, ticks: [[0, label(lo)], [1, label(hi)]] };
}

function objectiveAxis(values) {
  const lo = Math.min(...values), hi = Math.max(...values);
  // lower is better: the best trial at the top
  const at = (v) => hi === lo ? 0.5 : (hi - v) / (hi - lo);
  return { name: "objective", at, ticks: [[at(lo), fmt(lo, 4)], [at(hi), fmt(hi, 4)]], lo, hi };
}

// Blue (best) to orange (worst), by the objective's place between the extremes.
const colour = (t) => `hsl(${Math.round(215 - 185 * t)}, 70%, 45%)`;

export function parallelCoordinates(sweep) {
  const space = sweep.config.space;
  const fields = sweep.fields;
  const judged = sweep.trials.filter((t) => t.objective && t.objective.mean !== null && t.objective.mean !== undefined);
  const objective = judged.length ? objectiveAxis(judged.map((t) => t.objective.mean)) : null;
  const axes = fields.map((f) => fieldAxis(f, space[f], sweep.trials.map((t) => t.params[f])));
  if (objective) axes.push(objective);
  const W = 160 * axes.length + 40, H = 260, top = 24, bottom = 40, left = 60;
  const x = (i) => left + i * 160;
  const y = (at) => top + (1 - at) * (H - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, class: "parcoords", role: "img",
    "aria-label": "parallel coordinates: one line per trial" });
  axes.forEach((axis, i) => {
    chart.append(svg("line", { x1: x(i), x2: x(i), y1: y(0), y2: y(1), class: "axis" }),
      svg("text", { x: x(i), y: H - 14, "text-anchor": "middle", class: "axis-name" }, axis.name));
    for (const [at, label] of axis.ticks) {
      chart.append(svg("text", { x: x(i) - 6, y: y(at) + 4, "text-anchor": "end", class: "tick" }, label));
    }
  });
  for (const trial of sweep.trials) {
    const value = trial.objective ? trial.objective.mean : null;
    const points = axes.map((axis, i) => {
      if (axis === objective) return value === null || value === undefined ? null : [x(i), y(objective.at(value))];
      const v = trial.params[axis.name];
      return v === undefined ? null : [x(i), y(axis.at(v))];
    }).filter(Boolean);
    const t = objective && value !== null && value !== undefined
      ? (value - objective.lo) / ((objective.hi - objective.lo) || 1) : null;
    const cls = `trial ${trial.state}`;
    const stroke = trial.state === "tertiary_failed" ? "#cf222e" : t === null ? "#8c959f" : colour(t);
    const line = svg("polyline", {
      points: points.map((p) => p.join(",")).join(" "), class: cls, stroke, fill: "none",
      "stroke-width": trial.number === sweep.best_trial ? 3 : 1.5,
      "stroke-dasharray": trial.state === "tertiary_failed" ? "6 4" : null,
      "data-trial": trial.number, "data-objective": value ?? "",
    }, svg("title", {}, `trial ${trial.number}: ${Object.entries(trial.params).map(([k, v]) => `${k}=${v}`).join(", ")}`
      + (value !== null && value !== undefined ? `; objective ${fmt(value, 4)}` : "") + (STATE_NOTE[trial.state] ? ` (${STATE_NOTE[trial.state]})` : "")));
    // a link: to the trial's (first seed's) run, by keyboard or in a new tab as well
    chart.append(trial.run_ids.length ? svg("a", { href: `#/run/${trial.run_ids[0]}` }, line) : line);
  }
  return chart;
}

// The objective against one field: a dot per judged trial.
export function scatter(sweep, field) {
  const spec = sweep.config.space[field];
  const judged = sweep.trials.filter((t) => t.objective && t.objective.mean !== null && t.objective.mean !== undefined && t.params[field] !== undefined);
  const W = 260, H = 180, left = 56, right = 12, top = 12, bottom = 34;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "scatter", "data-field": field, role: "img",
    "aria-label": `objective against ${field}` });
  chart.append(svg("text", { x: (left + W - right) / 2, y: H - 6, "text-anchor": "middle", class: "axis-name" }, field));
  if (!judged.length) return chart;
  const fx = fieldAxis(field, spec, judged.map((t) => t.params[field]));
  const fy = objectiveAxis(judged.map((t) => t.objective.mean));
  const px = (v) => left + fx.at(v) * (W - left - right);
  const py = (v) => top + fy.at(v) * (H - top - bottom);  // the best at the top
  chart.append(svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }),
    svg("line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }));
  for (const [at, label] of fy.ticks) chart.append(svg("text", { x: left - 4, y: top + at * (H - top - bottom) + 4, "text-anchor": "end", class: "tick" }, label));
  for (const [at, label] of fx.ticks) chart.append(svg("text", { x: left + at * (W - left - right), y: H - bottom + 14, "text-anchor": "middle", class: "tick" }, label));
  for (const t of judged) {
    chart.append(svg("circle", { cx: px(t.params[field]), cy: py(t.objective.mean), r: 4,
      class: `trial ${t.state}`, fill: t.state === "tertiary_failed" ? "#cf222e" : "#0969da",
      "data-trial": t.number, "data-objective": t.objective.mean },
    svg("title", {}, `trial ${t.number}: ${field}=${t.params[field]}, objective ${fmt(t.objective.mean, 4)}`)));
  }
  return chart;
}

function ranked(sweep) {
  const byNumber = new Map(sweep.trials.map((t) => [t.number, t]));
  const first = sweep.ranking.map((n) => byNumber.get(n));
  return [...first, ...sweep.trials.filter((t) => !sweep.ranking.includes(t.number))];
}

function trialsTable(sweep) {
  const fields = sweep.fields;
  const rows = ranked(sweep).map((t) => {
    const o = t.objective || {};
    const judged = o.mean !== null && o.mean !== undefined;
    return el("tr", { "data-trial": t.number, class: t.number === sweep.best_trial ? "best" : null },
      el("td", {}, String(t.number)),
      el("td", {}, t.state === "pruned" ? `pruned (epoch ${t.pruned_at_epoch})` : t.state.replace("_", " ")),
      el("td", { class: "num", "data-sort": judged ? o.mean : "" }, judged ? `${o.mean >= 0 ? "+" : ""}${fmt(o.mean, 4)}` : "–"),
      el("td", { class: "num" }, o.se !== null && o.se !== undefined ? fmt(o.se, 4) : "–"),
      el("td", {}, o.ci_low !== null && o.ci_low !== undefined ? `[${fmt(o.ci_low, 4)}, ${fmt(o.ci_high, 4)}]` : "–"),
      el("td", {}, o.significant === true ? "yes" : o.significant === false ? "no" : "–"),
      el("td", {}, ["complete", "tertiary_failed"].includes(t.state) ? mark(t.passed) : ""),
      ...fields.map((f) => el("td", { class: "num" }, t.params[f] === undefined ? "–" : typeof t.params[f] === "number" ? Number(t.params[f].toPrecision(3)).toString() : JSON.stringify(t.params[f]))),
      el("td", {}, ...t.run_ids.flatMap((id, i) => [i ? ", " : "", el("a", { href: `#/run/${id}` }, `#${id}`)])));
  });
  return sortable(el("table", { class: "trials" },
    el("thead", {}, el("tr", {}, ...["#", "state", "objective", "SE", "95% CI", "significant", "verdict", ...fields, "runs"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

export async function sweepView(id) {
  const signal = scopeSignal();
  const body = el("div");
  const render = (sweep) => {
    const config = sweep.config;
    const importance = Object.entries(sweep.importance || {}).sort((a, b) => b[1] - a[1]);
    fill(body,
      el("h1", {}, `${sweep.name} `, el("span", { class: "muted" }, `sweep #${sweep.id}`)),
      el("p", {}, el("span", { id: "sweep-owner" }, `by ${sweep.owner}`), ` · ${sweep.status} · ${config.method}, ${sweep.trials.length}${config.trials ? ` of ${config.trials}` : ""} trials × ${config.seeds} seed(s) · objective ${config.objective} (lower is better) · dense runs `,
        ...sweep.dense_run_ids.flatMap((d, i) => [i ? ", " : "", el("a", { href: `#/run/${d}` }, `#${d}`)])),
      sweep.best_trial !== null ? el("p", {}, "best: trial ", el("strong", {}, String(sweep.best_trial)),
        el("span", { class: "muted" }, " (a pruned trial or one whose router collapsed is never best)")) : null,
      el("h2", {}, "Trials"), el("div", { class: "chart-box" }, parallelCoordinates(sweep)),
      el("div", { class: "scatters" }, ...sweep.fields.map((f) => scatter(sweep, f))),
      importance.length ? el("p", {}, "importance (fANOVA): ", importance.map(([f, v]) => `${f} ${v.toFixed(2)}`).join(", ")) : null,
      scroller(trialsTable(sweep)));
  };
  let sweep = await api(`/sweeps/${id}`, { signal });
  render(sweep);
  fill(view, body);
  // followed while it runs: trials end, new ones are proposed
  every(3000, async () => {
    if (sweep.status !== "running") return;
    sweep = await api(`/sweeps/${id}`, { signal });
    render(sweep);
  }, signal);
}

export async function sweepsView() {
  const signal = scopeSignal();
  const list = await api("/sweeps?limit=100", { signal });
  const rows = list.items.map((s) => el("tr", {},
    el("td", {}, el("a", { href: `#/sweep/${s.id}` }, `#${s.id}`)), el("td", {}, s.name), el("td", { class: "owner" }, s.owner), el("td", {}, s.status),
    el("td", {}, s.config.method), el("td", { class: "num" }, String(s.trials.length)),
    el("td", { class: "num" }, s.best_trial === null ? "–" : String(s.best_trial))));
  fill(view, el("h1", {}, "Sweeps"),
    list.items.length ? scroller(sortable(el("table", {},
      el("thead", {}, el("tr", {}, ...["id", "name", "owner", "status", "method", "trials", "best"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows))))
      : el("p", { class: "muted" }, "No sweeps yet: moe-lab sweep submit FILE.yaml"));
}
