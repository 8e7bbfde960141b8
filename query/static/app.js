/* steppe web UI: one page routed on location.pathname, data from /api/steppe/v1 (query/API.md)
   and, for models, MLflow's REST API. Plain browser JS with no build step: this file holds the
   frame, the experiments and run pages; charts.js (uPlot), runs.js, compare.js, sql.js and
   models.js the rest. Server data reaches the DOM only
   through textContent and attributes, never innerHTML. */
(() => {
  "use strict";

  const API = "/api/steppe/v1";
  const MLFLOW_API = "/api/2.0/mlflow";
  const POLL_MS = 1000;          // contract 5: an acked point is visible within one second
  const FINAL_REFRESH_MS = 1500; // one more look after a run ends, for points acked just before
  const SYSTEM_TAG = /^mlflow\./;

  const main = document.getElementById("app");

  // ---------------------------------------------------------------- DOM

  /** h("a", {href: "/", class: "x", onclick: fn}, "text", node, [more]) */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v == null || v === false) continue;
        if (k === "class") el.className = v;
        else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children.flat(Infinity)) {
      if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  function setTitle(text) {
    document.title = text ? `${text} · steppe` : "steppe";
  }

  function loading(text = "Loading…") {
    return h("p", { class: "muted loading", role: "status" }, text);
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- numbers and times

  // JSON has no literal for these; the API sends them as strings (API.md, "Numbers").
  const NON_FINITE = new Map([["NaN", NaN], ["Infinity", Infinity], ["-Infinity", -Infinity]]);

  function toNumber(v) {
    if (typeof v === "number") return v;
    if (v == null) return null;
    if (NON_FINITE.has(v)) return NON_FINITE.get(v);
    const n = Number(v);
    return Number.isNaN(n) ? NaN : n;
  }

  function fmtValue(v) {
    const n = toNumber(v);
    if (n === null) return "—";
    if (Number.isNaN(n)) return "NaN";
    if (n === Infinity) return "∞";
    if (n === -Infinity) return "−∞";
    const a = Math.abs(n);
    if (Number.isInteger(n) && a < 1e15) return String(n);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return n.toExponential(3).replace(/\.?0+e/, "e");
    return String(Number(n.toPrecision(5)));
  }

  const pad2 = (n) => String(n).padStart(2, "0");

  function fmtTime(ms) {
    if (ms == null) return "—";
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function fmtAgo(ms) {
    if (ms == null) return "—";
    const s = (Date.now() - ms) / 1000;
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.max(1, Math.round(s / 60))} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    if (s < 30 * 86400) return `${Math.round(s / 86400)} d ago`;
    return fmtTime(ms).slice(0, 10);
  }

  function fmtDuration(ms) {
    if (ms == null || ms < 0) return "—";
    if (ms < 1000) return `${ms} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${pad2(Math.floor(s % 60))}s`;
    const hr = Math.floor(m / 60);
    if (hr < 24) return `${hr}h ${pad2(m % 60)}m`;
    return `${Math.floor(hr / 24)}d ${hr % 24}h`;
  }

  function runDurationMs(info) {
    if (info.start_time == null) return null;
    const end = info.end_time ?? (info.status === "RUNNING" ? Date.now() : null);
    return end == null ? null : end - info.start_time;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** JSON from one of this server's URLs; an ApiError (MLflow's error_code and message) if not 2xx. */
  async function fetchJson(url, init = {}) {
    let res;
    try {
      res = await fetch(url, { headers: { Accept: "application/json" }, ...init });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "NETWORK_ERROR", "The steppe server did not answer. Is it running?");
    }
    let body = null;
    try {
      body = await res.json();
    } catch (e) {
      if (e.name === "AbortError") throw e;
      body = null; // not JSON: fall back to the HTTP status below
    }
    if (!res.ok) {
      throw new ApiError(res.status, body?.error_code || `HTTP_${res.status}`,
        body?.message || res.statusText || "Request failed");
    }
    return body;
  }

  const api = (path, init = {}) => fetchJson(API + path, init);

  function errorBox(err, what) {
    let title;
    if (err.status === 404 || err.code === "RESOURCE_DOES_NOT_EXIST") title = `${what} not found`;
    else if (err.code === "NETWORK_ERROR") title = "Cannot reach the steppe server";
    else title = `Could not load ${what.toLowerCase()}`;
    return h("div", { class: "error", role: "alert", "data-testid": "error" },
      h("strong", null, title),
      err.message ? h("span", { class: "error-message" }, err.message) : null,
      err.code ? h("code", { class: "error-code" }, err.code) : null);
  }

  // ---------------------------------------------------------------- pages and routing

  /** What one page owns: its fetches, timers and listeners, all dropped when it is left. */
  class Page {
    constructor() {
      this.ctrl = new AbortController();
      this.alive = true;
      this.cleanups = [];
    }
    api(path, init = {}) {
      return api(path, { ...init, signal: this.ctrl.signal });
    }
    /** MLflow's REST API (/api/2.0/mlflow): the registry and LoggedModels live there. */
    mlflow(path, init = {}) {
      return fetchJson(MLFLOW_API + path, { ...init, signal: this.ctrl.signal });
    }
    later(fn, ms) {
      const t = setTimeout(() => this.alive && fn(), ms);
      this.cleanups.push(() => clearTimeout(t));
    }
    listen(target, type, fn) {
      target.addEventListener(type, fn);
      this.cleanups.push(() => target.removeEventListener(type, fn));
    }
    onDispose(fn) {
      this.cleanups.push(fn);
    }
    dispose() {
      this.alive = false;
      this.ctrl.abort();
      for (const fn of this.cleanups.splice(0)) {
        try { fn(); } catch (e) { console.warn("steppe: cleanup failed", e); } // keep tearing down
      }
    }
  }

  let page = null;

  function isAppPath(path) {
    return path === "/" || /^\/(experiments|runs|compare|sql|models|logged-models)(\/|$)/.test(path);
  }

  /** MLflow's UI routes on the hash (the links mlflow prints: /#/experiments/1/runs/ID);
   * the same place here, or null. */
  function fromMlflowHash(hash) {
    const [p, qs] = hash.replace(/^#/, "").split("?");
    const q = new URLSearchParams(qs || "");
    let m;
    if ((m = /^\/experiments\/[^/]+\/runs\/([^/]+)/.exec(p))) return `/runs/${m[1]}`;
    if ((m = /^\/experiments\/[^/]+\/models\/([^/]+)/.exec(p))) return `/logged-models/${m[1]}`;
    if ((m = /^\/experiments\/([^/]+)(\/(runs|experiment-page-tabs\/[^/]+)?)?\/?$/.exec(p))) return `/experiments/${m[1]}`;
    if (/^\/compare-runs\/?$/.test(p)) {
      // MLflow: runs=["a","b"]&experiments=["1"] (JSON lists). The compare page takes run ids.
      let runs = [];
      try { runs = JSON.parse(q.get("runs") || "[]"); } catch { runs = []; }
      const ids = (Array.isArray(runs) ? runs : []).filter((r) => typeof r === "string" && /^[A-Za-z0-9_-]+$/.test(r));
      return ids.length ? `/compare?runs=${ids.join(",")}` : "/compare";
    }
    if ((m = /^\/models\/([^/]+)\/versions\/([^/]+)/.exec(p))) return `/models/${m[1]}?version=${enc(decodeURIComponent(m[2]))}`;
    if ((m = /^\/models\/([^/]+)/.exec(p))) return `/models/${m[1]}`;
    if (/^\/models\/?$/.test(p)) return "/models";
    return null;
  }

  function route() {
    if (page) page.dispose();
    if (location.pathname === "/" && location.hash.startsWith("#/")) {
      let to = null;
      try { to = fromMlflowHash(location.hash); } catch (e) { if (!(e instanceof URIError)) throw e; }
      if (to) history.replaceState(null, "", to);
    }
    page = new Page();
    main.replaceChildren();
    const path = location.pathname.replace(/\/+$/, "") || "/";
    let m;
    try {
      if (path === "/" || path === "/experiments") return experimentsView(page);
      if ((m = /^\/experiments\/([^/]+)$/.exec(path))) return steppe.runsView(page, decodeURIComponent(m[1]));
      if ((m = /^\/runs\/([^/]+)$/.exec(path))) return runView(page, decodeURIComponent(m[1]));
      if (path === "/compare") return steppe.compareView(page);
      if (path === "/sql") return steppe.sqlView(page);
      if (path === "/models") return steppe.modelsView(page);
      if ((m = /^\/models\/([^/]+)$/.exec(path))) return steppe.registeredModelView(page, decodeURIComponent(m[1]));
      if ((m = /^\/logged-models\/([^/]+)$/.exec(path))) return steppe.loggedModelView(page, decodeURIComponent(m[1]));
    } catch (e) {
      if (!(e instanceof URIError)) throw e; // a malformed %-escape: nothing lives there either
    }
    setTitle("Not found");
    main.append(errorBox(new ApiError(404, null, `Nothing lives at ${location.pathname}.`), "Page"));
  }

  function navigate(href) {
    if (href !== location.pathname + location.search) history.pushState(null, "", href);
    route();
    window.scrollTo(0, 0);
  }

  /** Replace the query string of the current entry (sort order, filters) without a new entry. */
  function setQuery(params) {
    const q = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(params)) {
      if (v == null || v === "") q.delete(k);
      else q.set(k, v);
    }
    const s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? `?${s}` : ""));
  }

  document.addEventListener("click", (e) => {
    const a = e.target instanceof Element ? e.target.closest("a[href]") : null;
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    if (a.target && a.target !== "_self") return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || !isAppPath(url.pathname)) return;
    e.preventDefault();
    navigate(url.pathname + url.search);
  });
  window.addEventListener("popstate", route);

  // ---------------------------------------------------------------- sortable tables

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function numberLike(v) {
    if (typeof v === "number") return v;
    if (typeof v !== "string" || v.trim() === "") return null;
    const n = Number(v);
    return Number.isNaN(n) ? null : n;
  }

  const isBlank = (v) => v == null || v === "" || (typeof v === "number" && Number.isNaN(v));

  function compareValues(a, b) {
    const na = numberLike(a);
    const nb = numberLike(b);
    if (na !== null && nb !== null) return na === nb ? 0 : na < nb ? -1 : 1;
    return collator.compare(String(a), String(b));
  }

  function sortRows(rows, col, dir) {
    if (!col) return rows;
    return rows.map((row, i) => ({ row, i, v: col.get(row) })).sort((x, y) => {
      const bx = isBlank(x.v);
      const by = isBlank(y.v);
      if (bx || by) return bx === by ? x.i - y.i : bx ? 1 : -1; // blanks last, either direction
      return dir * compareValues(x.v, y.v) || x.i - y.i;
    }).map((x) => x.row);
  }

  /**
   * A table whose headers are buttons that sort it.
   * columns: [{id, label, get(row) -> sort value, cell(row) -> node or text, num, cls, title}]
   * groups: optional [{label, span, cls}] drawn as a header row above the columns.
   */
  function sortableTable({ testid, columns, groups, rows, sort, onSort, empty, rowAttrs }) {
    const head = h("tr", null, columns.map((c) => {
      const active = sort && sort.id === c.id;
      return h("th", {
        scope: "col",
        class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null,
        "aria-sort": active ? (sort.dir > 0 ? "ascending" : "descending") : null,
        "data-col": c.id,
        title: c.title,
      }, h("button", { type: "button", class: "sort", onclick: () => onSort(c.id) },
        h("span", { class: "label" }, c.label),
        h("span", { class: "arrow", "aria-hidden": "true" }, active ? (sort.dir > 0 ? "▲" : "▼") : "")));
    }));
    const col = sort ? columns.find((c) => c.id === sort.id) : null;
    const sorted = sortRows(rows, col, sort ? sort.dir : 1);
    const body = h("tbody", null, sorted.length ? sorted.map((row) => h("tr", rowAttrs ? rowAttrs(row) : null,
      columns.map((c) => h("td", { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null }, c.cell(row)))))
      : h("tr", { class: "empty" }, h("td", { colspan: columns.length }, empty)));
    return h("table", { class: "grid", "data-testid": testid },
      h("thead", null,
        groups ? h("tr", { class: "groups" }, groups.map((g) =>
          h("th", { colspan: g.span, scope: "colgroup", class: g.cls || null }, g.label))) : null,
        head),
      body);
  }

  /** Sort state kept in the URL (?sort=ID&dir=asc|desc) so a reload or a shared link keeps it. */
  function sortFromQuery(defaultSort) {
    const q = new URLSearchParams(location.search);
    const id = q.get("sort");
    return id ? { id, dir: q.get("dir") === "desc" ? -1 : 1 } : defaultSort;
  }

  function nextSort(sort, id, numericDesc) {
    if (sort && sort.id === id) return { id, dir: -sort.dir };
    return { id, dir: numericDesc ? -1 : 1 };
  }

  function refocusSortButton(container, id) {
    const btn = container.querySelector(`th[data-col="${CSS.escape(id)}"] button`);
    if (btn) btn.focus();
  }

  function crumbs(...items) {
    return h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "/" }, "Experiments"),
      items.map((item) => [h("span", { "aria-hidden": "true" }, "›"), item]));
  }

  function statusBadge(status, testid) {
    const s = String(status || "UNKNOWN");
    return h("span", { class: `status status-${s.toLowerCase()}`, "data-testid": testid || null }, s);
  }

  function timeCell(ms) {
    return ms == null ? "—" : h("time", { datetime: new Date(ms).toISOString(), title: fmtTime(ms) }, fmtAgo(ms));
  }

  // ---------------------------------------------------------------- experiments page

  function experimentsView(page) {
    setTitle("Experiments");
    const q0 = new URLSearchParams(location.search).get("q") || "";
    const search = h("input", {
      type: "search", class: "search", placeholder: "Filter by name", value: q0,
      "aria-label": "Filter experiments by name", "data-testid": "experiments-search",
    });
    const holder = h("div", { class: "table-wrap" }, loading());
    main.append(h("section", { class: "page" },
      h("div", { class: "page-head" }, h("h1", null, "Experiments"), h("span", { class: "spacer" }), search),
      holder));

    page.api("/experiments").then((data) => {
      const all = data.experiments || [];
      let sort = sortFromQuery(null);
      const columns = [
        { id: "name", label: "Name", get: (e) => e.name,
          cell: (e) => h("a", { href: `/experiments/${enc(e.experiment_id)}`, "data-testid": "experiment-link" }, e.name,
            e.lifecycle_stage && e.lifecycle_stage !== "active" ? h("span", { class: "tag-dim" }, e.lifecycle_stage) : null) },
        { id: "id", label: "ID", get: (e) => e.experiment_id, cell: (e) => h("code", null, e.experiment_id) },
        { id: "runs", label: "Runs", num: true, get: (e) => e.run_count, cell: (e) => e.run_count ?? "—" },
        { id: "activity", label: "Last activity", get: (e) => e.last_activity, cell: (e) => timeCell(e.last_activity) },
        { id: "created", label: "Created", get: (e) => e.creation_time, cell: (e) => timeCell(e.creation_time) },
      ];
      const render = () => {
        const needle = search.value.trim().toLowerCase();
        const rows = needle ? all.filter((e) => String(e.name).toLowerCase().includes(needle)) : all;
        holder.replaceChildren(sortableTable({
          testid: "experiments-table", columns, rows, sort,
          onSort: (id) => {
            sort = nextSort(sort, id, id !== "name" && id !== "id");
            setQuery({ sort: sort.id, dir: sort.dir > 0 ? "asc" : "desc" });
            render();
            refocusSortButton(holder, id);
          },
          empty: all.length ? `No experiment name contains “${search.value.trim()}”.` : "No experiments yet.",
          rowAttrs: (e) => ({ "data-experiment-id": e.experiment_id, class: e.lifecycle_stage === "deleted" ? "dim" : null }),
        }));
      };
      search.addEventListener("input", () => {
        setQuery({ q: search.value.trim() });
        render();
      });
      render();
    }, (err) => {
      if (page.alive) holder.replaceChildren(errorBox(err, "Experiments"));
    });
  }

  // ---------------------------------------------------------------- run page

  function runView(page, runId) {
    setTitle("Run");
    const root = h("section", { class: "page run-page" }, loading());
    main.append(root);
    page.api(`/runs/${enc(runId)}`).then((data) => {
      root.replaceChildren();
      new RunView(page, root, data.run); // eslint-disable-line no-new
    }, (err) => {
      if (!page.alive) return;
      setTitle("Run not found");
      root.replaceChildren(
        crumbs(),
        errorBox(err, "Run"));
    });
  }

  function kvTable(testid, entries, emptyText, cls) {
    return h("table", { class: `kv ${cls || ""}`.trim(), "data-testid": testid },
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Value"))),
      h("tbody", null, entries.length
        ? entries.map(([k, v]) => h("tr", { "data-key": k }, h("th", { scope: "row" }, k), h("td", null, v)))
        : h("tr", { class: "empty" }, h("td", { colspan: 2 }, emptyText))));
  }

  const MANY_KEYS = 200;     // more keys than this: only the first chart section starts open
  const SECTION_PAGE = 60;   // charts made per section before its "Show more"
  const prefixOf = (key) => {
    const at = key.indexOf("/");
    return at > 0 ? key.slice(0, at) : "";
  };
  // Sections in prefix order, keys without a prefix last.
  const prefixOrder = (a, b) => (a === "") - (b === "") || collator.compare(a, b);

  const byKey = (obj) => Object.entries(obj || {}).sort((a, b) => collator.compare(a[0], b[0]));

  class RunView {
    constructor(page, root, run) {
      this.page = page;
      this.runId = run.info.run_id;
      this.syncKey = `steppe-run-${this.runId}`;
      this.charts = new Map();
      this.status = null;
      this.paramsSig = this.tagsSig = null;

      this.expLink = h("a", { href: `/experiments/${enc(run.info.experiment_id)}` }, `Experiment ${run.info.experiment_id}`);
      this.nameEl = h("h1", { class: "run-name", "data-testid": "run-name" });
      this.statusEl = h("span", { class: "status-slot" });
      this.liveEl = h("span", { class: "live", hidden: true, title: "Refreshing every second while the run is running" }, "live");
      this.notice = h("div", { class: "notice", role: "status", "data-testid": "poll-error", hidden: true });
      this.overview = h("dl", { class: "overview", "data-testid": "run-overview" });
      this.description = h("p", { class: "description", hidden: true });
      this.paramsSlot = h("div", { class: "table-wrap" });
      this.tagsSlot = h("div", { class: "table-wrap" });
      this.systemTags = h("details", { class: "system-tags", "data-testid": "system-tags" });
      this.metricCount = h("span", { class: "muted" });
      this.filter = h("input", {
        type: "search", class: "search", placeholder: "Filter metrics", "aria-label": "Filter metrics by key",
        "data-testid": "metrics-search",
      });
      // Charts in sections by key prefix (train/, val/, system/; keys without one last), each
      // collapsible (closed ones in ?closed=); combined charts (several keys) on top.
      this.grid = h("div", { class: "chart-sections", "data-testid": "charts" });
      this.sections = new Map();
      this.closed = new Set(steppe.listParam("closed"));
      this.opened = new Set(steppe.listParam("open"));
      this.known = new Set();   // every key of the run; this.charts holds the ones made so far
      this.metricsNow = {};
      this.needle = "";
      this.manyKeys = null;
      this.combined = new Map(); // "a:b" -> chart
      this.keysList = h("datalist", { id: `keys-${this.runId}` });
      this.combineInput = h("input", {
        type: "text", id: `combine-${this.runId}`, class: "search combine-input", list: this.keysList.id, placeholder: "train/loss, val/loss",
        "aria-label": "Keys to draw in one chart, comma-separated", "data-testid": "combine-keys",
      });
      this.combineError = h("span", { class: "muted small", role: "status" });
      this.combineForm = h("form", { class: "inline-form combine-form", "data-testid": "combine-form" },
        h("label", { class: "tool-label", for: this.combineInput.id }, "One chart for"), this.combineInput,
        h("button", { type: "submit", class: "btn-small" }, "Add chart"), this.combineError, this.keysList);
      this.combineForm.addEventListener("submit", (e) => {
        e.preventDefault();
        this.addCombined(this.combineInput.value.split(",").map((k) => k.trim()).filter(Boolean), true);
      });
      this.combinedGrid = h("div", { class: "charts combined-charts", "data-testid": "combined-charts" });
      this.noMetrics = h("p", { class: "muted", hidden: true }, "No metrics logged yet.");
      this.models = steppe.RunModels ? new steppe.RunModels(page, run.info) : null; // models.js
      this.editor = steppe.RunEditor ? new steppe.RunEditor(page, this) : null; // manage.js
      this.head = h("div", { class: "page-head" }, this.nameEl, this.statusEl, this.liveEl);

      root.append(
        crumbs(this.expLink),
        this.head,
        this.notice,
        this.description,
        this.overview,
        h("div", { class: "panels" },
          h("section", { class: "panel" }, h("h2", null, "Parameters"), this.paramsSlot),
          h("section", { class: "panel" }, h("h2", null, "Tags"), this.tagsSlot, this.systemTags)),
        h("section", { class: "metrics" },
          h("div", { class: "section-head" },
            h("h2", null, "Metrics"), this.metricCount, h("span", { class: "spacer" }), this.filter),
          this.noMetrics,
          this.combineForm,
          this.combinedGrid,
          this.grid),
        this.models ? this.models.el : null,
        steppe.imagesSection ? steppe.imagesSection(page, this.runId) : null, // artifacts.js
        steppe.artifactsSection ? steppe.artifactsSection(page, this.runId) : null); // artifacts.js
      if (this.editor) this.editor.mount(this.head, this.description);

      // The charts (charts.js) load when they come near the viewport (a run can log hundreds of
      // keys), follow the window's width, and share the toolbar's smoothing, log y, x and zoom.
      this.chartGroup = new steppe.ChartGroup(page, { syncKey: this.syncKey });
      this.combineForm.before(this.chartGroup.toolbar);

      this.filter.addEventListener("input", () => this.applyFilter());

      page.api(`/experiments/${enc(run.info.experiment_id)}`).then((d) => {
        this.expLink.textContent = d.experiment.name;
      }, () => { /* the breadcrumb keeps the id; the run itself loaded fine */ });

      this.update(run);
      if (run.info.status === "RUNNING") this.page.later(() => this.poll(), POLL_MS);
    }

    update(run) {
      const info = run.info;
      const name = info.run_name || info.run_id;
      this.nameEl.textContent = name;
      setTitle(name);
      if (info.status !== this.status) {
        // autolog logs the model as the fit ends: look again once the run has ended.
        if (this.status === "RUNNING" && this.models) this.models.load();
        this.statusEl.replaceChildren(statusBadge(info.status, "run-status"));
        this.liveEl.hidden = info.status !== "RUNNING";
        this.status = info.status;
      }
      const tags = run.data?.tags || {};
      if (this.editor) this.editor.update(run); // the description as Markdown, rename, delete
      else {
        const note = tags["mlflow.note.content"];
        this.description.hidden = !note;
        this.description.textContent = note || "";
      }

      this.overview.replaceChildren(...[
        ["Run ID", h("code", { class: "select-all" }, info.run_id)],
        ["Status", info.status],
        ["Started", fmtTime(info.start_time)],
        ["Ended", info.end_time == null ? (info.status === "RUNNING" ? "running" : "—") : fmtTime(info.end_time)],
        ["Duration", fmtDuration(runDurationMs(info))],
        ["User", info.user_id || "—"],
        info.lifecycle_stage && info.lifecycle_stage !== "active" ? ["Lifecycle", info.lifecycle_stage] : null,
      ].filter(Boolean).map(([k, v]) => h("div", { class: "ov-item" }, h("dt", null, k), h("dd", null, v))));

      const params = byKey(run.data?.params);
      const pSig = JSON.stringify(params);
      if (pSig !== this.paramsSig) {
        this.paramsSig = pSig;
        this.paramsSlot.replaceChildren(kvTable("params-table", params, "No parameters."));
      }
      const all = byKey(tags);
      const tSig = JSON.stringify(all);
      if (tSig !== this.tagsSig) {
        this.tagsSig = tSig;
        const user = all.filter(([k]) => !SYSTEM_TAG.test(k));
        const system = all.filter(([k]) => SYSTEM_TAG.test(k));
        this.tagsSlot.replaceChildren(kvTable("tags-table", user, "No tags."));
        if (this.editor) this.editor.decorateTags(this.tagsSlot);
        // Only the contents change, so an opened section stays open across refreshes.
        this.systemTags.hidden = system.length === 0;
        this.systemTags.replaceChildren(
          h("summary", null, `System tags (${system.length})`),
          kvTable("system-tags-table", system, "", "dim"));
      }

      const metrics = run.data?.metrics || {};
      const keys = Object.keys(metrics).sort(collator.compare);
      this.metricsNow = metrics;
      this.metricCount.textContent = keys.length ? `${keys.length} key${keys.length === 1 ? "" : "s"}` : "";
      this.noMetrics.hidden = keys.length > 0;
      this.combineForm.hidden = keys.length < 2;
      if (this.manyKeys == null && keys.length) {
        // A run of thousands of keys (per-layer metrics) opens only its first section.
        this.manyKeys = keys.length > MANY_KEYS;
        this.firstPrefix = keys.map(prefixOf).sort(prefixOrder)[0];
      }
      const fresh = keys.filter((k) => !this.known.has(k));
      for (const key of fresh) {
        this.known.add(key);
        this.sectionFor(key);
      }
      for (const [key, chart] of this.charts) if (metrics[key]) chart.setSummary(metrics[key]);
      if (fresh.length) {
        this.keysList.replaceChildren(...keys.map((k) => h("option", { value: k })));
        if (!this.combinedRestored) {
          this.combinedRestored = true;
          for (const group of steppe.listParam("combine")) this.addCombined(group.split(":"), false);
        }
        this.applyFilter();
      }
    }

    /** The section of a key (its prefix before the first "/"), made on first use. */
    sectionFor(key) {
      const prefix = prefixOf(key);
      let sec = this.sections.get(prefix);
      if (!sec) {
        const name = prefix || "-";
        const grid = h("div", { class: "charts" });
        const count = h("span", { class: "muted" });
        const more = h("button", { type: "button", class: "btn-small section-more", "data-testid": "section-more", hidden: true });
        const byDefault = !this.manyKeys || prefix === this.firstPrefix;
        const open = this.opened.has(name) || (!this.closed.has(name) && byDefault);
        const el = h("details", { class: "chart-section", "data-testid": "chart-section", "data-prefix": prefix, open },
          h("summary", null, h("span", { class: "section-title" }, prefix ? `${prefix}/` : "other keys"), count), grid, more);
        sec = { el, grid, count, more, keys: [], limit: SECTION_PAGE };
        const section = sec;
        more.addEventListener("click", () => {
          section.limit += SECTION_PAGE;
          this.fillSection(section);
        });
        el.addEventListener("toggle", () => {
          if (el.open) this.fillSection(section); // a section's charts are made when it first opens
          // The URL names only the sections that differ from their default.
          this.closed.delete(name);
          this.opened.delete(name);
          if (el.open !== byDefault) (el.open ? this.opened : this.closed).add(name);
          steppe.setParams({ closed: [...this.closed].join(","), open: [...this.opened].join(",") });
        });
        this.sections.set(prefix, sec);
        const order = [...this.sections.keys()].sort(prefixOrder);
        this.grid.append(...order.map((p) => this.sections.get(p).el));
      }
      if (!sec.keys.includes(key)) {
        sec.keys.push(key);
        sec.keys.sort(collator.compare);
      }
      return sec;
    }

    matches(key) {
      return this.needle === "" || key.toLowerCase().includes(this.needle);
    }

    /** An open section's charts: the first `limit` keys that match the search, made on demand
     * (a run of 5,000 keys makes only what is shown), in key order; "Show more" for the rest. */
    fillSection(sec) {
      if (!sec.el.open) return;
      const matching = sec.keys.filter((k) => this.matches(k));
      const shown = matching.slice(0, sec.limit);
      const want = new Set(shown);
      for (const k of sec.keys) {
        const c = this.charts.get(k);
        if (c) c.el.hidden = !want.has(k);
      }
      const made = shown.filter((k) => !this.charts.has(k));
      for (const key of made) {
        const chart = this.chartGroup.chart({ title: key, series: [{ run_id: this.runId, key }] });
        if (this.metricsNow[key]) chart.setSummary(this.metricsNow[key]);
        this.charts.set(key, chart);
      }
      if (made.length) sec.grid.append(...shown.map((k) => this.charts.get(k).el));
      const rest = matching.length - shown.length;
      sec.more.hidden = rest <= 0;
      sec.more.textContent = `Show ${Math.min(rest, SECTION_PAGE)} more (${rest.toLocaleString("en-US")} not shown)`;
    }

    /** One chart drawing several of this run's keys (a colour each); kept in ?combine=a:b,c:d. */
    addCombined(keys, fromUser) {
      const known = keys.filter((k, i) => keys.indexOf(k) === i && this.known.has(k));
      const unknown = keys.filter((k) => !this.known.has(k));
      this.combineError.textContent = unknown.length ? `No key ${unknown.map((k) => `“${k}”`).join(", ")} in this run.` : "";
      if (known.length < 2) {
        if (fromUser && !unknown.length) this.combineError.textContent = "Name at least two keys.";
        return;
      }
      const id = known.join(":");
      if (this.combined.has(id)) return;
      const chart = this.chartGroup.chart({
        title: known.join(" + "), testid: `combined-${id}`,
        series: known.map((key, i) => ({ run_id: this.runId, key, label: key, color: steppe.runColor(i) })),
      });
      const remove = h("button", {
        type: "button", class: "chip-remove", "aria-label": `Remove the chart of ${known.join(", ")}`, title: "Remove this chart",
        "data-testid": "remove-combined",
        onclick: () => {
          this.chartGroup.remove(chart);
          this.combined.delete(id);
          steppe.setParams({ combine: [...this.combined.keys()].join(",") });
        },
      }, "×");
      chart.el.querySelector(".chart-head").append(remove);
      this.combined.set(id, chart);
      this.combinedGrid.append(chart.el);
      if (fromUser) this.combineInput.value = "";
      steppe.setParams({ combine: [...this.combined.keys()].join(",") });
    }

    applyFilter() {
      this.needle = this.filter.value.trim().toLowerCase();
      for (const sec of this.sections.values()) {
        const shown = this.needle === "" ? sec.keys.length : sec.keys.filter((k) => this.matches(k)).length;
        sec.el.hidden = shown === 0;
        sec.count.textContent = this.needle === "" ? `${sec.keys.length}` : `${shown} of ${sec.keys.length}`;
        if (this.needle !== "" && shown && !sec.el.open) sec.el.open = true; // a search shows what it found
        this.fillSection(sec);
      }
    }

    async refresh() {
      const data = await this.page.api(`/runs/${enc(this.runId)}`);
      if (!this.page.alive) return null;
      this.update(data.run);
      await Promise.all([...this.charts.values()].map((c) => c.load(false)));
      return data.run;
    }

    async poll() {
      let run = null;
      try {
        run = await this.refresh();
        if (!this.page.alive) return;
        this.notice.hidden = true;
      } catch (err) {
        if (!this.page.alive) return;
        this.notice.hidden = false;
        this.notice.textContent = `Refresh failed (${err.message}); retrying.`;
      }
      if (!run || run.info.status === "RUNNING") {
        this.page.later(() => this.poll(), run ? POLL_MS : POLL_MS * 3);
      } else {
        // A final look only; on failure the page still shows the ended run.
        this.page.later(() => this.refresh().catch(() => {}), FINAL_REFRESH_MS);
      }
    }
  }

  // ---------------------------------------------------------------- shared with the other scripts

  // charts.js, runs.js, compare.js and sql.js load after this file (index.html) and build on these;
  // they add their views (steppe.runsView, ...) to the same object.
  const steppe = window.steppe = {
    main, h, setTitle, loading, enc, toNumber, fmtValue, fmtTime, fmtAgo, fmtDuration, runDurationMs,
    ApiError, api, fetchJson, errorBox, navigate, collator, statusBadge, timeCell, crumbs, kvTable, byKey,
    SYSTEM_TAG,
  };

  // ---------------------------------------------------------------- start

  api("/server-info").then((info) => {
    const el = document.querySelector("[data-testid=server-info]");
    if (el && info?.version) el.textContent = `v${info.version}`;
  }, () => { /* decorative; pages report their own errors */ });

  // After every deferred script has run, so the views of the other files exist.
  document.addEventListener("DOMContentLoaded", route);
})();
