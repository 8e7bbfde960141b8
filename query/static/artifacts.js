/* steppe web UI: the run page's Artifacts and Images sections. Lists a run's folders and files (GET
   /api/steppe/v1/artifacts, one folder at a time) and previews text, JSON and images (GET
   /api/steppe/v1/artifacts/raw). A logged model's files (its own artifact root, not a run's) go
   through MLflow's artifact proxy instead (modelArtifactsSection). Loaded after app.js, whose helpers it takes from window.steppe;
   server data reaches the DOM only through textContent and attributes. */
(() => {
  "use strict";

  const S = window.steppe;
  const { h, enc } = S;

  const PREVIEW_BYTES = 256 * 1024; // text and JSON previews read at most this much
  const TEXT_FILE = /(\.(txt|log|md|csv|tsv|yaml|yml|py|cfg|ini|toml|sh|out|err)|(^|\/)MLmodel)$/i;
  const JSON_FILE = /\.json$/i;
  const IMAGE_FILE = /\.(png|jpe?g|gif|webp|bmp)$/i;
  const AUDIO_FILE = /\.(wav|mp3|ogg|flac|m4a)$/i;
  const VIDEO_FILE = /\.(mp4|webm|ogv)$/i;
  const HTML_FILE = /\.html?$/i;
  const TABLE_ROWS = 1000; // a log_table JSON shows at most this many rows
  // An HTML artifact is shown in an iframe with no sandbox permission (no script, no forms,
  // an opaque origin) and a policy that loads nothing from the network (no tracking pixels).
  const HTML_POLICY = "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:\">";

  const baseName = (path) => path.slice(path.lastIndexOf("/") + 1);
  const joinPath = (a, b) => (a ? `${a}/${b}` : b);
  const PROXY = "/api/2.0/mlflow-artifacts/artifacts";
  const proxyUrl = (path) => `${PROXY}/${path.split("/").map(enc).join("/")}`;

  /** Where one tree of files lives: list(page, path) -> [{path, is_dir, file_size}], raw(path) -> URL. */
  const runFiles = (runId) => ({
    list: async (page, path) => (await page.api(`/artifacts?run_id=${enc(runId)}&path=${enc(path)}`)).files,
    raw: (path) => `/api/steppe/v1/artifacts/raw?run_id=${enc(runId)}&path=${enc(path)}`,
  });

  /** Files under `root` of the artifact store, through MLflow's proxy (which answers base names). */
  const proxyFiles = (root) => ({
    list: async (page, path) => {
      const url = `${PROXY}?path=${enc(joinPath(root, path))}`;
      const data = await S.fetchJson(url, { signal: page.ctrl.signal });
      return (data.files || []).map((f) => ({ ...f, path: joinPath(path, f.path) }));
    },
    raw: (path) => proxyUrl(joinPath(root, path)),
  });

  function fmtSize(bytes) {
    if (bytes == null) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = bytes;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  /** The first `limit` bytes of a response body as text; `cut` says whether there was more. */
  async function readHead(res, limit) {
    const reader = res.body.getReader();
    const parts = [];
    let size = 0;
    let cut = false;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      size += value.length;
      if (size >= limit) { cut = true; await reader.cancel(); break; }
    }
    const bytes = new Uint8Array(Math.min(size, limit));
    let at = 0;
    for (const p of parts) {
      const take = Math.min(p.length, bytes.length - at);
      bytes.set(p.subarray(0, take), at);
      at += take;
      if (at === bytes.length) break;
    }
    return { text: new TextDecoder("utf-8", { fatal: false }).decode(bytes), cut };
  }

  class ArtifactsSection {
    constructor(page, files) {
      this.page = page;
      this.files = files;
      this.selected = null;
      this.list = h("ul", { class: "artifact-tree", "data-testid": "artifacts-list" });
      this.preview = h("div", { class: "artifact-preview", "data-testid": "artifact-preview" },
        h("p", { class: "muted" }, "Select a file to preview it."));
      const refresh = h("button", {
        type: "button", class: "btn-small", "data-testid": "artifacts-refresh",
        onclick: () => this.load(this.list, "").catch(() => {}),
      }, "Refresh");
      this.el = h("section", { class: "artifacts", "data-testid": "artifacts" },
        h("div", { class: "section-head" },
          h("h2", null, "Artifacts"), h("span", { class: "spacer" }), refresh),
        h("div", { class: "artifact-panes" },
          h("div", { class: "artifact-list-wrap" }, this.list),
          this.preview));
      this.load(this.list, "").catch(() => {});
    }

    async load(ul, path) {
      ul.replaceChildren(h("li", { class: "muted" }, "Loading…"));
      let data;
      try {
        data = await this.files.list(this.page, path);
      } catch (err) {
        if (!this.page.alive || err.name === "AbortError") return;
        ul.replaceChildren(h("li", null, S.errorBox(err, "Artifacts")));
        return;
      }
      if (!this.page.alive) return;
      const files = [...data].sort((a, b) =>
        (b.is_dir - a.is_dir) || S.collator.compare(a.path, b.path));
      ul.replaceChildren(...(files.length
        ? files.map((f) => this.entry(f))
        : [h("li", { class: "muted" }, path ? "Empty folder." : "No artifacts.")]));
    }

    entry(file) {
      const name = baseName(file.path);
      if (file.is_dir) {
        const children = h("ul", { class: "artifact-tree", hidden: true });
        const toggle = h("button", {
          type: "button", class: "artifact-name artifact-dir", "aria-expanded": "false",
          onclick: () => {
            const open = children.hidden;
            children.hidden = !open;
            toggle.setAttribute("aria-expanded", String(open));
            if (open && !children.dataset.loaded) {
              children.dataset.loaded = "1";
              this.load(children, file.path).catch(() => {});
            }
          },
        }, `${name}/`);
        return h("li", { "data-testid": "artifact-entry", "data-path": file.path, "data-dir": "true" },
          toggle, children);
      }
      const button = h("button", {
        type: "button", class: "artifact-name", onclick: () => this.show(file, button),
      }, name);
      return h("li", { "data-testid": "artifact-entry", "data-path": file.path },
        button,
        h("span", { class: "artifact-size muted" }, fmtSize(file.file_size)),
        h("a", {
          class: "artifact-download", href: this.files.raw(file.path), download: name,
          "aria-label": `Download ${file.path}`,
        }, "download"));
    }

    async show(file, button) {
      if (this.selected) this.selected.removeAttribute("aria-current");
      this.selected = button;
      button.setAttribute("aria-current", "true");
      const url = this.files.raw(file.path);
      const head = h("div", { class: "artifact-preview-head" },
        h("code", { "data-testid": "artifact-preview-path" }, file.path),
        h("span", { class: "muted" }, fmtSize(file.file_size)),
        h("a", { href: url, download: baseName(file.path) }, "download"));
      const body = h("div", { class: "artifact-preview-body" });
      this.preview.replaceChildren(head, body);
      if (IMAGE_FILE.test(file.path)) {
        body.append(h("img", { src: url, alt: file.path, "data-testid": "artifact-image" }));
        return;
      }
      if (AUDIO_FILE.test(file.path) || VIDEO_FILE.test(file.path)) {
        const tag = AUDIO_FILE.test(file.path) ? "audio" : "video";
        body.append(h(tag, { src: url, controls: true, preload: "metadata", class: `artifact-${tag}`, "data-testid": `artifact-${tag}` }));
        return;
      }
      if (!TEXT_FILE.test(file.path) && !JSON_FILE.test(file.path) && !HTML_FILE.test(file.path)) {
        body.append(h("p", { class: "muted" }, "No preview for this type of file."));
        return;
      }
      body.append(h("p", { class: "muted" }, "Loading…"));
      let res;
      try {
        res = await fetch(url, { signal: this.page.ctrl.signal });
        if (!res.ok) throw new S.ApiError(res.status, `HTTP_${res.status}`, res.statusText);
      } catch (err) {
        if (err.name === "AbortError" || !this.page.alive) return;
        body.replaceChildren(S.errorBox(err, "Artifact"));
        return;
      }
      const { text, cut } = await readHead(res, PREVIEW_BYTES);
      if (!this.page.alive || this.selected !== button) return;
      if (HTML_FILE.test(file.path)) {
        body.replaceChildren(
          h("iframe", { sandbox: "", srcdoc: HTML_POLICY + text, class: "artifact-html", title: `Preview of ${file.path}`, "data-testid": "artifact-html", referrerpolicy: "no-referrer" }),
          h("p", { class: "muted small" }, cut ? `Sandboxed preview of the first ${fmtSize(PREVIEW_BYTES)} (no scripts, nothing loaded from the network).`
            : "Sandboxed preview: no scripts, nothing loaded from the network."));
        return;
      }
      let shown = text;
      if (JSON_FILE.test(file.path) && !cut) {
        let doc;
        try { doc = JSON.parse(text); } catch { doc = undefined; /* not JSON after all: as text */ }
        if (doc !== undefined) shown = JSON.stringify(doc, null, 2);
        if (isTable(doc)) {
          body.replaceChildren(tableView(doc, shown));
          return;
        }
      }
      body.replaceChildren(
        h("pre", { class: "artifact-text", "data-testid": "artifact-text" }, shown),
        cut ? h("p", { class: "muted" }, `Showing the first ${fmtSize(PREVIEW_BYTES)}; download for the rest.`) : "");
    }
  }

  /** pandas' "split" layout, as log_table writes it: {"columns": [...], "data": [[...], ...]}. */
  function isTable(doc) {
    return doc != null && typeof doc === "object" && Array.isArray(doc.columns) && Array.isArray(doc.data) &&
      doc.data.every((row) => Array.isArray(row));
  }

  function cellText(v) {
    if (v == null) return "";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  /** A log_table artifact as a table (first TABLE_ROWS rows), with the raw JSON a click away. */
  function tableView(doc, raw) {
    const rows = doc.data.slice(0, TABLE_ROWS);
    const table = h("table", { class: "grid artifact-table", "data-testid": "artifact-table" },
      h("thead", null, h("tr", null, doc.columns.map((c) => h("th", { scope: "col" }, cellText(c))))),
      h("tbody", null, rows.map((row) => h("tr", null, doc.columns.map((c, i) => {
        const v = row[i];
        return h("td", { class: typeof v === "number" ? "num" : null }, typeof v === "number" ? S.fmtValue(v) : cellText(v));
      })))));
    return h("div", { class: "artifact-table-view" },
      h("p", { class: "muted small", "data-testid": "artifact-table-size" },
        `${doc.data.length.toLocaleString("en-US")} rows × ${doc.columns.length} columns` +
        (doc.data.length > TABLE_ROWS ? ` (the first ${TABLE_ROWS.toLocaleString("en-US")} shown)` : "")),
      h("div", { class: "table-wrap" }, table),
      h("details", null, h("summary", null, "Raw JSON"), h("pre", { class: "artifact-text" }, raw)));
  }

  /* Images logged with log_image(key=..., step=...): MLflow's layout
     images/<key with / as ~>+step+<n>+timestamp+<ms>+<uuid>.png, with a +compressed.webp preview.
     One card per key, showing the image at the chosen step (a slider over the logged steps). */
  const IMAGE_NAME = /^(.+)\+step\+(\d+)\+timestamp\+(\d+)\+([0-9a-fA-F-]+)(\+compressed)?\.(png|webp)$/;

  /** {key -> [{step, timestamp, full, preview}] sorted by step} from the images/ listing. */
  function imageSeries(files) {
    const byName = new Map();
    for (const f of files) {
      const m = IMAGE_NAME.exec(baseName(f.path));
      if (!m || f.is_dir) continue;
      const id = `${m[1]}+${m[2]}+${m[3]}+${m[4]}`;
      const entry = byName.get(id) || { key: m[1].replace(/~/g, "/"), step: Number(m[2]), timestamp: Number(m[3]) };
      if (m[5]) entry.preview = f.path; else entry.full = f.path;
      byName.set(id, entry);
    }
    const series = new Map();
    for (const e of byName.values()) {
      if (!e.full) continue;
      if (!series.has(e.key)) series.set(e.key, []);
      series.get(e.key).push(e);
    }
    for (const list of series.values()) list.sort((a, b) => (a.step - b.step) || (a.timestamp - b.timestamp));
    return new Map([...series].sort((a, b) => S.collator.compare(a[0], b[0])));
  }

  function imageCard(files, key, list) {
    const img = h("img", { class: "gallery-img", alt: "", "data-testid": "gallery-image" });
    const link = h("a", { target: "_blank", rel: "noopener" }, img);
    const caption = h("span", { class: "muted", "data-testid": "gallery-step" });
    const show = (i) => {
      const e = list[i];
      img.src = files.raw(e.preview || e.full);
      img.alt = `${key} at step ${e.step}`;
      link.href = files.raw(e.full);
      caption.textContent = `step ${e.step} (${i + 1} of ${list.length})`;
    };
    const slider = list.length > 1 ? h("input", {
      type: "range", min: "0", max: String(list.length - 1), value: String(list.length - 1),
      "aria-label": `Step of ${key}`, "data-testid": "gallery-slider",
      oninput: (ev) => show(Number(ev.target.value)),
    }) : null;
    show(list.length - 1);
    return h("figure", { class: "gallery-card", "data-testid": "gallery-card", "data-key": key },
      link, h("figcaption", null, h("code", null, key), " ", caption), slider);
  }

  /** The run page's Images section: hidden until the run has time-stepped images. */
  S.imagesSection = (page, runId) => {
    const files = runFiles(runId);
    const grid = h("div", { class: "gallery" });
    const el = h("section", { class: "images", "data-testid": "images", hidden: true },
      h("div", { class: "section-head" }, h("h2", null, "Images")), grid);
    files.list(page, "images").then((listed) => {
      if (!page.alive) return;
      const series = imageSeries(listed || []);
      if (!series.size) return;
      grid.replaceChildren(...[...series].map(([key, list]) => imageCard(files, key, list)));
      el.hidden = false;
    }, () => { /* no images/ folder: the section stays hidden */ });
    return el;
  };

  S.artifactsSection = (page, runId) => new ArtifactsSection(page, runFiles(runId)).el;
  /** A logged model's files: `root` is its folder in the artifact store (e.g. 1/models/m-.../artifacts). */
  S.modelArtifactsSection = (page, root) => new ArtifactsSection(page, proxyFiles(root)).el;
  Object.assign(S, { proxyUrl, fmtSize });
})();
