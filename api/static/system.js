// A run's system metrics (GET /experiments/{id}/system): its training process's CPU and
// resident memory and, on a GPU, the GPU's utilisation, memory and power, read every few
// seconds by the worker (worker.system_metrics). Drawn with the run's curves' settings bar
// (charts.js): wall time is the seconds since the run started; on the step, epoch and
// tokens axes a reading sits where training stood when it was read.

import { api, FINISHED } from "./http.js";
import { el, every, fill, scopeSignal } from "./dom.js";
import { lineChart } from "./charts.js";

const REFRESH_MS = 10000;  // a running run's readings come every few seconds

// A reading taken before its position was known (a resumed run preparing its data) sits
// where the next known one does; none known at all: at 0.
function filled(values) {
  const out = values.slice();
  let next = null;
  for (let i = out.length - 1; i >= 0; i--) {
    if (out[i] === null || out[i] === undefined) out[i] = next; else next = out[i];
  }
  let last = 0;
  return out.map((v) => { if (v === null) return last; last = v; return v; });
}

export function systemAxes(points, run) {
  const batch = run.config && run.base ? run.config.batch_size * run.base.seq_len : null;
  const step = filled(points.map((p) => p.step));
  return {
    step,
    epoch: filled(points.map((p) => p.epoch)),
    tokens: batch ? step.map((s) => s * batch) : null,
    time: points.map((p) => p.elapsed_s),
  };
}

function charts(run, points) {
  const x = systemAxes(points, run);
  const series = (label, key) => ({ label, x, y: points.map((p) => p[key] ?? null) });
  const has = (key) => points.some((p) => p[key] !== null && p[key] !== undefined);
  const drawn = [
    lineChart("CPU", [series("CPU (training process)", "cpu_percent")], { yLabel: "% of one core" }),
    lineChart("Memory", [series("resident memory", "rss_mb")], { yLabel: "MiB" }),
  ];
  if (has("gpu_util")) drawn.push(lineChart("GPU utilisation", [series("GPU utilisation", "gpu_util")], { yLabel: "%" }));
  if (has("gpu_mem_mb")) drawn.push(lineChart("GPU memory", [series("GPU memory used", "gpu_mem_mb")], { yLabel: "MiB" }));
  if (has("gpu_power_w")) drawn.push(lineChart("GPU power", [series("GPU power", "gpu_power_w")], { yLabel: "W" }));
  return el("div", { class: "charts", id: "system-charts", "data-system-points": points.length }, drawn);
}

// The run page's "System" section: a box that fills itself, and refreshes while it runs.
export function systemSection(run) {
  const box = el("div", { id: "system" });
  const signal = scopeSignal();
  let shown = null;
  const render = async () => {
    const { points } = await api(`/experiments/${run.id}/system`, { signal });
    box.dataset.read = "1";
    const last = points.length ? points[points.length - 1].t : "";
    if (shown === `${points.length}|${last}`) return;  // nothing new: no redraw
    shown = `${points.length}|${last}`;
    if (!points.length && FINISHED.has(run.status)) return;  // ran before readings were kept, or too briefly
    fill(box, el("h2", {}, "System"), points.length ? charts(run, points)
      : el("p", { class: "muted", id: "system-none" }, "No system reading yet: the worker reads one every few seconds while the run trains."));
  };
  render().catch(() => {});
  if (!FINISHED.has(run.status)) every(REFRESH_MS, () => render().catch(() => {}), signal);
  return box;
}
