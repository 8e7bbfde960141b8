/* steppe web UI: MLflow Models. The registered models list (/models), one registered model with
   its versions (/models/<name>), one LoggedModel (/logged-models/<model_id>: flavors, signature,
   params, files), and the models sections of the run and experiment pages. Data comes from
   MLflow's REST API on this server (/api/2.0/mlflow: registered-models, model-versions,
   logged-models) and the MLmodel file through the artifact proxy. Loaded after app.js, whose
   helpers it takes from window.steppe; server data reaches the DOM only through textContent and
   attributes. */
(() => {
  "use strict";

  const S = window.steppe;
  const { h, enc } = S;

  const DEFAULT_PAGE_SIZE = 50;
  const MAX_PAGE_SIZE = 1000;
  const SUMMARY_FIELDS = 4; // a signature summary names this many inputs, then "+N more"
  const FILTER_LIKE = /(=|<|>|\blike\b|\bilike\b|^\s*tags?\.|^\s*name\b)/i;

  const sqlString = (s) => `'${String(s).replace(/'/g, "''")}'`;
  const pairs = (list) => Object.fromEntries((list || []).map((t) => [t.key, t.value]));
  /** replaceChildren without the nulls (which it would show as the text "null"). */
  const fill = (el, ...kids) => el.replaceChildren(...kids.flat(Infinity).filter((k) => k != null && k !== false));
  const shortStatus = (s) => String(s || "UNKNOWN").replace(/^LOGGED_MODEL_/, "");

  function postJson(page, path, body) {
    return page.mlflow(path, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  /** The search box's text as MLflow's filter: a bare word means "name contains it". */
  function modelFilter(text) {
    const t = text.trim();
    if (!t) return "";
    if (FILTER_LIKE.test(t)) return t;
    return `name ILIKE ${sqlString(`%${t}%`)}`;
  }

  function modelCrumbs(...items) {
    return h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "/models" }, "Models"),
      items.map((item) => [h("span", { "aria-hidden": "true" }, "›"), item]));
  }

  function aliasChips(aliases, testid) {
    if (!aliases.length) return "—";
    return h("span", { class: "chips", "data-testid": testid || null },
      aliases.map((a) => h("span", { class: "chip alias", "data-alias": a.alias },
        `@${a.alias}`, a.version != null ? h("span", { class: "chip-dim" }, ` v${a.version}`) : null)));
  }

  function tagChips(tags) {
    const user = Object.entries(tags).filter(([k]) => !S.SYSTEM_TAG.test(k));
    if (!user.length) return "—";
    return h("span", { class: "chips" }, user.sort((a, b) => S.collator.compare(a[0], b[0])).map(([k, v]) =>
      h("span", { class: "chip", "data-key": k, title: `${k}=${v}` }, h("span", { class: "chip-dim" }, `${k}=`), v)));
  }

  function stageBadge(stage, testid) {
    const s = stage || "None";
    return h("span", { class: `status stage-${s.toLowerCase()}`, "data-testid": testid || null }, s);
  }

  function plainTable(testid, columns, rows, empty, rowAttrs) {
    return h("table", { class: "grid", "data-testid": testid },
      h("thead", null, h("tr", null, columns.map((c) =>
        h("th", { scope: "col", class: c.num ? "num" : null, "data-col": c.id }, c.label)))),
      h("tbody", null, rows.length
        ? rows.map((r) => h("tr", rowAttrs ? rowAttrs(r) : null, columns.map((c) =>
          h("td", { class: [c.num ? "num" : "", c.cls || ""].join(" ").trim() || null, "data-col": c.id }, c.cell(r)))))
        : h("tr", { class: "empty" }, h("td", { colspan: columns.length }, empty))));
  }

  function runLink(runId, testid) {
    if (!runId) return "—";
    return h("a", { href: `/runs/${enc(runId)}`, "data-testid": testid || null, "data-run-id": runId },
      h("code", null, runId));
  }

  function loggedModelLink(modelId, testid, text) {
    if (!modelId) return "—";
    return h("a", { href: `/logged-models/${enc(modelId)}`, "data-testid": testid || null, "data-model-id": modelId },
      text ? text : h("code", null, modelId));
  }

  /** Run names for the run links (one GET per run, at most a page's worth), filled in as they come. */
  function nameRunLinks(page, container) {
    const links = [...container.querySelectorAll("a[data-run-id]")];
    const ids = [...new Set(links.map((a) => a.dataset.runId))].slice(0, 100);
    for (const id of ids) {
      page.api(`/runs/${enc(id)}`).then((d) => {
        const name = d.run.info.run_name;
        if (!name || !page.alive) return;
        for (const a of links) {
          if (a.dataset.runId === id) {
            a.replaceChildren(name);
            a.title = id;
          }
        }
      }, () => { /* the link keeps the id */ });
    }
  }

  // ---------------------------------------------------------------- the MLmodel file

  /**
   * The YAML that MLflow writes for MLmodel (PyYAML's safe_dump, block style): mappings,
   * sequences (also unindented under a key), plain, single- and double-quoted scalars folded
   * over lines, `|`/`>` blocks, {} and []. Anything else raises; the caller then shows the text.
   */
  function parseYaml(text) {
    const lines = text.replace(/\r\n?/g, "\n").split("\n").map((raw) => {
      const indent = raw.length - raw.trimStart().length;
      return { raw, indent, text: raw.trim() };
    });
    let i = 0;
    const blank = (l) => l.text === "" || l.text.startsWith("#") || l.text === "---" || l.text === "...";
    const skip = () => { while (i < lines.length && blank(lines[i])) i++; };
    const isItem = (t) => t === "-" || t.startsWith("- ");
    const keyMatch = (t) => /^('(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|[^'"\s#[\]{},][^]*?)\s*:(?:\s+|$)/.exec(t);

    function node(minIndent) {
      skip();
      if (i >= lines.length || lines[i].indent < minIndent) return null;
      const l = lines[i];
      if (isItem(l.text)) return seq(l.indent);
      if (keyMatch(l.text)) return map(l.indent);
      i++;
      return scalar(l.text, l.indent - 1);
    }

    function key(raw) {
      if (raw.startsWith("'")) return raw.slice(1, -1).replace(/''/g, "'");
      if (raw.startsWith('"')) return unescapeDouble([raw.slice(1, -1)]);
      return raw;
    }

    function map(ind) {
      const out = {};
      for (;;) {
        skip();
        if (i >= lines.length) break;
        const l = lines[i];
        if (l.indent < ind || (l.indent === ind && isItem(l.text))) break;
        if (l.indent > ind) throw new Error(`unexpected indentation at line ${i + 1}`);
        const m = keyMatch(l.text);
        if (!m) throw new Error(`expected "key: value" at line ${i + 1}`);
        const k = key(m[1]);
        const rest = l.text.slice(m[0].length);
        i++;
        if (rest === "" || rest.startsWith("#")) {
          skip();
          const next = lines[i];
          if (next && next.indent > ind) out[k] = node(next.indent);
          else if (next && next.indent === ind && isItem(next.text)) out[k] = seq(ind);
          else out[k] = null;
        } else {
          out[k] = value(rest, ind);
        }
      }
      return out;
    }

    function seq(ind) {
      const out = [];
      for (;;) {
        skip();
        if (i >= lines.length) break;
        const l = lines[i];
        if (l.indent !== ind || !isItem(l.text)) break;
        const rest = l.text.slice(1);
        const content = rest.trimStart();
        if (content === "" || content.startsWith("#")) {
          i++;
          out.push(node(ind + 1));
          continue;
        }
        // "- key: v" or "- - x": the item is a node that starts at the content's column.
        const col = ind + 1 + (rest.length - content.length);
        if (keyMatch(content) || isItem(content)) {
          lines[i] = { raw: " ".repeat(col) + content, indent: col, text: content };
          out.push(node(col));
        } else {
          i++;
          out.push(value(content, ind));
        }
      }
      return out;
    }

    /** A scalar that starts with `first` on the line just read; lines indented past `ind` continue it. */
    function value(first, ind) {
      if (/^[|>][-+0-9]*(\s+#.*)?$/.test(first)) return block(first[0], first.includes("-"), ind);
      return scalar(first, ind);
    }

    function scalar(first, ind) {
      const q = first[0];
      if (q === "'" || q === '"') {
        let body = first.slice(1);
        let end = closing(body, q);
        const parts = [];
        while (end < 0) {
          parts.push(body);
          if (i >= lines.length) throw new Error("unterminated quoted string");
          body = lines[i++].raw;
          end = closing(body, q);
        }
        parts.push(body.slice(0, end));
        const after = body.slice(end + 1).trim();
        if (after && !after.startsWith("#")) throw new Error(`unexpected text after a string: ${after}`);
        return q === "'" ? fold(parts).replace(/''/g, "'") : unescapeDouble(parts);
      }
      const parts = [first.replace(/\s+#.*$/, "")];
      while (i < lines.length && (lines[i].text === "" || lines[i].indent > ind)) {
        if (lines[i].text === "" && !(i + 1 < lines.length && lines[i + 1].indent > ind)) break;
        parts.push(lines[i++].text.replace(/\s+#.*$/, ""));
      }
      return plain(fold(parts));
    }

    function closing(s, q) {
      for (let k = 0; k < s.length; k++) {
        if (q === '"' && s[k] === "\\") { k++; continue; }
        if (s[k] === q) {
          if (q === "'" && s[k + 1] === "'") { k++; continue; }
          return k;
        }
      }
      return -1;
    }

    function block(style, strip, ind) {
      const body = [];
      let blockIndent = null;
      while (i < lines.length && (lines[i].text === "" || lines[i].indent > ind)) {
        const l = lines[i++];
        if (l.text !== "" && blockIndent === null) blockIndent = l.indent;
        body.push(l.text === "" ? "" : l.raw.slice(blockIndent));
      }
      while (body.length && body[body.length - 1] === "") body.pop();
      const textOut = style === "|" ? body.join("\n") : fold(body);
      return strip ? textOut : `${textOut}\n`;
    }

    return node(0);
  }

  /** YAML's line folding: one break between lines is a space, n empty lines are n newlines. */
  function fold(parts) {
    let out = parts[0].replace(/\s+$/, parts.length > 1 ? "" : "$&");
    let breaks = 0;
    for (let k = 1; k < parts.length; k++) {
      const last = k === parts.length - 1;
      const line = last ? parts[k].trimStart() : parts[k].trim();
      if (line === "" && !last) { breaks++; continue; }
      out += breaks ? "\n".repeat(breaks) : " ";
      out += line;
      breaks = 0;
    }
    return out;
  }

  const ESCAPES = { 0: "\0", a: "\x07", b: "\b", t: "\t", "\t": "\t", n: "\n", v: "\v", f: "\f", r: "\r",
    e: "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", N: "\x85", _: "\xa0", L: "\u2028", P: "\u2029" };

  function unescapeDouble(parts) {
    // A backslash at a line's end joins it to the next without a space.
    const joined = [];
    for (let k = 0; k < parts.length; k++) {
      const p = parts[k];
      if (k < parts.length - 1 && /(^|[^\\])(\\\\)*\\$/.test(p.trimEnd())) {
        parts[k + 1] = p.trimEnd().slice(0, -1) + parts[k + 1].trimStart();
        continue;
      }
      joined.push(p);
    }
    return fold(joined).replace(/\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)/g, (_, e) => {
      if (e.length > 1) return String.fromCodePoint(parseInt(e.slice(1), 16));
      if (e in ESCAPES) return ESCAPES[e];
      throw new Error(`unknown escape \\${e}`);
    });
  }

  /** A plain scalar resolved as PyYAML (YAML 1.1) does, so a string it wrote stays a string. */
  function plain(s) {
    if (s === "" || s === "~" || /^(null|Null|NULL)$/.test(s)) return null;
    if (/^(true|True|TRUE|yes|Yes|YES|on|On|ON)$/.test(s)) return true;
    if (/^(false|False|FALSE|no|No|NO|off|Off|OFF)$/.test(s)) return false;
    const sign = s.startsWith("-") ? -1 : 1;
    const digits = s.replace(/^[-+]/, "").replace(/_/g, "");
    if (/^[-+]?(0|[1-9][0-9_]*)$/.test(s)) return Number(s.replace(/_/g, ""));
    if (/^[-+]?0x[0-9a-fA-F_]+$/.test(s)) return sign * parseInt(digits.slice(2), 16);
    if (/^[-+]?0b[01_]+$/.test(s)) return sign * parseInt(digits.slice(2), 2);
    if (/^[-+]?0[0-7_]+$/.test(s)) return sign * parseInt(digits, 8);
    if (/^([-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?|\.[0-9_]+([eE][-+][0-9]+)?)$/.test(s)) return Number(s.replace(/_/g, ""));
    if (/^[-+]?\.(inf|Inf|INF)$/.test(s)) return sign * Infinity;
    if (/^\.(nan|NaN|NAN)$/.test(s)) return NaN;
    if (s === "{}") return {};
    if (s === "[]") return [];
    if (/^[[{]/.test(s)) {
      try { return JSON.parse(s); } catch { return s; } // a flow collection JSON can read, else text
    }
    return s;
  }

  /** An MLflow schema (the JSON text in MLmodel's signature.inputs/outputs/params) as a list, or null. */
  function schemaOf(value) {
    if (value == null || value === "") return null;
    const list = typeof value === "string" ? JSON.parse(value) : value;
    return Array.isArray(list) ? list : null;
  }

  function fmtSpecType(spec) {
    if (!spec || typeof spec !== "object") return String(spec ?? "");
    if (spec.type === "tensor") {
      const t = spec["tensor-spec"] || {};
      return `tensor ${t.dtype || "?"} (${(t.shape || []).join(", ")})`;
    }
    if (spec.type === "array") return `array<${fmtSpecType(spec.items)}>`;
    if (spec.type === "object") {
      const props = Object.entries(spec.properties || {}).map(([k, v]) => `${k}: ${fmtSpecType(v)}`);
      return `object{${props.join(", ")}}`;
    }
    if (spec.type === "map") return `map<string, ${fmtSpecType(spec.values)}>`;
    return String(spec.type ?? "?");
  }

  /** {text, model, error} for a LoggedModel's MLmodel file, read through the artifact proxy. */
  async function loadMlmodel(page, root) {
    if (!root) return { error: "this model's files are not served by this steppe server" };
    let res;
    try {
      res = await fetch(S.proxyUrl(`${root}/MLmodel`), { signal: page.ctrl.signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      return { error: "the steppe server did not answer" };
    }
    if (res.status === 404) return { error: "no MLmodel file (yet)" };
    if (!res.ok) return { error: `the MLmodel file could not be read (HTTP ${res.status})` };
    const text = await res.text();
    try {
      const model = parseYaml(text);
      if (!model || typeof model !== "object" || Array.isArray(model)) throw new Error("not a mapping");
      return { text, model };
    } catch (err) {
      return { text, error: `the MLmodel file could not be read: ${err.message}` };
    }
  }

  /** The artifact store folder of an artifact URI this server serves (mlflow-artifacts:), or null. */
  function proxyRoot(uri) {
    const m = /^mlflow-artifacts:(?:\/\/[^/]*)?\/*(.*)$/.exec(uri || "");
    return m ? m[1].replace(/\/+$/, "") : null;
  }

  function signatureOf(model) {
    const sig = model && model.signature;
    if (!sig || typeof sig !== "object") return null;
    try {
      return { inputs: schemaOf(sig.inputs), outputs: schemaOf(sig.outputs), params: schemaOf(sig.params) };
    } catch {
      return null;
    }
  }

  function specSummary(list) {
    if (!list || !list.length) return "none";
    const named = list.map((s) => (s.name != null ? `${s.name}: ${fmtSpecType(s)}` : fmtSpecType(s)));
    const more = named.length > SUMMARY_FIELDS ? ` +${named.length - SUMMARY_FIELDS} more` : "";
    return named.slice(0, SUMMARY_FIELDS).join(", ") + more;
  }

  function signatureSummary(sig) {
    if (!sig) return h("span", { class: "muted", "data-testid": "signature-summary" }, "no signature");
    return h("span", { class: "signature-summary", "data-testid": "signature-summary" },
      h("span", { class: "muted" }, "inputs "), specSummary(sig.inputs),
      h("span", { class: "muted" }, " → outputs "), specSummary(sig.outputs));
  }

  function schemaTable(testid, list, emptyText, withDefault) {
    const columns = [
      { id: "name", label: "Name", cell: (s) => (s.name != null ? h("code", null, s.name) : h("span", { class: "muted" }, "(unnamed)")) },
      { id: "type", label: "Type", cell: (s) => h("code", null, fmtSpecType(s)) },
      withDefault
        ? { id: "default", label: "Default", cell: (s) => h("code", null, JSON.stringify(s.default ?? null)) }
        : { id: "required", label: "Required", cell: (s) => (s.required === false ? "optional" : "required") },
    ];
    return plainTable(testid, columns, list || [], emptyText,
      (s) => (s.name != null ? { "data-name": s.name } : null));
  }

  function signatureTables(sig) {
    if (!sig) return h("p", { class: "muted", "data-testid": "no-signature" }, "This model was logged without a signature.");
    return h("div", { class: "signature", "data-testid": "signature" },
      h("h3", null, "Inputs"),
      h("div", { class: "table-wrap" }, schemaTable("signature-inputs", sig.inputs, "No inputs.")),
      h("h3", null, "Outputs"),
      h("div", { class: "table-wrap" }, schemaTable("signature-outputs", sig.outputs, "No outputs.")),
      sig.params && sig.params.length ? [
        h("h3", null, "Parameters"),
        h("div", { class: "table-wrap" }, schemaTable("signature-params", sig.params, "", true))] : null);
  }

  function flavorNames(model) {
    const f = model && model.flavors;
    return f && typeof f === "object" ? Object.keys(f) : [];
  }

  /** One flavor's settings as "key: value" text (nested values as JSON). */
  function flavorDetails(conf) {
    if (!conf || typeof conf !== "object") return "";
    return Object.entries(conf).filter(([, v]) => v != null)
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("\n");
  }

  // ---------------------------------------------------------------- /models

  function readListState() {
    const q = new URLSearchParams(location.search);
    const size = Math.trunc(Number(q.get("size")));
    return {
      q: q.get("q") || "",
      token: q.get("after") || null,
      pageNo: q.get("after") ? Math.max(2, Number(q.get("page")) || 2) : 1,
      size: size >= 1 && size <= MAX_PAGE_SIZE ? size : DEFAULT_PAGE_SIZE,
    };
  }

  function modelsView(page) {
    S.setTitle("Models");
    const st = readListState();
    const tokens = [];
    const input = h("input", {
      type: "search", class: "search filter-input mono", value: st.q, spellcheck: "false", autocomplete: "off",
      placeholder: "name LIKE '%iris%'  or  tags.team = 'vision'  or a part of the name",
      "aria-label": "Search registered models (MLflow filter syntax)", "data-testid": "models-search",
    });
    const filterError = h("div", { class: "error filter-error", role: "alert", "data-testid": "filter-error", hidden: true });
    const form = h("form", { class: "filter-bar", role: "search", "data-testid": "models-search-form" },
      input,
      h("button", { type: "submit", class: "btn" }, "Search"),
      h("button", { type: "button", class: "btn btn-quiet", onclick: () => { input.value = ""; apply(); } }, "Clear"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      apply();
    });
    const holder = h("div", { class: "table-wrap" }, S.loading());
    const pageInfo = h("span", { class: "muted", "data-testid": "page-info" });
    const prevBtn = h("button", { type: "button", class: "btn", "data-testid": "prev-page", onclick: () => goPrev() }, "‹ Previous");
    const nextBtn = h("button", { type: "button", class: "btn", "data-testid": "next-page", onclick: () => goNext() }, "Next ›");
    const pager = h("nav", { class: "pager", "aria-label": "Pages" }, pageInfo, h("span", { class: "spacer" }), prevBtn, nextBtn);
    S.main.append(h("section", { class: "page models-page" },
      h("div", { class: "page-head" }, h("h1", null, "Registered models")),
      form, filterError, holder, pager));

    let nextToken = null;
    let seq = 0;

    function writeUrl() {
      S.setParams({ q: st.q, after: st.token, page: st.pageNo > 1 ? st.pageNo : null,
        size: st.size === DEFAULT_PAGE_SIZE ? null : st.size });
    }

    function load() {
      const mine = ++seq;
      holder.classList.add("busy");
      const q = new URLSearchParams({ max_results: String(st.size), order_by: "name ASC" });
      const filter = modelFilter(st.q);
      if (filter) q.set("filter", filter);
      if (st.token) q.set("page_token", st.token);
      return page.mlflow(`/registered-models/search?${q}`).then((d) => {
        if (mine !== seq || !page.alive) return;
        holder.classList.remove("busy", "stale");
        filterError.hidden = true;
        input.removeAttribute("aria-invalid");
        nextToken = d.next_page_token || null;
        render(d.registered_models || []);
      }, (err) => {
        if (mine !== seq || !page.alive || err.name === "AbortError") return;
        holder.classList.remove("busy");
        if (err.status === 400) {
          fill(filterError, h("strong", null, "Invalid search"),
            h("span", { class: "error-message" }, err.message),
            err.code ? h("code", { class: "error-code" }, err.code) : null);
          filterError.hidden = false;
          input.setAttribute("aria-invalid", "true");
          holder.classList.add("stale");
        } else {
          holder.replaceChildren(S.errorBox(err, "Registered models"));
        }
      });
    }

    function render(models) {
      const latest = (m) => {
        const vs = (m.latest_versions || []).map((v) => Number(v.version));
        return vs.length ? Math.max(...vs) : null;
      };
      const columns = [
        { id: "name", label: "Name", cell: (m) => h("a", { href: `/models/${enc(m.name)}`, "data-testid": "model-link" }, m.name) },
        { id: "latest", label: "Latest version", cell: (m) => (latest(m) == null ? "—" : `Version ${latest(m)}`) },
        { id: "aliases", label: "Aliases", cell: (m) => aliasChips(m.aliases || []) },
        { id: "tags", label: "Tags", cell: (m) => tagChips(pairs(m.tags)) },
        { id: "description", label: "Description", cls: "desc-cell",
          cell: (m) => (m.description ? h("span", { title: m.description }, m.description.split("\n")[0]) : "—") },
        { id: "updated", label: "Last updated", cell: (m) => S.timeCell(m.last_updated_timestamp) },
      ];
      let empty;
      if (st.q) empty = "No registered model matches the search.";
      else if (st.pageNo > 1) empty = "No more registered models.";
      else {
        empty = h("span", { "data-testid": "models-empty" }, "No registered models yet. Register one with ",
          h("code", null, "mlflow.register_model(\"runs:/<run_id>/model\", \"name\")"), ".");
      }
      holder.replaceChildren(plainTable("models-table", columns, models, empty, (m) => ({ "data-model-name": m.name })));
      const from = (st.pageNo - 1) * st.size + 1;
      pageInfo.textContent = models.length ? `Models ${from}–${from + models.length - 1}` : "";
      prevBtn.disabled = st.pageNo <= 1;
      nextBtn.disabled = !nextToken;
      pager.hidden = st.pageNo === 1 && !nextToken;
    }

    function apply() {
      st.q = input.value.trim();
      st.token = null;
      st.pageNo = 1;
      tokens.length = 0;
      writeUrl();
      load();
    }

    function goNext() {
      if (!nextToken) return;
      tokens.push(st.token);
      st.token = nextToken;
      st.pageNo++;
      writeUrl();
      load();
    }

    function goPrev() {
      if (st.pageNo <= 1) return;
      if (tokens.length) {
        st.token = tokens.pop();
        st.pageNo--;
      } else {
        st.token = null;
        st.pageNo = 1;
      }
      writeUrl();
      load();
    }

    load();
  }

  // ---------------------------------------------------------------- /models/<name>

  function registeredModelView(page, name) {
    S.setTitle(name);
    const root = h("section", { class: "page model-page" }, S.loading());
    S.main.append(root);
    const q = new URLSearchParams({ filter: `name = ${sqlString(name)}`, order_by: "version_number DESC" });
    Promise.all([
      page.mlflow(`/registered-models/get?${new URLSearchParams({ name })}`),
      page.mlflow(`/model-versions/search?${q}`),
    ]).then(([got, found]) => {
      if (!page.alive) return;
      const m = got.registered_model;
      const versions = found.model_versions || [];
      const tags = pairs(m.tags);
      fill(root,
        modelCrumbs(h("span", null, m.name)),
        h("div", { class: "page-head" }, h("h1", { "data-testid": "model-name" }, m.name),
          h("span", { class: "muted" }, `${versions.length} version${versions.length === 1 ? "" : "s"}`)),
        m.description
          ? h("p", { class: "description", "data-testid": "model-description" }, m.description)
          : h("p", { class: "muted", "data-testid": "model-description" }, "No description."),
        h("dl", { class: "overview", "data-testid": "model-overview" },
          [["Created", S.fmtTime(m.creation_timestamp)],
            ["Last updated", S.fmtTime(m.last_updated_timestamp)],
            ["Aliases", aliasChips(m.aliases || [], "model-aliases")]]
            .map(([k, v]) => h("div", { class: "ov-item" }, h("dt", null, k), h("dd", null, v)))),
        h("section", { class: "metrics" },
          h("div", { class: "section-head" }, h("h2", null, "Versions")),
          h("div", { class: "table-wrap" }, versionsTable(versions)),
          found.next_page_token ? h("p", { class: "muted small" }, `Showing the newest ${versions.length} versions.`) : null),
        h("div", { class: "panels" },
          h("section", { class: "panel" }, h("h2", null, "Tags"),
            h("div", { class: "table-wrap" }, S.kvTable("model-tags", S.byKey(tags), "No tags.")))));
      nameRunLinks(page, root);
    }, (err) => {
      if (!page.alive || err.name === "AbortError") return;
      S.setTitle("Model not found");
      root.replaceChildren(modelCrumbs(), S.errorBox(err, "Registered model"));
    });
  }

  function versionsTable(versions) {
    const columns = [
      { id: "version", label: "Version", cell: (v) => h("strong", null, `Version ${v.version}`) },
      { id: "stage", label: "Stage", cell: (v) => stageBadge(v.current_stage, "version-stage") },
      { id: "aliases", label: "Aliases", cell: (v) => aliasChips((v.aliases || []).map((a) => ({ alias: a })), "version-aliases") },
      { id: "status", label: "Status", cell: (v) => S.statusBadge(v.status) },
      { id: "created", label: "Created", cell: (v) => S.timeCell(v.creation_timestamp) },
      { id: "run", label: "Source run", cell: (v) => runLink(v.run_id, "version-run-link") },
      { id: "model", label: "Logged model", cell: (v) => loggedModelLink(v.model_id, "version-model-link") },
      { id: "tags", label: "Tags", cell: (v) => tagChips(pairs(v.tags)) },
      { id: "description", label: "Description", cls: "desc-cell",
        cell: (v) => (v.description ? h("span", { title: v.description }, v.description.split("\n")[0]) : "—") },
    ];
    // /models/<name>?version=N (MLflow's #/models/<name>/versions/N lands here): that row marked.
    const wanted = new URLSearchParams(location.search).get("version");
    return plainTable("versions-table", columns, versions, "No versions yet.", (v) => ({
      "data-version": v.version,
      class: String(v.version) === wanted ? "selected" : null,
      "aria-current": String(v.version) === wanted ? "true" : null,
    }));
  }

  // ---------------------------------------------------------------- /logged-models/<model_id>

  function loggedModelView(page, modelId) {
    S.setTitle("Logged model");
    const root = h("section", { class: "page logged-model-page" }, S.loading());
    S.main.append(root);
    page.mlflow(`/logged-models/${enc(modelId)}`).then((d) => {
      if (!page.alive) return;
      renderLoggedModel(page, root, d.model);
    }, (err) => {
      if (!page.alive || err.name === "AbortError") return;
      S.setTitle("Logged model not found");
      root.replaceChildren(S.crumbs(), S.errorBox(err, "Logged model"));
    });
  }

  function renderLoggedModel(page, root, lm) {
    const info = lm.info;
    const tags = pairs(info.tags);
    const params = pairs(lm.data?.params);
    const metrics = lm.data?.metrics || [];
    const files = proxyRoot(info.artifact_uri);
    S.setTitle(info.name || info.model_id);

    const expLink = h("a", { href: `/experiments/${enc(info.experiment_id)}` }, `Experiment ${info.experiment_id}`);
    page.api(`/experiments/${enc(info.experiment_id)}`).then((e) => {
      expLink.textContent = e.experiment.name;
    }, () => { /* the breadcrumb keeps the id */ });

    const flavorsSlot = h("div", { class: "table-wrap" }, S.loading("Reading the MLmodel file…"));
    const signatureSlot = h("div", null, S.loading("Reading the MLmodel file…"));
    const versionsSlot = h("div", { class: "table-wrap" }, S.loading());
    const user = Object.entries(tags).filter(([k]) => !S.SYSTEM_TAG.test(k)).sort((a, b) => S.collator.compare(a[0], b[0]));
    const system = Object.entries(tags).filter(([k]) => S.SYSTEM_TAG.test(k)).sort((a, b) => S.collator.compare(a[0], b[0]));

    fill(root,
      S.crumbs(expLink, h("span", null, "Logged models"), h("span", null, info.name || info.model_id)),
      h("div", { class: "page-head" },
        h("h1", { "data-testid": "logged-model-name" }, info.name || info.model_id),
        S.statusBadge(shortStatus(info.status), "logged-model-status")),
      info.status_message ? h("div", { class: "notice" }, info.status_message) : null,
      h("dl", { class: "overview", "data-testid": "logged-model-overview" },
        [["Model ID", h("code", { class: "select-all" }, info.model_id)],
          ["Source run", runLink(info.source_run_id, "logged-model-run-link")],
          ["Created", S.fmtTime(info.creation_timestamp_ms)],
          ["Updated", S.fmtTime(info.last_updated_timestamp_ms)],
          info.model_type ? ["Type", info.model_type] : null,
          ["Location", h("code", null, info.artifact_uri || "—")]]
          .filter(Boolean).map(([k, v]) => h("div", { class: "ov-item" }, h("dt", null, k), h("dd", null, v)))),
      h("section", null,
        h("div", { class: "section-head" }, h("h2", null, "Registered versions")), versionsSlot),
      h("div", { class: "panels" },
        h("section", { class: "panel" }, h("h2", null, "Flavors"), flavorsSlot),
        h("section", { class: "panel" }, h("h2", null, "Signature"), signatureSlot)),
      h("div", { class: "panels" },
        h("section", { class: "panel" }, h("h2", null, "Parameters"),
          h("div", { class: "table-wrap" }, S.kvTable("params-table", S.byKey(params), "No parameters."))),
        h("section", { class: "panel" }, h("h2", null, "Tags"),
          h("div", { class: "table-wrap" }, S.kvTable("tags-table", user, "No tags.")),
          system.length ? h("details", { class: "system-tags" }, h("summary", null, `System tags (${system.length})`),
            S.kvTable("system-tags-table", system, "", "dim")) : null)),
      h("section", { class: "panel" },
        h("div", { class: "section-head" }, h("h2", null, "Metrics")),
        metrics.length
          ? h("div", { class: "table-wrap" }, plainTable("model-metrics", [
            { id: "key", label: "Key", cell: (m) => h("code", null, m.key) },
            { id: "value", label: "Value", num: true, cell: (m) => S.fmtValue(m.value) },
            { id: "step", label: "Step", num: true, cell: (m) => m.step ?? "—" },
            { id: "dataset", label: "Dataset", cell: (m) => m.dataset_name || "—" },
          ], metrics, ""))
          : h("p", { class: "muted", "data-testid": "model-metrics-empty" }, "No metrics are linked to this model",
            info.source_run_id ? [": its source run's are on ", runLink(info.source_run_id), "."] : ".")),
      files
        ? S.modelArtifactsSection(page, files)
        : h("section", { class: "artifacts" }, h("div", { class: "section-head" }, h("h2", null, "Artifacts")),
          h("p", { class: "muted" }, `Stored at ${info.artifact_uri}, which this steppe server does not serve.`)));
    nameRunLinks(page, root);

    const vq = new URLSearchParams({ filter: `model_id = ${sqlString(info.model_id)}` });
    page.mlflow(`/model-versions/search?${vq}`).then((d) => {
      const versions = d.model_versions || [];
      versionsSlot.replaceChildren(plainTable("model-registrations", [
        { id: "name", label: "Registered model", cell: (v) => h("a", { href: `/models/${enc(v.name)}`, "data-testid": "registered-model-link" }, v.name) },
        { id: "version", label: "Version", cell: (v) => `Version ${v.version}` },
        { id: "stage", label: "Stage", cell: (v) => stageBadge(v.current_stage) },
        { id: "aliases", label: "Aliases", cell: (v) => aliasChips((v.aliases || []).map((a) => ({ alias: a }))) },
      ], versions, "Not registered. Register it with mlflow.register_model(\"models:/<model_id>\", \"name\").",
      (v) => ({ "data-name": v.name, "data-version": v.version })));
    }, (err) => {
      if (page.alive && err.name !== "AbortError") versionsSlot.replaceChildren(S.errorBox(err, "Registered versions"));
    });

    loadMlmodel(page, files).then((r) => {
      if (!page.alive) return;
      if (r.error) {
        const note = h("p", { class: "muted", "data-testid": "mlmodel-error" }, `No flavors or signature: ${r.error}.`);
        flavorsSlot.replaceChildren(note);
        signatureSlot.replaceChildren(r.text ? h("pre", { class: "artifact-text" }, r.text) : note.cloneNode(true));
        return;
      }
      const flavors = Object.entries(r.model.flavors || {});
      flavorsSlot.replaceChildren(plainTable("flavors-table", [
        { id: "flavor", label: "Flavor", cell: ([k]) => h("code", null, k) },
        { id: "details", label: "Settings", cls: "pre", cell: ([, v]) => flavorDetails(v) },
      ], flavors, "No flavors.", ([k]) => ({ "data-flavor": k })));
      signatureSlot.replaceChildren(signatureTables(signatureOf(r.model)));
    }, () => { /* aborted: the page is gone */ });
  }

  // ---------------------------------------------------------------- run and experiment sections

  /** The run page's Models section: the LoggedModels whose source run is this run. */
  class RunModels {
    constructor(page, info) {
      this.page = page;
      this.info = info;
      this.seq = 0;
      this.body = h("div", { class: "run-models-body" }, S.loading());
      this.count = h("span", { class: "muted" });
      this.el = h("section", { class: "run-models", "data-testid": "run-models" },
        h("div", { class: "section-head" }, h("h2", null, "Models"), this.count),
        this.body);
      this.load();
    }

    async load() {
      const mine = ++this.seq;
      const page = this.page;
      let models;
      let versions;
      try {
        const [found, registered] = await Promise.all([
          postJson(page, "/logged-models/search", {
            experiment_ids: [this.info.experiment_id],
            filter: `source_run_id = ${sqlString(this.info.run_id)}`,
            order_by: [{ field_name: "creation_timestamp", ascending: true }],
            max_results: 100,
          }),
          page.mlflow(`/model-versions/search?${new URLSearchParams({ filter: `run_id = ${sqlString(this.info.run_id)}` })}`)
            .catch(() => ({ model_versions: [] })), // registrations are extra; the list stands without them
        ]);
        models = found.models || [];
        versions = registered.model_versions || [];
      } catch (err) {
        if (!page.alive || err.name === "AbortError" || mine !== this.seq) return;
        this.body.replaceChildren(S.errorBox(err, "Models"));
        return;
      }
      if (!page.alive || mine !== this.seq) return;
      this.count.textContent = models.length ? `${models.length} logged` : "";
      if (!models.length) {
        this.body.replaceChildren(h("p", { class: "muted", "data-testid": "run-models-empty" },
          "This run logged no models. ", h("code", null, "mlflow.sklearn.log_model(model, name=\"model\")"),
          " (or autolog) logs one."));
        return;
      }
      const byModel = new Map();
      for (const v of versions) {
        if (!v.model_id) continue;
        if (!byModel.has(v.model_id)) byModel.set(v.model_id, []);
        byModel.get(v.model_id).push(v);
      }
      const rows = models.map((m) => {
        const flavors = h("td", { "data-col": "flavors" }, S.loading("…"));
        const signature = h("td", { "data-col": "signature" }, S.loading("…"));
        const regs = byModel.get(m.info.model_id) || [];
        loadMlmodel(page, proxyRoot(m.info.artifact_uri)).then((r) => {
          if (!page.alive) return;
          if (r.error) {
            flavors.replaceChildren("—");
            signature.replaceChildren(h("span", { class: "muted", "data-testid": "signature-summary" }, r.error));
            return;
          }
          flavors.replaceChildren(h("span", { class: "chips" },
            flavorNames(r.model).map((f) => h("span", { class: "chip", "data-flavor": f }, f))));
          const sig = signatureOf(r.model);
          fill(signature, signatureSummary(sig),
            sig ? h("details", { class: "signature-details" }, h("summary", null, "Signature"), signatureTables(sig)) : null);
        }, () => { /* aborted */ });
        return h("tr", { "data-model-id": m.info.model_id },
          h("td", null, loggedModelLink(m.info.model_id, "run-model-link", m.info.name || m.info.model_id),
            h("div", null, h("code", { class: "muted small" }, m.info.model_id))),
          h("td", null, S.statusBadge(shortStatus(m.info.status))),
          flavors,
          signature,
          h("td", { "data-col": "registered" }, regs.length ? h("span", { class: "chips" }, regs.map((v) =>
            h("a", { class: "chip", href: `/models/${enc(v.name)}`, "data-testid": "run-model-version" },
              `${v.name} v${v.version}`))) : "—"),
          h("td", null, S.timeCell(m.info.creation_timestamp_ms)));
      });
      this.body.replaceChildren(h("div", { class: "table-wrap" },
        h("table", { class: "grid run-models-grid", "data-testid": "run-models-table" },
          h("thead", null, h("tr", null, ["Model", "Status", "Flavors", "Signature", "Registered", "Logged"]
            .map((label) => h("th", { scope: "col" }, label)))),
          h("tbody", null, rows))));
    }
  }

  /** The experiment page's Logged models section (newest first, 50 at a time). */
  function experimentModelsSection(page, expId) {
    const holder = h("div", { class: "table-wrap" }, S.loading());
    const more = h("button", { type: "button", class: "btn", "data-testid": "experiment-models-more", hidden: true }, "Show more");
    const count = h("span", { class: "muted", "data-testid": "experiment-models-count" });
    const el = h("section", { class: "experiment-models", "data-testid": "experiment-models" },
      h("div", { class: "section-head" }, h("h2", null, "Logged models"), count), holder, more);
    const all = [];
    let token = null;
    const columns = [
      { id: "name", label: "Model", cell: (m) => loggedModelLink(m.info.model_id, "experiment-model-link", m.info.name || m.info.model_id) },
      { id: "id", label: "ID", cell: (m) => h("code", null, m.info.model_id) },
      { id: "status", label: "Status", cell: (m) => S.statusBadge(shortStatus(m.info.status)) },
      { id: "run", label: "Source run", cell: (m) => runLink(m.info.source_run_id) },
      { id: "registered", label: "Registered", cell: (m) => {
        let regs = [];
        try { regs = JSON.parse(pairs(m.info.tags)["mlflow.modelVersions"] || "[]"); } catch { regs = []; }
        return Array.isArray(regs) && regs.length ? h("span", { class: "chips" }, regs.map((v) =>
          h("a", { class: "chip", href: `/models/${enc(v.name)}` }, `${v.name} v${v.version}`))) : "—";
      } },
      { id: "created", label: "Logged", cell: (m) => S.timeCell(m.info.creation_timestamp_ms) },
    ];
    function load() {
      more.disabled = true;
      postJson(page, "/logged-models/search", {
        experiment_ids: [expId], max_results: 50, page_token: token,
        order_by: [{ field_name: "creation_timestamp", ascending: false }],
      }).then((d) => {
        if (!page.alive) return;
        all.push(...(d.models || []));
        token = d.next_page_token || null;
        more.hidden = !token;
        more.disabled = false;
        count.textContent = all.length ? `${all.length}${token ? "+" : ""}` : "";
        holder.replaceChildren(plainTable("experiment-models-table", columns, all,
          "No logged models in this experiment yet.", (m) => ({ "data-model-id": m.info.model_id })));
        nameRunLinks(page, holder);
      }, (err) => {
        if (page.alive && err.name !== "AbortError") holder.replaceChildren(S.errorBox(err, "Logged models"));
      });
    }
    more.addEventListener("click", load);
    load();
    return el;
  }

  Object.assign(S, {
    modelsView, registeredModelView, loggedModelView, RunModels, experimentModelsSection, parseYaml,
  });
})();
