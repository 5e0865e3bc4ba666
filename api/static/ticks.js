// Axis ranges and ticks that a reader can read values off, for charts.js: a log y axis on
// the data's own range (not snapped out to whole decades) with a tick at every 1..9 x 10^k
// inside it, labelled as densely as the axis has room for; an epoch axis with ticks while
// the run is in its first epoch (its step points at fractions of it).

const log10 = Math.log10;

// A log scale's [min, max]: the data's range, padded by 4% of its span in log space (a
// single value by 5% either side). null where the data has no positive value (all hidden,
// or none yet): the caller keeps a default.
export function logRange(min, max) {
  if (!(min > 0) || !(max > 0) || !Number.isFinite(min) || !Number.isFinite(max)) return null;
  const pad = max > min ? 0.04 * (log10(max) - log10(min)) : 0.02;
  return [10 ** (log10(min) - pad), 10 ** (log10(max) + pad)];
}

// A value m x 10^k without binary noise (0.30000000000000004 → 0.3).
const exact = (m, k) => Number(`${m}e${k}`);

// The ticks of a log axis on [min, max], each {value, label: bool}: every m x 10^k
// (m = 1..9) inside the range, minor ticks included; labelled are all of them where at most
// `room` fit, else those of m in 1, 2, 5, else the decades (every nth where even those are
// too many). A range narrower than two such ticks (5.2 to 5.9) gets evenly spaced ticks
// instead, all labelled: a log scale that narrow is close to linear.
export function logTicks(min, max, room = 8) {
  if (!(min > 0) || !(max > min)) return [];
  const ticks = [];
  for (let k = Math.floor(log10(min)); k <= Math.ceil(log10(max)); k++) {
    for (let m = 1; m <= 9; m++) {
      const value = exact(m, k);
      if (value >= min * (1 - 1e-9) && value <= max * (1 + 1e-9)) ticks.push({ value, mantissa: m, label: false });
    }
  }
  if (ticks.length < 2) return linearTicks(min, max, room);
  const labelled = [(t) => true, (t) => [1, 2, 5].includes(t.mantissa), (t) => t.mantissa === 1]
    .map((keep) => ticks.filter(keep)).find((set) => set.length <= room && set.length >= 2);
  if (labelled) {
    for (const t of labelled) t.label = true;
  } else {  // too many decades for one label each (every nth), or too few for two (1, 2, 5)
    const decades = ticks.filter((t) => t.mantissa === 1);
    const every = Math.ceil(decades.length / room);
    if (decades.length >= 2) decades.forEach((t, i) => { t.label = i % every === 0; });
    else ticks.forEach((t) => { t.label = [1, 2, 5].includes(t.mantissa); });
  }
  return ticks.map(({ value, label }) => ({ value, label }));
}

// Evenly spaced ticks at a step of 1, 2 or 5 x 10^k: the widest step that leaves two or
// more, of at most `room`.
function linearTicks(min, max, room = 8) {
  const k = Math.floor(log10(max - min)) - 2;
  const steps = [];
  for (const e of [k, k + 1, k + 2, k + 3]) for (const m of [1, 2, 5]) steps.push([m, e]);
  const at = ([m, e]) => {
    const step = exact(m, e), ticks = [];
    for (let i = Math.ceil(min / step); i * step <= max * (1 + 1e-12); i++) {
      ticks.push({ value: Number((i * step).toFixed(Math.max(0, -e))), label: true });
    }
    return ticks;
  };
  const all = steps.map(at);
  const fits = all.filter((ticks) => ticks.length >= 2 && ticks.length <= room);
  return fits.length ? fits[fits.length - 1] : all.filter((ticks) => ticks.length >= 1).pop() || [];
}

// The epoch axis (uPlot's axis.incrs): in quarters of an epoch on a range of less than two
// epochs (the first epoch's step points at 1/8, 2/8, ... of it), else in whole epochs.
const EPOCH_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
export const epochIncrs = (u, axisIdx, min, max) => (max - min < 2 ? [0.25, 0.5, ...EPOCH_INCRS] : EPOCH_INCRS);
