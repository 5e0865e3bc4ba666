// Sweeps: the list, and a sweep's page: its trials ranked (objective ± SE, verdict), the
// parallel coordinates (parcoords.js: one line per trial, brushed to filter) and the
// objective against each field; when no trial can be best, the line saying why. Plain SVG,
// nothing to vendor. On every chart lower is drawn lower, and lower is better.

import { api } from "./http.js";
import { el, every, fill, fmt, mark, scopeSignal, scroller, sortable, view } from "./dom.js";
import { fieldAxis, judgedMean, objectiveAxis, parallelCoordinates, svg } from "./parcoords.js";

// The objective against one field: a dot per judged trial.
export function scatter(sweep, field) {
  const spec = sweep.config.space[field];
  const judged = sweep.trials.filter((t) => judgedMean(t) !== null && t.params[field] !== undefined);
  const W = 280, H = 190, left = 64, right = 14, top = 12, bottom = 36;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "scatter", "data-field": field, role: "img",
    "aria-label": `${sweep.config.objective} against ${field}` });
  chart.append(svg("text", { x: (left + W - right) / 2, y: H - 6, "text-anchor": "middle", class: "axis-name" }, field),
    svg("text", { x: 10, y: (top + H - bottom) / 2, "text-anchor": "middle", class: "tick better",
      // read bottom to top: the arrow at the start points down
      transform: `rotate(-90 10 ${(top + H - bottom) / 2})` }, `← lower is better · ${sweep.config.objective}`));
  if (!judged.length) return chart;
  const fx = fieldAxis(field, spec, judged.map((t) => t.params[field]));
  const fy = objectiveAxis(sweep.config.objective, judged.map(judgedMean));
  const px = (at) => left + at * (W - left - right);
  const py = (at) => top + (1 - at) * (H - top - bottom);  // lower drawn lower, as in parcoords.js
  chart.append(svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }),
    svg("line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }));
  // the y ticks end left of the axis and the x ticks start right of it: they never meet
  for (const [at, label] of fy.ticks) chart.append(svg("text", { x: left - 4, y: py(at) + 4, "text-anchor": "end", class: "tick" }, label));
  for (const [at, label] of fx.ticks) chart.append(svg("text", { x: px(at), y: H - bottom + 14, "text-anchor": at === 0 ? "start" : at === 1 ? "end" : "middle", class: "tick" }, label));
  for (const t of judged) {
    chart.append(svg("circle", { cx: px(fx.at(t.params[field])), cy: py(fy.at(judgedMean(t))), r: 4,
      class: `trial ${t.state}`, fill: t.state === "tertiary_failed" ? "#cf222e" : "#0969da",
      "data-trial": t.number, "data-objective": judgedMean(t) },
    svg("title", {}, `trial ${t.number}: ${field}=${t.params[field]}, objective ${fmt(judgedMean(t), 4)}`)));
  }
  return chart;
}

// Those that can be best, best first; then those judged that cannot (a collapsed router),
// by their objective; then the rest as proposed (as `moe-lab sweep show` lists them).
function ranked(sweep) {
  const byNumber = new Map(sweep.trials.map((t) => [t.number, t]));
  const first = sweep.ranking.map((n) => byNumber.get(n));
  const rest = sweep.trials.filter((t) => !sweep.ranking.includes(t.number));
  const judged = rest.filter((t) => judgedMean(t) !== null).sort((a, b) => judgedMean(a) - judgedMean(b));
  return [...first, ...judged, ...rest.filter((t) => judgedMean(t) === null)];
}

// "2 of 3 trials (1 complete, 1 running)": proposed of the budget, by state.
function trialCount(sweep) {
  const states = new Map();
  for (const t of sweep.trials) states.set(t.state.replace("_", " "), (states.get(t.state.replace("_", " ")) || 0) + 1);
  const by = [...states].map(([state, n]) => `${n} ${state}`).join(", ");
  return `${sweep.trials.length} of ${sweep.budget ?? sweep.trials.length} trials${by ? ` (${by})` : ""}`;
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
    const table = trialsTable(sweep);
    const judged = sweep.trials.some((t) => judgedMean(t) !== null);
    const chart = parallelCoordinates(sweep, { onBrush: (kept) => table.querySelectorAll("tbody tr").forEach((row) =>
      row.classList.toggle("in-brush", kept !== null && kept.includes(Number(row.dataset.trial)))) });
    fill(body,
      el("h1", {}, `${sweep.name} `, el("span", { class: "muted" }, `sweep #${sweep.id}`)),
      el("p", { id: "sweep-head" }, el("span", { id: "sweep-owner" }, `by ${sweep.owner}`), ` · ${sweep.status} · ${config.method}, ${trialCount(sweep)} × ${config.seeds} seed(s) · objective ${config.objective} (lower is better) · dense runs `,
        ...sweep.dense_run_ids.flatMap((d, i) => [i ? ", " : "", el("a", { href: `#/run/${d}` }, `#${d}`)])),
      sweep.best_trial !== null ? el("p", {}, "best: trial ", el("strong", {}, String(sweep.best_trial)),
        el("span", { class: "muted" }, " (a pruned trial or one whose router collapsed is never best)")) : null,
      sweep.no_best ? el("p", { class: "no-best", id: "no-best" }, sweep.no_best,
        judged && !sweep.ranking.length ? el("span", { class: "muted" }, " · the trials below are ordered by their objective all the same, and there is no importance without a trial to rank") : null) : null,
      el("h2", {}, "Trials"),
      el("p", { class: "muted footnote" }, "One line per trial, coloured by its objective: blue lowest (best) to orange highest; dashed red: router collapsed; grey: no objective. Drag along an axis to keep the trials in that range; click the axis to clear it."),
      chart,
      el("div", { class: "scatters" }, ...sweep.fields.map((f) => scatter(sweep, f))),
      importance.length ? el("p", {}, "importance (fANOVA): ", importance.map(([f, v]) => `${f} ${v.toFixed(2)}`).join(", ")) : null,
      scroller(table));
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
    el("td", {}, s.config.method), el("td", { class: "num" }, `${s.trials.length}/${s.budget ?? s.trials.length}`),
    el("td", { class: "num" }, s.best_trial === null ? "–" : String(s.best_trial))));
  fill(view, el("h1", {}, "Sweeps"),
    list.items.length ? scroller(sortable(el("table", {},
      el("thead", {}, el("tr", {}, ...["id", "name", "owner", "status", "method", "trials", "best"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows))))
      : el("p", { class: "muted" }, "No sweeps yet: moe-lab sweep submit FILE.yaml"));
}
