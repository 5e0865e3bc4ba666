// A study: its verdicts per preset over the seeds, each preset's curves as the mean over
// seeds with a ± 1 SE band, and its runs, followed live.

import { FINISHED, api, conditional, follow } from "./http.js";
import { el, every, fill, fmt, mark, scopeSignal, scroller, sortable, statusTag, view } from "./dom.js";
import { chartControls, epochAxes, lineChart, meanBand } from "./charts.js";
import { verdictTable } from "./run.js";

// A study's runs drawn as one line per preset (dense too): at each epoch the mean over the
// seeds whose run reached it, with a band of ± 1 standard error; on the step, tokens and
// wall-time axes, x is the seeds' mean steps, tokens and time at that epoch.
function presetGroups(study) {
  const groups = new Map();
  for (const m of study.members) {
    const name = m.dense ? "dense" : m.preset || m.name;
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(m);
  }
  return groups;
}

export function meanOverSeeds(members, epochsOf, runs, f) {
  const epochNumbers = [...new Set(members.flatMap((m) => epochsOf.get(m.id).map((e) => e.epoch)))].sort((a, b) => a - b);
  const aligned = (values) => epochNumbers.map((n) => { const i = values.epochs.indexOf(n); return i < 0 ? null : values.at[i]; });
  const per = members.map((m) => {
    const epochs = epochsOf.get(m.id);
    const axes = epochAxes(epochs, runs.get(m.id));
    const picked = epochs.map((e) => { const v = f(e); return v === undefined ? null : v; });
    return { y: aligned({ epochs: axes.epoch, at: picked }),
      step: axes.step && aligned({ epochs: axes.epoch, at: axes.step }),
      tokens: axes.tokens && aligned({ epochs: axes.epoch, at: axes.tokens }),
      time: axes.time && aligned({ epochs: axes.epoch, at: axes.time }) };
  });
  const band = meanBand(per.map((p) => p.y));
  const axis = (key) => per.every((p) => p[key]) ? meanBand(per.map((p) => p[key])).mean : null;
  const x = { step: axis("step"), epoch: epochNumbers, tokens: axis("tokens"), time: axis("time") };
  return { x, y: band.mean, band: members.length > 1 ? { lo: band.lo, hi: band.hi } : undefined };
}

export async function studyView(id) {
  const signal = scopeSignal();
  let study = await api(`/studies/${id}`, { signal });
  const [epochsOf, runs] = await Promise.all([
    Promise.all(study.members.map(async (m) => [m.id, (await api(`/experiments/${m.id}/metrics`, { signal })).epochs])).then((e) => new Map(e)),
    // the members' configs: the tokens of a step (batch_size x seq_len) for the tokens axis
    api(`/experiments?study_id=${id}&limit=200`, { signal }).then((l) => new Map(l.items.map((r) => [r.id, r]))),
  ]);
  const header = el("div");
  const verdicts = el("div");
  const members = el("div");
  const overlay = el("div");

  const presetSeries = (f) => [...presetGroups(study)].map(([name, members]) => ({
    label: `${name}${members.length > 1 ? ` (${members.length} seeds)` : ""}`, ...meanOverSeeds(members, epochsOf, runs, f),
    color: name === "dense" ? "--fg" : undefined, dash: name === "dense" ? [8, 5] : undefined }));

  const render = () => {
    fill(header, el("h1", {}, `${study.name} `, el("span", { class: "muted" }, `study #${study.id}`)),
      el("div", { class: "summary" },
        el("div", {}, el("span", {}, "status"), statusTag(study.status)),
        el("div", { id: "study-owner" }, el("span", {}, "owner"), study.owner),
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
      scroller(sortable(el("table", { id: "study-verdicts" },
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
          el("td", {}, v.seeds.join(", ")), el("td", { class: "muted" }, v.detail || v.significance_note || ""))))))),
      tested ? el("p", { class: "muted footnote", id: "study-verdicts-note" },
        `Δ: mean ± standard error over the seeds, each run paired with its seed's dense run; ${ci}: Δ ± t·SE, Student's t with n − 1 degrees of freedom; `
        + `p: two-sided paired t-test. Significant: the deciding difference (Δ val CE; Δ gap where primary passes on the gap alone, marked (gap)) `
        + `has p < ${+(1 - confidence).toFixed(3)}, its interval excludes 0.`) : null,
      // each preset's verdict over its seeds in words: the lines `moe-lab verdict` prints for a run
      study.preset_verdicts.filter((v) => v.lines.length).map((v) => el("details", { class: "preset-lines", "data-preset": v.preset },
        el("summary", {}, `${v.preset}: what the verdict says`), verdictTable(v, { id: `verdict-${v.preset}` }))));
    fill(members, el("h2", {}, "Runs"), scroller(sortable(el("table", { id: "study-members" },
      el("thead", {}, el("tr", {}, ...["id", "name", "seed", "status", "epochs", "best val CE", "verdict"].map((h) => el("th", {}, h)))),
      el("tbody", {}, study.members.map((m) => {
        const row = study.verdicts.find((v) => v.experiment_id === m.id);
        return el("tr", { "data-run": m.id }, el("td", {}, m.id), el("td", {}, el("a", { href: `#/run/${m.id}` }, m.name)),
          el("td", {}, m.seed), el("td", {}, statusTag(m.status)), el("td", {}, `${m.current_epoch}/${m.num_epochs}`),
          el("td", { class: "num" }, fmt(m.best_val_ce_loss)),
          el("td", {}, m.dense ? el("span", { class: "muted" }, "baseline") : row ? mark(row.passed) : "–"));
      }))))));
    fill(overlay, el("h2", {}, "Curves"), el("p", { class: "muted" }, "Each preset's mean over its seeds, shaded ± 1 standard error (with two seeds or more)."),
      [...epochsOf.values()].some((e) => e.length) ? [chartControls(), el("div", { class: "charts", id: "study-curves" },
        lineChart("Validation CE", presetSeries((e) => e.val && e.val.ce_loss), { yLabel: "nats" }),
        lineChart("Training CE", presetSeries((e) => e.train.ce_loss), { yLabel: "nats" }))]
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
