/* steppe web UI: the SQL console, /sql?q=SELECT... One read-only query over the public views
   (POST /sql, query/API.md), its result as a table, and a chart of two of its columns (optionally
   one line per value of a third). Errors from the server's sandbox show inline.
   Loaded after app.js and charts.js (window.steppe). */
(() => {
  "use strict";

  const S = window.steppe;
  const { h } = S;

  const MAX_ROWS = 50000;   // the table shows pages of these; the chart takes them all
  const TABLE_PAGE = 1000;
  const MAX_GROUPS = 24;
  const CHART_HEIGHT = 300;

  const EXAMPLES = [
    ["Metric keys: points and runs",
      "SELECT key, count(*) AS points, count(DISTINCT run_id) AS runs,\n       min(step) AS first_step, max(step) AS last_step\nFROM metrics\nGROUP BY key\nORDER BY points DESC"],
    ["Latest loss per run",
      "SELECT r.run_name, l.step, l.value AS loss, r.status\nFROM latest_metrics l JOIN runs r USING (run_id)\nWHERE l.key = 'loss'\nORDER BY loss\nLIMIT 100"],
    ["One key across runs (every 10th step)",
      "SELECT r.run_name, m.step, m.value\nFROM metrics m JOIN runs r USING (run_id)\nWHERE m.key = 'loss' AND m.step % 10 = 0\nORDER BY r.run_name, m.step\nLIMIT 20000"],
    ["Runs per experiment",
      "SELECT e.name AS experiment, count(*) AS runs,\n       count(*) FILTER (WHERE r.status = 'RUNNING') AS running\nFROM runs r JOIN experiments e USING (experiment_id)\nGROUP BY e.name\nORDER BY runs DESC"],
  ];

  const VIEWS = [
    ["experiments", "experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time"],
    ["runs", "run_id, experiment_id, run_name, status, start_time, end_time, lifecycle_stage, artifact_uri, user_id"],
    ["params", "run_id, key, value"],
    ["tags", "run_id, key, value"],
    ["metrics", "run_id, key, step, value, timestamp"],
    ["latest_metrics", "run_id, key, value, step, timestamp, min, max, count"],
  ];

  const isNumericType = (t) => /^(u?int\d*|double|float|halffloat|decimal)/.test(t);
  const isTimeType = (t) => /^(timestamp|date)/.test(t);

  function cellText(v) {
    if (v === null || v === undefined) return null;
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function sqlView(page) {
    S.setTitle("SQL");
    const q = new URLSearchParams(location.search);
    const initial = q.get("q");

    const editor = h("textarea", {
      class: "sql-editor mono", rows: "7", spellcheck: "false", autocapitalize: "off", autocomplete: "off",
      "aria-label": "SQL query", "data-testid": "sql-editor",
    });
    editor.value = initial ?? EXAMPLES[0][1];
    const runBtn = h("button", { type: "submit", class: "btn btn-primary", "data-testid": "sql-run" }, "Run");
    const examples = h("select", { class: "select", "aria-label": "Example queries" },
      h("option", { value: "" }, "Examples…"),
      EXAMPLES.map(([label], i) => h("option", { value: String(i) }, label)));
    examples.addEventListener("change", () => {
      if (examples.value === "") return;
      editor.value = EXAMPLES[Number(examples.value)][1];
      examples.value = "";
      editor.focus();
    });
    const form = h("form", { class: "sql-form", "data-testid": "sql-form" },
      editor,
      h("div", { class: "sql-actions" }, runBtn,
        h("span", { class: "muted" }, h("kbd", null, "Ctrl"), "+", h("kbd", null, "Enter"), " runs"),
        h("span", { class: "spacer" }), examples,
        h("details", { class: "popover views-help" }, h("summary", { class: "btn" }, "Views"),
          h("div", { class: "popover-body popover-right" },
            h("p", { class: "muted" }, "One read-only SELECT over these views; times are ms since the epoch."),
            h("dl", { class: "views-list" }, VIEWS.map(([name, cols]) => [h("dt", { class: "mono" }, name), h("dd", { class: "mono" }, cols)]))))));
    const status = h("p", { class: "muted sql-status", role: "status", "data-testid": "sql-status" });
    const errorSlot = h("div");

    const xSel = h("select", { class: "select", "data-testid": "sql-chart-x", "aria-label": "Chart x column" });
    const ySel = h("select", { class: "select", "data-testid": "sql-chart-y", "aria-label": "Chart y column" });
    const gSel = h("select", { class: "select", "data-testid": "sql-chart-group", "aria-label": "One line per value of" });
    const chartBtn = h("button", { type: "button", class: "btn", "data-testid": "sql-chart-button" }, "Chart");
    const hideBtn = h("button", { type: "button", class: "btn btn-quiet", hidden: true }, "Hide chart");
    const chartBar = h("div", { class: "sql-chart-bar", hidden: true },
      h("label", { class: "tool" }, h("span", { class: "tool-label" }, "x"), xSel),
      h("label", { class: "tool" }, h("span", { class: "tool-label" }, "y"), ySel),
      h("label", { class: "tool" }, h("span", { class: "tool-label" }, "one line per"), gSel),
      chartBtn, hideBtn);
    const chartMeta = h("span", { class: "chart-meta" });
    const chartPlot = h("div", { class: "chart-plot sql-chart-plot" });
    const chartCard = h("section", { class: "chart-card sql-chart", "data-testid": "sql-chart", hidden: true, "aria-label": "Chart of the result" },
      h("header", { class: "chart-head" }, h("h3", { class: "chart-title" }), h("span", { class: "spacer" }), chartMeta), chartPlot);
    const resultSlot = h("div", { class: "sql-result" });

    S.main.append(h("section", { class: "page sql-page" },
      h("div", { class: "page-head" }, h("h1", null, "SQL")),
      form, status, errorSlot, chartBar, chartCard, resultSlot));

    let result = null;
    let u = null;
    let seq = 0;
    page.onDispose(() => u && u.destroy());
    page.listen(window, "resize", () => {
      if (u && !chartCard.hidden) u.setSize({ width: plotWidth(), height: CHART_HEIGHT });
    });

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      run();
    });
    editor.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        run();
      }
    });
    chartBtn.addEventListener("click", () => drawChart(true));
    hideBtn.addEventListener("click", () => {
      chartCard.hidden = true;
      hideBtn.hidden = true;
      S.setParams({ cx: null, cy: null, cg: null });
    });

    function run() {
      const query = editor.value.trim();
      if (!query) return;
      S.setParams({ q: query });
      const my = ++seq;
      runBtn.disabled = true;
      status.textContent = "Running…";
      const started = performance.now();
      S.postJson(page, "/sql", { query, max_rows: MAX_ROWS }).then((r) => {
        if (my !== seq || !page.alive) return;
        const ms = Math.round(performance.now() - started);
        errorSlot.replaceChildren();
        resultSlot.classList.remove("stale");
        chartCard.classList.remove("stale");
        result = r;
        const n = r.rows.length;
        status.textContent = `${n.toLocaleString("en-US")} row${n === 1 ? "" : "s"} · ${r.columns.length} column${r.columns.length === 1 ? "" : "s"} · ${ms} ms`;
        renderTable();
        setupChart();
      }, (err) => {
        if (my !== seq || !page.alive || err.name === "AbortError") return;
        status.textContent = "";
        // The last good result stays, dimmed: the error belongs to the query in the editor.
        resultSlot.classList.add("stale");
        chartCard.classList.add("stale");
        errorSlot.replaceChildren(h("div", { class: "error", role: "alert", "data-testid": "sql-error" },
          h("strong", null, err.status === 400 ? "Query refused" : "Query failed"),
          h("span", { class: "error-message" }, err.message),
          err.code ? h("code", { class: "error-code" }, err.code) : null));
      }).finally(() => {
        if (my === seq) runBtn.disabled = false;
      });
    }

    function renderTable() {
      const { columns, rows } = result;
      const numeric = columns.map((c) => isNumericType(c.type));
      const head = h("tr", null, columns.map((c, i) => h("th", { scope: "col", class: numeric[i] ? "num" : null, title: c.type },
        h("span", null, c.name), h("span", { class: "col-type" }, c.type))));
      const body = h("tbody");
      let shown = 0;
      const more = h("button", { type: "button", class: "btn", "data-testid": "sql-more" });
      const addRows = () => {
        const end = Math.min(rows.length, shown + TABLE_PAGE);
        const frag = document.createDocumentFragment();
        for (let r = shown; r < end; r++) {
          frag.append(h("tr", null, rows[r].map((v, i) => {
            const text = cellText(v);
            return h("td", { class: [numeric[i] ? "num" : "", text === null ? "null" : ""].join(" ").trim() || null },
              text === null ? "NULL" : text);
          })));
        }
        body.append(frag);
        shown = end;
        more.hidden = shown >= rows.length;
        more.textContent = `Show ${Math.min(TABLE_PAGE, rows.length - shown).toLocaleString("en-US")} more (${shown.toLocaleString("en-US")} of ${rows.length.toLocaleString("en-US")} shown)`;
      };
      more.addEventListener("click", addRows);
      if (rows.length === 0) body.append(h("tr", { class: "empty" }, h("td", { colspan: Math.max(1, columns.length) }, "No rows.")));
      else addRows();
      resultSlot.replaceChildren(
        h("div", { class: "table-wrap sql-table-wrap" }, h("table", { class: "grid sql-grid", "data-testid": "sql-result" }, h("thead", null, head), body)));
      if (rows.length) resultSlot.append(more);
    }

    /** Fill the column pickers; keep the chart's columns when the new result has them. */
    function setupChart() {
      const { columns, rows } = result;
      const plottable = columns.map((c, i) => ({ c, i })).filter(({ c }) => isNumericType(c.type) || isTimeType(c.type));
      const numeric = plottable.filter(({ c }) => isNumericType(c.type));
      chartBar.hidden = rows.length === 0 || plottable.length < 1 || numeric.length < 1 || columns.length < 2;
      if (chartBar.hidden) {
        chartCard.hidden = true;
        return;
      }
      const qs = new URLSearchParams(location.search);
      const byName = (name) => columns.findIndex((c) => c.name === name);
      const prefer = (names, list) => list.find(({ c }) => names.includes(c.name.toLowerCase()));
      const xDefault = prefer(["step", "x", "timestamp", "time", "start_time"], plottable) || plottable[0];
      const yDefault = prefer(["value", "y", "loss"], numeric.filter((p) => p !== xDefault)) ||
        numeric.find((p) => p !== xDefault) || numeric[0];
      const groupable = columns.map((c, i) => ({ c, i })).filter(({ c }) => !isNumericType(c.type) || /int/.test(c.type));
      const gDefault = groupable.find(({ c }) => /(^|_)(run_name|run_id|name|key)$/.test(c.name.toLowerCase()));
      const fill = (sel, list, value, allowNone) => {
        sel.replaceChildren(...(allowNone ? [h("option", { value: "" }, "—")] : []),
          ...list.map(({ c, i }) => h("option", { value: String(i) }, c.name)));
        sel.value = value == null ? "" : String(value);
      };
      const pick = (name, list, fallback) => {
        const i = name == null ? -1 : byName(name);
        return list.some((p) => p.i === i) ? i : fallback;
      };
      fill(xSel, plottable, pick(qs.get("cx"), plottable, xDefault.i), false);
      fill(ySel, numeric, pick(qs.get("cy"), numeric, yDefault.i), false);
      fill(gSel, groupable, pick(qs.get("cg"), groupable, qs.has("cx") ? null : gDefault?.i ?? null), true);
      if (qs.has("cx") && qs.has("cy")) drawChart(false);
      else if (!chartCard.hidden) drawChart(false);
    }

    function plotWidth() {
      return Math.max(240, Math.floor(chartPlot.clientWidth || chartCard.clientWidth - 20));
    }

    function drawChart(remember) {
      if (!result) return;
      const { columns, rows } = result;
      const xi = Number(xSel.value);
      const yi = Number(ySel.value);
      const gi = gSel.value === "" ? null : Number(gSel.value);
      const xTime = isTimeType(columns[xi].type);
      const toX = xTime ? (v) => (v == null ? null : Date.parse(v)) : (v) => S.toNumber(v);
      const groups = new Map();
      let skipped = 0;
      for (const row of rows) {
        const x = toX(row[xi]);
        const y = S.toNumber(row[yi]);
        if (x == null || !Number.isFinite(x)) {
          skipped++;
          continue;
        }
        const g = gi == null ? "" : (cellText(row[gi]) ?? "NULL");
        let s = groups.get(g);
        if (!s) {
          if (groups.size >= MAX_GROUPS) {
            skipped++;
            continue;
          }
          s = [];
          groups.set(g, s);
        }
        s.push([x, Number.isFinite(y) ? y : null]);
      }
      const labels = [...groups.keys()];
      const tables = labels.map((g) => {
        const pts = groups.get(g).sort((a, b) => a[0] - b[0]);
        return [pts.map((p) => p[0]), pts.map((p) => p[1])];
      });
      const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
      const t = S.chartTheme();
      const axis = { stroke: t.axis, font: t.font, grid: { stroke: t.grid, width: 1 }, ticks: { stroke: t.grid, width: 1, size: 4 } };
      const many = data[0].length > 2000;
      const series = [{ label: columns[xi].name, value: (uu, v) => (v == null ? "—" : xTime ? S.fmtTime(v) : S.fmtValue(v)) },
        ...labels.map((g, i) => {
          const color = labels.length === 1 ? t.line : S.runColor(i);
          return {
            label: gi == null ? columns[yi].name : g, stroke: color, width: 1.5,
            value: (uu, v) => (v == null ? "—" : S.fmtValue(v)),
            points: many ? { show: false } : { size: 5, space: 6, fill: color },
          };
        })];
      if (u) u.destroy();
      chartCard.hidden = false;
      hideBtn.hidden = false;
      chartCard.querySelector(".chart-title").textContent = `${columns[yi].name} by ${columns[xi].name}` +
        (gi == null ? "" : `, one line per ${columns[gi].name}`);
      chartMeta.textContent = `${rows.length - skipped} points${labels.length > 1 ? ` · ${labels.length} lines` : ""}` +
        (skipped ? ` · ${skipped} rows not drawn` : "") + " · drag to zoom, double-click to reset";
      u = new uPlot({
        width: plotWidth(),
        height: CHART_HEIGHT,
        ms: 1,
        series,
        scales: { x: { time: xTime } },
        axes: [{ ...axis, size: 32 },
          { ...axis, size: S.axisSize, values: (uu, splits) => splits.map((v) => S.fmtValue(v)) }],
        cursor: { hover: { skip: [undefined, null] } },
        legend: { live: true },
      }, data, chartPlot);
      chartCard.dataset.points = String(rows.length - skipped);
      chartCard.dataset.lines = String(labels.length);
      if (remember) {
        S.setParams({ cx: columns[xi].name, cy: columns[yi].name, cg: gi == null ? null : columns[gi].name });
        chartCard.scrollIntoView({ block: "nearest" });
      }
    }

    // A ?q= link only fills the editor: running it takes the user's click or Ctrl-Enter, so
    // a link from another site cannot make this page run a query by itself.
    editor.focus();
  }

  S.sqlView = sqlView;
})();
