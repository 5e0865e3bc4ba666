// A sweep's parallel coordinates: one line per trial across its fields and the objective,
// coloured by the objective (pruned trials grey, collapsed routers dashed red), drawn at
// the width of the page (redrawn when it changes) in plain SVG.
//
// Every axis runs the same way as the scatter plots' (sweep.js): the lowest value at the
// bottom, so the objective's best (lowest) trial is the lowest line on its axis.
//
// Brushing: a drag along an axis keeps the trials whose value there lies in the dragged
// range (every brushed axis at once); the others fade, the kept ones are listed under the
// chart and marked in the trials table. A click on an axis clears its brush. Brushes are
// kept by sweep, so the page's refresh while the sweep runs does not undo them.

import { el, fill, fmt } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  node.append(...children.filter(Boolean));
  return node;
}

export const STATE_NOTE = { tertiary_failed: "router collapsed", pruned: "pruned", failed: "failed", cancelled: "cancelled" };
export const judgedMean = (t) => t.objective && t.objective.mean !== null && t.objective.mean !== undefined ? t.objective.mean : null;

// An axis for one field: where a value sits, 0 (bottom) to 1 (top), and its tick labels.
export function fieldAxis(name, spec, values) {
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

// The objective: lower is better, and lower is drawn lower (as on every chart here).
export function objectiveAxis(name, values) {
  const lo = Math.min(...values), hi = Math.max(...values);
  const at = (v) => hi === lo ? 0.5 : (v - lo) / (hi - lo);
  return { name, objective: true, at, ticks: [[at(lo), fmt(lo, 4)], [at(hi), fmt(hi, 4)]], lo, hi };
}

// Blue (best, lowest) to orange (worst), by the objective's place between the extremes.
export const colour = (t) => `hsl(${Math.round(215 - 185 * t)}, 70%, 45%)`;

const brushes = new Map();  // sweep id -> Map(axis name -> [low, high], 0..1 as axis.at)
const CHAR = 6.3;  // px per character of the 11px axis names, for their placement

export function parallelCoordinates(sweep, { onBrush = () => {} } = {}) {
  const brushed = brushes.get(sweep.id) || new Map();
  brushes.set(sweep.id, brushed);
  const judged = sweep.trials.filter((t) => judgedMean(t) !== null);
  const objective = judged.length ? objectiveAxis(sweep.config.objective, judged.map(judgedMean)) : null;
  const axes = sweep.fields.map((f) => fieldAxis(f, sweep.config.space[f], sweep.trials.map((t) => t.params[f])));
  if (objective) axes.push(objective);
  const valueOn = (axis, trial) => {
    const v = axis.objective ? judgedMean(trial) : trial.params[axis.name];
    return v === null || v === undefined ? null : axis.at(v);
  };
  const listed = el("p", { class: "brushed", id: "brushed" });
  const box = el("div", { class: "chart-box parcoords-box" });

  const apply = () => {
    const kept = sweep.trials.filter((t) => [...brushed].every(([name, [lo, hi]]) => {
      const axis = axes.find((a) => a.name === name);
      const at = axis ? valueOn(axis, t) : null;
      return at !== null && at >= lo - 1e-9 && at <= hi + 1e-9;
    })).map((t) => t.number);
    const on = brushed.size > 0;
    box.querySelectorAll("polyline.trial").forEach((line) => {
      const keep = kept.includes(Number(line.dataset.trial));
      line.classList.toggle("dimmed", on && !keep);
      line.classList.toggle("kept", on && keep);
    });
    for (const [name, [lo, hi]] of brushed) {
      const rect = box.querySelector(`rect.brush[data-axis="${CSS.escape(name)}"]`);
      if (rect) rect.setAttribute("y", rect.yAt(hi)), rect.setAttribute("height", Math.max(2, rect.yAt(lo) - rect.yAt(hi)));
    }
    box.querySelectorAll("rect.brush").forEach((r) => r.classList.toggle("shown", brushed.has(r.dataset.axis)));
    fill(listed, on ? [`${kept.length} of ${sweep.trials.length} trials in the brush (${[...brushed.keys()].join(", ")}): `,
      ...kept.flatMap((n, i) => {
        const runs = sweep.trials.find((t) => t.number === n).run_ids;
        return [i ? ", " : "", runs.length ? el("a", { href: `#/run/${runs[0]}`, "data-trial": n }, `trial ${n}`) : `trial ${n}`];
      }),
      kept.length ? "" : "none", " · click a brushed axis to clear it"] : []);
    listed.dataset.trials = kept.join(",");
    onBrush(on ? kept : null);
  };

  const draw = () => {
    const W = Math.max(300, box.clientWidth), narrow = W < 600;
    const left = 52, right = objective ? 56 : 20, top = 14;
    const step = axes.length > 1 ? (W - left - right) / (axes.length - 1) : 0;
    // names that do not fit between their neighbours alternate between two rows
    const stagger = axes.some((a) => a.name.length * CHAR > step - 8);
    const H = (narrow ? 240 : 300) + (stagger ? 14 : 0) + (objective ? 12 : 0);
    const bottom = H - top - (narrow ? 190 : 250);
    const x = (i) => axes.length > 1 ? left + i * step : W / 2;
    const y = (at) => top + (1 - at) * (H - top - bottom);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "parcoords", role: "img",
      "aria-label": "parallel coordinates: one line per trial; drag along an axis to filter" });
    const lines = svg("g", { class: "lines" }), labels = svg("g", { class: "labels" });
    sweep.trials.forEach((trial) => {
      const value = judgedMean(trial);
      const points = axes.map((axis, i) => {
        const at = valueOn(axis, trial);
        return at === null ? null : [x(i), y(at)];
      }).filter(Boolean);
      const t = objective && value !== null ? (value - objective.lo) / ((objective.hi - objective.lo) || 1) : null;
      const line = svg("polyline", {
        points: points.map((p) => p.map((c) => c.toFixed(1)).join(",")).join(" "), class: `trial ${trial.state}`,
        stroke: trial.state === "tertiary_failed" ? "#cf222e" : t === null ? "#8c959f" : colour(t), fill: "none",
        "stroke-width": trial.number === sweep.best_trial ? 3 : 1.5,
        "stroke-dasharray": trial.state === "tertiary_failed" ? "6 4" : null,
        "data-trial": trial.number, "data-objective": value ?? "",
      }, svg("title", {}, `trial ${trial.number}: ${Object.entries(trial.params).map(([k, v]) => `${k}=${v}`).join(", ")}`
        + (value !== null ? `; objective ${fmt(value, 4)}` : "") + (STATE_NOTE[trial.state] ? ` (${STATE_NOTE[trial.state]})` : "")));
      // a link: to the trial's (first seed's) run, by keyboard or in a new tab as well
      lines.append(trial.run_ids.length ? svg("a", { href: `#/run/${trial.run_ids[0]}` }, line) : line);
    });
    axes.forEach((axis, i) => {
      const g = svg("g", { class: "axis-group", "data-axis": axis.name });
      g.append(svg("line", { x1: x(i), x2: x(i), y1: y(0), y2: y(1), class: "axis" }));
      // ticks left of the axis, the last axis's (the objective's) right of it, on a halo of
      // the page's background so that a line under them does not cross the digits
      const side = i === axes.length - 1 && axes.length > 1 ? 1 : -1;
      for (const [at, label] of axis.ticks) {
        labels.append(svg("text", { x: x(i) + 6 * side, y: y(at) + 4, "text-anchor": side < 0 ? "end" : "start", class: "tick" }, label));
      }
      const row = stagger && i % 2 ? 14 : 0;
      const max = Math.floor((stagger ? 2 * step : step) / CHAR) - 1;
      const name = axes.length > 1 && axis.name.length > max ? `${axis.name.slice(0, Math.max(4, max - 1))}…` : axis.name;
      const anchor = i === 0 ? "start" : i === axes.length - 1 && axes.length > 1 ? "end" : "middle";
      const nx = anchor === "start" ? Math.max(2, x(i) - left + 2) : anchor === "end" ? W - 2 : x(i);
      labels.append(svg("text", { x: nx, y: y(0) + 18 + row, "text-anchor": anchor, class: "axis-name" }, name, svg("title", {}, axis.name)));
      if (axis.objective) {
        labels.append(svg("text", { x: nx, y: y(0) + 31 + row, "text-anchor": anchor, class: "tick better" }, "lower is better ↓"));
      }
      // the brush: a band along the axis to drag in; a click (no drag) clears it
      const band = svg("rect", { x: x(i) - 14, width: 28, y: y(1) - 4, height: y(0) - y(1) + 8, class: "brush-area", "data-axis": axis.name });
      const brush = svg("rect", { x: x(i) - 7, width: 14, y: y(1), height: 0, class: "brush", "data-axis": axis.name });
      brush.yAt = y;
      const atOf = (event) => {
        const r = chart.getBoundingClientRect();
        const py = (event.clientY - r.top) * (H / r.height);
        return Math.min(1, Math.max(0, 1 - (py - top) / (H - top - bottom)));
      };
      let start = null;
      band.addEventListener("pointerdown", (e) => { start = atOf(e); band.setPointerCapture(e.pointerId); e.preventDefault(); });
      band.addEventListener("pointermove", (e) => {
        if (start === null) return;
        const now = atOf(e);
        brush.classList.add("shown");
        brush.setAttribute("y", y(Math.max(start, now)));
        brush.setAttribute("height", Math.abs(y(start) - y(now)));
      });
      band.addEventListener("pointerup", (e) => {
        if (start === null) return;
        const now = atOf(e);
        if (Math.abs(y(start) - y(now)) < 4) brushed.delete(axis.name);
        else brushed.set(axis.name, [Math.min(start, now), Math.max(start, now)]);
        start = null;
        apply();
      });
      g.append(brush, band);
      chart.append(g);
    });
    chart.insertBefore(lines, chart.firstChild);
    chart.append(labels);
    fill(box, chart, listed);
    box.dataset.width = W;
    apply();
  };

  let width = 0;
  new ResizeObserver(() => {
    if (box.clientWidth && box.clientWidth !== width) { width = box.clientWidth; draw(); }
  }).observe(box);
  return box;
}

