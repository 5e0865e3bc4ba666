// One run: its figures, curves, experts (MoE runs only), verdict, log, configuration and
// artifacts, following the run's event stream while it runs.

import { FINISHED, api, download, follow, request, whoAmI } from "./http.js";
import { el, every, fill, fmt, fmtInt, mark, progressCell, scopeSignal, scroller, sortable, statusTag, view } from "./dom.js";
import { chartControls, epochAxes, lineChart } from "./charts.js";
import { expertSection } from "./experts.js";
import { presetDefaults } from "./presets.js";
import { gpuCell, labelsEditor } from "./labels.js";
import { mergePoints, stepAxes } from "./steps.js";
import { chartPicker, seriesKeys, seriesLines } from "./series.js";
import { systemSection } from "./system.js";  // system metrics (issue 28.5): see system.js

// The run's curves over its epochs and, where the run has step points, over those too:
// each step figure a series of its own beside the epoch's (a faint line of many points),
// learning rate and gradient norm on charts of their own.
function curves(run, epochs, points) {
  const x = epochAxes(epochs, run);
  const xs = stepAxes(points, epochs, run);
  const pick = (f) => epochs.map((e) => { const v = f(e); return v === undefined ? null : v; });
  const line = (label, f, extra = {}) => ({ label, x, y: pick(f), ...extra });
  const perStep = (label, key, extra = {}) => points.length
    ? [{ label: `${label} per step`, x: xs, y: points.map((p) => p[key] ?? null), steps: true, ...extra }] : [];
  const charts = [
    lineChart("Cross-entropy", [line("train CE", (e) => e.train.ce_loss), line("val CE", (e) => e.val && e.val.ce_loss),
      line("train CE (eval mode)", (e) => e.train_eval && e.train_eval.ce_loss, { dash: [6, 4] }),
      ...perStep("train CE", "ce_loss", { color: "--c7" })], { yLabel: "nats" }),
    lineChart("Loss (CE + aux)", [line("train loss", (e) => e.train.loss), line("val loss", (e) => e.val && e.val.loss),
      ...perStep("train loss", "loss", { color: "--c7" })], { yLabel: "nats" }),
  ];
  if (!run.dense) {  // MoE only: a dense run has no balance loss
    charts.push(lineChart("Auxiliary loss", [line("train aux", (e) => e.train.aux_loss), line("val aux", (e) => e.val && e.val.aux_loss),
      ...perStep("train aux", "aux_loss", { color: "--c7" })]));
  }
  charts.push(lineChart("Tokens per second", [line("tokens/s", (e) => e.tokens_per_sec), ...perStep("tokens/s", "tokens_per_sec", { color: "--c7" })]));
  if (points.length) {
    charts.push(lineChart("Learning rate", perStep("learning rate", "learning_rate")),
      lineChart("Gradient norm", perStep("grad norm", "grad_norm"), { yLabel: "L2, before clipping" }));
  }
  if (!run.dense && epochs.some((e) => e.gating_temperature !== null && e.gating_temperature !== undefined)) {
    charts.push(lineChart("Gating temperature", [line("temperature", (e) => e.gating_temperature)]));
  }
  return el("div", { class: "charts", id: "curves", "data-step-points": points.length }, charts);
}

// A chart of any series the run logged, added with a picker (series.js).
function anySeries(run, epochs, points) {
  const records = { run, epochs, points };
  return chartPicker(seriesKeys(epochs, points), (key) => seriesLines(key, records));
}

// The verdict is asked for once both runs have succeeded (before that the API answers 409,
// which a browser logs as an error): until then, why there is none yet.
async function verdictOf(run, signal) {
  if (run.status !== "succeeded") {
    return FINISHED.has(run.status) ? `No verdict: the run ${run.status}.` : "The verdict comes when the run and its baseline have succeeded.";
  }
  const baseline = await api(`/experiments/${run.baseline_id}`, { signal });
  if (baseline.status !== "succeeded") return `No verdict yet: the baseline is ${baseline.status}.`;
  return verdictTable(await api(`/experiments/${run.id}/verdict`, { signal }));
}

// The verdict's lines as the API words them (moe_core.criteria.verdict_lines): the same
// lines `moe-lab verdict` prints.
export function verdictTable(verdict, { id = "verdict" } = {}) {
  const symbol = (passed) => passed === null ? el("span", { class: "muted" }, "·") : mark(passed);
  const rows = verdict.lines.flatMap((line) => [
    el("tr", { "data-criterion": line.criterion, class: line.criterion === "passed" ? "verdict-whole" : null },
      el("td", {}, symbol(line.passed)), el("td", {}, line.criterion),
      el("td", { class: "details" }, line.summary), el("td", { class: "muted details" }, line.rule)),
    line.significance ? el("tr", { class: "significance", "data-significance": line.criterion },
      el("td"), el("td", { class: "muted" }, "significance"), el("td", { colspan: 2, class: "details" }, line.significance)) : null,
  ]);
  return scroller(el("table", { id, class: "verdict", "data-passed": String(verdict.passed) },
    el("thead", {}, el("tr", {}, ...["", "criterion", "numbers", "rule"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

// The fields of the run's config and base that differ from its preset's defaults (on its
// base preset), then the whole configuration, folded.
function configSection(run, defaults) {
  const rows = [];
  const unused = run.dense ? defaults.unused : new Set();
  const differ = (section, mine, theirs) => {
    if (!theirs) return;
    for (const key of Object.keys(mine)) {
      if (unused.has(`${section}.${key}`)) continue;  // a dense run has no router
      if (JSON.stringify(mine[key]) !== JSON.stringify(theirs[key])) rows.push([`${section}.${key}`, mine[key], theirs[key]]);
    }
  };
  differ("config", run.config, defaults.config);
  differ("base", run.base, defaults.base);
  const show = (v) => v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v);
  return el("div", { id: "configuration" },
    el("h2", {}, "Configuration"),
    el("p", { class: "muted" }, `Against ${defaults.label}.`),
    rows.length ? scroller(sortable(el("table", { id: "config-diff" },
      el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "this run"), el("th", {}, "default"))),
      el("tbody", {}, rows.map(([field, mine, theirs]) => el("tr", { "data-field": field },
        el("td", {}, field), el("td", { class: "num" }, show(mine)), el("td", { class: "num muted" }, show(theirs))))))))
      : el("p", { id: "config-diff-none" }, "Every field is the default."),
    el("details", {}, el("summary", {}, "Full configuration"),
      el("pre", { id: "config" }, JSON.stringify({ config: run.config, base: run.base }, null, 2))));
}

// Parameters (and those a token passes through, MoE): the result's, else the plan's, marked so.
function paramsCell(run, estimate) {
  const from = run.params === null && estimate ? estimate : run;
  const shown = run.dense ? fmtInt(from.params) : `${fmtInt(from.params)} / ${fmtInt(from.active_params)}`;
  return el("div", { id: "run-params" }, el("span", {}, run.dense ? "params" : "params / active"),
    from === run ? shown : [el("abbr", { title: "the dry run's count, from the config: the run has no result yet" }, shown),
      el("small", { class: "muted" }, " (planned)")]);
}

export async function runView(id) {
  const signal = scopeSignal();
  let [run, metrics, steps] = await Promise.all([api(`/experiments/${id}`, { signal }),
    api(`/experiments/${id}/metrics`, { signal }), api(`/experiments/${id}/steps`, { signal })]);
  const epochs = metrics.epochs;
  let points = steps.points;
  // Only its owner or an admin changes a run (the API says so with a 403 too): no buttons
  // for what would be refused. An API from before users has no /users/me: all may. Until
  // the run has a result, its size is the dry run's (the plan knows it from the config).
  const [me, estimate] = await Promise.all([whoAmI().catch(() => null),
    run.params === null ? api(`/experiments/${id}/plan`, { signal }).catch(() => null) : null]);
  const mayChange = !me || me.role === "admin" || me.name === run.owner;
  const header = el("div");
  const labels = labelsEditor(run, (changed) => { run = changed; renderHeader(); labels.update(run); },
    { editable: mayChange });
  const curvesBox = el("div");
  const experts = el("div");
  const verdictBox = el("div");
  const configBox = el("div");
  const artifactsBox = el("div");
  const log = el("pre", { id: "log" });
  let logOffset = 0;

  const renderHeader = () => fill(header,
    el("h1", {}, `${run.name} `, el("span", { class: "muted" }, `#${run.id}`)),
    el("div", { class: "summary" },
      el("div", {}, el("span", {}, "status"), statusTag(run.status)),
      el("div", { id: "run-owner" }, el("span", {}, "owner"), run.owner),
      el("div", {}, el("span", {}, "progress"), progressCell(run)),
      el("div", {}, el("span", {}, "kind"), run.dense ? "dense" : `MoE, ${run.preset || "custom"}`),
      el("div", {}, el("span", {}, "best val CE"), fmt(run.best_val_ce_loss)),
      el("div", {}, el("span", {}, "test CE"), fmt(run.test_ce_loss)),
      paramsCell(run, estimate),
      el("div", {}, el("span", {}, "tokens/s"), fmtInt(run.tokens_per_sec)),
      run.status === "running" ? gpuCell(run.gpu) : null,
      el("div", {}, el("span", {}, "worker"), run.worker_name || "–"),
      run.study_id ? el("div", {}, el("span", {}, "study"), el("a", { href: `#/study/${run.study_id}` }, `study ${run.study_id}`)) : null,
      run.baseline_id ? el("div", {}, el("span", {}, "baseline"), el("a", { href: `#/run/${run.baseline_id}` }, `run ${run.baseline_id}`)) : null,
      run.priority ? el("div", {}, el("span", {}, "priority"), run.priority) : null),
    run.error ? el("pre", { class: "error" }, run.error) : null,
    FINISHED.has(run.status) || !mayChange ? null : el("button", { class: "danger", id: "cancel", onclick: async (e) => {
      e.target.disabled = true;
      try {
        run = await api(`/experiments/${id}/cancel`, { method: "POST" });
      } catch (error) {  // 409: it ended meanwhile
        run = await api(`/experiments/${id}`);
        alert(`Not cancelled: ${error.message}`);
      }
      renderHeader();
    } }, run.cancel_requested ? "Cancelling…" : "Cancel run"));

  const renderCurves = () => fill(curvesBox, el("h2", {}, "Curves"), epochs.length || points.length
    ? [chartControls(), curves(run, epochs, points), anySeries(run, epochs, points)]
    : el("p", { class: "muted" }, "No step has been recorded yet."));
  const renderExperts = () => fill(experts, run.dense ? null : expertSection(epochs, epochAxes(epochs, run)));

  const renderVerdict = async () => {
    if (run.baseline_id === null) {
      fill(verdictBox);
      return;
    }
    let body;
    try {
      body = await verdictOf(run, signal);
    } catch (error) {
      body = error.message.replace(/^\d+: /, "");
    }
    if (typeof body === "string") body = el("p", { class: "muted", id: "verdict-pending" }, body);
    fill(verdictBox, el("h2", {}, "Verdict against ", el("a", { href: `#/run/${run.baseline_id}` }, `dense run ${run.baseline_id}`)), body);
  };

  const renderConfig = async () => fill(configBox, configSection(run, await presetDefaults(run)));

  const renderArtifacts = async () => {
    const list = await api(`/experiments/${id}/artifacts`, { signal });
    fill(artifactsBox, el("h2", {}, "Artifacts"), list.items.length ? scroller(el("table", { id: "artifacts" }, el("tbody", {},
      list.items.map((a) => el("tr", {}, el("td", {}, el("a", { href: "#", onclick: (e) => {
        e.preventDefault();
        download(`/experiments/${id}/artifacts/${a.name}`, `experiment-${id}-${a.name}`);
      } }, a.name), a.partial ? el("span", { class: "muted", title: "the run has not succeeded: not its final output" }, " partial") : ""),
      el("td", { class: "num" }, `${fmtInt(a.size)} bytes`),
      el("td", { class: "muted" }, new Date(a.modified_at).toLocaleString())))))) : el("p", { class: "muted" }, "none yet"));
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

  fill(view, header, labels, curvesBox, experts, verdictBox,
    el("div", { class: "cols" }, el("div", {}, el("h2", {}, "Log"), log), configBox),
    artifactsBox);
  renderHeader();
  renderCurves();
  renderExperts();
  curvesBox.after(systemSection(run));  // system metrics (issue 28.5): CPU, memory, GPU charts
  await Promise.all([renderVerdict(), renderConfig(), renderArtifacts(), readLog()]);

  if (!FINISHED.has(run.status)) {
    every(2000, () => readLog().catch(() => {}), signal);
    // the GPU reading comes with the run (its worker's heartbeat), not on the stream
    every(5000, async () => {
      try { run = await api(`/experiments/${id}`, { signal }); renderHeader(); } catch (_) { /* next time */ }
    }, signal);
    follow(id, async (event, data) => {
      if (event === "epoch") {
        if (epochs.some((e) => e.epoch === data.epoch)) return;  // sent again on a (re)connect
        epochs.push(data);
        renderCurves();
        renderExperts();
      } else if (event === "steps") {
        const merged = mergePoints(points, data.points);
        if (merged === points) return;
        points = merged;
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
