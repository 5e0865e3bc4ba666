// The live workers (GET /workers): what each one trains, its slots and GPUs (which runs
// hold them), how fresh its heartbeat
// is, and its GPU as NVML last read it (a CPU worker shows none, not a zero). Read again
// every 5 seconds while the page is open.

import { api } from "./http.js";
import { duration, el, every, fill, fmtInt, scopeSignal, scroller, sortRows, sortable, view } from "./dom.js";

const GIB = 1024 ** 3;
const HEADS = ["name", "host", "device", "state", "slots", "GPUs", "runs", "heartbeat",
  "idle for", "GPU", "utilization", "memory", "power"];

// "2/2: #7 ×2": GPUs held of the worker's, and by which runs (a run on several holds several)
function gpusCell(w) {
  const holders = w.gpu_holders.filter((h) => h.gpus > 1);
  return el("td", { class: "num", "data-gpus": w.gpus_in_use, "data-sort": w.gpus_in_use },
    `${w.gpus_in_use}/${w.gpus}`,
    holders.length ? [": ", ...holders.flatMap((h, i) =>
      [i ? ", " : "", el("a", { href: `#/run/${h.experiment_id}` }, `#${h.experiment_id}`), ` ×${h.gpus}`])] : []);
}

const ago = (at, now) => (at ? (now - new Date(at)) / 1000 : null);

function row(w, now) {
  const gpu = w.gpu;
  const memory = gpu && gpu.memory_used !== null && gpu.memory_total !== null
    ? `${(gpu.memory_used / GIB).toFixed(1)} / ${(gpu.memory_total / GIB).toFixed(1)} GiB` : "–";
  const idle = ago(w.idle_since, now);
  const beat = ago(w.heartbeat_at, now);
  return el("tr", { "data-worker": w.name, "data-state": w.state },
    el("td", {}, w.name),
    el("td", {}, w.host),
    el("td", {}, w.device || "–"),
    el("td", {}, el("span", { class: `status ${w.state === "busy" ? "running" : w.state === "stopping" ? "cancelled" : "queued"}` }, w.state)),
    el("td", { class: "num", "data-sort": w.slots_in_use }, `${w.slots_in_use}/${w.slots}`),
    gpusCell(w),
    el("td", { "data-sort": w.experiment_ids.length }, w.experiment_ids.length
      ? w.experiment_ids.flatMap((id, i) => [i ? ", " : "", el("a", { href: `#/run/${id}` }, `#${id}`)]) : "–"),
    el("td", { class: "num", "data-sort": beat, title: new Date(w.heartbeat_at).toLocaleString() }, `${duration(beat)} ago`),
    el("td", { class: "num", "data-sort": idle ?? -1 }, idle === null ? "–" : duration(idle)),
    el("td", {}, gpu ? gpu.name || "GPU" : "–"),
    el("td", { class: "num", "data-gpu": "utilization", "data-sort": gpu?.utilization ?? -1 },
      gpu && gpu.utilization !== null ? `${fmtInt(gpu.utilization)}%` : "–"),
    el("td", { class: "num", "data-gpu": "memory", "data-sort": gpu?.memory_used ?? -1 }, memory),
    el("td", { class: "num", "data-gpu": "power", "data-sort": gpu?.power_watts ?? -1 },
      gpu && gpu.power_watts !== null ? `${fmtInt(gpu.power_watts)} W` : "–"));
}

export async function workersView() {
  const signal = scopeSignal();
  const body = el("tbody");
  const table = sortable(el("table", { id: "workers" },
    el("thead", {}, el("tr", {}, HEADS.map((h) => el("th", {}, h)))), body));
  const summary = el("p", { class: "muted", id: "workers-summary" });
  const load = async () => {
    const list = await api("/workers", { signal });
    const now = Date.now();
    const busy = list.items.reduce((n, w) => n + w.slots_in_use, 0);
    const slots = list.items.reduce((n, w) => n + w.slots, 0);
    const held = list.items.reduce((n, w) => n + w.gpus_in_use, 0);
    const gpus = list.items.reduce((n, w) => n + w.gpus, 0);
    fill(summary, list.total
      ? `${list.total} live worker${list.total === 1 ? "" : "s"}, ${busy} of ${slots} slots training, ${held} of ${gpus} GPUs held`
      : "No live worker: queued runs wait until one starts (a worker is live while its heartbeat is fresh).");
    fill(body, list.items.map((w) => row(w, now)));
    sortRows(table);  // keep the column the user sorted by
    table.dataset.loaded = String(Number(table.dataset.loaded || 0) + 1);
  };
  fill(view, el("h1", {}, "Workers"), summary, scroller(table));
  await load();
  every(5000, () => load().catch(() => { /* the next read */ }), signal);
}
