// appmon's MON page: the VMs at a glance, saved views of live counter charts (uPlot), the
// raised alarms. Every name shown may come from a guest: it enters the document only as text
// (text nodes, DOM properties), never as markup.
"use strict";

const REFRESH_MS = 2000;
const ALARMS = "\u0000alarms"; // the alarm view's tab key (no view can be named so)

const state = {
  overview: null, // the last /mon/api/overview
  views: [], // saved views
  broken: [], // view files that could not be read
  tab: null, // a view's name, ALARMS, or null
  editing: null, // the view being edited (a copy), or null
  charts: [], // [{ chart, plot, counters }] of the view shown
};
// For the tests and the curious: the charts drawn now.
window.monCharts = state.charts;

// el("div", { className: "x", onclick: f }, "text", child, ...): children that are strings
// become text nodes.
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

function problem(text) {
  document.getElementById("problem").textContent = text || "";
}

async function call(method, url, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(url, init);
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${url}: ${r.status} ${text.trim()}`);
  return text && r.headers.get("Content-Type") === "application/json" ? JSON.parse(text) : text;
}

// ---- the VMs at a glance ----

function statusBadge(status) {
  // green, red, gray: shown as the seed writes them, Green, Red, Gray.
  const label = status ? status[0].toUpperCase() + status.slice(1) : "unknown";
  return el("span", { className: "status " + (status || "unknown") }, label);
}

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

function drawVms() {
  const body = document.querySelector("#vms tbody");
  const rows = state.overview.vms.map((vm) =>
    el(
      "tr",
      { dataset: { vm: vm.name } },
      el("td", {}, vm.name),
      el("td", {}, vm.monitored ? statusBadge(vm.status) : "not monitored"),
      el("td", {}, vm.connected ? "connected" : "not connected"),
      el("td", {}, String(vm.resets_in_window), vm.gave_up ? " (gave up)" : ""),
      el(
        "td",
        { className: "history" },
        vm.history
          .slice(-3)
          .reverse()
          .map((h) => el("div", {}, `${time(h.unix_ms)} ${h.text}`)),
      ),
    ),
  );
  body.replaceChildren(...rows);
  document.getElementById("clock").textContent = "as of " + time(state.overview.now_ms);
}

// ---- tabs ----

function drawTabs() {
  const tab = (key, label) =>
    el(
      "button",
      {
        className: state.tab === key && !state.editing ? "active" : "",
        dataset: { tab: key === ALARMS ? "alarms" : key },
        onclick: () => show(key),
      },
      label,
    );
  const tabs = [tab(ALARMS, "Alarms"), ...state.views.map((v) => tab(v.name, v.name))];
  tabs.push(el("button", { id: "new-view", onclick: () => edit(null) }, "+ New view"));
  document.getElementById("tabs").replaceChildren(...tabs);
  document
    .getElementById("broken")
    .replaceChildren(
      ...state.broken.map((b) =>
        el("div", { className: "error" }, `View file ${b.file} cannot be read: ${b.error}`),
      ),
    );
}

function show(key) {
  state.editing = null;
  state.tab = key;
  history.replaceState(null, "", key === ALARMS ? "#" : "#" + encodeURIComponent(key));
  drawTabs();
  drawPane();
}

function drawPane() {
  for (const c of state.charts) c.plot.destroy();
  state.charts.length = 0;
  const pane = document.getElementById("pane");
  if (state.editing) return pane.replaceChildren(editor());
  if (state.tab === ALARMS) return pane.replaceChildren(alarms());
  const view = state.views.find((v) => v.name === state.tab);
  if (!view) return pane.replaceChildren(el("p", {}, "Pick a view, or make one."));
  const head = el(
    "div",
    { className: "row" },
    el("button", { id: "edit-view", onclick: () => edit(view) }, "Edit"),
    " ",
    el("button", { id: "delete-view", onclick: () => remove(view) }, "Delete"),
  );
  const boxes = view.charts.map((chart) => {
    const box = el("div", { className: "chart" }, el("h3", {}, chart.title || "(untitled)"));
    const gone = el("div", { className: "gone" });
    const plot = new uPlot(
      {
        width: 560,
        height: 240,
        scales: { x: { time: true } },
        series: [
          {},
          ...chart.counters.map((c, i) => ({
            label: `${c.domain} / ${c.entity} / ${c.counter}`,
            stroke: COLOURS[i % COLOURS.length],
            width: 2,
          })),
        ],
      },
      [[], ...chart.counters.map(() => [])],
      box,
    );
    box.append(gone);
    const drawn = { chart, plot, gone };
    state.charts.push(drawn);
    return box;
  });
  pane.replaceChildren(head, ...boxes);
  refreshCharts();
}

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

// Aligns the counters' points (each with its own arrival times) on one time axis.
function align(answers) {
  const times = [...new Set(answers.flatMap((a) => a.t))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const ys = answers.map((a) => {
    const y = new Array(times.length).fill(null);
    a.t.forEach((t, i) => (y[index.get(t)] = a.v[i]));
    return y;
  });
  return [times.map((t) => t / 1000), ...ys];
}

async function refreshCharts() {
  const now = state.overview ? state.overview.now_ms : Date.now();
  for (const drawn of [...state.charts]) {
    const since = now - drawn.chart.minutes * 60000;
    let answers;
    try {
      answers = await call("POST", "api/series", { since_ms: since, counters: drawn.chart.counters });
    } catch (e) {
      problem(e.message);
      return;
    }
    if (!state.charts.includes(drawn)) return; // the pane changed meanwhile
    drawn.plot.setData(align(answers));
    // From the chart's span or its first point, whichever is later, to now: a young series
    // fills the chart rather than hugging its right edge.
    const first = Math.min(...answers.filter((a) => a.t.length).map((a) => a.t[0]), now);
    drawn.plot.setScale("x", { min: Math.max(since, first) / 1000, max: now / 1000 });
    const gone = answers.filter((a) => a.gone);
    drawn.gone.textContent = gone.length
      ? "Gone (no VM has it now): " + gone.map((a) => `${a.domain} / ${a.entity} / ${a.counter}`).join(", ")
      : "";
  }
}

// ---- the alarm view ----

function alarms() {
  const list = state.overview.alarms;
  if (!list.length) return el("p", { id: "alarms" }, "No alarm is raised.");
  return el(
    "table",
    { id: "alarms" },
    el("thead", {}, el("tr", {}, el("th", {}, "VM"), el("th", {}, "Entity"), el("th", {}, "Counter"), el("th", {}, "Past"))),
    el(
      "tbody",
      {},
      list.map((a) =>
        el("tr", {}, el("td", {}, a.domain), el("td", {}, a.entity), el("td", {}, a.counter), el("td", {}, a.side + " its threshold")),
      ),
    ),
  );
}

// ---- making and editing views ----

function edit(view) {
  state.editing = view
    ? JSON.parse(JSON.stringify(view))
    : { name: "", charts: [{ title: "", minutes: 5, counters: [] }], isNew: true };
  drawTabs();
  drawPane();
}

// A <select> of `options` ([value, label]); `value` chosen.
function select(props, options, value) {
  const s = el("select", props, options.map(([v, l]) => el("option", { value: v }, l)));
  s.value = value;
  return s;
}

function counterPicker(chart, ci) {
  const vms = state.overview.vms;
  const c = chart.counters[ci];
  const vm = vms.find((v) => v.name === c.domain);
  const entity = vm && vm.entities.find((e) => e.name === c.entity);
  const opts = (names, current) => {
    const o = names.map((n) => [n, n]);
    if (current && !names.includes(current)) o.unshift([current, current + " (gone)"]);
    return o;
  };
  const redraw = () => drawPane();
  return el(
    "div",
    { className: "row counter" },
    select(
      { className: "pick-vm", onchange: (e) => ((c.domain = e.target.value), (c.entity = ""), (c.counter = ""), redraw()) },
      [["", "VM…"], ...opts(vms.map((v) => v.name), c.domain)],
      c.domain,
    ),
    select(
      { className: "pick-entity", onchange: (e) => ((c.entity = e.target.value), (c.counter = ""), redraw()) },
      [["", "entity…"], ...opts(vm ? vm.entities.map((e) => e.name) : [], c.entity)],
      c.entity,
    ),
    select(
      { className: "pick-counter", onchange: (e) => ((c.counter = e.target.value), redraw()) },
      [["", "counter…"], ...opts(entity ? entity.counters.map((k) => k.name) : [], c.counter)],
      c.counter,
    ),
    el("button", { onclick: () => (chart.counters.splice(ci, 1), redraw()) }, "remove"),
  );
}

function editor() {
  const v = state.editing;
  const charts = v.charts.map((chart, i) =>
    el(
      "fieldset",
      { className: "edit-chart" },
      el("legend", {}, `Chart ${i + 1}`),
      el(
        "div",
        { className: "row" },
        el("label", {}, "Title ", el("input", { className: "chart-title", value: chart.title, oninput: (e) => (chart.title = e.target.value) })),
        el(
          "label",
          {},
          "Last ",
          select(
            { className: "chart-minutes", onchange: (e) => (chart.minutes = Number(e.target.value)) },
            [1, 5, 15, 30, 60].map((m) => [String(m), `${m} min`]),
            String(chart.minutes),
          ),
        ),
        el("button", { onclick: () => (v.charts.splice(i, 1), drawPane()) }, "remove chart"),
      ),
      chart.counters.map((_, ci) => counterPicker(chart, ci)),
      el(
        "button",
        { className: "add-counter", onclick: () => (chart.counters.push({ domain: "", entity: "", counter: "" }), drawPane()) },
        "+ counter",
      ),
    ),
  );
  return el(
    "div",
    { className: "editor" },
    el(
      "label",
      {},
      "View name ",
      el("input", { id: "view-name", value: v.name, disabled: !v.isNew, oninput: (e) => (v.name = e.target.value) }),
    ),
    charts,
    el("button", { id: "add-chart", onclick: () => (v.charts.push({ title: "", minutes: 5, counters: [] }), drawPane()) }, "+ chart"),
    " ",
    el("button", { id: "save-view", onclick: save }, "Save"),
    " ",
    el("button", { onclick: () => show(state.tab) }, "Cancel"),
    el("div", { id: "edit-problem", className: "error" }),
  );
}

async function save() {
  const v = state.editing;
  const view = {
    name: v.name.trim(),
    charts: v.charts.map((c) => ({
      title: c.title,
      minutes: c.minutes,
      counters: c.counters.filter((k) => k.domain && k.entity && k.counter),
    })),
  };
  try {
    await call("PUT", "api/views/" + encodeURIComponent(view.name), view);
  } catch (e) {
    document.getElementById("edit-problem").textContent = e.message;
    return;
  }
  await loadViews();
  show(view.name);
}

async function remove(view) {
  if (!confirm(`Delete view ${view.name}?`)) return;
  try {
    await call("DELETE", "api/views/" + encodeURIComponent(view.name));
  } catch (e) {
    problem(e.message);
  }
  await loadViews();
  show(ALARMS);
}

// ---- loading ----

async function loadViews() {
  try {
    const listing = await call("GET", "api/views");
    state.views = listing.views;
    state.broken = listing.broken;
  } catch (e) {
    problem(e.message);
  }
}

async function tick() {
  try {
    state.overview = await call("GET", "api/overview");
    problem("");
  } catch (e) {
    problem(e.message);
    return;
  }
  drawVms();
  if (state.tab === ALARMS && !state.editing) drawPane();
  else if (!state.editing) await refreshCharts();
}

async function start() {
  await loadViews();
  await tick();
  const wanted = decodeURIComponent(location.hash.slice(1));
  show(state.views.some((v) => v.name === wanted) ? wanted : state.views.length ? state.views[0].name : ALARMS);
  setInterval(tick, REFRESH_MS);
}

start();
