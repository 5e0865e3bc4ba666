// The MoE lab dashboard: a few views over the same JSON routes as every client (the CLI,
// curl), following running runs on their event streams. Plain JS, no build step; charts
// by the vendored uPlot, heatmaps on a canvas.
"use strict";

const API = new URL("../", document.baseURI).pathname.replace(/\/$/, "");
const TOKEN_KEY = "moe-lab-token";
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4",
  "#6e7781", "#e16f24", "#4d2d00"];
const view = document.getElementById("view");

// ------------------------------------------------------------------ the HTTP side

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  for (;;) {
    const init = { method, headers: authHeaders(headers), signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    if (response.status === 401) {
      await askToken();
      continue;
    }
    return response;
  }
}

// The API's error, with its detail (a 422's fields), as the CLI prints it.
async function failure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail
      : body.detail.map((e) => `${e.loc.join(".")}: ${e.msg}`).join("; ");
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, detail);
}

async function api(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Polling with ETag: a getter that sends the ETag it last saw for the same path and answers
// null on a 304, so a polled view redraws only when something changed. One per view.
function conditional() {
  let last = { path: null, etag: null };
  return async (path, { signal } = {}) => {
    const headers = last.path === path && last.etag ? { "If-None-Match": last.etag } : {};
    const response = await request(path, { headers, signal });
    if (response.status === 304) return null;
    if (!response.ok) throw await failure(response);
    last = { path, etag: response.headers.get("ETag") };
    return response.json();
  };
}

let tokenPrompt = null;
function askToken() {
  // One prompt for every request that met a 401 at once.
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  tokenPrompt = new Promise((resolve) => {
    document.getElementById("token-form").onsubmit = async (event) => {
      event.preventDefault();
      const probe = await fetch(`${API}/experiments?limit=1`, {
        headers: { Authorization: `Bearer ${input.value}` },
      });
      if (probe.status === 401) {
        error.textContent = "That token was refused.";
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, input.value);
      dialog.close();
      tokenPrompt = null;
      resolve();
    };
  });
  error.textContent = sessionStorage.getItem(TOKEN_KEY) ? "The token was refused." : "";
  sessionStorage.removeItem(TOKEN_KEY);
  if (!dialog.open) dialog.showModal();
  return tokenPrompt;
}

// A run's server-sent events, read with fetch (EventSource cannot send the token): calls
// onEvent(name, data) for each, resumes after a dropped connection with Last-Event-ID, and
// returns once the run has ended (or the view that asked is gone).
async function follow(experimentId, onEvent, signal) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const response = await fetch(`${API}/experiments/${experimentId}/events`, { headers, signal });
      if (response.status === 401) { await askToken(); continue; }
      if (response.status === 404 || response.status === 422) return;  // no such run
      if (!response.ok) throw new ApiError(response.status, "");  // 503 and the like: retry
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).replace(/\r$/, "");
          buffer = buffer.slice(end + 1);
          if (line === "") {
            if (event.data !== undefined) {
              if (event.id !== undefined) lastId = event.id;
              const data = JSON.parse(event.data);
              onEvent(event.event || "message", data);
              if (event.event === "status" && (FINISHED.has(data.status) || data.status === "deleted")) return;
            }
            event = {};
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") event.data = event.data === undefined ? text : `${event.data}\n${text}`;
            else if (field === "event" || field === "id") event[field] = text;
          }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    await sleep(1000);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ small DOM helpers

function el(tag, attrs = {}, ...children) {
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

const fmt = (value, digits = 4) => (value === null || value === undefined || Number.isNaN(value))
  ? "–" : Number(value).toFixed(digits);
const fmtInt = (value) => (value === null || value === undefined) ? "–"
  : Math.round(value).toLocaleString("en-US");
const mean = (values) => values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

// replaceChildren, leaving out the nulls of optional parts (it would print "null").
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

const statusTag = (status) => el("span", { class: `status ${status}`, "data-status": status }, status);
const mark = (passed) => passed === null || passed === undefined ? el("span", { class: "muted" }, "–")
  : el("span", { class: passed ? "ok" : "bad" }, passed ? "✓" : "✗");

function progressCell(run) {
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
function newScope() {
  if (viewScope) viewScope.abort();
  viewScope = new AbortController();
  return viewScope.signal;
}

function every(ms, fn, signal) {
  const timer = setInterval(() => { if (!document.hidden) fn(); }, ms);
  signal.addEventListener("abort", () => clearInterval(timer));
}

// ------------------------------------------------------------------ charts

function lineChart(title, x, series, { yLabel = "", height = 220, y2 = null } = {}) {
  // series: [{label, values, color?, dash?, scale?}]; null values are gaps, spanned.
  const box = el("div", { class: "chart", "data-chart": title, "data-series": series.length,
    "data-points": x.length }, el("h3", {}, title));
  const draw = () => {
    const width = Math.max(300, box.clientWidth - 12);
    const axes = [{ label: "epoch", size: 36, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, { label: yLabel, scale: "y", size: 60,
      values: (u, splits) => splits.map((v) => Number(v.toPrecision(4))) }];
    if (y2) axes.push({ label: y2, scale: "y2", side: 1, grid: { show: false }, size: 50 });
    const options = {
      width, height,
      scales: { x: { time: false }, ...(y2 ? { y2: { auto: true } } : {}) },
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      axes,
      series: [{ label: "epoch" }, ...series.map((s, i) => ({
        label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 2,
        dash: s.dash, scale: s.scale || "y", spanGaps: true,
        points: { show: x.length <= 40 },
        value: (u, v) => v === null || v === undefined ? "–" : Number(v).toPrecision(5),
      }))],
    };
    box.querySelector(".uplot")?.remove();
    new uPlot(options, [x, ...series.map((s) => s.values)], box);
    box.dataset.drawn = "1";
  };
  // Drawn once the box is in the page and has a width.
  requestAnimationFrame(draw);
  return box;
}

// Expert usage over training: one row per expert, one column per epoch, colour by the
// share of assignments (white 0 → dark blue at the largest share seen).
function heatmap(title, epochs, usageByEpoch, { vmax } = {}) {
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
    usageByEpoch.forEach((usage, col) => {
      (usage || []).forEach((value, row) => {
        ctx.fillStyle = blues(Math.min(1, value / top));
        ctx.fillRect(labelWidth + col * cellWidth, row * rowHeight, Math.ceil(cellWidth), rowHeight);
      });
    });
    ctx.fillStyle = "#6b7580";
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
  requestAnimationFrame(draw);
  return box;
}

function blues(t) {
  // #f7fbff → #6baed6 → #08306b
  const stops = [[247, 251, 255], [107, 174, 214], [8, 48, 107]];
  const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t * 2] : [stops[1], stops[2], (t - 0.5) * 2];
  return `rgb(${a.map((c, i) => Math.round(c + (b[i] - c) * u)).join(",")})`;
}

// ------------------------------------------------------------------ views

const routes = [
  [/^#\/run\/(\d+)$/, (m) => runView(Number(m[1]))],
  [/^#\/study\/(\d+)$/, (m) => studyView(Number(m[1]))],
  [/^#\/studies$/, () => studiesView()],
  [/^#\/compare(?:\?ids=([\d,]*))?$/, (m) => compareView((m[1] || "").split(",").filter(Boolean).map(Number))],
  [/^#?\/?$/, () => runsView()],
];

async function route() {
  const hash = location.hash || "#/";
  for (const [pattern, render] of routes) {
    const match = hash.match(pattern);
    if (match) {
      const signal = newScope();
      try {
        await render(match, signal);
      } catch (error) {
        if (signal.aborted) return;
        fill(view, el("h1", {}, "Something went wrong"), el("p", { class: "error" }, error.message));
      }
      return;
    }
  }
  fill(view, el("h1", {}, "Not found"), el("p", {}, el("a", { href: "#/" }, "All runs")));
}

// ---- the runs

// The experiment presets' names, from the engine's registry (GET /presets), once a page.
let presetNames = null;
function presets() {
  presetNames = presetNames || api("/presets").then((p) => Object.keys(p.experiments));
  presetNames.catch(() => { presetNames = null; });  // asked again by the next view
  return presetNames;
}

async function runsView() {
  const signal = viewScope.signal;
  const presetOptions = await presets().catch(() => []);
  const params = new URLSearchParams(sessionStorage.getItem("moe-lab-filters") || "order=newest");
  const selected = new Set();
  const body = el("tbody");
  const field = (name, node) => {
    node.value = params.get(name) || "";
    node.name = name;
    node.addEventListener("change", () => {
      if (node.value) params.set(name, node.value); else params.delete(name);
      sessionStorage.setItem("moe-lab-filters", params.toString());
      load();
    });
    return node;
  };
  const options = (values, blank) => [el("option", { value: "" }, blank), ...values.map((v) => el("option", { value: v }, v))];
  const compare = el("button", { disabled: true, onclick: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; } }, "Compare selected");
  fill(view, 
    el("h1", {}, "Runs"),
    el("div", { class: "filters" },
      field("status", el("select", {}, options(["queued", "running", "succeeded", "failed", "cancelled"], "any status"))),
      field("name", el("input", { placeholder: "name contains", size: 14 })),
      field("tag", el("input", { placeholder: "tag", size: 10 })),
      field("preset", el("select", {}, options(presetOptions, "any preset"))),
      field("dense", el("select", {}, el("option", { value: "" }, "dense and MoE"),
        el("option", { value: "true" }, "dense only"), el("option", { value: "false" }, "MoE only"))),
      field("order", el("select", {}, el("option", { value: "newest" }, "newest first"),
        el("option", { value: "val_ce" }, "best validation CE"))),
      compare),
    el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, el("th"), el("th", { class: "num" }, "id"), el("th", {}, "name"),
        el("th", {}, "status"), el("th", {}, "progress"), el("th", {}, "preset"),
        el("th", { class: "num" }, "best val CE"), el("th", { class: "num" }, "tokens/s"),
        el("th", {}, "tags"), el("th", {}, "created"))),
      body),
    el("p", { class: "muted", id: "runs-total" }));

  const row = (run, member) => {
    const box = el("input", { type: "checkbox", checked: selected.has(run.id), onchange: (e) => {
      if (e.target.checked) selected.add(run.id); else selected.delete(run.id);
      compare.disabled = selected.size < 1;
    } });
    return el("tr", { class: member ? "member" : null, "data-run": run.id },
      el("td", {}, box), el("td", { class: "num" }, run.id),
      el("td", {}, el("a", { href: `#/run/${run.id}` }, run.name)),
      el("td", {}, statusTag(run.status)), el("td", {}, progressCell(run)),
      el("td", {}, run.dense ? "dense" : (run.preset || "custom")),
      el("td", { class: "num" }, fmt(run.best_val_ce_loss)),
      el("td", { class: "num" }, fmtInt(run.tokens_per_sec)),
      el("td", {}, run.tags.join(", ")),
      el("td", { class: "muted" }, new Date(run.created_at).toLocaleString()));
  };

  const poll = conditional();
  async function load() {
    const query = new URLSearchParams(params);
    query.set("limit", "200");
    const list = await poll(`/experiments?${query}`, { signal });
    if (list === null) return;  // unchanged since the last look
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
      rows.push(el("tr", { class: "study-head", "data-study": run.study_id },
        el("td"), el("td"), el("td", { colspan: 8 }, el("a", { href: `#/study/${run.study_id}` }, `study ${run.study_id}`),
          el("span", { class: "muted" }, ` · ${members.length} runs`))));
      for (const member of members.sort((a, b) => a.id - b.id)) {
        rows.push(row(member, true));
        shown.add(member.id);
      }
    }
    fill(body, ...rows);
    document.getElementById("runs-total").textContent = `${list.total} runs${list.total > list.items.length ? `, ${list.items.length} shown` : ""}`;
  }
  await load();
  every(2000, () => load().catch(() => {}), signal);
}

async function studiesView() {
  const list = await api("/studies?limit=200", { signal: viewScope.signal });
  fill(view, el("h1", {}, "Studies"), el("table", {},
    el("thead", {}, el("tr", {}, ...["id", "name", "status", "seeds", "runs", "created"].map((h) => el("th", {}, h)))),
    el("tbody", {}, list.items.map((s) => el("tr", { "data-study": s.id },
      el("td", {}, s.id), el("td", {}, el("a", { href: `#/study/${s.id}` }, s.name)),
      el("td", {}, statusTag(s.status)), el("td", {}, s.seeds), el("td", {}, s.member_ids.length),
      el("td", { class: "muted" }, new Date(s.created_at).toLocaleString()))))));
}

// ---- one run

function epochSeries(epochs) {
  const x = epochs.map((e) => e.epoch);
  const pick = (f) => epochs.map((e) => { const v = f(e); return v === undefined ? null : v; });
  return {
    x,
    trainCe: pick((e) => e.train.ce_loss), trainLoss: pick((e) => e.train.loss), trainAux: pick((e) => e.train.aux_loss),
    trainEvalCe: pick((e) => e.train_eval && e.train_eval.ce_loss),
    valCe: pick((e) => e.val && e.val.ce_loss), valLoss: pick((e) => e.val && e.val.loss), valAux: pick((e) => e.val && e.val.aux_loss),
    tokens: pick((e) => e.tokens_per_sec), temperature: pick((e) => e.gating_temperature),
  };
}

function curves(run, epochs) {
  const s = epochSeries(epochs);
  const charts = [
    lineChart("Cross-entropy", s.x, [
      { label: "train CE", values: s.trainCe }, { label: "val CE", values: s.valCe },
      { label: "train CE (eval mode)", values: s.trainEvalCe, dash: [6, 4] }], { yLabel: "nats" }),
    lineChart("Loss (CE + aux)", s.x, [
      { label: "train loss", values: s.trainLoss }, { label: "val loss", values: s.valLoss }], { yLabel: "nats" }),
  ];
  if (!run.dense) {
    charts.push(lineChart("Auxiliary loss", s.x, [
      { label: "train aux", values: s.trainAux }, { label: "val aux", values: s.valAux }]));
  }
  charts.push(lineChart("Tokens per second", s.x, [{ label: "tokens/s", values: s.tokens }]));
  if (s.temperature.some((t) => t !== null)) {
    charts.push(lineChart("Gating temperature", s.x, [{ label: "temperature", values: s.temperature }]));
  }
  return el("div", { class: "charts", id: "curves" }, charts);
}

// A statistic of a layer's row, null where the row or the statistic (older runs) is not.
const value = (row, key) => (row && row[key] !== undefined && row[key] !== null ? row[key] : null);
const pct = (row, key) => (value(row, key) === null ? null : 100 * row[key]);

function expertSection(epochs) {
  const layers = [...new Set(epochs.flatMap((e) => e.expert_stats.map((l) => l.layer)))].sort((a, b) => a - b);
  if (!layers.length) return el("div", { id: "experts" });
  const x = epochs.map((e) => e.epoch);
  const of = (kind, layer) => epochs.map((e) => (e[kind] || []).find((l) => l.layer === layer) || null);
  const blocks = layers.map((layer) => {
    const train = of("expert_stats", layer);
    const evaluated = of("eval_expert_stats", layer);
    const usage = [...train, ...evaluated].flatMap((l) => l ? l.usage : []);
    const vmax = Math.max(...usage, 0);
    const hasEval = evaluated.some(Boolean);
    return el("div", { "data-layer": layer },
      el("h3", {}, `MoE layer ${layer}`),
      el("div", { class: "layer" },
        heatmap(`layer ${layer}, training`, x, train.map((l) => l && l.usage), { vmax }),
        hasEval ? heatmap(`layer ${layer}, evaluation`, x, evaluated.map((l) => l && l.usage), { vmax })
          : el("div", { class: "heatmap muted" }, "no evaluation statistics"),
        el("div", {},
          lineChart(`layer ${layer}: entropy and drops`, x, [
            { label: "entropy (train)", values: train.map((l) => l && l.entropy) },
            { label: "entropy (eval)", values: evaluated.map((l) => l && l.entropy), dash: [6, 4] },
            { label: "dropped % (train)", values: train.map((l) => pct(l, "dropped")), scale: "y2" },
            { label: "unused capacity %", values: train.map((l) => pct(l, "pad_ratio")), scale: "y2", dash: [2, 3] },
          ], { yLabel: "nats", y2: "%", height: 180 }),
          lineChart(`layer ${layer}: load imbalance`, x, [
            { label: "max/mean − 1 (train)", values: train.map((l) => value(l, "imbalance")) },
            { label: "worst step", values: train.map((l) => value(l, "max_imbalance")), dash: [2, 3] },
            { label: "max/mean − 1 (eval)", values: evaluated.map((l) => value(l, "imbalance")), dash: [6, 4] },
            ...(train.some((l) => value(l, "z_loss") !== null)
              ? [{ label: "router z-loss", values: train.map((l) => value(l, "z_loss")), scale: "y2" }] : []),
          ], { y2: train.some((l) => value(l, "z_loss") !== null) ? "z-loss" : null, height: 180 }))));
  });
  return el("div", { id: "experts" }, el("h2", {}, "Experts"),
    el("p", { class: "muted" }, "Share of each expert's assignments per epoch: over the epoch's training steps, and the epoch's weights over the validation set."),
    blocks);
}

function verdictTable(verdict) {
  const rows = [["primary", verdict.primary], ["secondary", verdict.secondary], ["tertiary", verdict.tertiary]];
  return el("table", { id: "verdict", "data-passed": String(verdict.passed) },
    el("thead", {}, el("tr", {}, el("th", {}, "criterion"), el("th", {}, ""), el("th", {}, "details"))),
    el("tbody", {}, rows.map(([name, c]) => el("tr", {}, el("td", {}, name), el("td", {}, mark(c.passed)),
      el("td", { class: "muted details" }, Object.entries(c)
        // The numbers a criterion was judged on; nested detail (per layer, timings) is in the API.
        .filter(([k, v]) => k !== "passed" && (v === null || typeof v !== "object"))
        .map(([k, v]) => `${k.replace(/_/g, " ")} ${typeof v === "number" ? Number(v).toPrecision(4) : v}`).join(" · "))))),
    el("tfoot", {}, el("tr", {}, el("td", {}, el("b", {}, "passed")), el("td", {}, mark(verdict.passed)),
      el("td", { class: "muted" }, verdict.significance_note || ""))));
}

async function download(path, filename) {
  const response = await request(path);
  if (!response.ok) throw new ApiError(response.status, response.statusText);
  const url = URL.createObjectURL(await response.blob());
  el("a", { href: url, download: filename }).click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function runView(id) {
  const signal = viewScope.signal;
  let [run, metrics] = await Promise.all([api(`/experiments/${id}`, { signal }), api(`/experiments/${id}/metrics`, { signal })]);
  const epochs = metrics.epochs;
  const header = el("div");
  const curvesBox = el("div");
  const experts = el("div");
  const verdictBox = el("div");
  const artifactsBox = el("div");
  const log = el("pre", { id: "log" });
  let logOffset = 0;

  const renderHeader = () => fill(header, 
    el("h1", {}, `${run.name} `, el("span", { class: "muted" }, `#${run.id}`)),
    el("div", { class: "summary" },
      el("div", {}, el("span", {}, "status"), statusTag(run.status)),
      el("div", {}, el("span", {}, "progress"), progressCell(run)),
      el("div", {}, el("span", {}, "kind"), run.dense ? "dense" : `MoE, ${run.preset || "custom"}`),
      el("div", {}, el("span", {}, "best val CE"), fmt(run.best_val_ce_loss)),
      el("div", {}, el("span", {}, "test CE"), fmt(run.test_ce_loss)),
      el("div", {}, el("span", {}, "params / active"), `${fmtInt(run.params)} / ${fmtInt(run.active_params)}`),
      el("div", {}, el("span", {}, "tokens/s"), fmtInt(run.tokens_per_sec)),
      el("div", {}, el("span", {}, "worker"), run.worker_name || "–"),
      run.study_id ? el("div", {}, el("span", {}, "study"), el("a", { href: `#/study/${run.study_id}` }, `study ${run.study_id}`)) : null,
      run.baseline_id ? el("div", {}, el("span", {}, "baseline"), el("a", { href: `#/run/${run.baseline_id}` }, `run ${run.baseline_id}`)) : null,
      run.tags.length ? el("div", {}, el("span", {}, "tags"), run.tags.join(", ")) : null),
    run.error ? el("pre", { class: "error" }, run.error) : null,
    FINISHED.has(run.status) ? null : el("button", { class: "danger", id: "cancel", onclick: async (e) => {
      e.target.disabled = true;
      try {
        run = await api(`/experiments/${id}/cancel`, { method: "POST" });
      } catch (error) {  // 409: it ended meanwhile
        run = await api(`/experiments/${id}`);
        alert(`Not cancelled: ${error.message}`);
      }
      renderHeader();
    } }, run.cancel_requested ? "Cancelling…" : "Cancel run"));

  const renderCurves = () => {
    fill(curvesBox, el("h2", {}, "Curves"), epochs.length ? curves(run, epochs) : el("p", { class: "muted" }, "No epoch has finished yet."));
    fill(experts, expertSection(epochs));
  };

  const renderVerdict = async () => {
    if (run.baseline_id === null) {
      fill(verdictBox);
      return;
    }
    let body;
    try {
      body = verdictTable(await api(`/experiments/${id}/verdict`, { signal }));
    } catch (error) {
      body = el("p", { class: "muted" }, error.message.replace(/^\d+: /, ""));
    }
    fill(verdictBox, el("h2", {}, "Verdict against ", el("a", { href: `#/run/${run.baseline_id}` }, `dense run ${run.baseline_id}`)), body);
  };

  const renderArtifacts = async () => {
    const list = await api(`/experiments/${id}/artifacts`, { signal });
    fill(artifactsBox, el("h2", {}, "Artifacts"), list.items.length ? el("table", { id: "artifacts" }, el("tbody", {},
      list.items.map((a) => el("tr", {}, el("td", {}, el("a", { href: "#", onclick: (e) => {
        e.preventDefault();
        download(`/experiments/${id}/artifacts/${a.name}`, `experiment-${id}-${a.name}`);
      } }, a.name), a.partial ? el("span", { class: "muted", title: "the run has not succeeded: not its final output" }, " partial") : ""),
      el("td", { class: "num" }, `${fmtInt(a.size)} bytes`),
      el("td", { class: "muted" }, new Date(a.modified_at).toLocaleString()))))) : el("p", { class: "muted" }, "none yet"));
  };

  const readLog = async () => {
    const response = await request(`/experiments/${id}/logs?offset=${logOffset}`, { signal });
    if (!response.ok) return;
    const text = await response.text();
    logOffset = Number(response.headers.get("X-Log-Offset") || logOffset);
    if (text) {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(text);
      if (atEnd) log.scrollTop = log.scrollHeight;
    }
  };

  fill(view, header, curvesBox, experts, verdictBox,
    el("div", { class: "cols" },
      el("div", {}, el("h2", {}, "Log"), log),
      el("div", {}, el("h2", {}, "Configuration"), el("pre", { id: "config" }, JSON.stringify({ config: run.config, base: run.base }, null, 2)))),
    artifactsBox);
  renderHeader();
  renderCurves();
  await Promise.all([renderVerdict(), renderArtifacts(), readLog()]);

  if (!FINISHED.has(run.status)) {
    every(2000, () => readLog().catch(() => {}), signal);
    follow(id, async (event, data) => {
      if (event === "epoch") {
        if (!epochs.some((e) => e.epoch === data.epoch)) epochs.push(data);
        renderCurves();
      } else if (event === "progress") {
        run.progress = data;
        run.status = "running";
        renderHeader();
      } else if (event === "status") {
        run = await api(`/experiments/${id}`, { signal });
        renderHeader();
        if (FINISHED.has(run.status)) {
          await Promise.all([renderVerdict(), renderArtifacts(), readLog()]);
        }
      }
    }, signal);
  }
}

// ---- a study

async function studyView(id) {
  const signal = viewScope.signal;
  let study = await api(`/studies/${id}`, { signal });
  const epochsOf = new Map(await Promise.all(study.members.map(async (m) =>
    [m.id, (await api(`/experiments/${m.id}/metrics`, { signal })).epochs])));
  const header = el("div");
  const verdicts = el("div");
  const members = el("div");
  const overlay = el("div");

  const render = () => {
    fill(header, el("h1", {}, `${study.name} `, el("span", { class: "muted" }, `study #${study.id}`)),
      el("div", { class: "summary" },
        el("div", {}, el("span", {}, "status"), statusTag(study.status)),
        el("div", {}, el("span", {}, "presets"), study.experiments.join(", ")),
        el("div", {}, el("span", {}, "seeds"), study.seeds),
        el("div", {}, el("span", {}, "base"), study.base_preset || "custom")));
    const delta = (d) => !d || d.mean === null ? "–" : (d.se === null ? fmt(d.mean) : `${fmt(d.mean)} ± ${fmt(d.se)}`);
    // A difference's t-test: its interval and p-value, empty with one seed (no standard error).
    const interval = (d) => !d || d.ci_low === null || d.ci_low === undefined ? ""
      : `[${d.ci_low >= 0 ? "+" : ""}${fmt(d.ci_low)}, ${d.ci_high >= 0 ? "+" : ""}${fmt(d.ci_high)}]`;
    const pValue = (d) => !d || d.p_value === null || d.p_value === undefined ? ""
      : d.p_value < 0.0001 ? "<0.0001" : fmt(d.p_value, 4);
    const tests = study.preset_verdicts.flatMap((v) => [v.val_loss_delta, v.gap_delta]).filter((d) => d);
    // The API says at what level it tests (moe_core.criteria.CONFIDENCE).
    const confidence = (tests.find((d) => d.confidence) || {}).confidence;
    const ci = confidence ? `${+(100 * confidence).toFixed(1)}% CI` : "CI";
    const tested = tests.some((d) => d.p_value !== null && d.p_value !== undefined);
    fill(verdicts, el("h2", {}, "Verdicts against dense"),
      el("table", { id: "study-verdicts" },
        el("thead", {}, el("tr", {}, ...["preset", "passed", "primary", "tertiary", "Δ val CE", ci, "p", "Δ gap", ci, "p", "significant", "seeds", "note"]
          .map((h, i) => el("th", { class: i >= 4 && i <= 9 ? "num" : null }, h)))),
        el("tbody", {}, study.preset_verdicts.map((v) => el("tr", { "data-preset": v.preset, "data-passed": String(v.passed), "data-significant": String(v.significant) },
          el("td", {}, v.preset), el("td", {}, mark(v.passed)), el("td", {}, mark(v.primary_passed)),
          el("td", {}, mark(v.tertiary_passed)),
          ...[v.val_loss_delta, v.gap_delta].flatMap((d, i) => [
            el("td", { class: "num" }, delta(d)),
            el("td", { class: "num", "data-ci": i ? "gap" : "val" }, interval(d)),
            el("td", { class: "num", "data-p": i ? "gap" : "val" }, pValue(d))]),
          el("td", {}, v.significant === null ? el("span", { class: "muted" }, "n/a") : mark(v.significant),
            v.significance_of === "gap_delta" ? el("span", { class: "muted" }, " (gap)") : null),
          el("td", {}, v.seeds.join(", ")), el("td", { class: "muted" }, v.detail || v.significance_note || ""))))),
      tested ? el("p", { class: "muted footnote", id: "study-verdicts-note" },
        `Δ: mean ± standard error over the seeds, each run paired with its seed's dense run; ${ci}: Δ ± t·SE, Student's t with n − 1 degrees of freedom; `
        + `p: two-sided paired t-test. Significant: the deciding difference (Δ val CE; Δ gap where primary passes on the gap alone, marked (gap)) `
        + `has p < ${+(1 - confidence).toFixed(3)}, its interval excludes 0.`) : null);
    fill(members, el("h2", {}, "Runs"), el("table", { id: "study-members" },
      el("thead", {}, el("tr", {}, ...["id", "name", "seed", "status", "epochs", "best val CE", "verdict"].map((h) => el("th", {}, h)))),
      el("tbody", {}, study.members.map((m) => {
        const row = study.verdicts.find((v) => v.experiment_id === m.id);
        return el("tr", { "data-run": m.id }, el("td", {}, m.id), el("td", {}, el("a", { href: `#/run/${m.id}` }, m.name)),
          el("td", {}, m.seed), el("td", {}, statusTag(m.status)), el("td", {}, `${m.current_epoch}/${m.num_epochs}`),
          el("td", { class: "num" }, fmt(m.best_val_ce_loss)),
          el("td", {}, m.dense ? el("span", { class: "muted" }, "baseline") : row ? mark(row.passed) : "–"));
      }))));
    const x = [...new Set([...epochsOf.values()].flatMap((epochs) => epochs.map((e) => e.epoch)))].sort((a, b) => a - b);
    const valuesOf = (m, f) => { const by = new Map(epochsOf.get(m.id).map((e) => [e.epoch, f(e)])); return x.map((n) => by.get(n) ?? null); };
    const series = (f) => study.members.map((m, i) => ({ label: m.name, values: valuesOf(m, f),
      color: m.dense ? "#1d232a" : COLORS[i % COLORS.length], dash: m.dense ? [8, 5] : undefined }));
    fill(overlay, el("h2", {}, "Curves"), x.length ? el("div", { class: "charts", id: "study-curves" },
      lineChart("Validation CE", x, series((e) => e.val && e.val.ce_loss), { yLabel: "nats" }),
      lineChart("Training CE", x, series((e) => e.train.ce_loss), { yLabel: "nats" }))
      : el("p", { class: "muted" }, "No epoch has finished yet."));
  };
  fill(view, header, verdicts, overlay, members);
  render();

  // The running runs on their event streams, at most MAX_STREAMS at once: a browser opens
  // about six connections per host, and every other request of the page needs one too.
  // The study itself (statuses, verdicts) is polled; a run that starts gets a stream when
  // one is free, and one past the cap has its metrics read on each poll instead.
  const MAX_STREAMS = 3;
  const followed = new Set();
  const applyEpoch = (memberId, data) => {
    const epochs = epochsOf.get(memberId);
    if (!epochs.some((e) => e.epoch === data.epoch)) epochs.push(data);
  };
  // Polled with ETags: the study, and the metrics of each run past the stream cap.
  const pollStudy = conditional();
  const pollMetrics = new Map();
  const refresh = async () => {
    const fresh = await pollStudy(`/studies/${id}`, { signal });
    let changed = fresh !== null;
    if (fresh !== null) study = fresh;
    for (const member of study.members.filter((m) => m.status === "running" && !followed.has(m.id))) {
      if (followed.size >= MAX_STREAMS) {
        if (!pollMetrics.has(member.id)) pollMetrics.set(member.id, conditional());
        const metrics = await pollMetrics.get(member.id)(`/experiments/${member.id}/metrics`, { signal });
        if (metrics !== null) {
          metrics.epochs.forEach((e) => applyEpoch(member.id, e));
          changed = true;
        }
        continue;
      }
      followed.add(member.id);
      follow(member.id, (event, data) => {
        if (event === "epoch") {
          applyEpoch(member.id, data);
          const row = study.members.find((m) => m.id === member.id);
          if (row) row.current_epoch = Math.max(row.current_epoch, data.epoch);
          render();
        } else if (event === "status" && FINISHED.has(data.status)) {
          refresh().catch(() => {});
        }
      }, signal).finally(() => followed.delete(member.id));
    }
    // Runs that ended between two looks: their last epochs.
    for (const member of study.members.filter((m) => FINISHED.has(m.status))) {
      if (epochsOf.get(member.id).length < member.current_epoch) {
        const metrics = await api(`/experiments/${member.id}/metrics`, { signal });
        metrics.epochs.forEach((e) => applyEpoch(member.id, e));
        changed = true;
      }
    }
    if (changed) render();
  };
  if (study.members.some((m) => !FINISHED.has(m.status))) {
    await refresh();
    every(3000, () => {
      if (study.members.some((m) => !FINISHED.has(m.status))) refresh().catch(() => {});
    }, signal);
  }
}

// ---- compare

async function compareView(ids) {
  const signal = viewScope.signal;
  const input = el("input", { value: ids.join(","), placeholder: "run ids, e.g. 3,4,5", size: 24 });
  const form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); location.hash = `#/compare?ids=${input.value.replace(/\s/g, "")}`; } },
    input, el("button", { type: "submit" }, "Compare"), el("span", { class: "muted" }, "or tick runs on the runs page"));
  if (!ids.length) {
    fill(view, el("h1", {}, "Compare runs"), form);
    return;
  }
  const runs = await Promise.all(ids.map((id) => api(`/experiments/${id}`, { signal })));
  const byId = new Map(runs.map((r) => [r.id, r]));
  await Promise.all(runs.filter((r) => r.baseline_id !== null && !byId.has(r.baseline_id))
    .map(async (r) => byId.set(r.baseline_id, await api(`/experiments/${r.baseline_id}`, { signal }))));
  const epochsOf = new Map(await Promise.all(runs.map(async (r) => [r.id, (await api(`/experiments/${r.id}/metrics`, { signal })).epochs])));
  const dense = runs.filter((r) => r.dense);
  const rows = runs.map((run) => {
    const epochs = epochsOf.get(run.id);
    const last = epochs[epochs.length - 1];
    const evaluated = [...epochs].reverse().find((e) => e.eval_expert_stats && e.eval_expert_stats.length);
    const given = (key) => (last ? last.expert_stats.map((l) => l[key]).filter((v) => v !== null && v !== undefined) : []);
    const drops = given("dropped"), loads = given("imbalance");
    const reference = run.baseline_id !== null ? byId.get(run.baseline_id) : (!run.dense && dense.length === 1 ? dense[0] : null);
    const ce = run.best_val_ce_loss;
    return { run, ce, perplexity: ce === null ? null : Math.exp(ce), tokens: mean(epochs.map((e) => e.tokens_per_sec)),
      minUsage: evaluated ? Math.min(...evaluated.eval_expert_stats.map((l) => l.min_usage)) : null,
      drop: drops.length ? 100 * Math.max(...drops) : null,
      imbalance: loads.length ? Math.max(...loads) : null,
      delta: ce !== null && reference && reference.best_val_ce_loss !== null ? ce - reference.best_val_ce_loss : null,
      reference };
  });
  const x = [...new Set([...epochsOf.values()].flatMap((epochs) => epochs.map((e) => e.epoch)))].sort((a, b) => a - b);
  const series = (f) => runs.map((r) => { const by = new Map(epochsOf.get(r.id).map((e) => [e.epoch, f(e)]));
    return { label: `${r.name} #${r.id}`, values: x.map((n) => by.get(n) ?? null), dash: r.dense ? [8, 5] : undefined }; });
  fill(view, el("h1", {}, "Compare runs"), form,
    el("table", { id: "compare" },
      el("thead", {}, el("tr", {}, ...["id", "name", "val CE", "perplexity", "tokens/s", "min usage", "drop rate", "imbalance", "Δ vs dense", "dense"].map((h, i) => el("th", { class: i && i !== 1 ? "num" : null }, h)))),
      el("tbody", {}, rows.map((r) => el("tr", { "data-run": r.run.id },
        el("td", { class: "num" }, r.run.id), el("td", {}, el("a", { href: `#/run/${r.run.id}` }, r.run.name)),
        el("td", { class: "num" }, fmt(r.ce)), el("td", { class: "num" }, fmt(r.perplexity, 1)),
        el("td", { class: "num" }, fmtInt(r.tokens)), el("td", { class: "num" }, r.minUsage === null ? "–" : `${r.minUsage.toFixed(1)}%`),
        el("td", { class: "num" }, r.drop === null ? "–" : `${r.drop.toFixed(2)}%`),
        el("td", { class: "num" }, fmt(r.imbalance, 2)),
        el("td", { class: "num" }, r.delta === null ? "–" : (r.delta > 0 ? "+" : "") + fmt(r.delta)),
        el("td", { class: "num" }, r.reference ? r.reference.id : "–"))))),
    x.length ? el("div", { class: "charts" },
      lineChart("Validation CE", x, series((e) => e.val && e.val.ce_loss), { yLabel: "nats" }),
      lineChart("Training CE", x, series((e) => e.train.ce_loss), { yLabel: "nats" }),
      lineChart("Tokens per second", x, series((e) => e.tokens_per_sec))) : null);
}

window.addEventListener("hashchange", route);
route();
