// The HTTP side: the API's JSON routes with the bearer token the user signed in with,
// who that is (GET /users/me), ETag polling, and a run's server-sent events.

export const API = new URL("../", document.baseURI).pathname.replace(/\/$/, "");
export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
// Kept in this origin's local storage until "sign out": a user's own token (issue 27), so
// every tab and a reload are signed in, as with any site's login. Sent only in the
// Authorization header (never in a URL: no log or Referer ever holds it).
const TOKEN_KEY = "moe-lab-token";
const storedToken = () => localStorage.getItem(TOKEN_KEY);

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  const token = storedToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  for (;;) {
    const init = { method, headers: authHeaders(headers), signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    if (response.status === 401) {
      await askToken();
      continue;
    }
    return response;
  }
}

// The API's error, with its detail (a 422's fields), as the CLI prints it.
export async function failure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail
      : body.detail.map((e) => `${e.loc.join(".")}: ${e.msg}`).join("; ");
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, detail);
}

export async function api(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Polling with ETag: a getter that sends the ETag it last saw for the same path and answers
// null on a 304, so a polled view redraws only when something changed. One per view.
export function conditional() {
  let last = { path: null, etag: null };
  return async (path, { signal } = {}) => {
    const headers = last.path === path && last.etag ? { "If-None-Match": last.etag } : {};
    const response = await request(path, { headers, signal });
    if (response.status === 304) return null;
    if (!response.ok) throw await failure(response);
    last = { path, etag: response.headers.get("ETag") };
    return response.json();
  };
}

// Who the API says the page is signed in as: GET /users/me once, again after a sign-in.
let me = null;
export function whoAmI() {
  if (!me) me = api("/users/me").catch((error) => { me = null; throw error; });
  return me;
}
export const signedIn = () => storedToken() !== null;

export function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  me = null;
  location.reload();  // the next request meets the 401, and the sign-in form
}

let tokenPrompt = null;
export function askToken() {
  // One sign-in form for every request that met a 401 at once.
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  tokenPrompt = new Promise((resolve) => {
    document.getElementById("token-form").onsubmit = async (event) => {
      event.preventDefault();
      const probe = await fetch(`${API}/users/me`, {
        headers: { Accept: "application/json", Authorization: `Bearer ${input.value}` },
      });
      if (probe.status === 401) {
        error.textContent = `That token was refused (${(await failure(probe)).message.replace(/^401: /, "")}).`;
        return;
      }
      localStorage.setItem(TOKEN_KEY, input.value);
      input.value = "";
      me = probe.ok ? Promise.resolve(await probe.json()) : null;
      dialog.close();
      tokenPrompt = null;
      window.dispatchEvent(new Event("moe-lab-signed-in"));
      resolve();
    };
  });
  error.textContent = storedToken() ? "The token was refused: sign in again." : "";
  localStorage.removeItem(TOKEN_KEY);
  me = null;
  if (!dialog.open) dialog.showModal();
  return tokenPrompt;
}

// A run's server-sent events, read with fetch (EventSource cannot send the token): calls
// onEvent(name, data) for each, resumes after a dropped connection with Last-Event-ID, and
// returns once the run has ended (or the view that asked is gone).
export async function follow(experimentId, onEvent, signal) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const response = await fetch(`${API}/experiments/${experimentId}/events`, { headers, signal });
      if (response.status === 401) { await askToken(); continue; }
      if (response.status === 404 || response.status === 422) return;  // no such run
      if (!response.ok) throw new ApiError(response.status, "");  // 503 and the like: retry
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).replace(/\r$/, "");
          buffer = buffer.slice(end + 1);
          if (line === "") {
            if (event.data !== undefined) {
              if (event.id !== undefined) lastId = event.id;
              const data = JSON.parse(event.data);
              // an async handler that fetches: its failure once the view is gone (aborted)
              // is no error; another is a hiccup the view's polling gets over
              const name = event.event || "message";
              Promise.resolve(onEvent(name, data)).catch((error) => {
                if (!signal.aborted) console.warn(`${name} event of run ${experimentId}:`, error);
              });
              if (event.event === "status" && (FINISHED.has(data.status) || data.status === "deleted")) return;
            }
            event = {};
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") event.data = event.data === undefined ? text : `${event.data}\n${text}`;
            else if (field === "event" || field === "id") event[field] = text;
          }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    await sleep(1000);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A file from the API (an artifact), saved under `filename`.
export async function download(path, filename) {
  const response = await request(path);
  if (!response.ok) throw new ApiError(response.status, response.statusText);
  saveBlob(await response.blob(), filename);
}

// A blob the page made or fetched, saved as a file.
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
