// A run's step points (GET /experiments/{id}/steps, and the `steps` events of its stream):
// kept in step order, one per step, and their x on each chart axis.

// Points merged by step: a run resumed from an older checkpoint replays steps, and the
// store overwrites their points, so a point for a step already held replaces it. The same
// array when nothing changed (a stream that reconnects sends the points again): no redraw.
export function mergePoints(points, incoming) {
  const last = points.length ? points[points.length - 1].step : -Infinity;
  if (incoming.every((p) => p.step > last)) return incoming.length ? points.concat(incoming) : points;  // the usual case
  const byStep = new Map(points.map((p) => [p.step, p]));
  const same = (a, b) => a && Object.keys(b).every((k) => a[k] === b[k]);
  if (incoming.every((p) => same(byStep.get(p.step), p))) return points;
  for (const p of incoming) byStep.set(p.step, p);
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

// The x of step points on each axis. Step, tokens and wall time are the point's own. On the
// epoch axis a point sits at its fractional epoch, epoch − 1 + (its place in the epoch), so
// the epoch's last step lands on the epoch's own x (an epoch's figures are drawn where it
// ends) and step and epoch series line up on one chart. The epoch's steps are the finished
// epoch's count, else the running one's (progress), else the last finished epoch's; with
// none known (no epoch done, no progress yet) the point's whole epoch.
export function stepAxes(points, epochs, run) {
  const counts = new Map(epochs.map((e) => [e.epoch, e.steps]));
  const known = epochs.length ? epochs[epochs.length - 1].steps : null;
  const perEpoch = (epoch) => counts.get(epoch) || (run.progress && run.progress.steps_per_epoch) || known || null;
  const before = new Map();  // optimizer steps before each epoch
  const startOf = (epoch) => {
    if (!before.has(epoch)) {
      let total = 0;
      for (let e = 1; e < epoch; e++) total += perEpoch(e) || 0;
      before.set(epoch, total);
    }
    return before.get(epoch);
  };
  return {
    step: points.map((p) => p.step),
    epoch: points.map((p) => {
      const per = perEpoch(p.epoch);
      return per ? p.epoch - 1 + Math.min(1, (p.step - startOf(p.epoch)) / per) : p.epoch;
    }),
    tokens: points.map((p) => p.tokens),
    time: points.map((p) => p.wall_time),
  };
}
