// Charts as a tracker draws them, by the vendored uPlot (a global from its script tag).
//
// A chart takes series from any source: each series is {label, x, y, color?, dash?, scale?,
// band?, steps?}, where x holds one array per x-axis it can be drawn on ({epoch, tokens, time},
// {step, epoch, tokens, time}, an axis left out or null where the source does not give it)
// and y the values (null: a gap). band: {lo, hi}, a shaded interval around y (a study's mean ± 1 SE).
// steps: true marks a series of step points, the only ones smoothing applies to: an epoch
// series has a few points, each an average already, and an EMA over three of them would
// move its last point far from the value logged. epochAxes() makes the x of a run's epochs;
// steps.js stepAxes that of its step points.
//
// One settings bar per page (x-axis, EMA smoothing of step series, log y) redraws every chart on it; each
// chart has reset zoom (or double-click), CSV of what it draws, and PNG; a click on a
// legend entry hides that series. Zoom and hidden series outlive redraws and a live page's
// rebuilt charts. Each chart box carries its uPlot instance as `.plot`
// and what it draws as `.drawn` ({axis, labels, data}), for tests to read the values.

import { el, duration } from "./dom.js";
import { saveBlob } from "./http.js";
import { epochIncrs, logRange, logTicks } from "./ticks.js";

export const AXES = { step: "step", epoch: "epoch", tokens: "tokens", time: "wall time" };
const SETTINGS_KEY = "moe-lab-charts";

export const settings = { x: "epoch", smoothing: 0, logY: false,
  ...JSON.parse(sessionStorage.getItem(SETTINGS_KEY) || "{}") };
const charts = new Set();
// What a person did to a chart that a redraw must keep, by page and chart title: its zoom
// ({axis, min, max}) and the series hidden from its legend. A live page builds its charts
// anew with each epoch or batch of step points; without this each would undo the zoom.
const kept = new Map();
function keptFor(title) {
  const key = `${location.hash}|${title}`;
  if (!kept.has(key)) kept.set(key, { zoom: null, hidden: new Set() });
  return kept.get(key);
}

function changed() {
  sessionStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  for (const chart of [...charts]) {
    if (chart.isConnected) chart.redraw(); else charts.delete(chart);
  }
}

// The settings bar: the x-axis, the smoothing slider, log y.
export function chartControls() {
  const axis = el("select", { name: "x-axis", "aria-label": "x-axis", onchange: (e) => { settings.x = e.target.value; changed(); } },
    Object.entries(AXES).map(([key, label]) => el("option", { value: key, selected: settings.x === key }, label)));
  const shown = el("output", { id: "smoothing-value" }, settings.smoothing.toFixed(2));
  const slider = el("input", { type: "range", name: "smoothing", min: 0, max: 0.99, step: 0.01, value: settings.smoothing,
    "aria-label": "smoothing", oninput: (e) => { settings.smoothing = Number(e.target.value); shown.textContent = settings.smoothing.toFixed(2); changed(); } });
  const log = el("input", { type: "checkbox", name: "log-y", checked: settings.logY,
    onchange: (e) => { settings.logY = e.target.checked; changed(); } });
  return el("div", { class: "chart-controls filters", id: "chart-controls" },
    el("label", {}, "x-axis ", axis),
    el("label", { title: "of step series: an exponential moving average, debiased (as TensorBoard's), the raw values drawn faint; epoch series are drawn as logged" }, "step smoothing ", slider, " ", shown),
    el("label", {}, log, " log y"));
}

// The x of a run's epochs on each axis: optimizer steps so far (each epoch's steps,
// summed); the epoch; tokens trained so far (those steps x the batch's tokens, batch_size x
// seq_len, from the run's config); wall time so far (the sum of the epochs' durations). An
// axis is null where the run does not give it.
export function epochAxes(epochs, run) {
  const batch = run && run.config && run.base ? run.config.batch_size * run.base.seq_len : null;
  const cumulative = (f) => {
    let total = 0;
    const out = [];
    for (const e of epochs) {
      const v = f(e);
      if (v === null || v === undefined) return null;
      total += v;
      out.push(total);
    }
    return out;
  };
  return {
    step: cumulative((e) => e.steps),
    epoch: epochs.map((e) => e.epoch),
    tokens: batch ? cumulative((e) => e.steps * batch) : null,
    time: cumulative((e) => e.duration),
  };
}

// Exponential moving average, debiased at the start (TensorBoard's): nulls stay gaps.
export function ema(values, weight) {
  if (!weight) return values.slice();
  let last = 0, n = 0;
  return values.map((v) => {
    if (v === null || v === undefined || !Number.isFinite(v)) return null;
    last = last * weight + (1 - weight) * v;
    n += 1;
    return last / (1 - weight ** n);
  });
}

// The mean over runs at each x, and one standard error (sample SD / √n; none with one run).
export function meanBand(valuesPerRun) {
  const length = Math.max(0, ...valuesPerRun.map((v) => v.length));
  const mean = [], lo = [], hi = [];
  for (let i = 0; i < length; i++) {
    const xs = valuesPerRun.map((v) => v[i]).filter((v) => v !== null && v !== undefined && Number.isFinite(v));
    if (!xs.length) { mean.push(null); lo.push(null); hi.push(null); continue; }
    const m = xs.reduce((a, b) => a + b, 0) / xs.length;
    const se = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1) / xs.length) : null;
    mean.push(m);
    lo.push(se === null ? null : m - se);
    hi.push(se === null ? null : m + se);
  }
  return { mean, lo, hi };
}

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const palette = () => Array.from({ length: 10 }, (_, i) => css(`--c${i}`));

function faint(color) {
  // #rrggbb → the same colour at a third of its opacity
  const n = parseInt(color.slice(1), 16);
  return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},0.3)`;
}
const tint = (color) => faint(color).replace("0.3)", "0.15)");

const compact = (v) => Math.abs(v) >= 1e9 ? `${+(v / 1e9).toPrecision(3)}G` : Math.abs(v) >= 1e6 ? `${+(v / 1e6).toPrecision(3)}M`
  : Math.abs(v) >= 1e3 ? `${+(v / 1e3).toPrecision(3)}k` : String(+v.toPrecision(4));

// One chart. series: as at the top; options: yLabel, y2 (a second y scale's label, for
// series with scale "y2"), height, key (data-key: the series key of a chart a person added),
// onRemove (a "remove" button in the chart's tools calls it).
export function lineChart(title, series, { yLabel = "", height = 220, y2 = null, key = null, onRemove = null } = {}) {
  const points = Math.max(0, ...series.map((s) => s.y.length));
  const box = el("div", { class: "chart", "data-chart": title, "data-key": key, "data-series": series.length, "data-points": points });
  const memory = keptFor(title);
  const hidden = memory.hidden;
  let plot = null;
  const toolbar = el("span", { class: "chart-tools" },
    el("button", { type: "button", "data-action": "reset", title: "reset zoom (or double-click the chart)",
      onclick: () => { memory.zoom = null; box.redraw(); } }, "reset"),
    el("button", { type: "button", "data-action": "csv", onclick: () => saveBlob(new Blob([box.csv()], { type: "text/csv" }), `${slug(title)}.csv`) }, "CSV"),
    el("button", { type: "button", "data-action": "png", onclick: () => png().then((b) => saveBlob(b, `${slug(title)}.png`)) }, "PNG"),
    onRemove ? el("button", { type: "button", "data-action": "remove", title: "remove this chart", onclick: onRemove }, "×") : null);
  box.append(el("div", { class: "chart-head" }, el("h3", {}, title), toolbar));

  // The axis asked for, where every series has it; else the epoch.
  const axisOf = () => (series.every((s) => s.x[settings.x]) ? settings.x : "epoch");

  box.redraw = () => {
    const axis = axisOf();
    const colors = palette();
    const logY = settings.logY;
    const positive = (v) => (logY && !(v > 0) ? null : v);
    let ready = false;  // set once uPlot has drawn: scale changes before it are its own
    const tables = [];
    const specs = [];
    const bands = [];
    series.forEach((s, i) => {
      const x = s.x[axis];
      const color = s.color ? (s.color.startsWith("--") ? css(s.color) : s.color) : colors[i % colors.length];
      const smoothing = s.steps ? settings.smoothing : 0;
      const smooth = (values) => (smoothing > 0 ? ema(values, smoothing) : values).map(positive);
      // markers on a series of few points (epochs), none on a dense one (step points)
      const common = { scale: s.scale || "y", spanGaps: true, points: { show: s.y.length <= 40 } };
      let edges = null;
      if (s.band) {  // a mean's band, smoothed as the mean is; no raw line
        tables.push([x, smooth(s.band.hi)], [x, smooth(s.band.lo)]);
        specs.push({ ...common, label: `${s.label} +1 SE`, stroke: tint(color), width: 0, of: s.label, points: { show: false } },
          { ...common, label: `${s.label} −1 SE`, stroke: tint(color), width: 0, of: s.label, points: { show: false } });
        edges = [specs.length - 1, specs.length];  // uPlot's indices: 0 is x
      } else if (smoothing > 0) {
        tables.push([x, s.y.map(positive)]);
        specs.push({ ...common, label: `${s.label} (raw)`, stroke: faint(color), width: 1, of: s.label });
      }
      tables.push([x, smooth(s.y)]);
      specs.push({ ...common, label: s.label, stroke: color, width: 2, dash: s.dash, main: true });
      if (edges) bands.push({ series: edges, fill: tint(color) });
    });
    const data = tables.length ? uPlot.join(tables) : [[]];
    const fg = css("--fg"), line = css("--line");
    const axisStyle = { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    const axes = [
      { ...axisStyle, label: AXES[axis], size: 40,
        values: (u, splits) => splits.map((v) => axis === "time" ? duration(v) : compact(v)),
        ...(axis === "epoch" ? { incrs: epochIncrs } : {}) },
      { ...axisStyle, label: yLabel + (logY ? " (log)" : ""), scale: "y", size: 60,
        values: (u, splits) => splits.map((v) => v === null ? "" : compact(v)), ...(logY ? logAxis() : {}) },
    ];
    if (y2) axes.push({ ...axisStyle, label: y2, scale: "y2", side: 1, grid: { show: false }, size: 50 });
    const options = {
      width: Math.max(240, box.clientWidth - 12), height,
      scales: { x: { time: false },
        y: logY ? { distr: 3, log: 10, range: (u, min, max) => logRange(min, max) || [1, 10] } : { auto: true },
        ...(y2 ? { y2: { auto: true } } : {}) },
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      axes,
      bands,
      series: [{ label: AXES[axis], value: (u, v) => v === null || v === undefined ? "–" : axis === "time" ? duration(v) : compact(v) },
        ...specs.map((s) => ({ ...s, show: !hidden.has(s.of || s.label),
          value: (u, v) => v === null || v === undefined ? "–" : Number(v).toPrecision(5) }))],
      hooks: {
        // A zoom kept from before the redraw, on the same x-axis, is put back: after uPlot's
        // first draw has ended (a scale set within its `ready` is dropped with that draw's
        // pending changes).
        ready: [(u) => queueMicrotask(() => {
          if (memory.zoom && memory.zoom.axis === axis) u.setScale("x", { min: memory.zoom.min, max: memory.zoom.max });
          ready = true;
        })],
        // A person's zoom (a drag; a double-click zooms out to all the data) is kept.
        setScale: [(u, key) => {
          if (key !== "x" || !ready) return;
          const xs = u.data[0].filter((v) => v !== null && v !== undefined);
          const { min, max } = u.scales.x;
          memory.zoom = xs.length && (min > xs[0] || max < xs[xs.length - 1]) ? { axis, min, max } : null;
        }],
        // A series hidden by its legend entry takes its faint raw line and its band along.
        setSeries: [(u, i) => {
          if (i === null || !specs[i - 1] || !specs[i - 1].main) return;
          const label = specs[i - 1].label, show = u.series[i].show;
          if (show) hidden.delete(label); else hidden.add(label);
          specs.forEach((s, k) => { if (s.of === label && u.series[k + 1].show !== show) u.setSeries(k + 1, { show }); });
        }],
      },
    };
    plot?.destroy();
    plot = new uPlot(options, data, box);
    // only each series' main line in the legend: raw lines and band edges go with it
    plot.root.querySelectorAll(".u-legend .u-series").forEach((row, k) => {
      if (k && !specs[k - 1].main) row.classList.add("legend-hidden");
    });
    box.plot = plot;
    box.drawn = { axis, labels: specs.map((s) => s.label), data };
    box.dataset.x = axis;
    box.dataset.drawn = "1";
  };

  // The data as drawn (smoothed where smoothing is on, its raw values beside): one column
  // per series, one row per x.
  box.csv = () => {
    const { axis, labels, data } = box.drawn;
    const quote = (s) => /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
    const rows = [[AXES[axis], ...labels].map(quote).join(",")];
    data[0].forEach((x, i) => rows.push([x, ...data.slice(1).map((column) => column[i] ?? "")].join(",")));
    return rows.join("\n") + "\n";
  };

  // The chart as a PNG: its title, the plot on the page's background, and the legend's labels.
  const png = () => {
    const source = plot.ctx.canvas;
    const ratio = source.width / plot.width;
    const canvas = document.createElement("canvas");
    canvas.width = source.width;
    canvas.height = source.height + 28 * ratio;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = css("--bg");
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = css("--fg");
    ctx.font = `${14 * ratio}px system-ui, sans-serif`;
    ctx.fillText(title, 6 * ratio, 18 * ratio);
    ctx.drawImage(source, 0, 28 * ratio);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  };

  charts.add(box);
  // Drawn once the box is in the page and has a width.
  requestAnimationFrame(() => { if (box.isConnected) box.redraw(); });
  return box;
}

// A log y axis (ticks.js): a tick at every 1..9 x 10^k in the scale's range, a label and a
// grid line on as many as the axis has room for (one each 24 px of the plot), a bare tick on the rest.
function logAxis() {
  let ticks = [];
  const labelled = (u, splits) => splits.map((v, i) => (ticks[i] && ticks[i].label ? v : null));
  return {
    splits: (u, axisIdx, min, max) => {
      // u.height: the chart's, in CSS pixels (the plot's box is not sized yet on a first draw)
      ticks = logTicks(min, max, Math.max(3, Math.floor((u.height - 60) / 24)));
      return ticks.map((t) => t.value);
    },
    filter: (u, splits) => splits,
    values: (u, splits) => splits.map((v, i) => (ticks[i] && ticks[i].label ? compact(v) : "")),
    grid: { stroke: css("--line"), width: 1, filter: labelled },
  };
}

const slug = (title) => title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");

// Expert usage over training: one row per expert, one column per epoch, colour by the
// share of assignments (0 like the background → the largest share seen, in contrast).
export function heatmap(title, epochs, usageByEpoch, { vmax } = {}) {
  const experts = usageByEpoch.reduce((n, u) => Math.max(n, u ? u.length : 0), 0);
  const box = el("div", { class: "heatmap", "data-heatmap": title, "data-epochs": epochs.length,
    "data-experts": experts, "data-cells": epochs.length * experts }, el("h3", {}, title));
  if (!experts) {
    box.append(el("p", { class: "muted" }, "no statistics yet"));
    return box;
  }
  const values = usageByEpoch.flatMap((u) => u || []);
  const top = vmax || Math.max(...values, 200 / experts);
  const canvas = el("canvas", { role: "img", "aria-label": `${title}: expert usage by epoch` });
  const rowHeight = Math.max(6, Math.min(18, Math.floor(180 / experts)));
  const labelWidth = 28;
  const draw = () => {
    const cssWidth = Math.max(200, box.clientWidth - 12);
    const cssHeight = experts * rowHeight + 18;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = cssWidth * ratio;
    canvas.height = cssHeight * ratio;
    canvas.style.height = `${cssHeight}px`;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    const cellWidth = (cssWidth - labelWidth) / epochs.length;
    const colourOf = heatColours();
    // what it draws, for tests to read (as a line chart's .drawn)
    box.colourOf = (value) => colourOf(Math.min(1, value / top));
    box.drawn = { usage: usageByEpoch, top };
    usageByEpoch.forEach((usage, col) => {
      (usage || []).forEach((value, row) => {
        ctx.fillStyle = box.colourOf(value);
        ctx.fillRect(labelWidth + col * cellWidth, row * rowHeight, Math.ceil(cellWidth), rowHeight);
      });
    });
    ctx.fillStyle = css("--muted");
    ctx.font = "10px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    for (let row = 0; row < experts; row += Math.ceil(experts / 16)) {
      ctx.fillText(`e${row}`, 2, row * rowHeight + rowHeight / 2);
    }
    ctx.textBaseline = "top";
    const step = Math.ceil(epochs.length / 10);
    for (let col = 0; col < epochs.length; col += step) {
      ctx.fillText(String(epochs[col]), labelWidth + col * cellWidth, experts * rowHeight + 4);
    }
    canvas.onmousemove = (event) => {
      const rect = canvas.getBoundingClientRect();
      const col = Math.floor((event.clientX - rect.left - labelWidth) / cellWidth);
      const row = Math.floor((event.clientY - rect.top) / rowHeight);
      const value = usageByEpoch[col] && usageByEpoch[col][row];
      canvas.title = value === undefined ? "" : `epoch ${epochs[col]}, expert ${row}: ${value.toFixed(1)}%`;
    };
    box.dataset.drawn = "1";
  };
  box.append(canvas, el("div", { class: "legend" }, "0%", el("i"), `${top.toFixed(0)}% of assignments`));
  box.redraw = draw;
  charts.add(box);
  requestAnimationFrame(draw);
  return box;
}

// The colour map, from the stylesheet's colour scheme (--heat0 → --heat1 → --heat2): white
// to dark blue on a light page, dark to light blue on a dark one, so the busiest expert
// stands out from the background on either.
function heatColours() {
  const stops = [0, 1, 2].map((i) => { const n = parseInt(css(`--heat${i}`).slice(1), 16); return [n >> 16, (n >> 8) & 255, n & 255]; });
  return (t) => {
    const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t * 2] : [stops[1], stops[2], (t - 0.5) * 2];
    return `rgb(${a.map((c, i) => Math.round(c + (b[i] - c) * u)).join(",")})`;
  };
}

// A change of the system's colour scheme redraws every chart in the new colours.
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  for (const chart of [...charts]) if (chart.isConnected) chart.redraw(); else charts.delete(chart);
});
