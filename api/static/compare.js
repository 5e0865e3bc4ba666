// Compare runs: their figures side by side (Δ against dense), the hyper-parameters in which
// they differ, and their curves on one chart each: epoch figures, step curves and routing
// statistics, any series one of them logged (series.js), a line a run.

import { api } from "./http.js";
import { el, fill, fmt, fmtInt, mean, scopeSignal, scroller, sortable, view } from "./dom.js";
import { denseUnused } from "./presets.js";
import { chartControls, lineChart } from "./charts.js";
import { chartPicker, seriesKeys, seriesLines } from "./series.js";

// What makes two runs' cross-entropies comparable (moe_core.comparable.COMPARABLE_FIELDS;
// tests/api/test_dashboard_pages.py holds this list to it): a dense run of another base is
// no reference, and no Δ is drawn against it.
export const COMPARABLE_FIELDS = ["dataset_name", "dataset_config", "vocab_size", "seq_len", "max_val_tokens"];
const comparable = (a, b) => COMPARABLE_FIELDS.every((f) =>
  JSON.stringify((a.base || {})[f] ?? null) === JSON.stringify((b.base || {})[f] ?? null));

// Every config and base field, flattened: "config.top_k", "base.seq_len", ...; a dense run
// without the routing fields it has no use for (`unused`), so they never make a field differ.
function fields(run, unused) {
  const out = new Map();
  for (const [section, values] of [["config", run.config], ["base", run.base]]) {
    for (const [key, value] of Object.entries(values || {})) {
      if (!(run.dense && unused.has(`${section}.${key}`))) out.set(`${section}.${key}`, value);
    }
  }
  return out;
}

// The hyper-parameters that are not the same in every run: one row a field, one column a run.
export function hyperParameterDiff(runs, unused = new Set()) {
  const all = runs.map((r) => fields(r, unused));
  const names = [...new Set(all.flatMap((f) => [...f.keys()]))];
  const text = (v) => v === undefined ? "" : v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v);
  // a field a dense run has no use for (its cell blank) differs only if the other runs differ
  const uses = (run, name) => !(run.dense && unused.has(name));
  const differing = names.filter((name) => new Set(all.filter((f, i) => uses(runs[i], name)).map((f) => text(f.get(name)))).size > 1);
  if (!differing.length) return el("p", { id: "hparams-none" }, "The runs' configurations are the same.");
  return scroller(sortable(el("table", { id: "hparams" },
    el("thead", {}, el("tr", {}, el("th", {}, "field"), runs.map((r) => el("th", { class: "num", "data-run": r.id }, `${r.name} #${r.id}`)))),
    el("tbody", {}, differing.map((name) => el("tr", { "data-field": name }, el("td", {}, name),
      all.map((f) => el("td", { class: "num" }, text(f.get(name))))))))));
}

export async function compareView(ids) {
  const signal = scopeSignal();
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
  const recordsOf = new Map(await Promise.all(runs.map(async (run) => {
    const [metrics, steps] = await Promise.all([api(`/experiments/${run.id}/metrics`, { signal }), api(`/experiments/${run.id}/steps`, { signal })]);
    return [run.id, { run, epochs: metrics.epochs, points: steps.points }];
  })));
  const epochsOf = new Map(runs.map((r) => [r.id, recordsOf.get(r.id).epochs]));
  const dense = runs.filter((r) => r.dense);
  const rows = runs.map((run) => {
    const epochs = epochsOf.get(run.id);
    const last = epochs[epochs.length - 1];
    const evaluated = [...epochs].reverse().find((e) => e.eval_expert_stats && e.eval_expert_stats.length);
    const given = (key) => (last ? last.expert_stats.map((l) => l[key]).filter((v) => v !== null && v !== undefined) : []);
    const drops = given("dropped"), loads = given("imbalance");
    const reference = run.baseline_id !== null ? byId.get(run.baseline_id) : (!run.dense && dense.length === 1 ? dense[0] : null);
    const ce = run.best_val_ce_loss;
    const another = reference !== null && reference !== undefined && !comparable(run, reference);
    return { run, ce, perplexity: ce === null ? null : Math.exp(ce), tokens: mean(epochs.map((e) => e.tokens_per_sec)),
      minUsage: evaluated ? Math.min(...evaluated.eval_expert_stats.map((l) => l.min_usage)) : null,
      drop: drops.length ? 100 * Math.max(...drops) : null,
      imbalance: loads.length ? Math.max(...loads) : null,
      delta: ce !== null && reference && !another && reference.best_val_ce_loss !== null ? ce - reference.best_val_ce_loss : null,
      reference, another };
  });
  const anyEpochs = runs.some((r) => epochsOf.get(r.id).length || recordsOf.get(r.id).points.length);
  // One line a run (a line a layer for every layer's statistic), in the run's colour on
  // every chart, dashed for a dense run; the legend says whose.
  const lines = (key) => runs.flatMap((r, i) => seriesLines(key, recordsOf.get(r.id), `${r.name} #${r.id}`)
    .map((line) => ({ ...line, color: `--c${i % 10}`, dash: line.dash || (r.dense ? [8, 5] : undefined) })));
  const keys = seriesKeys(runs.flatMap((r) => epochsOf.get(r.id)), runs.flatMap((r) => recordsOf.get(r.id).points));
  const anySteps = keys.some((k) => k.key === "step:ce_loss");
  fill(view, el("h1", {}, "Compare runs"), form,
    scroller(sortable(el("table", { id: "compare" },
      el("thead", {}, el("tr", {}, ...["id", "name", "val CE", "perplexity", "tokens/s", "min usage", "drop rate", "imbalance", "Δ vs dense", "dense"].map((h, i) => el("th", { class: i && i !== 1 ? "num" : null }, h)))),
      el("tbody", {}, rows.map((r) => el("tr", { "data-run": r.run.id },
        el("td", { class: "num" }, r.run.id), el("td", {}, el("a", { href: `#/run/${r.run.id}` }, r.run.name)),
        el("td", { class: "num" }, fmt(r.ce)), el("td", { class: "num" }, fmt(r.perplexity, 1)),
        el("td", { class: "num" }, fmtInt(r.tokens)), el("td", { class: "num" }, r.minUsage === null ? "–" : `${r.minUsage.toFixed(1)}%`),
        el("td", { class: "num" }, r.drop === null ? "–" : `${r.drop.toFixed(2)}%`),
        el("td", { class: "num" }, fmt(r.imbalance, 2)),
        el("td", { class: "num" }, r.delta === null ? "–" : (r.delta > 0 ? "+" : "") + fmt(r.delta)),
        el("td", { class: "num", title: r.another ? "another base: its cross-entropy is measured on other text, tokens or blocks" : null },
          r.reference ? (r.another ? `${r.reference.id}: another base` : r.reference.id) : "–"))))))),
    el("h2", {}, "Hyper-parameters that differ"), hyperParameterDiff(runs, await denseUnused().catch(() => new Set())),
    anyEpochs ? [el("h2", {}, "Curves"), chartControls(), el("div", { class: "charts", id: "compare-curves" },
      lineChart("Validation CE", lines("epoch:val.ce_loss"), { yLabel: "nats" }),
      lineChart("Training CE", lines("epoch:train.ce_loss"), { yLabel: "nats" }),
      anySteps ? lineChart("Training CE per step", lines("step:ce_loss"), { yLabel: "nats" }) : null,
      lineChart("Tokens per second", lines("epoch:tokens_per_sec"))),
    chartPicker(keys, lines)] : null);
}
