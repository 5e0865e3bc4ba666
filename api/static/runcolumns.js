// The runs table's columns: the run's own (id, name, status, ...) and any field of its
// summary, config or base (summary.min_usage, config.top_k, base.seed). Each has a header,
// whether it is a number, its cell, and `field`: what GET /experiments sorts and filters it
// by (?sort=, ?where=), none where the API has no such field (tags, duration).

import { duration, el, fmt, fmtInt, progressCell, statusTag } from "./dom.js";

export const RUN_COLUMNS = {
  id: { label: "id", num: true, field: "id", cell: (r) => r.id },
  name: { label: "name", field: "name", cell: (r) => el("a", { href: `#/run/${r.id}` }, r.name) },
  owner: { label: "owner", field: "owner", cell: (r) => r.owner },
  status: { label: "status", field: "status", cell: (r) => statusTag(r.status) },
  progress: { label: "progress", field: "current_epoch", cell: (r) => progressCell(r) },
  preset: { label: "preset", field: "preset", cell: (r) => presetOf(r) },
  base: { label: "base", field: "base_preset", cell: (r) => r.base_preset || "custom" },
  study: { label: "study", field: "study_id", cell: (r, names) => r.study_id === null ? "–"
    : el("a", { href: `#/study/${r.study_id}` }, names.studies[r.study_id] || `study ${r.study_id}`) },
  sweep: { label: "sweep", field: "sweep_id", cell: (r, names) => r.sweep_id === null ? "–"
    : el("a", { href: `#/sweep/${r.sweep_id}` }, names.sweeps[r.sweep_id] || `sweep ${r.sweep_id}`) },
  val_ce: { label: "best val CE", num: true, field: "val_ce", cell: (r) => fmt(r.best_val_ce_loss) },
  test_ce: { label: "test CE", num: true, field: "test_ce", cell: (r) => fmt(r.test_ce_loss) },
  tokens_per_sec: { label: "tokens/s", num: true, field: "tokens_per_sec", cell: (r) => fmtInt(r.tokens_per_sec) },
  params: { label: "params", num: true, field: "params", cell: (r) => fmtInt(r.params) },
  active_params: { label: "active params", num: true, field: "active_params", cell: (r) => fmtInt(r.active_params) },
  epochs: { label: "epochs", num: true, field: "current_epoch", cell: (r) => `${r.current_epoch}/${r.num_epochs}` },
  seed: { label: "seed", num: true, field: "base.seed", cell: (r) => r.base.seed },
  worker: { label: "worker", field: "worker_name", cell: (r) => r.worker_name || "–" },
  tags: { label: "tags", cell: (r) => r.tags.join(", ") },
  created: { label: "created", field: "id", cell: (r) => el("span", { class: "muted" }, new Date(r.created_at).toLocaleString()) },
  duration: { label: "duration", num: true, cell: (r) => r.started_at && r.finished_at ? duration((new Date(r.finished_at) - new Date(r.started_at)) / 1000) : "–" },
};
export const DEFAULT_COLUMNS = ["id", "name", "owner", "status", "progress", "preset", "val_ce", "tokens_per_sec", "tags", "created"];

// The summary's values that no column above shows already (ExperimentRead.summary).
export const SUMMARY_LABELS = {
  val_loss: "best val loss", test_loss: "test loss", best_epoch: "best epoch", train_ce: "train CE",
  min_usage: "min expert usage %", max_usage: "max expert usage %", entropy: "routing entropy",
  dropped: "dropped", max_step_load: "max step load",
};

export const presetOf = (r) => r.dense ? "dense" : (r.preset || "custom");

// A value as a cell shows it: numbers to 5 significant digits, lists and objects as JSON.
export function shown(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    return Number.isInteger(value) ? value.toLocaleString("en-US") : String(Number(value.toPrecision(5)));
  }
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

const FIELD_KEY = /^(config|base|summary)\.(\w+)$/;

// The column of `key`, a run's own or `config.X`, `base.X`, `summary.X`; null for none.
export function columnOf(key) {
  if (Object.hasOwn(RUN_COLUMNS, key)) return RUN_COLUMNS[key];
  const match = key.match(FIELD_KEY);
  if (!match) return null;
  const [, section, name] = match;
  const value = (r) => (r[section] || {})[name];
  return {
    label: section === "summary" ? (SUMMARY_LABELS[name] || name) : section === "base" ? `base.${name}` : name,
    title: key,
    // numbers right-aligned (a config field's kind is known from its values only)
    num: section === "summary",
    field: section === "summary" ? name : key,
    value,
    cell: (r) => shown(value(r)),
  };
}

// The value a run is grouped by under a column: its own value, else what its cell says.
export function groupValue(column, run, names) {
  if (column.value) return shown(column.value(run));
  const cell = column.cell(run, names);
  return cell instanceof Node ? cell.textContent : shown(cell);
}
