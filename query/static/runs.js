/* steppe web UI: the runs table of one experiment. Filtering, sorting and paging happen on the
   server (POST /runs/search with MLflow's filter grammar, order_by and page tokens), so a page
   of 100 runs is as fast at 10,000 runs as at 10. The URL holds the filter, sort, columns,
   selection and page. Columns are params, tags and metrics (each metric its latest value, min
   or max); child runs (tag mlflow.parentRunId) fold under their parent when both are on the
   page; "Group by" a param or tag asks the server for per-group mean and spread over every
   matching run. Loaded after app.js, whose helpers it takes from window.steppe. */
(() => {
  "use strict";

  const S = window.steppe;
  const { h, enc } = S;

  const PAGE_SIZES = [50, 100, 250];
  const DEFAULT_PAGE_SIZE = 100;
  const DEFAULT_COLUMNS_PER_KIND = 8;
  const FILTER_EXAMPLE = "metrics.loss < 0.5 and params.optimizer = 'adam'";
  const PARENT_TAG = "mlflow.parentRunId";
  const AGGS = [["latest", "latest"], ["min", "min"], ["max", "max"]];
  const KIND_ORDER = { p: 0, t: 1, m: 2 };
  const KIND_PREFIX = { p: "params", t: "tags", m: "metrics" };

  const sqlString = (s) => `'${String(s).replace(/'/g, "''")}'`; // MLflow's quoting of a value
  const quoted = (name) => `\`${name}\``; // MLflow's quoting for names with special characters

  /** Column id -> the order_by identifier, for the columns the server can sort by. */
  function orderKey(id) {
    if (id === "name") return "attributes.run_name";
    if (id === "status") return "attributes.status";
    if (id === "start") return "attributes.start_time";
    if (id === "end") return "attributes.end_time";
    if (id.startsWith("p:")) return `params.${quoted(id.slice(2))}`;
    if (id.startsWith("t:")) return `tags.${quoted(id.slice(2))}`;
    if (id.startsWith("m:")) return `metrics.${quoted(id.slice(2))}`;
    return null;
  }

  /** ?agg=train/loss:min,val/acc:max (MLflow keys hold no comma or colon) <-> {key: "min"}. */
  function readAggs(q) {
    const out = {};
    for (const item of (q.get("agg") || "").split(",")) {
      const at = item.lastIndexOf(":");
      const agg = item.slice(at + 1);
      if (at > 0 && (agg === "min" || agg === "max")) out[item.slice(0, at)] = agg;
    }
    return out;
  }

  function readState() {
    const q = new URLSearchParams(location.search);
    const size = Number(q.get("size"));
    return {
      filter: q.get("filter") || "",
      sort: q.get("sort") ? { id: q.get("sort"), dir: q.get("dir") === "asc" ? 1 : -1 } : { id: "start", dir: -1 },
      cols: q.has("cols") ? S.listParam("cols") : null,
      sel: new Set(S.listParam("sel")),
      token: q.get("after") || null,
      pageNo: q.get("after") ? Math.max(2, Number(q.get("page")) || 2) : 1,
      size: PAGE_SIZES.includes(size) ? size : DEFAULT_PAGE_SIZE,
      agg: readAggs(q),
      group: /^[pt]:./.test(q.get("group") || "") ? q.get("group") : null,
      open: new Set(), // parents whose children are shown (not kept in the URL)
    };
  }

  function runsView(page, expId) {
    S.setTitle(`Experiment ${expId}`);
    const st = readState();
    const tokens = []; // page tokens of the pages before this one, for "Previous"

    const crumbName = h("span", null, expId);
    const title = h("h1", null, `Experiment ${expId}`);
    const count = h("span", { class: "muted", "data-testid": "runs-count" });
    const groupSelect = h("select", { class: "select", "aria-label": "Group runs by", "data-testid": "group-by" },
      h("option", { value: "" }, "No grouping"));
    groupSelect.addEventListener("change", () => {
      st.group = groupSelect.value || null;
      writeUrl();
      search();
    });
    const groupsSlot = h("div", { class: "groups-slot", "data-testid": "groups", hidden: true });
    const actionsSlot = h("span", { class: "experiment-actions-slot" });
    const actionErrors = h("div");

    // --- filter box
    const filterInput = h("input", {
      type: "search", class: "search filter-input mono", value: st.filter, spellcheck: "false",
      placeholder: FILTER_EXAMPLE, "aria-label": "Filter runs (MLflow search syntax)", "data-testid": "runs-filter",
      autocomplete: "off",
    });
    const filterError = h("div", { class: "error filter-error", role: "alert", "data-testid": "filter-error", hidden: true });
    const filterForm = h("form", { class: "filter-bar", role: "search", "data-testid": "runs-filter-form" },
      filterInput,
      h("button", { type: "submit", class: "btn" }, "Search"),
      h("button", {
        type: "button", class: "btn btn-quiet", onclick: () => {
          filterInput.value = "";
          applyFilter();
        },
      }, "Clear"),
      h("details", { class: "filter-help" },
        h("summary", null, "Syntax"),
        h("div", { class: "popover-body" },
          h("p", null, "Comparisons joined by ", h("code", null, "and"), ":"),
          h("ul", null,
            h("li", null, h("code", null, "metrics.loss < 0.1"), " — latest value; ", h("code", null, "= != < <= > >=")),
            h("li", null, h("code", null, "params.optimizer = 'adam'"), ", ", h("code", null, "tags.team LIKE 'vis%'")),
            h("li", null, h("code", null, "attributes.status = 'RUNNING'"), ", ", h("code", null, "run_name ILIKE '%sweep%'")),
            h("li", null, "names with special characters in backquotes: ", h("code", null, "metrics.`val/loss` > 0.5"))))));
    filterForm.addEventListener("submit", (e) => {
      e.preventDefault();
      applyFilter();
    });

    // --- columns chooser
    const columnsBody = h("div", { class: "popover-body columns-body" }, S.loading("Loading keys…"));
    const columnsSummary = h("summary", { class: "btn", "data-testid": "columns-button" }, "Columns");
    const columnsMenu = h("details", { class: "popover columns-menu" }, columnsSummary, columnsBody);

    // --- selection
    const selCount = h("span", { "data-testid": "selection-count" });
    const compareBtn = h("button", {
      type: "button", class: "btn btn-primary", "data-testid": "compare-button",
      onclick: () => S.navigate(`/compare?runs=${[...st.sel].join(",")}`),
    }, "Compare");
    const clearSel = h("button", {
      type: "button", class: "btn btn-quiet", onclick: () => {
        st.sel.clear();
        selectionChanged();
        renderTable();
      },
    }, "Clear selection");
    const selBar = h("div", { class: "selection-bar", "data-testid": "selection-bar" }, selCount, compareBtn, clearSel);
    // explore.js: parallel coordinates and a scatter of this page's runs, linked to the selection.
    const explore = S.Explore ? new S.Explore({
      onToggle: (id) => {
        if (st.sel.has(id)) st.sel.delete(id);
        else st.sel.add(id);
        selectionChanged();
        renderTable();
      },
    }) : null;

    // --- table and pager
    const holder = h("div", { class: "table-wrap runs-wrap" }, S.loading());
    const pageInfo = h("span", { class: "muted", "data-testid": "page-info" });
    const firstBtn = h("button", { type: "button", class: "btn", onclick: () => goFirst() }, "« First");
    const prevBtn = h("button", { type: "button", class: "btn", "data-testid": "prev-page", onclick: () => goPrev() }, "‹ Previous");
    const nextBtn = h("button", { type: "button", class: "btn", "data-testid": "next-page", onclick: () => goNext() }, "Next ›");
    const sizeSelect = h("select", { class: "select", "aria-label": "Runs per page", "data-testid": "page-size" },
      PAGE_SIZES.map((n) => h("option", { value: String(n), selected: n === st.size }, `${n} per page`)));
    sizeSelect.addEventListener("change", () => {
      st.size = Number(sizeSelect.value);
      goFirst();
    });
    const pager = h("nav", { class: "pager", "aria-label": "Pages" }, pageInfo, h("span", { class: "spacer" }),
      sizeSelect, firstBtn, prevBtn, nextBtn);

    S.main.append(h("section", { class: "page runs-page" },
      S.crumbs(crumbName),
      h("div", { class: "page-head" }, title, count, actionsSlot, h("span", { class: "spacer" }),
        h("label", { class: "tool" }, h("span", { class: "tool-label" }, "Group by"), groupSelect), columnsMenu),
      actionErrors, filterForm, filterError, selBar, explore ? explore.el : null, groupsSlot, holder, pager,
      S.experimentModelsSection ? S.experimentModelsSection(page, expId) : null)); // models.js

    let experiment = null;
    let keys = null;        // {params, tags, metrics} across the experiment, or null until known
    let runs = [];
    let total = null;       // runs matching the filter over every page
    let countedFilter = null; // the filter `total` was counted for
    let groups = null;      // the server's groups when grouping
    let nextToken = null;
    let loadSeq = 0;
    let searched = false;
    let renderedColumns = null; // the columns of the table drawn last, joined

    page.listen(document, "click", (e) => {
      for (const d of [columnsMenu, filterForm.querySelector(".filter-help")]) {
        if (d.open && !d.contains(e.target)) d.open = false;
      }
    });
    page.listen(document, "keydown", (e) => {
      if (e.key !== "Escape") return;
      for (const d of [columnsMenu, filterForm.querySelector(".filter-help")]) {
        if (d.open) {
          d.open = false;
          d.querySelector("summary").focus();
        }
      }
    });

    function writeUrl() {
      S.setParams({
        filter: st.filter,
        sort: st.sort.id === "start" && st.sort.dir < 0 ? null : st.sort.id,
        dir: st.sort.id === "start" && st.sort.dir < 0 ? null : (st.sort.dir > 0 ? "asc" : "desc"),
        cols: st.cols ? st.cols.join(",") || "-" : null,
        sel: [...st.sel].join(","),
        after: st.token,
        page: st.pageNo > 1 ? st.pageNo : null,
        size: st.size === DEFAULT_PAGE_SIZE ? null : st.size,
        agg: Object.entries(st.agg).map(([k, a]) => `${k}:${a}`).join(","),
        group: st.group,
      });
    }

    function columnsShown() {
      if (st.cols) return st.cols.filter((c) => /^[ptm]:./.test(c));
      const k = keys || keysOf(runs);
      return [...k.params.slice(0, DEFAULT_COLUMNS_PER_KIND).map((x) => `p:${x}`),
        ...k.metrics.slice(0, DEFAULT_COLUMNS_PER_KIND).map((x) => `m:${x}`)];
    }

    function keysOf(list) {
      const p = new Set();
      const t = new Set();
      const m = new Set();
      for (const r of list) {
        Object.keys(r.data?.params || {}).forEach((k) => p.add(k));
        Object.keys(r.data?.tags || {}).forEach((k) => !S.SYSTEM_TAG.test(k) && t.add(k));
        Object.keys(r.data?.metrics || {}).forEach((k) => m.add(k));
      }
      const sorted = (set) => [...set].sort(S.collator.compare);
      return { params: sorted(p), tags: sorted(t), metrics: sorted(m) };
    }

    function selectionChanged() {
      const n = st.sel.size;
      selCount.textContent = n ? `${n} run${n === 1 ? "" : "s"} selected` : "Select runs to compare them";
      compareBtn.disabled = n < 2;
      compareBtn.textContent = n >= 2 ? `Compare ${n} runs` : "Compare";
      compareBtn.title = n < 2 ? "Select at least two runs" : "";
      clearSel.hidden = n === 0;
      writeUrl();
    }

    // --- loading

    function search() {
      const seq = ++loadSeq;
      holder.classList.add("busy");
      const body = {
        experiment_ids: [expId],
        max_results: st.size,
        page_token: st.token,
        order_by: orderKey(st.sort.id) ? [`${orderKey(st.sort.id)} ${st.sort.dir > 0 ? "ASC" : "DESC"}`] : [],
      };
      if (st.filter) body.filter_string = st.filter;
      // The total depends on the filter only: a sort or another page reuses it.
      const countFor = st.filter;
      if (total == null || countedFilter !== countFor) body.count = true;
      if (Object.keys(st.agg).length) body.metric_aggregates = st.agg;
      const groupMetrics = () => columnsShown().filter((c) => c.startsWith("m:")).map((c) => c.slice(2));
      if (st.group) {
        body.group_by = orderKey(st.group);
        body.group_metrics = groupMetrics();
      }
      const started = performance.now();
      return S.postJson(page, "/runs/search", body).then((r) => {
        if (seq !== loadSeq || !page.alive) return;
        runs = r.runs || [];
        if (body.count) {
          total = r.total_count ?? null;
          countedFilter = countFor;
        }
        groups = st.group ? { list: r.groups || [], truncated: !!r.groups_truncated } : null;
        searched = true;
        nextToken = r.next_page_token || null;
        filterError.hidden = true;
        filterInput.removeAttribute("aria-invalid");
        holder.classList.remove("busy", "stale");
        const answered = performance.now();
        holder.dataset.loadMs = String(Math.round(answered - started));
        renderTable();
        renderGroups();
        renderPager();
        renderCount();
        // The chooser lists the experiment's keys once they are known (drawn then); until
        // then, the keys of the page's runs.
        if (!keys && !columnsMenu.dataset.loading) renderColumnsMenu();
        holder.dataset.renderMs = String(Math.round(performance.now() - answered));
        // The default columns can change once the runs (or the key list) are known: the groups'
        // statistics must be those of the columns shown.
        if (st.group && JSON.stringify(groupMetrics()) !== JSON.stringify(body.group_metrics)) search();
      }, (err) => {
        if (seq !== loadSeq || !page.alive || err.name === "AbortError") return;
        holder.classList.remove("busy");
        if (err.status === 400) {
          // A bad filter or order: say where, keep the last good table (dimmed).
          filterError.replaceChildren(...[
            h("strong", null, "Invalid filter"),
            h("span", { class: "error-message" }, err.message),
            err.code ? h("code", { class: "error-code" }, err.code) : null].filter(Boolean));
          filterError.hidden = false;
          filterInput.setAttribute("aria-invalid", "true");
          if (searched) holder.classList.add("stale");
          else holder.replaceChildren(h("p", { class: "muted loading" }, "Fix the filter to see runs."));
        } else {
          holder.replaceChildren(S.errorBox(err, "Runs"));
        }
      });
    }

    function applyFilter() {
      const f = filterInput.value.trim();
      st.filter = f;
      st.token = null;
      st.pageNo = 1;
      tokens.length = 0;
      writeUrl();
      search();
    }

    function goFirst() {
      st.token = null;
      st.pageNo = 1;
      tokens.length = 0;
      writeUrl();
      search();
    }

    function goNext() {
      if (!nextToken) return;
      tokens.push(st.token);
      st.token = nextToken;
      st.pageNo++;
      writeUrl();
      search().then(() => nextBtn.disabled ? prevBtn.focus() : null);
    }

    function goPrev() {
      if (st.pageNo <= 1) return;
      // Opened on a deep link, the earlier tokens are unknown: back to the first page then.
      if (tokens.length) {
        st.token = tokens.pop();
        st.pageNo--;
      } else {
        st.token = null;
        st.pageNo = 1;
      }
      writeUrl();
      search();
    }

    const fmtN = (n) => n.toLocaleString("en-US");

    /** "3,400 runs", or with a filter "12 of 3,400 runs". */
    function renderCount() {
      const all = experiment ? experiment.run_count : null;
      const plural = (n) => `run${n === 1 ? "" : "s"}`;
      if (st.filter && total != null) {
        count.textContent = all != null ? `${fmtN(total)} of ${fmtN(all)} ${plural(all)}` : `${fmtN(total)} matching`;
      } else if (all != null) {
        count.textContent = `${fmtN(all)} ${plural(all)}`;
      }
    }

    function renderPager() {
      const from = (st.pageNo - 1) * st.size + 1;
      const to = from + runs.length - 1;
      const of = total ?? (experiment && !st.filter ? experiment.run_count : null);
      pageInfo.textContent = runs.length
        ? `Runs ${fmtN(from)}–${fmtN(to)}${of != null ? ` of ${fmtN(of)}` : ""}${st.filter ? " matching" : ""}`
        : "";
      firstBtn.disabled = prevBtn.disabled = st.pageNo <= 1;
      nextBtn.disabled = !nextToken;
      pager.hidden = st.pageNo === 1 && !nextToken && runs.length <= PAGE_SIZES[0] && !st.filter;
    }

    // --- table

    function sortBy(id) {
      const numericDesc = id === "start" || id === "end" || id.startsWith("m:");
      st.sort = st.sort.id === id ? { id, dir: -st.sort.dir } : { id, dir: numericDesc ? -1 : 1 };
      st.token = null;
      st.pageNo = 1;
      tokens.length = 0;
      writeUrl();
      search().then(() => {
        const btn = holder.querySelector(`th[data-col="${CSS.escape(id)}"] button`);
        if (btn) btn.focus({ preventScroll: true });
      });
    }

    function setAgg(key, agg) {
      if (agg === "latest") delete st.agg[key];
      else st.agg[key] = agg;
      writeUrl();
      // The order (and the groups' statistics) depend on it: ask again, from the first page.
      if (st.sort.id === `m:${key}` || st.group) {
        st.token = null;
        st.pageNo = 1;
        tokens.length = 0;
        writeUrl();
        search();
      } else {
        renderTable();
      }
    }

    function header(col) {
      const active = st.sort.id === col.id;
      const label = h("span", { class: "label" }, col.label);
      let agg = null;
      if (col.id.startsWith("m:")) {
        const key = col.id.slice(2);
        agg = h("select", { class: "agg-select", "aria-label": `Value of ${key}`, "data-testid": "metric-agg" },
          AGGS.map(([v, text]) => h("option", { value: v, selected: (st.agg[key] || "latest") === v }, text)));
        agg.addEventListener("change", () => setAgg(key, agg.value));
      }
      return h("th", {
        scope: "col", "data-col": col.id, title: col.title || null,
        class: [col.num ? "num" : "", col.cls || ""].join(" ").trim() || null,
        "aria-sort": active ? (st.sort.dir > 0 ? "ascending" : "descending") : null,
      }, orderKey(col.id)
        ? h("button", { type: "button", class: "sort", onclick: () => sortBy(col.id) }, label,
          h("span", { class: "arrow", "aria-hidden": "true" }, active ? (st.sort.dir > 0 ? "▲" : "▼") : ""))
        : label, agg);
    }

    /** The page's runs with each child right after its parent (when both are on the page). */
    function treeOrder(list) {
      const onPage = new Set(list.map((r) => r.info.run_id));
      const kids = new Map();
      for (const r of list) {
        const parent = r.data?.tags?.[PARENT_TAG];
        if (parent && onPage.has(parent) && parent !== r.info.run_id) {
          if (!kids.has(parent)) kids.set(parent, []);
          kids.get(parent).push(r);
        }
      }
      const out = [];
      const seen = new Set();
      const visit = (r, depth, hiddenBy) => {
        const id = r.info.run_id;
        if (seen.has(id)) return; // a cycle of parent tags: show each run once
        seen.add(id);
        const children = kids.get(id) || [];
        out.push({ run: r, depth, children: children.length, hidden: hiddenBy });
        const open = st.open.has(id);
        for (const c of children) visit(c, depth + 1, hiddenBy || !open);
      };
      for (const r of list) {
        const parent = r.data?.tags?.[PARENT_TAG];
        if (!(parent && onPage.has(parent) && parent !== r.info.run_id)) visit(r, 0, false);
      }
      for (const r of list) visit(r, 0, false); // runs only reachable through a cycle
      return out;
    }

    function renderTable() {
      const shown = columnsShown();
      renderedColumns = shown.join("\n");
      const pKeys = shown.filter((c) => c.startsWith("p:")).map((c) => c.slice(2));
      const tKeys = shown.filter((c) => c.startsWith("t:")).map((c) => c.slice(2));
      const mKeys = shown.filter((c) => c.startsWith("m:")).map((c) => c.slice(2));
      const tree = treeOrder(runs);
      const nodeOf = new Map(tree.map((n) => [n.run.info.run_id, n]));
      const pageIds = new Set(runs.map((r) => r.info.run_id));
      const nameCell = (r) => {
        const id = r.info.run_id;
        const node = nodeOf.get(id);
        const link = h("a", { href: `/runs/${enc(id)}`, "data-testid": "run-link", "data-run-id": id }, r.info.run_name || id);
        const parent = r.data?.tags?.[PARENT_TAG];
        let toggle = null;
        if (node.children) {
          const open = st.open.has(id);
          toggle = h("button", {
            type: "button", class: "tree-toggle", "data-testid": "tree-toggle", "aria-expanded": String(open),
            "aria-label": `${open ? "Hide" : "Show"} the ${node.children} child runs of ${r.info.run_name || id}`,
            onclick: () => {
              if (st.open.has(id)) st.open.delete(id);
              else st.open.add(id);
              renderTable();
              holder.querySelector(`tr[data-run-id="${CSS.escape(id)}"] [data-testid=tree-toggle]`)?.focus();
            },
          }, open ? "▾" : "▸", h("span", { class: "tree-count" }, String(node.children)));
        }
        const orphan = parent && !pageIds.has(parent)
          ? h("a", { class: "tree-parent muted", href: `/runs/${enc(parent)}`, title: "Its parent run is on another page",
            "data-testid": "parent-link" }, "↳ child run")
          : null;
        return h("span", { class: "tree-cell", style: `padding-left:${node.depth * 18}px` },
          toggle || h("span", { class: "tree-pad", "aria-hidden": "true" }), link, orphan ? " " : null, orphan);
      };
      const metricOf = (r, k) => {
        const m = r.data?.metrics?.[k];
        if (!m) return null;
        const agg = st.agg[k];
        return { m, v: agg === "min" ? m.min : agg === "max" ? m.max : m.value };
      };
      const columns = [
        { id: "name", label: "Run", cell: nameCell },
        { id: "status", label: "Status", cell: (r) => S.statusBadge(r.info.status) },
        { id: "start", label: "Started", cell: (r) => (r.info.start_time == null ? "—"
          : h("time", { datetime: new Date(r.info.start_time).toISOString() }, S.fmtTime(r.info.start_time))) },
        { id: "duration", label: "Duration", num: true, title: "Not sortable on the server; sort by Started instead",
          cell: (r) => S.fmtDuration(S.runDurationMs(r.info)) },
        ...pKeys.map((k, i) => ({
          id: `p:${k}`, label: k, title: `param ${k}`, cls: i === 0 ? "param first-of-group" : "param",
          cell: (r) => r.data?.params?.[k] ?? "",
        })),
        ...tKeys.map((k, i) => ({
          id: `t:${k}`, label: k, title: `tag ${k}`, cls: i === 0 ? "tag first-of-group" : "tag",
          cell: (r) => r.data?.tags?.[k] ?? "",
        })),
        ...mKeys.map((k, i) => ({
          id: `m:${k}`, label: k, title: `metric ${k}: ${st.agg[k] || "latest"} value`, num: true,
          cls: i === 0 ? "metric first-of-group" : "metric",
          cell: (r) => {
            const x = metricOf(r, k);
            return x ? h("span", {
              title: `latest ${S.fmtValue(x.m.value)} at step ${x.m.step}; min ${S.fmtValue(x.m.min)}, max ${S.fmtValue(x.m.max)}`,
            }, S.fmtValue(x.v)) : "";
          },
        })),
      ];

      const ids = runs.map((r) => r.info.run_id);
      const onPage = ids.filter((id) => st.sel.has(id)).length;
      const all = h("input", {
        type: "checkbox", "aria-label": "Select all runs on this page", "data-testid": "select-page",
        checked: runs.length > 0 && onPage === runs.length,
      });
      all.indeterminate = onPage > 0 && onPage < runs.length;
      all.addEventListener("change", () => {
        for (const id of ids) {
          if (all.checked) st.sel.add(id);
          else st.sel.delete(id);
        }
        selectionChanged();
        renderTable();
        holder.querySelector("[data-testid=select-page]")?.focus();
      });

      const colGroups = pKeys.length || tKeys.length || mKeys.length ? h("tr", { class: "groups" },
        h("th", { colspan: 5, scope: "colgroup" }),
        pKeys.length ? h("th", { colspan: pKeys.length, scope: "colgroup", class: "first-of-group" }, "Params") : null,
        tKeys.length ? h("th", { colspan: tKeys.length, scope: "colgroup", class: "first-of-group" }, "Tags") : null,
        mKeys.length ? h("th", { colspan: mKeys.length, scope: "colgroup", class: "first-of-group" }, "Metrics") : null) : null;

      const rows = tree.map(({ run: r, depth, hidden }) => {
        const id = r.info.run_id;
        const box = h("input", {
          type: "checkbox", checked: st.sel.has(id), "data-testid": "select-run",
          "aria-label": `Select run ${r.info.run_name || id}`,
        });
        const tr = h("tr", {
          "data-run-id": id, "data-depth": String(depth), hidden,
          class: [st.sel.has(id) ? "selected" : "", depth ? "child-run" : ""].join(" ").trim() || null,
        },
          h("td", { class: "check" }, box),
          columns.map((c) => h("td", { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null, "data-col": c.id }, c.cell(r))));
        box.addEventListener("change", () => {
          if (box.checked) st.sel.add(id);
          else st.sel.delete(id);
          tr.classList.toggle("selected", box.checked);
          const n = ids.filter((x) => st.sel.has(x)).length;
          all.checked = n === ids.length;
          all.indeterminate = n > 0 && n < ids.length;
          selectionChanged();
          if (explore) explore.update({ runs, params: pKeys, metrics: mKeys, sel: st.sel, agg: st.agg });
        });
        return tr;
      });

      let empty = null;
      if (!rows.length) {
        empty = st.filter ? "No run matches the filter." : st.pageNo > 1 ? "No more runs." : "No runs in this experiment yet.";
      }
      if (explore) explore.update({ runs, params: pKeys, metrics: mKeys, sel: st.sel, agg: st.agg });
      holder.replaceChildren(h("table", { class: "grid runs-grid", "data-testid": "runs-table" },
        h("thead", null, colGroups,
          h("tr", null, h("th", { scope: "col", class: "check" }, all), columns.map(header))),
        h("tbody", null, rows.length ? rows
          : h("tr", { class: "empty" }, h("td", { colspan: columns.length + 1 }, empty)))));
    }

    // --- groups (server-side over every matching run)

    function groupFilter(value) {
      const kind = st.group.slice(0, 1);
      return value == null ? null : `${KIND_PREFIX[kind]}.${quoted(st.group.slice(2))} = ${sqlString(value)}`;
    }

    function renderGroups() {
      groupsSlot.hidden = !groups;
      if (!groups) return;
      const mKeys = columnsShown().filter((c) => c.startsWith("m:")).map((c) => c.slice(2));
      const label = st.group.slice(2);
      const stat = (s) => {
        if (!s || !s.count) return "—";
        // The spread to two significant digits: it says how sure the mean is, not more.
        const spread = s.std == null ? "" : ` ± ${S.fmtValue(Number(S.toNumber(s.std).toPrecision(2)))}`;
        return h("span", { title: `${s.count} runs; min ${S.fmtValue(s.min)}, max ${S.fmtValue(s.max)}` },
          S.fmtValue(s.mean), h("span", { class: "muted" }, spread));
      };
      const rows = groups.list.map((g) => {
        const f = groupFilter(g.value);
        return h("tr", { "data-group": g.value ?? "" },
          h("th", { scope: "row" }, g.value == null ? h("span", { class: "muted" }, `no ${label}`)
            : f ? h("button", {
              type: "button", class: "link-button", title: `Filter the table to ${label} = ${g.value}`,
              onclick: () => {
                filterInput.value = st.filter ? `${st.filter} and ${f}` : f;
                applyFilter();
              },
            }, g.value) : g.value),
          h("td", { class: "num" }, fmtN(g.count)),
          mKeys.map((k) => h("td", { class: "num", "data-key": k }, stat(g.metrics?.[k]))));
      });
      groupsSlot.replaceChildren(h("div", { class: "table-wrap" },
        h("table", { class: "grid groups-grid", "data-testid": "groups-table" },
          h("thead", null, h("tr", null, h("th", { scope: "col" }, label), h("th", { scope: "col", class: "num" }, "Runs"),
            mKeys.map((k) => h("th", { scope: "col", class: "num", title: `${st.agg[k] || "latest"} value: mean ± standard deviation` },
              `${k}${st.agg[k] ? ` (${st.agg[k]})` : ""}`)))),
          h("tbody", null, rows.length ? rows : h("tr", { class: "empty" }, h("td", { colspan: mKeys.length + 2 }, "No runs."))))),
      groups.truncated ? h("p", { class: "muted small" }, "Only the first 1,000 groups are shown.") : "");
    }

    function renderGroupSelect() {
      const k = keys || keysOf(runs);
      const opts = [h("option", { value: "" }, "No grouping"),
        h("optgroup", { label: "Params" }, k.params.map((x) => h("option", { value: `p:${x}`, selected: st.group === `p:${x}` }, x))),
        h("optgroup", { label: "Tags" }, k.tags.map((x) => h("option", { value: `t:${x}`, selected: st.group === `t:${x}` }, x)))];
      groupSelect.replaceChildren(...opts);
      groupSelect.value = st.group || "";
    }

    // --- columns menu

    function renderColumnsMenu() {
      const k = keys || keysOf(runs);
      const shown = new Set(columnsShown());
      const needle = h("input", {
        type: "search", class: "search", placeholder: "Find a key", "aria-label": "Find a column key",
      });
      const toggle = (id, on) => {
        const list = columnsShown().filter((c) => c !== id);
        if (on) list.push(id);
        // Params first, then metrics, each in key order.
        const order = (c) => KIND_ORDER[c.slice(0, 1)];
        st.cols = list.sort((a, b) => order(a) - order(b) || S.collator.compare(a.slice(2), b.slice(2)));
        writeUrl();
        if (st.group && id.startsWith("m:")) search(); // the groups' statistics follow the metric columns
        else renderTable();
        columnsSummary.textContent = `Columns (${st.cols.length})`;
      };
      const group = (label, kind, list) => h("fieldset", { class: "columns-group" },
        h("legend", null, `${label} (${list.length})`),
        list.length ? list.map((key) => {
          const id = `${kind}:${key}`;
          const box = h("input", { type: "checkbox", checked: shown.has(id), "data-col": id });
          box.addEventListener("change", () => toggle(id, box.checked));
          return h("label", { class: "check-row", "data-key": key }, box, h("span", { class: "mono" }, key));
        }) : h("p", { class: "muted" }, "None."));
      const lists = h("div", { class: "columns-lists" },
        group("Params", "p", k.params), group("Tags", "t", k.tags), group("Metrics", "m", k.metrics));
      needle.addEventListener("input", () => {
        const n = needle.value.trim().toLowerCase();
        for (const row of lists.querySelectorAll(".check-row")) row.hidden = n !== "" && !row.dataset.key.toLowerCase().includes(n);
      });
      const reset = h("button", {
        type: "button", class: "btn-small", onclick: () => {
          st.cols = null;
          writeUrl();
          renderTable();
          renderColumnsMenu();
        },
      }, "Default columns");
      columnsSummary.textContent = `Columns (${shown.size})`;
      columnsBody.replaceChildren(h("div", { class: "columns-head" }, needle, reset), lists);
      renderGroupSelect();
      if (!keys) columnsBody.append(h("p", { class: "muted small" }, "Keys of this page's runs."));
    }

    // Every param, user tag and metric key of the experiment, for the chooser.
    function loadKeys() {
      columnsMenu.dataset.loading = "1";
      return page.api(`/experiments/${enc(expId)}/keys`).then((r) => {
        keys = { params: r.params, tags: r.tags, metrics: r.metrics };
      }, (err) => {
        if (err.name !== "AbortError") console.warn("steppe: could not list the experiment's keys", err);
      }).finally(() => {
        delete columnsMenu.dataset.loading;
      });
    }

    selectionChanged();
    let missing = false;
    page.api(`/experiments/${enc(expId)}`).then((d) => {
      experiment = d.experiment;
      S.setTitle(experiment.name);
      title.textContent = experiment.name;
      crumbName.textContent = experiment.name;
      renderCount();
      renderPager();
      if (S.experimentActions) { // manage.js: delete / restore through MLflow's REST API
        const actions = S.experimentActions(page, experiment, (exp) => {
          experiment = exp;
          renderCount();
        });
        actionsSlot.replaceChildren(actions.el);
        actionErrors.replaceChildren(actions.errors);
      }
    }, (err) => {
      if (!page.alive || err.name === "AbortError") return;
      missing = true;
      loadSeq++; // a search answer must not cover the error
      filterForm.hidden = selBar.hidden = pager.hidden = columnsMenu.hidden = true;
      holder.replaceChildren(S.errorBox(err, "Experiment"));
    });
    // The first page does not wait for the experiment's key list (a SQL query over every run):
    // its default columns come from the page's runs, then from the list once it is there.
    const keysLoaded = loadKeys();
    search();
    keysLoaded.then(() => {
      if (!page.alive || missing || !keys) return;
      renderColumnsMenu();
      if (!searched || st.cols) return;
      // The default columns from the experiment's keys: draw again only if they differ from
      // the page's (a second table of the same rows costs a whole style and layout pass).
      if (columnsShown().join("\n") === renderedColumns) return;
      if (st.group) search(); // the groups' statistics follow the metric columns
      else renderTable();
    });
  }

  S.runsView = runsView;
})();
