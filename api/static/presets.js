// The engine's presets (GET /presets), read once a page per base preset: the names the runs
// page filters on, and the defaults a run's configuration is compared with.

import { api } from "./http.js";

const cache = new Map();
function presets(base = "spec") {
  if (!cache.has(base)) {
    const answer = api(`/presets?base=${encodeURIComponent(base)}`);
    cache.set(base, answer);
    answer.catch(() => cache.delete(base));  // asked again by the next view
  }
  return cache.get(base);
}

export const presetNames = () => presets().then((p) => Object.keys(p.experiments));

// The fields a dense run has no use for ("config.top_k", "base.moe_layers", ...: it has no
// router): never a dense run's difference (moe_core.presets.DENSE_UNUSED, served by /presets).
export const denseUnused = () => presets().then((p) => new Set(p.dense_unused || []));

// What a run would be with nothing changed: its preset's config (the dense config for a
// dense run; the baseline preset for a custom one) and its base preset, both as the engine
// builds them on that base (a preset's expert width follows the base's ffn_dim).
export async function presetDefaults(run) {
  const base = run.base_preset || "spec";
  const p = await presets(base);
  const name = run.dense ? "dense" : run.preset || "baseline";
  return {
    unused: new Set(p.dense_unused || []),
    config: run.dense ? p.dense : p.experiments[name],
    base: run.base_preset ? p.base[run.base_preset] : null,
    label: `${run.dense ? "the dense config" : `preset ${name}${run.preset ? "" : " (a custom run: no preset of its own)"}`}`
      + (run.base_preset ? ` on base ${run.base_preset}` : " on the spec base (a custom base: its own fields are not compared)"),
  };
}

// Every field of an experiment's config and of a base, by name: the runs table's columns.
export const fieldNames = () => presets().then((p) => ({
  config: Object.keys(p.dense),
  base: Object.keys(Object.values(p.base)[0] || {}),
}));
