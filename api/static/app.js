// The MoE lab dashboard: a few views over the same JSON routes as every client (the CLI,
// curl), following running runs on their event streams. Plain ES modules, no build step:
// http.js (the API, ETags, event streams), dom.js (helpers, formats, sortable tables),
// charts.js (uPlot line charts, bands, heatmaps; ticks.js its axes' ticks), series.js (every
// series a run logged, and the picker that charts any of them), and a module per page:
// runs.js (with runcolumns.js), run.js (with experts.js), study.js, compare.js, sweep.js,
// workers.js.

import { el, fill, newScope, view } from "./dom.js";
import { signOut, signedIn, whoAmI } from "./http.js";
import { runsView, studiesView } from "./runs.js";
import { runView } from "./run.js";
import { studyView } from "./study.js";
import { compareView } from "./compare.js";
import { sweepView, sweepsView } from "./sweep.js";
import { workersView } from "./workers.js";

const routes = [
  [/^#\/run\/(\d+)$/, (m) => runView(Number(m[1]))],
  [/^#\/study\/(\d+)$/, (m) => studyView(Number(m[1]))],
  [/^#\/studies$/, () => studiesView()],
  [/^#\/sweep\/(\d+)$/, (m) => sweepView(Number(m[1]))],
  [/^#\/sweeps$/, () => sweepsView()],
  [/^#\/workers$/, () => workersView()],
  [/^#\/compare(?:\?ids=([\d,]*))?$/, (m) => compareView((m[1] || "").split(",").filter(Boolean).map(Number))],
  [/^#?\/?(?:\?(.*))?$/, (m) => runsView(new URLSearchParams(m[1] || ""))],
];

async function route() {
  const hash = location.hash || "#/";
  for (const [pattern, render] of routes) {
    const match = hash.match(pattern);
    if (match) {
      const signal = newScope();
      try {
        await render(match, signal);
      } catch (error) {
        if (signal.aborted) return;
        fill(view, el("h1", {}, "Something went wrong"), el("p", { class: "error" }, error.message));
      }
      return;
    }
  }
  fill(view, el("h1", {}, "Not found"), el("p", {}, el("a", { href: "#/" }, "All runs")));
}

// Who the page acts as, in the header: "ada (member) · sign out". An open deployment (no
// MOE_API_TOKEN on the server) needs no token, and there is nothing to sign out of.
async function showWho() {
  const who = document.getElementById("who");
  try {
    const me = await whoAmI();
    fill(who, el("span", { id: "who-name" }, me.name), ` (${me.role})`,
      signedIn() ? [" · ", el("a", { href: "#", id: "sign-out", onclick: (e) => { e.preventDefault(); signOut(); } }, "sign out")] : null);
  } catch (_) {
    fill(who);  // an API from before users: no /users/me
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("moe-lab-signed-in", showWho);
route();
showWho();
