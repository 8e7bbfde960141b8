/* steppe web UI: the compare page, /compare?runs=a,b,c&keys=loss,acc. The selected runs overlaid
   per metric key (one colour per run, a legend), and diff tables of their params and latest
   metrics; live while any of them runs. Loaded after app.js and charts.js (window.steppe). */
(() => {
  "use strict";

  const S = window.steppe;
  const { h, enc } = S;

  const POLL_MS = 1000;
  const MAX_RUNS = 100; // one multi-series request per chart takes at most 100 series
  const RUN_ID = /^[A-Za-z0-9_-]+$/;

  function compareView(page) {
    S.setTitle("Compare runs");
    const ids = [...new Set(S.listParam("runs"))].filter((id) => RUN_ID.test(id)).slice(0, MAX_RUNS);
    const root = h("section", { class: "page compare-page" });
    S.main.append(root);
    if (ids.length === 0) {
      root.append(S.crumbs(h("span", null, "Compare")),
        h("h1", null, "Compare runs"),
        h("p", { class: "muted", "data-testid": "compare-empty" },
          "No runs chosen. Select runs in an experiment's runs table, then press Compare."));
      return;
    }
    const colorOf = new Map(ids.map((id, i) => [id, S.runColor(i)]));
    const view = new CompareView(page, root, ids, colorOf);
    view.start();
  }

  class CompareView {
    constructor(page, root, ids, colorOf) {
      this.page = page;
      this.root = root;
      this.ids = ids;
      this.colorOf = colorOf;
      this.runs = [];       // in the URL's order, the ones found
      this.charts = new Map();
      this.keysChosen = S.listParam("keys");
      this.explicitKeys = new URLSearchParams(location.search).has("keys");
      this.onlyDiff = new URLSearchParams(location.search).get("diff") === "1";

      this.crumbSlot = h("span", null, "Compare");
      this.title = h("h1", null, `Compare ${ids.length} runs`);
      this.liveEl = h("span", { class: "live", hidden: true, title: "Refreshing every second while a run is running" }, "live");
      this.notice = h("div", { class: "notice", role: "status", "data-testid": "compare-notice", hidden: true });
      this.legend = h("ul", { class: "run-legend", "data-testid": "compare-legend", "aria-label": "Runs" });
      this.group = new S.ChartGroup(page);
      this.keysSummary = h("summary", { class: "btn", "data-testid": "keys-button" }, "Metrics");
      this.keysBody = h("div", { class: "popover-body keys-body" });
      this.keysMenu = h("details", { class: "popover keys-menu" }, this.keysSummary, this.keysBody);
      this.grid = h("div", { class: "charts", "data-testid": "compare-charts" });
      this.noMetrics = h("p", { class: "muted", hidden: true }, "No metric keys chosen.");
      const diffBox = h("input", { type: "checkbox", checked: this.onlyDiff, "data-testid": "only-diff" });
      diffBox.addEventListener("change", () => {
        this.onlyDiff = diffBox.checked;
        S.setParams({ diff: this.onlyDiff ? "1" : null });
        this.renderTables();
      });
      this.paramsSlot = h("div", { class: "table-wrap diff-wrap" });
      this.metricsSlot = h("div", { class: "table-wrap diff-wrap" });

      root.append(
        S.crumbs(this.crumbSlot),
        h("div", { class: "page-head" }, this.title, this.liveEl),
        this.notice,
        this.legend,
        h("section", { class: "metrics" },
          h("div", { class: "section-head" }, h("h2", null, "Metrics"), h("span", { class: "spacer" }), this.keysMenu),
          this.group.toolbar,
          this.noMetrics,
          this.grid),
        h("section", { class: "diff" },
          h("div", { class: "section-head" }, h("h2", null, "Parameters"),
            h("label", { class: "tool" }, diffBox, h("span", null, "Only rows that differ"))),
          this.paramsSlot,
          h("div", { class: "section-head" }, h("h2", null, "Latest metrics")),
          this.metricsSlot));

      page.listen(document, "click", (e) => {
        if (this.keysMenu.open && !this.keysMenu.contains(e.target)) this.keysMenu.open = false;
      });
      page.listen(document, "keydown", (e) => {
        if (e.key === "Escape" && this.keysMenu.open) {
          this.keysMenu.open = false;
          this.keysSummary.focus();
        }
      });
    }

    fetchRuns() {
      const list = this.ids.map((id) => `'${id}'`).join(", ");
      return S.postJson(this.page, "/runs/search", {
        experiment_ids: null,
        filter_string: `attributes.run_id IN (${list})`,
        max_results: MAX_RUNS,
        run_view_type: "ALL",
      }).then((r) => {
        const byId = new Map((r.runs || []).map((run) => [run.info.run_id, run]));
        return this.ids.map((id) => byId.get(id)).filter(Boolean);
      });
    }

    start() {
      this.root.classList.add("busy");
      this.fetchRuns().then((runs) => {
        if (!this.page.alive) return;
        this.root.classList.remove("busy");
        const missing = this.ids.filter((id) => !runs.some((r) => r.info.run_id === id));
        if (missing.length) {
          this.notice.hidden = false;
          this.notice.textContent = `Not found: ${missing.join(", ")}`;
        }
        this.update(runs);
        if (this.running()) this.page.later(() => this.poll(), POLL_MS);
      }, (err) => {
        if (!this.page.alive || err.name === "AbortError") return;
        this.root.classList.remove("busy");
        this.root.replaceChildren(S.crumbs(h("span", null, "Compare")), S.errorBox(err, "Runs"));
      });
    }

    running() {
      return this.runs.some((r) => r.info.status === "RUNNING");
    }

    async poll() {
      let ok = true;
      try {
        const runs = await this.fetchRuns();
        if (!this.page.alive) return;
        this.update(runs);
        await this.group.refresh();
        this.notice.hidden = true;
      } catch (err) {
        if (!this.page.alive || err.name === "AbortError") return;
        ok = false;
        this.notice.hidden = false;
        this.notice.textContent = `Refresh failed (${err.message}); retrying.`;
      }
      if (!this.page.alive) return;
      if (!ok || this.running()) this.page.later(() => this.poll(), ok ? POLL_MS : POLL_MS * 3);
    }

    allKeys() {
      const keys = new Set();
      for (const r of this.runs) Object.keys(r.data?.metrics || {}).forEach((k) => keys.add(k));
      return [...keys].sort(S.collator.compare);
    }

    shownKeys() {
      const all = this.allKeys();
      if (!this.explicitKeys) return all;
      return this.keysChosen.filter((k) => all.includes(k));
    }

    update(runs) {
      this.runs = runs;
      const exps = new Set(runs.map((r) => r.info.experiment_id));
      if (exps.size === 1) {
        const expId = [...exps][0];
        if (this.crumbExp !== expId) {
          this.crumbExp = expId;
          const link = h("a", { href: `/experiments/${enc(expId)}` }, `Experiment ${expId}`);
          this.crumbSlot.replaceWith(h("span", { class: "crumb-group" }, link, h("span", { "aria-hidden": "true" }, " › "), "Compare"));
          this.page.api(`/experiments/${enc(expId)}`).then((d) => {
            link.textContent = d.experiment.name;
          }, () => { /* the breadcrumb keeps the id */ });
        }
      }
      this.title.textContent = `Compare ${runs.length} run${runs.length === 1 ? "" : "s"}`;
      this.liveEl.hidden = !this.running();
      this.renderLegend();
      this.renderKeysMenu();
      this.renderCharts();
      this.renderTables();
    }

    label(run) {
      return run.info.run_name || run.info.run_id.slice(0, 8);
    }

    removeRun(id) {
      const rest = this.ids.filter((x) => x !== id);
      const q = new URLSearchParams(location.search);
      q.set("runs", rest.join(","));
      S.navigate(`/compare?${S.queryString(q)}`);
    }

    renderLegend() {
      this.legend.replaceChildren(...this.runs.map((r) => {
        const id = r.info.run_id;
        return h("li", { class: "run-chip", "data-run-id": id },
          h("span", { class: "swatch", style: `background:${this.colorOf.get(id)}`, "aria-hidden": "true" }),
          h("a", { href: `/runs/${enc(id)}`, title: id }, this.label(r)),
          S.statusBadge(r.info.status),
          this.ids.length > 1 ? h("button", {
            type: "button", class: "chip-remove", "aria-label": `Remove ${this.label(r)} from the comparison`,
            title: "Remove from the comparison", onclick: () => this.removeRun(id),
          }, "×") : null);
      }));
    }

    renderKeysMenu() {
      const all = this.allKeys();
      const shown = new Set(this.shownKeys());
      const sig = JSON.stringify([all, [...shown]]);
      if (sig === this.keysSig) return;
      this.keysSig = sig;
      this.keysSummary.textContent = `Metrics (${shown.size}/${all.length})`;
      const boxes = all.map((key) => {
        const box = h("input", { type: "checkbox", checked: shown.has(key), "data-key": key });
        box.addEventListener("change", () => {
          const now = new Set(this.shownKeys());
          if (box.checked) now.add(key);
          else now.delete(key);
          this.keysChosen = all.filter((k) => now.has(k));
          this.explicitKeys = true;
          S.setParams({ keys: this.keysChosen.join(",") || "-" });
          this.renderKeysMenu();
          this.renderCharts();
        });
        return h("label", { class: "check-row", "data-key": key }, box, h("span", { class: "mono" }, key));
      });
      const setAll = (on) => {
        this.keysChosen = on ? all : [];
        this.explicitKeys = on ? false : true;
        S.setParams({ keys: on ? null : "-" });
        this.renderKeysMenu();
        this.renderCharts();
      };
      this.keysBody.replaceChildren(
        h("div", { class: "columns-head" },
          h("button", { type: "button", class: "btn-small", onclick: () => setAll(true) }, "All"),
          h("button", { type: "button", class: "btn-small", onclick: () => setAll(false) }, "None")),
        h("div", { class: "keys-list" }, boxes.length ? boxes : h("p", { class: "muted" }, "These runs have no metrics.")));
    }

    renderCharts() {
      const keys = this.shownKeys();
      for (const [key, chart] of this.charts) {
        if (!keys.includes(key)) {
          this.group.remove(chart);
          this.charts.delete(key);
        }
      }
      for (const key of keys) {
        const sources = this.runs.filter((r) => r.data?.metrics?.[key]).map((r) => ({
          run_id: r.info.run_id, key, label: this.label(r), color: this.colorOf.get(r.info.run_id),
        }));
        let chart = this.charts.get(key);
        if (!chart) {
          chart = this.group.chart({ title: key, series: sources });
          this.charts.set(key, chart);
        } else {
          chart.setSources(sources);
        }
      }
      // Cards in key order, also when keys appear mid-run.
      for (const key of keys) this.grid.append(this.charts.get(key).el);
      this.noMetrics.hidden = keys.length > 0;
      this.noMetrics.textContent = this.allKeys().length ? "No metric keys chosen." : "These runs have no metrics yet.";
    }

    /** Rows of key -> value per run; rows whose values differ are marked (and kept when filtering). */
    diffTable(testid, keys, valueOf, emptyText) {
      const head = h("tr", null, h("th", { scope: "col" }, "Key"), this.runs.map((r) => h("th", { scope: "col", "data-run-id": r.info.run_id },
        h("span", { class: "swatch", style: `background:${this.colorOf.get(r.info.run_id)}`, "aria-hidden": "true" }), this.label(r))));
      let hidden = 0;
      const rows = [];
      for (const key of keys) {
        const values = this.runs.map((r) => valueOf(r, key));
        const differs = new Set(values.map((v) => (v == null ? "\u0000missing" : String(v)))).size > 1;
        if (this.onlyDiff && !differs) {
          hidden++;
          continue;
        }
        rows.push(h("tr", { "data-key": key, "data-differs": differs ? "true" : "false", class: differs ? "differs" : null },
          h("th", { scope: "row" }, key,
            differs ? h("span", { class: "differs-mark", title: "The runs differ here" }, " ≠") : null),
          values.map((v) => h("td", { class: v == null ? "missing" : null }, v == null ? "—" : String(v)))));
      }
      const note = hidden ? h("tr", { class: "empty" }, h("td", { colspan: this.runs.length + 1 },
        `${hidden} identical row${hidden === 1 ? "" : "s"} hidden.`)) : null;
      if (!rows.length && !note) rows.push(h("tr", { class: "empty" }, h("td", { colspan: this.runs.length + 1 }, emptyText)));
      return h("table", { class: "kv diff-table", "data-testid": testid }, h("thead", null, head), h("tbody", null, rows, note));
    }

    renderTables() {
      const pKeys = new Set();
      const mKeys = new Set();
      for (const r of this.runs) {
        Object.keys(r.data?.params || {}).forEach((k) => pKeys.add(k));
        Object.keys(r.data?.metrics || {}).forEach((k) => mKeys.add(k));
      }
      const sorted = (set) => [...set].sort(S.collator.compare);
      this.paramsSlot.replaceChildren(this.diffTable("params-diff", sorted(pKeys),
        (r, k) => r.data?.params?.[k], "No parameters."));
      this.metricsSlot.replaceChildren(this.diffTable("metrics-diff", sorted(mKeys),
        (r, k) => {
          const m = r.data?.metrics?.[k];
          return m ? S.fmtValue(m.value) : null;
        }, "No metrics."));
    }
  }

  S.compareView = compareView;
})();
