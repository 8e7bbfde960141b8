/* steppe web UI: the metric chart shared by the run and compare pages (uPlot), and the toolbar
   that drives all charts of a page: smoothing (EMA, or a mean over a window of the x axis that
   stays smooth on long series), log y, x by step / relative / wall time, zoom. A lone point is
   shown as its value; many overlaid runs draw their means bold over faint bands, and hovering
   brings one run forward.
   Every load asks the server for buckets of the visible range (POST /series, query/API.md) and
   draws the exact points whenever the window holds few enough; nothing here downsamples.
   Loaded after app.js, whose helpers it takes from window.steppe. */
(() => {
  "use strict";

  const S = window.steppe;
  const { h, toNumber, fmtValue, fmtTime } = S;

  const CHART_HEIGHT = 220;
  const Y_AXIS_PX = 56;           // rough width of the y axis, to ask for one bucket per plot pixel
  const MAX_BUCKETS = 10000;      // the series endpoint's limit
  const EXACT_POINTS = 2 * MAX_BUCKETS; // a window with at most this many points per series is drawn exactly
  const X_MODES = [["step", "Step"], ["relative", "Relative"], ["wall", "Wall time"]];
  const SMOOTH_MODES = [["window", "Window"], ["ema", "EMA"]];
  const WINDOW_SHARE = 0.1;       // at smoothing 0.99 the window spans ~10% of the visible x range
  const MANY_RUNS = 4;            // from this many series, means bold over faint bands
  const RELEASE_ABOVE = 120;      // a page with more charts frees those far out of view

  // Distinct on light and dark backgrounds and in the common colour-vision deficiencies (mostly
  // Okabe-Ito and Tableau hues), in the order runs get them.
  const PALETTE = ["#2f6fdb", "#e8710a", "#12a150", "#d6336c", "#8e5cd9", "#0f9fb0",
    "#b8860b", "#c0392b", "#5d7290", "#ff6f91", "#2e8b57", "#a0522d"];

  const runColor = (i) => PALETTE[i % PALETTE.length];
  const plural = (n, word) => `${n.toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;

  function withAlpha(color, alpha) {
    const m = /^#([0-9a-f]{6})$/i.exec(color);
    if (!m) return color;
    const n = parseInt(m[1], 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  function cssVar(name, fallback) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
  }

  function chartTheme() {
    return {
      line: cssVar("--chart-line", "#2f6fdb"),
      axis: cssVar("--chart-axis", "#5b6470"),
      grid: cssVar("--chart-grid", "rgba(0,0,0,.07)"),
      font: `11px ${cssVar("--font-sans", "system-ui, sans-serif")}`,
    };
  }

  // ---------------------------------------------------------------- URL state

  /** Set query parameters of the current history entry, keeping the others; commas, slashes and
   * colons stay readable (lists of run ids and keys live in the URL). null or "" removes one. */
  function setParams(params) {
    const q = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(params)) {
      if (v == null || v === "") q.delete(k);
      else q.set(k, String(v));
    }
    const s = queryString(q);
    history.replaceState(history.state, "", location.pathname + (s ? `?${s}` : ""));
  }

  /** URLSearchParams as a query string that keeps commas, slashes and colons readable. */
  function queryString(q) {
    const enc = (s) => encodeURIComponent(s).replace(/%2C/gi, ",").replace(/%2F/gi, "/").replace(/%3A/gi, ":");
    return [...q].map(([k, v]) => `${enc(k)}=${enc(v)}`).join("&");
  }

  function listParam(name) {
    const v = new URLSearchParams(location.search).get(name);
    return v ? v.split(",").filter(Boolean) : [];
  }

  function readChartState() {
    const q = new URLSearchParams(location.search);
    const x = X_MODES.some(([id]) => id === q.get("x")) ? q.get("x") : "step";
    const smooth = Math.min(0.99, Math.max(0, Number(q.get("smooth")) || 0));
    const z = (q.get("zoom") || "").split(",").map(Number);
    const zoom = z.length === 2 && z.every(Number.isFinite) && z[0] < z[1] ? z : null;
    const smode = SMOOTH_MODES.some(([id]) => id === q.get("smode")) ? q.get("smode") : "ema";
    return { x, smooth, smode, logy: q.get("logy") === "1", zoom };
  }

  function postJson(page, path, body) {
    return page.api(path, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  // ---------------------------------------------------------------- numbers on axes

  const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 2 });
  const grouped = new Intl.NumberFormat("en-US", { maximumFractionDigits: 3 });

  // Steps are integers: x ticks at 1, 2, 5 x 10^k only, never 2.5.
  const STEP_INCRS = [];
  for (let e = 0; e <= 15; e++) for (const m of [1, 2, 5]) STEP_INCRS.push(m * 10 ** e);
  const SEC = 1000, MIN = 60 * SEC, HOUR = 60 * MIN, DAY = 24 * HOUR;
  const REL_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, SEC, 2 * SEC, 5 * SEC, 10 * SEC, 15 * SEC,
    30 * SEC, MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR,
    12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 90 * DAY, 365 * DAY];

  const fmtStepTick = (v) => (Math.abs(v) >= 1e4 ? compact.format(v) : String(v));

  /** A relative time: "0", "850ms", "12.5s", "3m 20s", "2h 05m", "1d 4h". */
  function fmtRel(ms) {
    if (ms == null) return "—";
    const sign = ms < 0 ? "−" : "";
    const a = Math.abs(ms);
    if (a === 0) return "0";
    if (a < SEC) return `${sign}${Math.round(a)}ms`;
    if (a < MIN) return `${sign}${Number((a / SEC).toFixed(a < 10 * SEC ? 2 : 1))}s`;
    const pad = (n) => String(Math.floor(n)).padStart(2, "0");
    if (a < HOUR) return `${sign}${Math.floor(a / MIN)}m${a % MIN ? ` ${pad((a % MIN) / SEC)}s` : ""}`;
    if (a < DAY) return `${sign}${Math.floor(a / HOUR)}h${a % HOUR ? ` ${pad((a % HOUR) / MIN)}m` : ""}`;
    return `${sign}${Math.floor(a / DAY)}d${a % DAY ? ` ${Math.floor((a % DAY) / HOUR)}h` : ""}`;
  }

  function fmtX(mode, v) {
    if (v == null) return "—";
    if (mode === "wall") return fmtTime(v);
    if (mode === "relative") return `+${fmtRel(v)}`;
    return `step ${grouped.format(v)}`;
  }

  function axisSize(u, values, axisIdx, cycleNum) {
    if (!values || cycleNum > 1) return Y_AXIS_PX;
    const longest = values.reduce((m, v) => Math.max(m, String(v).length), 0);
    return Math.max(40, Math.ceil(longest * 6.5) + 18);
  }

  /** Exponential moving average with TensorBoard's debiasing (the first points are not pulled
   * towards 0). Gaps stay gaps. */
  function ema(ys, weight) {
    const out = new Array(ys.length);
    let last = 0;
    let n = 0;
    for (let i = 0; i < ys.length; i++) {
      const y = ys[i];
      if (y == null) {
        out[i] = null;
        continue;
      }
      last = last * weight + (1 - weight) * y;
      n++;
      out[i] = last / (1 - weight ** n);
    }
    return out;
  }

  /** The weighted mean of the points whose x lies within ±half of each point's x (xs sorted):
   * O(n) with two moving edges. Weights are bucket counts (1 for exact points); gaps stay gaps.
   * On the x axis, not per point: uneven logging or time gaps do not skew it. */
  function windowMean(xs, ys, weights, half) {
    const n = ys.length;
    const out = new Array(n).fill(null);
    let lo = 0;
    let hi = 0;
    let sum = 0;
    let wsum = 0;
    for (let i = 0; i < n; i++) {
      if (ys[i] == null) continue;
      const x = xs[i];
      while (hi < n && xs[hi] <= x + half) {
        if (ys[hi] != null) {
          const w = weights ? weights[hi] || 0 : 1;
          sum += ys[hi] * w;
          wsum += w;
        }
        hi++;
      }
      while (lo < n && xs[lo] < x - half) {
        if (ys[lo] != null) {
          const w = weights ? weights[lo] || 0 : 1;
          sum -= ys[lo] * w;
          wsum -= w;
        }
        lo++;
      }
      out[i] = wsum > 0 ? sum / wsum : ys[i];
    }
    return out;
  }

  // ---------------------------------------------------------------- a page's charts

  let groupSeq = 0;

  /**
   * The charts of one page and their shared state (x mode, smoothing, log y, zoom), kept in the
   * URL. Charts load when they come near the viewport and follow their container's width.
   *   const group = new ChartGroup(page); parent.append(group.toolbar);
   *   const chart = group.chart({title: "loss", series: [{run_id, key: "loss"}]}); grid.append(chart.el);
   */
  class ChartGroup {
    constructor(page, opts = {}) {
      this.page = page;
      this.state = readChartState();
      this.syncKey = opts.syncKey || `steppe-charts-${++groupSeq}`;
      this.charts = new Set();
      this.byEl = new WeakMap();
      this.io = new IntersectionObserver((entries) => {
        for (const e of entries) this.byEl.get(e.target)?.setVisible(e.isIntersecting);
      }, { rootMargin: "300px 0px" });
      let frame = 0;
      // In a frame of its own: resizing a chart inside the callback would re-trigger it.
      this.ro = new ResizeObserver(() => {
        cancelAnimationFrame(frame);
        frame = requestAnimationFrame(() => this.charts.forEach((c) => c.resize()));
      });
      page.onDispose(() => {
        cancelAnimationFrame(frame);
        clearTimeout(this.urlTimer);
        this.io.disconnect();
        this.ro.disconnect();
        for (const c of this.charts) c.destroy();
        this.charts.clear();
      });
      this.toolbar = this.buildToolbar();
      this.toolbar.hidden = true; // until there is a chart to drive
      this.showZoom();
    }

    chart(spec) {
      const c = new MetricChart(this, spec);
      this.charts.add(c);
      this.byEl.set(c.el, c);
      this.io.observe(c.el);
      this.ro.observe(c.plot);
      this.toolbar.hidden = false;
      // The observer reports after the next frame; a chart the caller puts in view right away
      // starts its request now (a microtask: after the caller has inserted it).
      queueMicrotask(() => {
        if (c.visible || !c.el.isConnected || c.el.hidden || !this.page.alive) return;
        const r = c.el.getBoundingClientRect();
        if (r.bottom > -300 && r.top < window.innerHeight + 300 && r.width > 0) c.setVisible(true);
      });
      return c;
    }

    remove(c) {
      this.io.unobserve(c.el);
      this.ro.unobserve(c.plot);
      this.charts.delete(c);
      c.destroy();
      c.el.remove();
      this.toolbar.hidden = this.charts.size === 0;
    }

    /** Reload every chart (a poll: shares requests already in flight). */
    refresh() {
      return Promise.all([...this.charts].map((c) => c.load(false)));
    }

    writeUrl() {
      // Dragging the smoothing slider fires many events; the URL follows once it settles.
      clearTimeout(this.urlTimer);
      this.urlTimer = setTimeout(() => {
        if (!this.page.alive) return;
        const st = this.state;
        setParams({
          x: st.x === "step" ? null : st.x,
          smooth: st.smooth ? st.smooth.toFixed(2) : null,
          smode: st.smode === "ema" ? null : st.smode,
          logy: st.logy ? "1" : null,
          zoom: st.zoom ? st.zoom.join(",") : null,
        });
      }, 150);
    }

    setZoom(zoom) {
      this.state.zoom = zoom;
      this.writeUrl();
      this.showZoom();
      for (const c of this.charts) c.zoomChanged();
    }

    setX(mode) {
      if (mode === this.state.x) return;
      this.state.x = mode;
      this.state.zoom = null; // a step range means nothing on a time axis
      this.writeUrl();
      this.showZoom();
      for (const c of this.charts) c.reset();
    }

    setSmoothing(w) {
      this.state.smooth = w;
      this.smoothOut.textContent = w.toFixed(2);
      this.writeUrl();
      for (const c of this.charts) c.redraw();
    }

    setSmoothMode(mode) {
      this.state.smode = mode;
      this.writeUrl();
      for (const c of this.charts) c.redraw();
    }

    setLogY(on) {
      this.state.logy = on;
      this.writeUrl();
      for (const c of this.charts) c.redraw();
    }

    showZoom() {
      const z = this.state.zoom;
      this.resetBtn.hidden = !z;
      this.zoomLabel.textContent = z ? `${fmtX(this.state.x, z[0])} – ${fmtX(this.state.x, z[1]).replace(/^step /, "")}` : "";
    }

    buildToolbar() {
      const st = this.state;
      const id = `smooth-${groupSeq}`;
      const smooth = h("input", {
        type: "range", id, min: "0", max: "0.99", step: "0.01", value: String(st.smooth),
        "data-testid": "smoothing", "aria-describedby": `${id}-out`,
        title: "How much to smooth: the smoothed line is drawn over the faded raw one",
      });
      smooth.addEventListener("input", () => this.setSmoothing(Number(smooth.value)));
      const smode = h("select", {
        class: "select select-small", "aria-label": "Smoothing method", "data-testid": "smoothing-mode",
        title: "Window: the mean over a window of the x axis (up to 10% of the visible range), smooth on long series. EMA: exponential moving average per point, as TensorBoard.",
      }, SMOOTH_MODES.map(([v, label]) => h("option", { value: v, selected: st.smode === v }, label)));
      smode.addEventListener("change", () => this.setSmoothMode(smode.value));
      this.smoothOut = h("output", { id: `${id}-out`, for: id, class: "mono smooth-out" }, st.smooth.toFixed(2));

      const logy = h("input", { type: "checkbox", "data-testid": "log-y", checked: st.logy });
      logy.addEventListener("change", () => this.setLogY(logy.checked));

      const name = `xmode-${groupSeq}`;
      const modes = X_MODES.map(([value, label]) => {
        const input = h("input", { type: "radio", name, value, checked: st.x === value, "data-testid": `x-${value}` });
        input.addEventListener("change", () => input.checked && this.setX(value));
        return h("label", { class: "seg" }, input, h("span", null, label));
      });

      this.zoomLabel = h("span", { class: "zoom-label muted", "data-testid": "zoom-range" });
      this.resetBtn = h("button", {
        type: "button", class: "btn-small", "data-testid": "reset-zoom", hidden: true,
        title: "Show the whole range (or double-click a chart)", onclick: () => this.setZoom(null),
      }, "Reset zoom");

      return h("div", { class: "chart-toolbar", role: "toolbar", "aria-label": "Chart options", "data-testid": "chart-toolbar" },
        h("span", { class: "tool" }, h("label", { class: "tool-label", for: id }, "Smoothing"), smode, smooth, this.smoothOut),
        h("label", { class: "tool" }, logy, h("span", null, "Log y")),
        h("div", { class: "tool segmented", role: "radiogroup", "aria-label": "X axis" },
          h("span", { class: "tool-label" }, "X axis"), modes),
        h("span", { class: "spacer" }),
        this.zoomLabel, this.resetBtn,
        h("span", { class: "tool-hint muted" }, "Drag to zoom, double-click to reset"));
    }
  }

  // ---------------------------------------------------------------- one chart

  /**
   * One metric chart: one or more series ({run_id, key, label, color}) overlaid; exact points, or
   * per-bucket mean with the exact min-max band when the window holds too many points.
   */
  class MetricChart {
    constructor(group, { title, series, testid }) {
      this.group = group;
      this.title = title;
      this.sources = series;
      this.u = null;
      this.shape = null;      // what the uPlot instance was built for; another shape rebuilds it
      this.result = null;     // the last answer, redrawn when smoothing or log-y change
      this.layout = [];
      this.visible = false;
      this.stale = true;      // needs a load the next time it is visible
      this.seq = 0;           // answers to older requests are dropped
      this.inflight = null;
      this.loadedBuckets = 0;
      this.exactHint = 0;     // buckets that gave exact points for this window last time
      this.hintWindow = null;
      this.count = null;
      this.draws = 0;

      this.latest = h("span", { class: "chart-latest", "data-testid": "chart-latest" });
      this.meta = h("span", { class: "chart-meta", "data-testid": "chart-meta" });
      this.plot = h("div", { class: "chart-plot" });
      this.legend = h("div", { class: "chart-legend", "data-testid": "chart-legend", "aria-live": "off" });
      this.msg = h("div", { class: "chart-msg", role: "status" }, "Loading…");
      this.single = h("div", { class: "chart-single", hidden: true });
      this.el = h("section", {
        class: "chart-card", "data-testid": testid || `chart-${title}`, "data-key": title, "aria-label": `Metric ${title}`,
      },
        h("header", { class: "chart-head" },
          h("h3", { class: "chart-title", title }, title),
          this.latest, h("span", { class: "spacer" }), this.meta),
        this.plot, this.single, this.legend, this.msg);
      Object.defineProperty(this.el, "steppeChart", { value: this }); // for tests and benchmarks
    }

    /** The run page's latest value for this key ({value, step, min, max, count}). */
    setSummary(m) {
      this.count = m.count ?? null;
      this.latest.textContent = `${fmtValue(m.value)} @ ${m.step}`;
      this.latest.title = `latest value, at step ${m.step}` +
        (m.min !== undefined ? `; min ${fmtValue(m.min)}, max ${fmtValue(m.max)}` : "") +
        (m.count != null ? `; ${m.count} points` : "");
    }

    /** Compare page: the series drawn (runs that have the key), with their labels and colours. */
    setSources(series) {
      const sig = (list) => JSON.stringify(list.map((s) => [s.run_id, s.key, s.label, s.color]));
      if (sig(series) === sig(this.sources)) return;
      const sameData = JSON.stringify(series.map((s) => [s.run_id, s.key])) ===
        JSON.stringify(this.sources.map((s) => [s.run_id, s.key]));
      this.sources = series;
      if (sameData) this.redraw();
      else this.reset();
    }

    setVisible(v) {
      this.visible = v;
      if (v && this.stale) this.load(true).catch(() => {});
      else if (v) this.updateLegend(this.u);
      else if (this.group.charts.size > RELEASE_ABOVE) this.release();
    }

    /** Out of view on a page of many charts: drop the plot and the data (memory stays bounded
     * by what is near the viewport); the next time it shows it loads again. */
    release() {
      this.seq++; // also an answer still on its way: it would draw a chart no one sees
      this.inflight = null;
      if (this.u) this.u.destroy();
      this.u = null;
      this.shape = null;
      this.result = null;
      this.stale = true;
    }

    width() {
      return Math.max(160, Math.floor(this.plot.clientWidth));
    }

    pixelBuckets() {
      return Math.min(MAX_BUCKETS, Math.max(10, this.width() - Y_AXIS_PX));
    }

    request(buckets) {
      const st = this.group.state;
      // grid "aligned": 2^k-step buckets, served from the files' pre-aggregated tiers (x = step).
      const body = { series: this.sources.map((s) => ({ run_id: s.run_id, key: s.key })), buckets, x: st.x, grid: "aligned" };
      if (st.zoom) {
        body.x_min = st.zoom[0];
        body.x_max = st.zoom[1];
      }
      return postJson(this.group.page, "/series", body);
    }

    /** One answer for the current window: bucketed at one bucket per pixel, or, when the window
     * holds at most EXACT_POINTS points per series, every point (asked again with enough buckets). */
    async fetchWindow(seq) {
      const st = this.group.state;
      const win = `${st.x}|${st.zoom}`;
      if (win !== this.hintWindow) {
        this.hintWindow = win;
        this.exactHint = 0;
      }
      let buckets = Math.max(this.pixelBuckets(), this.exactHint);
      // A zoom into data drawn bucketed: the buckets say how many points the window holds, so
      // when that is few enough, ask for every point at once rather than after a bucketed answer.
      const guess = this.exactHint ? 0 : this.pointsIn(st.zoom);
      if (guess > 0 && guess <= EXACT_POINTS) buckets = Math.min(MAX_BUCKETS, Math.max(buckets, Math.ceil((guess * 1.05) / 2) + 8));
      let r = await this.request(buckets);
      if (seq !== this.seq) return null;
      let need = 0;
      for (const e of r.series) {
        if (e.bucketed) need = Math.max(need, (e.count || []).reduce((a, b) => a + b, 0));
      }
      if (need > 0 && need <= EXACT_POINTS) {
        // 2 x buckets >= points makes the answer exact; a little room for a live run's growth.
        buckets = Math.min(MAX_BUCKETS, Math.ceil((need * 1.02) / 2) + 8);
        this.exactHint = buckets;
        r = await this.request(buckets);
        if (seq !== this.seq) return null;
      } else if (need > EXACT_POINTS) {
        this.exactHint = 0;
      }
      this.loadedBuckets = buckets;
      return r;
    }

    /** Points per series (the most of any) inside [lo, hi] by the buckets drawn now, or 0. */
    pointsIn(zoom) {
      if (!zoom || !this.result) return 0;
      let most = 0;
      for (const e of this.result.series) {
        if (!e.bucketed) return 0; // exact already: the usual path knows
        const xs = e.x || [];
        let n = 0;
        for (let i = 0; i < xs.length; i++) {
          const next = i + 1 < xs.length ? xs[i + 1] : Infinity;
          if (next > zoom[0] && xs[i] <= zoom[1]) n += e.count[i]; // buckets overlapping the window
        }
        most = Math.max(most, n);
      }
      return most;
    }

    /** force: a new request even when one is in flight (zoom, resize); polls share the one in flight. */
    load(force) {
      if (!this.visible || this.sources.length === 0) {
        this.stale = this.sources.length > 0;
        if (!this.sources.length) this.showMessage("No run has this key.", false);
        return Promise.resolve();
      }
      if (this.inflight && !force) return this.inflight;
      this.stale = false;
      const seq = ++this.seq;
      const started = performance.now();
      const p = this.fetchWindow(seq).then((r) => {
        if (!r || seq !== this.seq || !this.group.page.alive) return;
        this.result = r;
        this.draw();
        this.el.dataset.loadMs = String(Math.round(performance.now() - started));
      }, (err) => {
        if (seq !== this.seq || !this.group.page.alive || err.name === "AbortError") return;
        this.stale = true;
        this.showMessage(`${err.message}${err.code ? ` (${err.code})` : ""}`, true);
      }).finally(() => {
        if (this.inflight === p) this.inflight = null;
      });
      this.inflight = p;
      return p;
    }

    showMessage(text, isError) {
      this.msg.hidden = !text;
      this.msg.textContent = text || "";
      this.msg.classList.toggle("chart-error", !!isError);
      if (isError) this.msg.setAttribute("data-testid", "chart-error");
      else this.msg.removeAttribute("data-testid");
    }

    /** Another window (zoom): show the range at once with the data we have, finer data follows. */
    zoomChanged() {
      const z = this.group.state.zoom;
      if (this.u && z) this.u.setScale("x", { min: z[0], max: z[1] });
      this.load(true).catch(() => {});
    }

    /** Another x axis or other series: the old answer does not fit any more. */
    reset() {
      this.result = null;
      this.seq++; // drop answers in flight
      this.inflight = null;
      if (this.u) this.u.destroy();
      this.u = null;
      this.shape = null;
      this.showMessage("Loading…", false);
      this.load(true).catch(() => {});
    }

    redraw() {
      if (this.result) this.draw();
    }

    /** Per series: x, the drawn value (exact value or bucket mean), min/max when bucketed, smoothed. */
    columns() {
      const st = this.group.state;
      let gaps = 0;
      let nonPositive = 0;
      const clean = (arr, counted) => (arr || []).map((v) => {
        const n = toNumber(v);
        if (!Number.isFinite(n)) {
          if (counted) gaps++;
          return null;
        }
        if (st.logy && n <= 0) {
          if (counted) nonPositive++;
          return null;
        }
        return n;
      });
      const cols = this.result.series.map((e, i) => {
        const xs = (e.x || []).map(Number);
        const col = { src: this.sources[i] || {}, entry: e, xs, bucketed: !!e.bucketed };
        if (e.bucketed) {
          col.mid = clean(e.mean, true);
          col.lo = clean(e.min);
          col.hi = clean(e.max);
          col.points = (e.count || []).reduce((a, b) => a + b, 0);
        } else {
          col.mid = clean(e.value, true);
          col.points = xs.length;
        }
        col.smooth = null;
        if (st.smooth > 0) {
          if (st.smode === "window") {
            const span = xs.length ? xs[xs.length - 1] - xs[0] : 0;
            const half = (span * WINDOW_SHARE * st.smooth) / 2;
            col.smooth = windowMean(xs, col.mid, e.bucketed ? e.count : null, half);
          } else {
            col.smooth = ema(col.mid, st.smooth);
          }
        }
        return col;
      });
      return { cols, gaps, nonPositive };
    }

    draw() {
      const st = this.group.state;
      const { cols, gaps, nonPositive } = this.columns();
      const t = chartTheme();
      const smoothing = st.smooth > 0;
      const many = cols.length >= MANY_RUNS;
      const tables = [];
      const series = [{}];
      const bands = [];
      const layout = [];
      let idx = 1;
      for (const col of cols) {
        const color = col.src.color || t.line;
        const lay = { col, color };
        const table = [col.xs];
        if (col.bucketed) {
          // With many runs the bands overlap: faint, and no edges, so the means stay readable.
          const edge = { stroke: withAlpha(color, many ? 0 : 0.35), width: 1, points: { show: false } };
          table.push(col.hi, col.lo);
          series.push({ ...edge, label: "max" }, { ...edge, label: "min" });
          bands.push({ series: [idx, idx + 1], fill: withAlpha(color, many ? 0.05 : 0.15) });
          lay.hi = idx;
          lay.lo = idx + 1;
          idx += 2;
        }
        table.push(col.mid);
        series.push({
          label: col.bucketed ? "mean" : "value",
          stroke: smoothing ? withAlpha(color, 0.22) : color,
          width: smoothing ? 1 : many && col.bucketed ? 2 : 1.5,
          // Markers once points (or buckets) are at least 6 px apart: isolated points between NaN
          // gaps, or a lone bucket, stay visible.
          points: smoothing ? { show: false } : { size: 5, space: 6, fill: color },
        });
        lay.mid = idx++;
        if (col.smooth) {
          table.push(col.smooth);
          series.push({ label: "smoothed", stroke: color, width: 2, points: { show: false } });
          lay.sm = idx++;
        }
        tables.push(table);
        layout.push(lay);
      }
      // One x array for all: runs log at different steps and times; the values a series does not
      // have at an x are undefined, which uPlot spans (null stays a gap: NaN/inf).
      const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
      this.layout = layout;

      // One point in all (a final score): its value, not a dot on a made-up axis.
      const lone = cols.length === 1 && !st.zoom && !cols[0].bucketed && cols[0].xs.length === 1 && cols[0].mid[0] != null;
      this.plot.hidden = lone;
      this.single.hidden = !lone;
      if (lone) {
        this.single.replaceChildren(
          h("span", { class: "single-value", "data-testid": "single-value" }, fmtValue(cols[0].entry.value[0])),
          h("span", { class: "muted" }, ` at ${fmtX(st.x, cols[0].xs[0])}`));
        this.el.dataset.mode = "single";
        this.el.dataset.points = "1";
        this.meta.textContent = "1 point";
        this.showMessage("", false);
        if (this.u) this.u.destroy();
        this.u = null;
        this.shape = null;
        return;
      }

      const shape = JSON.stringify([st.x, st.logy, smoothing, many, cols.map((c) => [c.bucketed, c.src.color || ""])]);
      if (!this.u || shape !== this.shape) this.create(series, bands, data);
      else this.u.setData(data);
      this.shape = shape;

      const bucketed = cols.some((c) => c.bucketed);
      const drawn = cols.reduce((a, c) => a + c.xs.length, 0);
      const points = cols.reduce((a, c) => a + c.points, 0);
      this.el.dataset.mode = bucketed ? "bucketed" : "exact";
      this.el.dataset.points = String(points);
      this.el.dataset.drawnPoints = String(drawn);
      // The highest value drawn (band top when bucketed): a spike must never vanish.
      let top = -Infinity;
      for (const c of cols) for (const v of c.hi || c.mid) if (v != null && v > top) top = v;
      this.el.dataset.yMax = Number.isFinite(top) ? String(top) : "";
      const n = (v) => v.toLocaleString("en-US");
      const per = cols.length > 1 ? " (all runs)" : "";
      this.meta.textContent = (bucketed
        ? `mean, min–max · ${plural(Math.max(...cols.map((c) => c.xs.length)), "bucket")} of ${n(points)} points${per}`
        : `${plural(points, "point")}${per}`) +
        (gaps ? ` · ${n(gaps)} NaN/∞ not drawn` : "") +
        (nonPositive ? ` · ${n(nonPositive)} ≤ 0 not on log scale` : "");
      this.meta.title = bucketed
        ? "Too many points for one per pixel: the line is each bucket's mean, the band its exact min and max."
        : "Every logged point in the window.";
      this.showMessage(drawn ? "" : (st.zoom ? "No points in this range." : "No points yet."), false);
      this.updateLegend(this.u);
    }

    xRange(min, max) {
      const z = this.group.state.zoom;
      if (z) return [z[0], z[1]];
      if (min == null || max == null || !Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
      if (min === max) {
        const pad = this.group.state.x === "step" ? 1 : SEC;
        return [min - pad, max + pad];
      }
      return [min, max];
    }

    create(series, bands, data) {
      if (this.u) this.u.destroy();
      const st = this.group.state;
      const t = chartTheme();
      const axis = {
        stroke: t.axis, font: t.font, grid: { stroke: t.grid, width: 1 }, ticks: { stroke: t.grid, width: 1, size: 4 },
      };
      const xAxis = { ...axis, size: st.x === "wall" ? 46 : 32 }; // time ticks may take two lines
      if (st.x === "step") {
        xAxis.incrs = STEP_INCRS;
        xAxis.values = (u, splits) => splits.map(fmtStepTick);
      } else if (st.x === "relative") {
        xAxis.incrs = REL_INCRS;
        xAxis.values = (u, splits) => splits.map(fmtRel);
      }
      // The hover dot marks the line a reader follows: the smoothed one when smoothing.
      const dotted = new Set(this.layout.map((l) => l.sm ?? l.mid));
      const dotColor = series.map((s) => s.stroke); // before uPlot takes the series over
      const opts = {
        width: this.width(),
        height: CHART_HEIGHT,
        ms: 1, // wall-time x values are milliseconds
        series,
        bands,
        legend: { show: false },
        // Hover brings the nearest series forward and dims the rest (many overlaid runs).
        focus: { alpha: this.sources.length > 1 ? 0.25 : 1 },
        scales: {
          x: { time: st.x === "wall", range: (u, min, max) => this.xRange(min, max) },
          y: st.logy ? { distr: 3, log: 10 } : {},
        },
        axes: [xAxis, { ...axis, size: axisSize, values: (u, splits) => splits.map((v) => fmtValue(v)) }],
        cursor: {
          // Hover is shared across the page's charts; drags and double-clicks zoom the whole page.
          // Match x by value; y by relative position, since each chart has its own y scale.
          sync: {
            key: this.group.syncKey,
            setSeries: false,
            scales: ["x", null],
            filters: { pub: (type) => type === "mousemove" || type === "mouseleave" || type === "mouseenter" },
          },
          drag: { x: true, y: false, setScale: false },
          focus: { prox: this.sources.length > 1 ? 24 : -1 },
          // Hover finds each series' nearest drawn point, skipping the holes of the joined x array.
          hover: { skip: [undefined, null] },
          points: {
            show: (u, si) => (dotted.has(si) ? document.createElement("div") : null),
            size: 7,
            fill: (u, si) => dotColor[si] || t.line,
          },
          bind: {
            dblclick: () => (e) => {
              if (e.button === 0) this.group.setZoom(null);
              return null;
            },
          },
        },
        hooks: {
          setSelect: [(u) => this.onSelect(u)],
          setCursor: [(u) => this.updateLegend(u)],
          setSeries: [(u, si) => this.onFocus(si)],
          draw: [() => this.onDrawn()],
        },
      };
      this.u = new uPlot(opts, data, this.plot);
    }

    /** The run whose series the cursor is nearest: its legend row marked, the card says which. */
    onFocus(si) {
      const lay = si == null ? null : this.layout.find((l) => [l.mid, l.sm, l.hi, l.lo].includes(si));
      const id = lay ? lay.col.src.run_id || "" : "";
      if (id) this.el.dataset.focusedRun = id;
      else delete this.el.dataset.focusedRun;
      for (const row of this.legend.children) row.classList.toggle("focused", !!id && row.dataset.runId === id);
    }

    onDrawn() {
      this.draws++;
      this.el.dataset.draws = String(this.draws);
      if (this.draws === 1 && this.result) {
        // For the record: ms since navigation start when this chart first showed data.
        this.el.dataset.drawnMs = String(Math.round(performance.now()));
        performance.mark(`steppe:chart-drawn:${this.title}`);
      }
    }

    /** One row per series: its value at the cursor (each series' nearest point), else its newest. */
    updateLegend(u) {
      if (!u || !this.result) return;
      // Hover is synced to every chart of the page: only charts near the viewport do the work.
      if (!this.visible && this.legendFor === this.layout) return;
      if (this.legendFor !== this.layout) {
        this.legendFor = this.layout;
        this.legendRows = this.layout.map((lay) => {
          const value = h("span", { class: "legend-value" });
          const x = h("span", { class: "legend-x muted" });
          const label = lay.col.src.label;
          return {
            value, x,
            el: h("div", { class: "legend-row", "data-run-id": lay.col.src.run_id || null },
              h("span", { class: "swatch", style: `background:${lay.color}`, "aria-hidden": "true" }),
              label ? h("span", { class: "legend-label", title: label }, label) : null, value, x),
          };
        });
        this.legend.replaceChildren(...this.legendRows.map((r) => r.el));
      }
      const mode = this.group.state.x;
      const hovering = u.cursor.idx != null;
      const at = (si) => {
        const j = u.cursor.idxs ? u.cursor.idxs[si] : null;
        return j == null ? null : { j, v: u.data[si][j] };
      };
      this.layout.forEach((lay, k) => {
        const { col } = lay;
        let text;
        let x;
        if (hovering) {
          const mid = at(lay.mid);
          x = mid ? u.data[0][mid.j] : null;
          if (!mid || mid.v == null) text = "—";
          else if (col.bucketed) {
            text = `mean ${fmtValue(mid.v)} · min ${fmtValue(at(lay.lo)?.v)} · max ${fmtValue(at(lay.hi)?.v)}`;
          } else text = fmtValue(mid.v);
          if (lay.sm != null && mid) text = `${fmtValue(at(lay.sm)?.v)} smoothed · ${text} raw`;
        } else {
          const n = col.xs.length;
          const e = col.entry;
          // A bucket's x is its first point's: the newest point's own x is known only when exact.
          x = n && !col.bucketed ? col.xs[n - 1] : null;
          text = n ? fmtValue(col.bucketed ? e.last[n - 1] : e.value[n - 1]) : "no points";
          if (col.smooth && n) text = `${fmtValue(col.smooth[n - 1])} smoothed · ${text} raw`;
        }
        const row = this.legendRows[k];
        row.value.textContent = text;
        row.x.textContent = hovering ? fmtX(mode, x) : (x == null ? "latest" : `latest · ${fmtX(mode, x)}`);
      });
    }

    onSelect(u) {
      const s = u.select;
      if (s.width < 3) return; // a click, not a drag
      let min = u.posToVal(s.left, "x");
      let max = u.posToVal(s.left + s.width, "x");
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      if (this.group.state.x === "step") {
        min = Math.floor(min);
        max = Math.ceil(max);
      } else {
        min = Math.round(min);
        max = Math.round(max);
      }
      if (!(max > min)) return;
      this.group.setZoom([min, max]);
    }

    resize() {
      if (!this.u) return;
      const w = this.width();
      if (w === this.u.width) return;
      this.u.setSize({ width: w, height: CHART_HEIGHT });
      // Ask again only when the bucket count would change noticeably.
      const b = this.pixelBuckets();
      if (this.exactHint === 0 && Math.abs(b - this.loadedBuckets) > this.loadedBuckets * 0.15) {
        clearTimeout(this.resizeTimer);
        this.resizeTimer = setTimeout(() => this.group.page.alive && this.load(true).catch(() => {}), 250);
      }
    }

    destroy() {
      clearTimeout(this.resizeTimer);
      this.seq++;
      if (this.u) this.u.destroy();
      this.u = null;
    }
  }

  Object.assign(S, { ChartGroup, MetricChart, runColor, withAlpha, chartTheme, setParams, queryString, listParam, postJson,
    fmtRel, fmtStepTick, STEP_INCRS, REL_INCRS, axisSize, PALETTE });
})();
