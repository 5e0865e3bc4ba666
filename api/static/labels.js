// A run's tags and note, editable in its header through PATCH /experiments/{id}; and the
// reading of its worker's GPU (null on a CPU: nothing is shown, not a zero).

import { api } from "./http.js";
import { el, fill, fmtInt } from "./dom.js";

const GIB = 2 ** 30;

// The GPU as its worker last read it: model, utilization, memory, power.
export function gpuCell(gpu) {
  if (!gpu) return null;
  const parts = [gpu.name || "GPU"];
  if (gpu.utilization !== null) parts.push(`${fmtInt(gpu.utilization)}%`);
  if (gpu.memory_used !== null && gpu.memory_total !== null) {
    parts.push(`${(gpu.memory_used / GIB).toFixed(1)} / ${(gpu.memory_total / GIB).toFixed(1)} GiB`);
  }
  if (gpu.power_watts !== null) parts.push(`${fmtInt(gpu.power_watts)} W`);
  return el("div", { id: "gpu", title: `read ${new Date(gpu.read_at).toLocaleString()}` },
    el("span", {}, "GPU"), parts.join(" · "));
}

// The tags (each with a remove button, and a field to add one) and the note (saved on its
// button). onChange(run) gets the run as the PATCH answered it; an error shows the API's
// message. Rendered apart from the header, which progress events redraw: an edit in
// progress is not wiped by the next event. Not `editable` (another user's run: only its
// owner or an admin changes it), the tags and the note are shown, with nothing to edit.
export function labelsEditor(run, onChange, { editable = true } = {}) {
  if (!editable) return labelsShown(run);
  const error = el("p", { class: "error", id: "labels-error" });
  // The fields are made once and kept across redraws: what is typed in one survives the
  // answer to a change made with the other.
  const tag = el("input", { name: "tag", placeholder: "add a tag", "aria-label": "new tag", size: 14 });
  const note = el("textarea", { name: "note", rows: 2, placeholder: "a note on this run", "aria-label": "note" });
  note.value = run.note || "";
  const patch = async (body) => {
    error.textContent = "";
    try {
      onChange(await api(`/experiments/${run.id}`, { method: "PATCH", body }));
      return true;
    } catch (failure) {
      error.textContent = failure.message.replace(/^\d+: /, "");
      return false;
    }
  };
  const chips = el("span", { class: "tags" });
  const box = el("div", { class: "labels", id: "labels" },
    el("div", { class: "tags" }, el("span", { class: "muted" }, "tags"), chips,
      el("form", { id: "tag-form", onsubmit: async (e) => {
        e.preventDefault();
        const wanted = tag.value.trim();
        if (wanted && await patch({ tags: { add: [wanted] } }) && tag.value.trim() === wanted) tag.value = "";
      } }, tag, el("button", { type: "submit" }, "add"))),
    el("form", { id: "note-form", class: "note", onsubmit: (e) => {
      e.preventDefault();
      patch({ note: note.value.trim() ? note.value : null });
    } }, note, el("button", { type: "submit" }, "save note")),
    error);
  box.update = (current) => {
    run = current;
    fill(chips, run.tags.map((t) => el("span", { class: "tag", "data-tag": t }, t,
      el("button", { type: "button", title: `remove ${t}`, "aria-label": `remove tag ${t}`,
        onclick: () => patch({ tags: { remove: [t] } }) }, "×"))));
  };
  box.update(run);
  return box;
}

function labelsShown(run) {
  const chips = el("span", { class: "tags" });
  const note = el("p", { class: "note", id: "note-shown" });
  const box = el("div", { class: "labels", id: "labels", "data-editable": "false" },
    el("div", { class: "tags" }, el("span", { class: "muted" }, "tags"), chips), note);
  box.update = (current) => {
    fill(chips, current.tags.length ? current.tags.map((t) => el("span", { class: "tag", "data-tag": t }, t))
      : el("span", { class: "muted" }, "none"));
    note.textContent = current.note || "";
  };
  box.update(run);
  return box;
}
