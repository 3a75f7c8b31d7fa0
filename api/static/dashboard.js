// The dashboard's one script: every figure on every page comes from jobrunner's JSON API,
// called with the signed-in key as a Bearer header (docs/dashboard.md). The pages are
// shells (api/templates/dashboard/); this fills them in and keeps them live by polling.
//
// Text from the API (a job's result, a workload's description) is only ever put in the
// page as text nodes, never as HTML: see h().

const ROOT = document.body.dataset.apiRoot || "";
const PAGE = document.body.dataset.page;
// sessionStorage: the key lives as long as the tab, and no other tab or site sees it.
const KEY_ITEM = "jobrunner.apiKey";
const FINAL_JOB = new Set(["succeeded", "failed", "cancelled"]);
const FINAL_EXPERIMENT = new Set(["succeeded", "failed"]);
const POOL_NAMES = ["threads", "prefork", "gevent"];

// -- talking to the API -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function request(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(ROOT + path, init);
  } catch (error) {
    throw new ApiError(0, { title: "API unreachable", detail: `the API did not answer (${error.message})` });
  }
  if (response.ok) return response;
  let problem;
  try {
    problem = await response.json();
  } catch {
    problem = { title: response.statusText, detail: `HTTP ${response.status}` };
  }
  if (response.status === 401 && PAGE !== "signin") {
    // The key is unknown (or no longer configured): sign in again, then come back here.
    sessionStorage.removeItem(KEY_ITEM);
    location.assign(signinUrl());
  }
  throw new ApiError(response.status, problem);
}

async function api(path, options) {
  return (await request(path, options)).json();
}

async function apiBlob(path) {
  return (await request(path)).blob();
}

function signinUrl(reason) {
  const next = encodeURIComponent(location.pathname + location.search);
  return `${ROOT}/ui/signin?next=${next}${reason ? `&reason=${reason}` : ""}`;
}

// Where to go after signing in: a page of the dashboard only, never another site.
function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "";
  return next.startsWith(`${ROOT}/ui/`) && !next.startsWith("//") ? next : `${ROOT}/ui/`;
}

// -- building the page --------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

// An element with attributes and children; strings become text nodes (never HTML).
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    // Through the CSSOM: the page's CSP refuses inline style attributes.
    else if (name === "style") element.style.cssText = value;
    else if (name in element && typeof value !== "string") element[name] = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function show(element, visible = true) {
  element.hidden = !visible;
  return element;
}

function stateBadge(state) {
  return h("span", { class: `state state-${state}`, "data-state": state }, state);
}

function sig(x) {
  if (x === null || x === undefined) return "—";
  if (Math.abs(x) >= 100) return Math.round(x).toLocaleString("en");
  return String(Number(x.toPrecision(3)));
}

function seconds(x) {
  if (x === null || x === undefined) return "—";
  return Math.abs(x) < 1 ? `${sig(x * 1000)} ms` : `${sig(x)} s`;
}

function between(start, end) {
  return start && end ? seconds(end - start) : "—";
}

function bytes(x) {
  if (x === null || x === undefined) return "—";
  return `${sig(x / 2 ** 20)} MiB`;
}

function clock(epoch) {
  if (!epoch) return "—";
  const date = new Date(epoch * 1000);
  const time = date.toLocaleTimeString("en-GB", { hour12: false });
  return `${time}.${String(date.getMilliseconds()).padStart(3, "0")}`;
}

function dateTime(epoch) {
  if (!epoch) return "—";
  return new Date(epoch * 1000).toLocaleString("en-GB", { hour12: false });
}

function shortId(id) {
  return h("code", { title: id }, id.slice(0, 8));
}

function compact(value) {
  const text = JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}…` : text;
}

function flash(message, kind = "error") {
  const element = $("#flash");
  element.className = `flash ${kind}`;
  element.textContent = message;
  show(element, Boolean(message));
}

function problemText(error) {
  const fields = error.problem?.errors;
  if (fields?.length) return fields.map((e) => `${e.field}: ${e.message}`).join("\n");
  return error.message;
}

// Call `refresh` now and every `ms` while it returns anything but false; skipped while the
// tab is hidden (nobody is watching), and a failure is shown, not fatal: the API or Redis
// may be back at the next turn.
function poll(refresh, ms) {
  let timer = null;
  let stopped = false;
  const live = $("#live");
  const tick = async () => {
    if (stopped) return;
    if (document.visibilityState !== "hidden") {
      try {
        const again = await refresh();
        if (live) {
          live.classList.remove("stale");
          live.title = `updated ${clock(Date.now() / 1000)}`;
        }
        if ($("#flash").classList.contains("error")) flash(""); // the API answers again
        if (again === false) return;
      } catch (error) {
        if (live) live.classList.add("stale");
        if (error.status !== 401) flash(error.message);
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function ready() {
  document.body.dataset.ready = "true";
}

// -- params, as a form built from a workload's JSON schema -----------------------------------

function fieldKind(schema) {
  if (schema.enum) return "enum";
  const types = schema.type ? [schema.type].flat() : (schema.anyOf || []).map((s) => s.type);
  const concrete = types.filter((t) => t && t !== "null");
  if (concrete.length === 1 && ["integer", "number", "string", "boolean"].includes(concrete[0])) {
    return concrete[0];
  }
  return "json"; // any JSON value: objects, lists, unions, or no type at all
}

// A value to start from for a required field with no default: small, within bounds.
function startingValue(kind, schema) {
  if (schema.examples?.length) return schema.examples[0];
  const low = schema.minimum ?? schema.exclusiveMinimum;
  const high = schema.maximum ?? schema.exclusiveMaximum;
  const clamp = (x) => Math.min(high ?? Infinity, Math.max(low ?? -Infinity, x));
  if (kind === "integer") return clamp(1000);
  if (kind === "number") return clamp(0.1);
  if (kind === "string" && schema.format === "uri") return `${location.origin}${ROOT}/lab/delay?ms=100`;
  if (kind === "enum") return schema.enum[0];
  return "";
}

// Builds the inputs for `workload`'s params into `container`; returns a function that
// reads them back as the params object (bounds are the API's to check: its 422 names the
// field).
function paramsEditor(container, workload) {
  const schema = workload.params_schema || {};
  const required = new Set(schema.required || []);
  const readers = [];
  const fields = Object.entries(schema.properties || {}).map(([name, prop]) => {
    const kind = fieldKind(prop);
    const initial = prop.default ?? (required.has(name) ? startingValue(kind, prop) : "");
    const id = `param-${name}`;
    let input;
    if (kind === "boolean") {
      input = h("input", { type: "checkbox", id, name, checked: Boolean(initial) });
    } else if (kind === "enum") {
      input = h("select", { id, name }, prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
      input.value = JSON.stringify(initial);
    } else if (kind === "integer" || kind === "number") {
      input = h("input", {
        type: "number", id, name, value: String(initial), step: kind === "integer" ? "1" : "any",
        min: prop.minimum, max: prop.maximum, required: required.has(name),
      });
    } else {
      const value = kind === "json" && initial !== "" ? JSON.stringify(initial) : String(initial);
      input = h("input", { type: "text", id, name, value, required: required.has(name), spellcheck: "false" });
    }
    readers.push([name, () => {
      if (kind === "boolean") return input.checked;
      if (input.value === "") return undefined;
      if (kind === "enum") return JSON.parse(input.value);
      if (kind === "integer" || kind === "number") return Number(input.value);
      if (kind === "json") {
        try {
          return JSON.parse(input.value);
        } catch {
          return input.value; // not JSON: a plain string
        }
      }
      return input.value;
    }]);
    return h("label", { class: "param" },
      h("span", {}, prop.title || name, " ", h("code", {}, name), kind === "json" ? " (JSON)" : ""),
      input,
      prop.description ? h("small", { class: "muted" }, prop.description) : null);
  });
  container.replaceChildren(...(fields.length ? fields : [h("p", { class: "muted small" }, "No params.")]));
  return () => {
    const params = {};
    for (const [name, read] of readers) {
      const value = read();
      if (value !== undefined) params[name] = value;
    }
    return params;
  };
}

function workloadOptions(select, workloads, { any = false, selected = "" } = {}) {
  const options = workloads.map((w) => h("option", { value: w.name }, w.name));
  if (selected && !workloads.some((w) => w.name === selected)) {
    options.push(h("option", { value: selected }, selected));
  }
  select.replaceChildren(...(any ? [h("option", { value: "" }, "any")] : []), ...options);
  if (selected || any) select.value = selected;
}

// -- who is signed in ---------------------------------------------------------------------

async function whoami() {
  try {
    return await api("/me");
  } catch (error) {
    if (error.status === 403) {
      // A key without the read scope can see nothing here.
      sessionStorage.removeItem(KEY_ITEM);
      location.assign(signinUrl("read"));
    }
    throw error;
  }
}

function showIdentity(me) {
  $("#identity-name").textContent = me.auth === "off" ? "auth is off" : me.name;
  $("#identity-scopes").textContent = me.auth === "off" ? "" : me.scopes.join(" · ");
  show($("#sign-out"), me.auth !== "off");
  $("#sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    location.assign(`${ROOT}/ui/signin`);
  });
  show($("#identity"));
}

async function signinPage() {
  const error = $("#signin-error");
  if (new URLSearchParams(location.search).get("reason") === "read") {
    error.textContent = "That key lacks the read scope the dashboard needs to show anything.";
    show(error);
  }
  // With JOBRUNNER_AUTH=off there is nothing to sign in with: straight through.
  const stored = sessionStorage.getItem(KEY_ITEM);
  sessionStorage.removeItem(KEY_ITEM);
  try {
    const me = await api("/me");
    if (me.auth === "off") {
      location.replace(nextPage());
      return;
    }
  } catch {
    // 401: keys are on, as expected.
  }
  if (stored) sessionStorage.setItem(KEY_ITEM, stored);
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    sessionStorage.setItem(KEY_ITEM, key);
    try {
      await api("/me");
      location.assign(nextPage());
    } catch (failure) {
      sessionStorage.removeItem(KEY_ITEM);
      error.textContent =
        failure.status === 401 ? "The API does not know this key."
        : failure.status === 403 ? "That key lacks the read scope the dashboard needs to show anything."
        : failure.message;
      show(error);
    }
  });
  ready();
}

// -- jobs -----------------------------------------------------------------------------------

function jobRow(job, fresh) {
  return h("tr", { "data-job-id": job.id, class: fresh ? "fresh" : null },
    h("td", {}, h("a", { href: `${ROOT}/ui/jobs/${encodeURIComponent(job.id)}` }, shortId(job.id))),
    h("td", {}, job.workload),
    h("td", {}, job.pool),
    h("td", {}, stateBadge(job.state), job.cancel_requested && !FINAL_JOB.has(job.state) ? " cancel asked" : ""),
    h("td", { title: dateTime(job.submitted_at) }, clock(job.submitted_at)),
    h("td", {}, between(job.submitted_at, job.started_at)),
    h("td", {}, between(job.started_at, job.finished_at)),
    h("td", { title: job.worker_host || "" }, job.worker_node || "—"),
    h("td", {}, String(job.attempts)));
}

async function jobsPage(me) {
  const form = $("#job-filters");
  const query = new URLSearchParams(location.search);
  form.elements.state.value = query.get("state") || "";
  form.elements.pool.value = query.get("pool") || "";
  const catalog = (await api("/workloads")).workloads;
  workloadOptions($("#filter-workload"), catalog, { any: true, selected: query.get("workload") || "" });
  if (me.scopes.includes("submit")) newJobForm(catalog);

  let seen = null; // ids shown so far: a new one is highlighted as it appears
  const refresh = async () => {
    const filters = new URLSearchParams({ limit: "50" });
    for (const name of ["state", "pool", "workload"]) {
      if (form.elements[name].value) filters.set(name, form.elements[name].value);
    }
    const page = await api(`/jobs?${filters}`);
    const rows = page.jobs.map((job) => jobRow(job, seen !== null && !seen.has(job.id)));
    $("#jobs-body").replaceChildren(...rows);
    show($("#jobs-empty"), rows.length === 0);
    seen = new Set(page.jobs.map((job) => job.id));
    ready();
  };
  let stop = poll(refresh, 1500);
  form.addEventListener("change", () => {
    const filters = new URLSearchParams();
    for (const name of ["state", "pool", "workload"]) {
      if (form.elements[name].value) filters.set(name, form.elements[name].value);
    }
    history.replaceState(null, "", filters.size ? `?${filters}` : location.pathname);
    seen = null;
    stop();
    stop = poll(refresh, 1500);
  });
}

function newJobForm(catalog) {
  const select = $("#new-job-workload");
  const poolSelect = $("#new-job-pool");
  let readParams = () => ({});
  const choose = () => {
    const workload = catalog.find((w) => w.name === select.value);
    readParams = paramsEditor($("#new-job-params"), workload);
    poolSelect.replaceChildren(h("option", { value: "" }, `its default (${workload.default_pool})`),
      ...workload.pools.map((p) => h("option", { value: p }, p)));
  };
  workloadOptions(select, catalog);
  select.addEventListener("change", choose);
  choose();
  show($("#new-job"));
  $("#new-job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#new-job-error");
    const body = { workload: select.value, params: readParams() };
    if (poolSelect.value) body.pool = poolSelect.value;
    try {
      const job = await api("/jobs", { method: "POST", body });
      show(error, false);
      flash(`Job ${job.id} submitted to ${job.pool}.`, "ok");
    } catch (failure) {
      error.textContent = problemText(failure);
      show(error);
    }
  });
}

// -- one job --------------------------------------------------------------------------------

function timeline(job) {
  const final = FINAL_JOB.has(job.state);
  const steps = [
    ["submitted", job.submitted_at, "the API accepted it"],
    ["received", job.received_at, "a worker took the message"],
    ["started", job.started_at, "the workload began"],
    [final ? job.state : "finished", final ? job.finished_at || null : null, "the outcome recorded"],
  ];
  let previous = null;
  return steps.map(([label, at, what]) => {
    const delta = at && previous ? `+${seconds(at - previous)}` : "";
    if (at) previous = at;
    return h("li", { class: at ? "done" : "pending", "data-step": label },
      h("strong", {}, label), h("span", { class: "when" }, at ? clock(at) : "—"),
      h("span", { class: "delta" }, delta), h("small", { class: "muted" }, what));
  });
}

function timebar(job) {
  if (!job.started_at) return [];
  const waited = job.started_at - job.submitted_at;
  const ran = job.finished_at ? job.finished_at - job.started_at : null;
  if (ran === null) {
    return [h("span", { class: "wait", style: "flex: 0.2" }, `queued ${seconds(waited)}`),
      h("span", { class: "run", style: "flex: 0.8" }, "running…")];
  }
  const total = Math.max(waited + ran, 1e-6);
  return [
    h("span", { class: "wait", style: `flex: ${Math.max(waited / total, 0.08)}` }, `queued ${seconds(waited)}`),
    h("span", { class: `run run-${job.state}`, style: `flex: ${Math.max(ran / total, 0.08)}` }, `ran ${seconds(ran)}`),
  ];
}

function details(pairs) {
  return pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value ?? "—")]);
}

async function jobPage(me) {
  const id = document.body.dataset.jobId;
  const path = `/jobs/${encodeURIComponent(id)}`;
  const cancel = $("#cancel-job");
  const retry = $("#retry-job");
  const note = $("#action-result");

  const render = (job) => {
    $("#job-state").replaceChildren(stateBadge(job.state));
    // Offered only where the key has the scope the API asks for and the state allows it:
    // cancel needs admin, retry submit (the API checks again either way).
    show(cancel, me.scopes.includes("admin") && !FINAL_JOB.has(job.state) && !job.cancel_requested);
    show(retry, me.scopes.includes("submit") && ["failed", "cancelled"].includes(job.state));
    $("#timeline").replaceChildren(...timeline(job));
    $("#timebar").replaceChildren(...timebar(job));
    $("#job-details").replaceChildren(...details([
      ["workload", job.workload],
      ["pool", `${job.pool}${job.pool_chosen_by === "default" ? " (the workload's default)" : ""}`],
      ["worker host", job.worker_host],
      ["worker", job.worker_node],
      ["pid", job.worker_pid],
      ["attempts", `${job.attempts} (retries allowed: ${job.max_retries})`],
      ["CPU", job.cpu_seconds === null ? null : seconds(job.cpu_seconds)],
      ["time limit", job.time_limit === null ? "none" : `${job.time_limit} s`],
      ["cancel requested", job.cancel_requested ? "yes (runs to its end: its pool cannot stop it)" : "no"],
      ["refused writes", String(job.refused_writes ?? 0)],
    ]));
    $("#job-params").textContent = JSON.stringify(job.params, null, 2);
    if (job.error) {
      $("#outcome-title").textContent = "Error";
      $("#job-outcome").textContent = `${job.error.type}: ${job.error.message}`;
    } else {
      $("#outcome-title").textContent = "Result";
      $("#job-outcome").textContent = job.state === "succeeded" ? JSON.stringify(job.result, null, 2) : "(none yet)";
    }
    $("#attempt-errors").replaceChildren(...(job.attempt_errors?.length
      ? [h("h3", {}, "Earlier attempts"), h("ul", {}, job.attempt_errors.map((e) => h("li", {}, `${e.type}: ${e.message}`)))]
      : []));
    ready();
  };

  const act = async (button, method, url, done) => {
    button.disabled = true;
    try {
      render(await api(url, { method }));
      note.className = "notice ok";
      note.textContent = done;
    } catch (failure) {
      note.className = "notice error";
      note.textContent = problemText(failure);
    } finally {
      button.disabled = false;
      show(note);
    }
  };
  cancel.addEventListener("click", () => act(cancel, "DELETE", path, "Cancelled."));
  retry.addEventListener("click", () => act(retry, "POST", `${path}/retry`, "Queued again, same id."));

  poll(async () => {
    try {
      render(await api(path));
    } catch (failure) {
      if (failure.status !== 404) throw failure;
      $("#job-state").replaceChildren(h("span", { class: "state" }, "not found"));
      note.className = "notice error";
      note.textContent = failure.message;
      show(note);
      return false;
    }
    return true;
  }, 1000);
}

// -- pools ----------------------------------------------------------------------------------

function groupBy(items, key) {
  const groups = new Map();
  for (const item of items) {
    const k = key(item);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(item);
  }
  return groups;
}

function mismatchList(mismatches) {
  return h("ul", {}, mismatches.map((m) => h("li", {},
    h("code", {}, m.worker), ": ",
    [m.missing.length ? `lacks ${m.missing.join(", ")}` : null,
     m.extra.length ? `has extra ${m.extra.join(", ")}` : null,
     m.changed.length ? `differs on ${m.changed.join(", ")}` : null].filter(Boolean).join("; ") || "another catalog")));
}

function poolCard(pool, busyByNode, scaling) {
  const slots = pool.workers.reduce((sum, w) => sum + (w.concurrency || 0), 0);
  const busy = pool.workers.reduce((sum, w) => sum + (busyByNode.get(w.node) || 0), 0);
  const depth = scaling?.pools?.[pool.name];
  const yesNo = (value) => h("span", { class: value ? "yes" : "no" }, value ? "yes" : "no");
  const hosts = groupBy(pool.workers, (w) => w.host || "(host not reported)");
  return h("section", { class: "card pool", "data-pool": pool.name },
    h("div", { class: "page-head" }, h("h2", {}, pool.name), h("span", { class: "tag" }, `suited to ${pool.suited_to}`),
      h("code", { class: "muted" }, pool.queue)),
    h("dl", { class: "figures" },
      h("div", {}, h("dt", {}, "queued"), h("dd", { "data-queued": pool.queued }, String(pool.queued))),
      h("div", {}, h("dt", {}, "taken"), h("dd", {}, depth ? String(depth.taken) : "—")),
      h("div", {}, h("dt", {}, "workers"), h("dd", {}, String(pool.workers.length))),
      h("div", {}, h("dt", {}, "busy slots"), h("dd", { "data-busy-total": busy }, `${busy} / ${slots}`))),
    h("ul", { class: "capabilities" },
      h("li", {}, "hard time limit ", yesNo(pool.capabilities.hard_time_limit)),
      h("li", {}, "stops a running job ", yesNo(pool.capabilities.terminate_running)),
      h("li", {}, "memory isolation ", yesNo(pool.capabilities.memory_isolation))),
    pool.workers.length === 0 ? h("p", { class: "warning" }, "No live worker: its jobs wait in the queue.") : null,
    [...hosts].map(([host, workers]) => h("div", { class: "host", "data-host": host },
      h("h3", {}, host, workers[0].cores ? h("small", { class: "muted" }, ` ${workers[0].cores} cores`) : null,
        workers[0].rtt_ms_to_redis !== null && workers[0].rtt_ms_to_redis !== undefined
          ? h("small", { class: "muted" }, `, ${sig(workers[0].rtt_ms_to_redis)} ms to Redis`) : null),
      h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, h("th", {}, "worker"), h("th", {}, "pid"), h("th", {}, "concurrency"),
          h("th", {}, "busy"), h("th", {}, "catalog"))),
        h("tbody", {}, workers.map((w) => {
          const used = busyByNode.get(w.node) || 0;
          return h("tr", { "data-node": w.node },
            h("td", {}, h("code", {}, w.node)),
            h("td", {}, w.pid ?? "—"),
            h("td", { "data-concurrency": w.concurrency ?? "" }, w.concurrency ?? "—"),
            h("td", { "data-busy": used },
              h("meter", { min: "0", max: String(w.concurrency || 1), value: String(used) }), ` ${used} / ${w.concurrency ?? "?"}`),
            h("td", {}, w.catalog_matches === false ? h("span", { class: "no" }, "differs")
              : w.catalog_matches ? h("span", { class: "yes" }, "same") : "—"));
        }))))),
    pool.catalog_mismatch.length ? h("div", { class: "warning" }, "Workers with another catalog:", mismatchList(pool.catalog_mismatch)) : null);
}

async function poolsPage() {
  poll(async () => {
    const [pools, scaling, running] = await Promise.all([
      api("/pools"),
      api("/scaling").catch(() => null),
      api("/jobs?state=running&limit=500"),
    ]);
    const busyByNode = new Map();
    for (const job of running.jobs) {
      if (job.worker_node) busyByNode.set(job.worker_node, (busyByNode.get(job.worker_node) || 0) + 1);
    }
    const banner = $("#catalog-mismatch");
    banner.replaceChildren(...(pools.catalog_matches ? [] : [
      h("strong", {}, "Some workers have another workload catalog than the API: "),
      "their jobs of the missing workloads fail.", mismatchList(pools.catalog_mismatch)]));
    show(banner, !pools.catalog_matches);
    $("#pools").replaceChildren(...pools.pools.map((pool) => poolCard(pool, busyByNode, scaling)));
    ready();
  }, 3000);
}

// -- the lab --------------------------------------------------------------------------------

function targetsOf(experiment) {
  return [...experiment.request.pools, ...experiment.request.local];
}

function checkboxes(container, name, values, { enabled = values, checked = [] } = {}) {
  container.replaceChildren(...values.map((value) => h("label", { class: "check" },
    h("input", { type: "checkbox", name, value, id: `${name}-${value}`, checked: checked.includes(value), disabled: !enabled.includes(value) }),
    value)));
}

function checked(container) {
  return [...container.querySelectorAll("input:checked")].map((input) => input.value);
}

async function labPage(me) {
  const catalog = (await api("/workloads")).workloads;
  const select = $("#exp-workload");
  let readParams = () => ({});
  const choose = () => {
    const workload = catalog.find((w) => w.name === select.value);
    $("#exp-workload-description").textContent = `${workload.kind}-bound: ${workload.description}`;
    readParams = paramsEditor($("#exp-params"), workload);
    checkboxes($("#exp-pools"), "pools", POOL_NAMES, { enabled: workload.pools, checked: workload.pools });
    const local = workload.local_executors || [];
    checkboxes($("#exp-local"), "local", local, { checked: [] });
  };
  workloadOptions(select, catalog);
  select.addEventListener("change", choose);
  choose();

  const form = $("#experiment-form");
  if (!me.scopes.includes("admin")) {
    show($("#lab-needs-admin"));
    for (const element of form.elements) element.disabled = true;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#exp-error");
    const body = {
      workload: select.value,
      params: readParams(),
      pools: checked($("#exp-pools")),
      local: checked($("#exp-local")),
      count: Number($("#exp-count").value),
      concurrency: Number($("#exp-concurrency").value),
    };
    try {
      const experiment = await api("/experiments", { method: "POST", body });
      location.assign(`${ROOT}/ui/lab/${encodeURIComponent(experiment.id)}`);
    } catch (failure) {
      error.textContent = problemText(failure);
      show(error);
    }
  });

  // Ticked in order: the comparison's ratio is the last's throughput to the first's.
  const selected = [];
  const compareButton = $("#compare-selected");
  const updateButton = () => {
    compareButton.disabled = selected.length < 2;
  };
  compareButton.addEventListener("click", () => {
    location.assign(`${ROOT}/ui/lab/compare?ids=${selected.map(encodeURIComponent).join(",")}`);
  });
  poll(async () => {
    const { experiments } = await api("/experiments?limit=20");
    $("#experiments-body").replaceChildren(...experiments.map((e) => h("tr", { "data-experiment-id": e.id },
      h("td", {}, h("input", {
        type: "checkbox", "aria-label": `compare ${e.id}`, checked: selected.includes(e.id),
        disabled: e.state !== "succeeded",
        onchange: (event) => {
          const at = selected.indexOf(e.id);
          if (event.target.checked && at < 0) selected.push(e.id);
          if (!event.target.checked && at >= 0) selected.splice(at, 1);
          updateButton();
        },
      })),
      h("td", {}, h("a", { href: `${ROOT}/ui/lab/${encodeURIComponent(e.id)}` }, shortId(e.id))),
      h("td", {}, e.request.workload),
      h("td", {}, h("code", {}, compact(e.request.params))),
      h("td", {}, String(e.request.count)),
      h("td", {}, targetsOf(e).join(", ")),
      h("td", {}, stateBadge(e.state)),
      h("td", {}, dateTime(e.started_at || e.created_at)))));
    ready();
  }, 3000);
}

const REPORT_COLUMNS = [
  ["target", (t) => h("strong", {}, t.target)],
  ["kind", (t) => t.kind],
  ["jobs", (t) => t.count],
  ["errors", (t) => t.errors],
  ["concurrency", (t) => t.concurrency],
  ["makespan", (t) => seconds(t.makespan_s)],
  ["jobs/s", (t) => sig(t.throughput_per_s)],
  ["latency p50", (t) => seconds(t.latency_s.p50)],
  ["latency p95", (t) => seconds(t.latency_s.p95)],
  ["queue wait p50", (t) => seconds(t.queue_wait_s.p50)],
  ["CPU/job", (t) => seconds(t.cpu_seconds_per_job)],
  ["cores busy", (t) => sig(t.cores_busy)],
  ["processes", (t) => t.processes ?? "—"],
  ["peak RSS", (t) => bytes(t.peak_rss_bytes)],
  ["efficiency", (t) => `${Math.round(t.efficiency * 100)}%`],
];

async function showChart(img, experimentId) {
  const blob = await apiBlob(`/experiments/${encodeURIComponent(experimentId)}/chart.svg`);
  img.src = URL.createObjectURL(blob);
}

function summary(experiment) {
  const r = experiment.request;
  return `${r.workload} ${compact(r.params)}, ${r.count} jobs per target on ${targetsOf(experiment).join(", ")}` +
    (r.local.length ? ` (local executors with ${r.concurrency} workers)` : "") +
    ` · created ${dateTime(experiment.created_at)}`;
}

async function experimentPage() {
  const id = document.body.dataset.experimentId;
  let reported = false;
  poll(async () => {
    const experiment = await api(`/experiments/${encodeURIComponent(id)}`);
    $("#experiment-state").replaceChildren(stateBadge(experiment.state));
    $("#experiment-summary").textContent = summary(experiment);
    $("#progress").replaceChildren(...targetsOf(experiment).map((target) => {
      const p = experiment.progress[target] || { done: 0, total: experiment.request.count };
      return h("div", { class: "progress-row", "data-target": target, "data-done": p.done, "data-total": p.total },
        h("span", { class: "label" }, target),
        h("progress", { max: String(p.total), value: String(p.done) }),
        h("span", {}, `${p.done} / ${p.total}`));
    }));
    if (experiment.error) {
      $("#experiment-error").textContent = experiment.error;
      show($("#experiment-error"));
    }
    if (experiment.report && !reported) {
      reported = true;
      const report = experiment.report;
      $("#verdict").replaceChildren(...report.verdict.map((line) => h("li", {}, line)));
      $("#where").textContent = `Ran on ${report.topology.where}; Python ${report.topology.python}, Celery ${report.topology.celery}.`;
      $("#report-table").replaceChildren(
        h("thead", {}, h("tr", {}, REPORT_COLUMNS.map(([name]) => h("th", {}, name)))),
        h("tbody", {}, report.targets.map((t) => h("tr", { "data-target": t.target }, REPORT_COLUMNS.map(([, cell]) => h("td", {}, cell(t)))))));
      show($("#report"));
      await showChart($("#chart"), id);
    }
    ready();
    return !FINAL_EXPERIMENT.has(experiment.state);
  }, 1000);
}

function experimentLabel(e) {
  return `${e.id.slice(0, 8)} · ${e.request.workload} ${compact(e.request.params)} ×${e.request.count} · ${dateTime(e.created_at)}`;
}

async function comparePage() {
  const first = $("#compare-a");
  const second = $("#compare-b");
  const message = $("#compare-message");
  let ids = (new URLSearchParams(location.search).get("ids") || "").split(",").filter(Boolean);
  const { experiments } = await api("/experiments?limit=50");
  const finished = experiments.filter((e) => e.state === "succeeded");
  if (ids.length < 2 && finished.length >= 2) ids = [finished[1].id, finished[0].id]; // older first
  for (const select of [first, second]) {
    select.replaceChildren(...finished.map((e) => h("option", { value: e.id }, experimentLabel(e))));
    for (const id of ids) {
      if (!finished.some((e) => e.id === id)) select.append(h("option", { value: id }, id.slice(0, 8)));
    }
  }
  if (ids.length < 2) {
    message.textContent = "Two finished experiments are needed: run them from the Lab page.";
    show(message);
    ready();
    return;
  }
  [first.value, second.value] = ids;

  let stop = () => {};
  const load = () => {
    stop();
    stop = poll(async () => {
      let comparison;
      try {
        comparison = await api(`/experiments/compare?ids=${ids.map(encodeURIComponent).join(",")}`);
      } catch (failure) {
        if (![404, 409, 422].includes(failure.status)) throw failure;
        message.textContent = failure.message;
        show(message);
        show($("#comparison"), false);
        return failure.status === 409; // not finished yet: ask again
      }
      show(message, false);
      renderComparison(comparison, ids);
      ready();
      return false;
    }, 2000);
  };
  const change = () => {
    ids = [first.value, second.value];
    history.replaceState(null, "", `?ids=${ids.map(encodeURIComponent).join(",")}`);
    load();
  };
  first.addEventListener("change", change);
  second.addEventListener("change", change);
  load();
}

function renderComparison(comparison, ids) {
  const runs = new Map(comparison.runs.map((run) => [run.id, run]));
  const byId = new Map(comparison.experiments.map((e) => [e.id, e]));
  const head = (label) => h("thead", {}, h("tr", {}, h("th", {}, label),
    ids.map((id) => h("th", {}, h("a", { href: `${ROOT}/ui/lab/${encodeURIComponent(id)}` }, shortId(id))))));
  const line = (label, cell) => h("tr", {}, h("th", {}, label), ids.map((id) => h("td", {}, cell(id))));
  $("#runs-table").replaceChildren(head(""), h("tbody", {},
    line("workload", (id) => runs.get(id)?.workload ?? "—"),
    line("params", (id) => h("code", {}, compact(runs.get(id)?.params ?? {}))),
    line("jobs per target", (id) => runs.get(id)?.count ?? "—"),
    line("local concurrency", (id) => byId.get(id)?.request.concurrency ?? "—"),
    line("where", (id) => runs.get(id)?.where ?? "—"),
    line("finished", (id) => dateTime(byId.get(id)?.finished_at))));

  const groups = [
    ["jobs/s", "throughput_per_s", sig],
    ["latency p50", "latency_p50_s", seconds],
    ["peak RSS", "peak_rss_bytes", bytes],
    ["efficiency", "efficiency", (x) => (x === null || x === undefined ? "—" : `${Math.round(x * 100)}%`)],
  ];
  const short = (id) => id.slice(0, 8);
  $("#rows-table").replaceChildren(
    h("thead", {},
      h("tr", {}, h("th", { rowspan: "2" }, "target"),
        groups.map(([label]) => h("th", { colspan: String(ids.length) }, label)),
        h("th", { rowspan: "2", title: "throughput of the last to the first" }, "last ÷ first")),
      h("tr", {}, groups.map(() => ids.map((id) => h("th", { title: id }, short(id)))))),
    h("tbody", {}, comparison.rows.map((row) => h("tr", { "data-target": row.target },
      h("th", {}, row.target),
      groups.map(([, field, format]) => ids.map((id) => h("td", {}, format(row[field]?.[id])))),
      h("td", { "data-ratio": row.ratio_last_to_first ?? "" }, row.ratio_last_to_first === null ? "—" : `×${sig(row.ratio_last_to_first)}`)))));

  $("#compare-charts").replaceChildren(...ids.map((id) => {
    const experiment = byId.get(id);
    const img = h("img", { alt: `chart of ${id}`, "data-experiment-id": id });
    showChart(img, id).catch((failure) => flash(failure.message));
    return h("figure", { class: "card chart" },
      h("figcaption", {}, h("a", { href: `${ROOT}/ui/lab/${encodeURIComponent(id)}` }, shortId(id)), ` · ${runs.get(id)?.where ?? ""}`),
      img,
      h("ul", { class: "verdict" }, (experiment?.report?.verdict ?? []).map((lineText) => h("li", {}, lineText))));
  }));
  show($("#comparison"));
}

// -- start ----------------------------------------------------------------------------------

const PAGES = {
  jobs: jobsPage,
  job: jobPage,
  pools: poolsPage,
  lab: labPage,
  experiment: experimentPage,
  compare: comparePage,
};

async function main() {
  if (PAGE === "signin") return signinPage();
  const me = await whoami();
  showIdentity(me);
  await PAGES[PAGE](me);
}

main().catch((error) => {
  if (error.status !== 401) flash(error.message);
});
