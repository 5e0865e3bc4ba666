// A MoE run's experts: per layer, heatmaps of usage over the epochs (training and
// evaluation) and the routing statistics' curves. A dense run has none of this panel.

import { el } from "./dom.js";
import { heatmap, lineChart } from "./charts.js";

// A statistic of a layer's row, null where the row or the statistic (older runs) is not.
const value = (row, key) => (row && row[key] !== undefined && row[key] !== null ? row[key] : null);
const pct = (row, key) => (value(row, key) === null ? null : 100 * row[key]);

// The routing statistics' plots: with their title and compact legend, about a heatmap's
// height (8 experts at 18 px a row), so that the row they share has no blank under either.
const CHART_HEIGHT = 150;

// x: the epochs' axes (charts.epochAxes).
export function expertSection(epochs, x) {
  const layers = [...new Set(epochs.flatMap((e) => e.expert_stats.map((l) => l.layer)))].sort((a, b) => a - b);
  if (!layers.length) return el("div", { id: "experts" });
  const of = (kind, layer) => epochs.map((e) => (e[kind] || []).find((l) => l.layer === layer) || null);
  const blocks = layers.map((layer) => {
    const train = of("expert_stats", layer);
    const evaluated = of("eval_expert_stats", layer);
    const usage = [...train, ...evaluated].flatMap((l) => l ? l.usage : []);
    const vmax = Math.max(...usage, 0);
    const hasEval = evaluated.some(Boolean);
    const zLoss = train.some((l) => value(l, "z_loss") !== null);
    return el("div", { "data-layer": layer },
      el("h3", {}, `MoE layer ${layer}`),
      // four boxes of one height in a row (two rows of two on a narrower page, one column
      // on a phone): the charts as tall as the heatmaps beside them, their legends compact
      el("div", { class: "layer" },
        heatmap(`layer ${layer}, training`, x.epoch, train.map((l) => l && l.usage), { vmax }),
        hasEval ? heatmap(`layer ${layer}, evaluation`, x.epoch, evaluated.map((l) => l && l.usage), { vmax })
          : el("div", { class: "heatmap muted" }, "no evaluation statistics"),
        lineChart(`layer ${layer}: entropy and drops`, [
          { label: "entropy (train)", x, y: train.map((l) => l && l.entropy) },
          { label: "entropy (eval)", x, y: evaluated.map((l) => l && l.entropy), dash: [6, 4] },
          { label: "dropped % (train)", x, y: train.map((l) => pct(l, "dropped")), scale: "y2" },
          { label: "unused capacity %", x, y: train.map((l) => pct(l, "pad_ratio")), scale: "y2", dash: [2, 3] },
        ], { yLabel: "nats", y2: "%", height: CHART_HEIGHT }),
        lineChart(`layer ${layer}: load imbalance`, [
          { label: "max/mean − 1 (train)", x, y: train.map((l) => value(l, "imbalance")) },
          { label: "worst step", x, y: train.map((l) => value(l, "max_imbalance")), dash: [2, 3] },
          { label: "max/mean − 1 (eval)", x, y: evaluated.map((l) => value(l, "imbalance")), dash: [6, 4] },
          ...(zLoss ? [{ label: "router z-loss", x, y: train.map((l) => value(l, "z_loss")), scale: "y2" }] : []),
        ], { y2: zLoss ? "z-loss" : null, height: CHART_HEIGHT })));
  });
  return el("div", { id: "experts" }, el("h2", {}, "Experts"),
    el("p", { class: "muted" }, "Share of each expert's assignments per epoch: over the epoch's training steps, and the epoch's weights over the validation set."),
    blocks);
}
