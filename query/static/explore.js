/* steppe web UI: the runs table's Explore panel. Parallel coordinates over the shown params and
   one chosen metric, and a scatter of one param (or metric) against a metric, both over the runs
   on the table's page and linked to its selection: selected runs are drawn bold, a click on a
   line or a point selects or unselects its run. SVG built with createElementNS; values reach
   the page only as attributes and text. Loaded after app.js (window.steppe). */
(() => {
  "use strict";

  const S = window.steppe;
  const { h } = S;

  const SVG = "http://www.w3.org/2000/svg";
  const W = 760;
  const H = 260;
  const PAD = { l: 48, r: 56, t: 26, b: 34 };

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
    for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : String(c));
    return el;
  }

  /** An axis over values: numeric (linear) when every value is a number, else categories. */
  function axis(values) {
    const present = values.filter((v) => v != null && v !== "");
    const nums = present.map(Number);
    if (present.length && nums.every(Number.isFinite)) {
      let lo = Math.min(...nums);
      let hi = Math.max(...nums);
      if (lo === hi) { lo -= 1; hi += 1; }
      return { numeric: true, lo, hi, pos: (v) => (v == null || v === "" || !Number.isFinite(Number(v)) ? null : (Number(v) - lo) / (hi - lo)),
        ticks: [lo, hi].map((v) => [S.fmtValue(v), (v - lo) / (hi - lo)]) };
    }
    const cats = [...new Set(present.map(String))].sort(S.collator.compare);
    const at = (i) => (cats.length === 1 ? 0.5 : i / (cats.length - 1));
    return { numeric: false, pos: (v) => (v == null || v === "" ? null : at(cats.indexOf(String(v)))),
      ticks: cats.slice(0, 12).map((c, i) => [c, at(i)]) };
  }

  function metricValue(run, key, agg) {
    const m = run.data?.metrics?.[key];
    if (!m) return null;
    const v = S.toNumber(agg === "min" ? m.min : agg === "max" ? m.max : m.value);
    return Number.isFinite(v) ? v : null;
  }

  /** The panel. opts: {onToggle(runId)}; update({runs, params, metrics, sel, agg}) redraws it. */
  class Explore {
    constructor(opts) {
      this.onToggle = opts.onToggle;
      this.data = null;
      this.metricSel = h("select", { class: "select select-small", "aria-label": "Metric", "data-testid": "explore-metric" });
      this.xSel = h("select", { class: "select select-small", "aria-label": "Scatter x axis", "data-testid": "scatter-x" });
      this.metricSel.addEventListener("change", () => this.draw());
      this.xSel.addEventListener("change", () => this.draw());
      this.parallel = h("div", { class: "explore-plot", "data-testid": "parallel-coordinates" });
      this.scatter = h("div", { class: "explore-plot", "data-testid": "scatter" });
      this.note = h("p", { class: "muted small" });
      this.el = h("details", { class: "explore", "data-testid": "explore" },
        h("summary", null, "Explore: parallel coordinates and scatter"),
        h("div", { class: "explore-tools" },
          h("label", { class: "tool" }, h("span", { class: "tool-label" }, "Metric"), this.metricSel),
          h("label", { class: "tool" }, h("span", { class: "tool-label" }, "Scatter x"), this.xSel),
          this.note),
        this.parallel, this.scatter);
      this.el.addEventListener("toggle", () => this.el.open && this.draw());
    }

    update(data) {
      this.data = data;
      const fill = (select, options, keep) => {
        const was = select.value || keep;
        select.replaceChildren(...options.map(([v, label]) => h("option", { value: v }, label)));
        if (options.some(([v]) => v === was)) select.value = was;
      };
      fill(this.metricSel, data.metrics.map((k) => [k, k]));
      fill(this.xSel, [...data.params.map((k) => [`p:${k}`, `param ${k}`]), ...data.metrics.map((k) => [`m:${k}`, `metric ${k}`])]);
      if (this.el.open) this.draw();
    }

    draw() {
      const d = this.data;
      if (!d) return;
      const metric = this.metricSel.value;
      this.note.textContent = `${d.runs.length} run${d.runs.length === 1 ? "" : "s"} of this page; click a line or a point to select its run.`;
      if (!metric || !d.runs.length) {
        this.parallel.replaceChildren(h("p", { class: "muted" }, "Show a metric column to explore it."));
        this.scatter.replaceChildren();
        return;
      }
      this.drawParallel(d, metric);
      this.drawScatter(d, metric);
    }

    line(run, path, selected) {
      const id = run.info.run_id;
      const el = s("path", { d: path, class: `pc-line${selected ? " selected" : ""}`, "data-run-id": id });
      el.append(s("title", null, run.info.run_name || id));
      el.addEventListener("click", () => this.onToggle(id));
      return el;
    }

    drawParallel(d, metric) {
      const dims = [...d.params.map((k) => ({ label: k, get: (r) => r.data?.params?.[k] })),
        { label: metric, get: (r) => metricValue(r, metric, d.agg[metric]), metric: true }];
      const axes = dims.map((dim) => axis(d.runs.map(dim.get)));
      const xAt = (i) => PAD.l + (dims.length === 1 ? 0 : (i * (W - PAD.l - PAD.r)) / (dims.length - 1));
      const yAt = (p) => PAD.t + (1 - p) * (H - PAD.t - PAD.b);
      const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "explore-svg", role: "img", "aria-label": `Parallel coordinates of ${dims.map((x) => x.label).join(", ")}` });
      // Unselected first, selected on top.
      const order = [...d.runs].sort((a, b) => d.sel.has(a.info.run_id) - d.sel.has(b.info.run_id));
      for (const run of order) {
        const pts = dims.map((dim, i) => {
          const p = axes[i].pos(dim.get(run));
          return p == null ? null : `${xAt(i).toFixed(1)},${yAt(p).toFixed(1)}`;
        });
        // A run missing a value breaks its line there.
        const path = pts.map((p, i) => (p == null ? "" : `${i && pts[i - 1] != null ? "L" : "M"}${p}`)).join("");
        if (path) svg.append(this.line(run, path, d.sel.has(run.info.run_id)));
      }
      dims.forEach((dim, i) => {
        const x = xAt(i);
        svg.append(s("line", { x1: x, x2: x, y1: PAD.t, y2: H - PAD.b, class: "pc-axis" }),
          s("text", { x, y: PAD.t - 10, class: `pc-label${dim.metric ? " metric" : ""}`, "text-anchor": "middle" }, dim.label));
        for (const [text, p] of axes[i].ticks) {
          svg.append(s("text", { x: x - 4, y: yAt(p) + 3, class: "pc-tick", "text-anchor": "end" }, text));
        }
      });
      this.parallel.replaceChildren(svg);
    }

    drawScatter(d, metric) {
      const xKey = this.xSel.value;
      if (!xKey) return;
      const xOf = xKey.startsWith("p:") ? (r) => r.data?.params?.[xKey.slice(2)] : (r) => metricValue(r, xKey.slice(2), d.agg[xKey.slice(2)]);
      const yOf = (r) => metricValue(r, metric, d.agg[metric]);
      const ax = axis(d.runs.map(xOf));
      const ay = axis(d.runs.map(yOf));
      const px = (p) => PAD.l + p * (W - PAD.l - PAD.r);
      const py = (p) => PAD.t + (1 - p) * (H - PAD.t - PAD.b);
      const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "explore-svg", role: "img", "aria-label": `${metric} against ${xKey.slice(2)}` });
      svg.append(s("line", { x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b, class: "pc-axis" }),
        s("line", { x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b, class: "pc-axis" }),
        s("text", { x: (W + PAD.l) / 2, y: H - 4, class: "pc-label", "text-anchor": "middle" }, xKey.slice(2)),
        s("text", { x: PAD.l, y: PAD.t - 10, class: "pc-label metric", "text-anchor": "middle" }, metric));
      for (const [text, p] of ax.ticks) svg.append(s("text", { x: px(p), y: H - PAD.b + 14, class: "pc-tick", "text-anchor": "middle" }, text));
      for (const [text, p] of ay.ticks) svg.append(s("text", { x: PAD.l - 4, y: py(p) + 3, class: "pc-tick", "text-anchor": "end" }, text));
      const order = [...d.runs].sort((a, b) => d.sel.has(a.info.run_id) - d.sel.has(b.info.run_id));
      for (const run of order) {
        const x = ax.pos(xOf(run));
        const y = ay.pos(yOf(run));
        if (x == null || y == null) continue;
        const id = run.info.run_id;
        const dot = s("circle", { cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: d.sel.has(id) ? 5 : 3.5,
          class: `sc-point${d.sel.has(id) ? " selected" : ""}`, "data-run-id": id },
        s("title", null, `${run.info.run_name || id}: ${S.fmtValue(yOf(run))}`));
        dot.addEventListener("click", () => this.onToggle(id));
        svg.append(dot);
      }
      this.scatter.replaceChildren(svg);
    }
  }

  S.Explore = Explore;
})();
