/* steppe web UI: run and experiment management through MLflow's REST API (/api/2.0/mlflow, the
   same calls the clients make): rename a run, edit its description (tag mlflow.note.content,
   shown as Markdown), add and remove tags, delete and restore runs and experiments. A refusal
   (a read-only server, a missing token) is shown with the server's message; nothing is changed
   on the page until the server has said yes, and then the page reads the run again.
   The Markdown renderer is a small safe subset built from DOM nodes and textContent: no HTML
   from the text ever reaches the page, links only to http(s), mailto or this site.
   Loaded after app.js, whose helpers it takes from window.steppe. */
(() => {
  "use strict";

  const S = window.steppe;
  const { h } = S;

  const MLFLOW_API = "/api/2.0/mlflow";
  const NOTE_TAG = "mlflow.note.content";

  /** POST a JSON body to MLflow's REST API; an ApiError (status, error_code, message) if refused. */
  function mlflowPost(page, path, body) {
    return S.fetchJson(MLFLOW_API + path, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: page.ctrl.signal,
    });
  }

  /** Why a write was refused, in words a user can act on. */
  function refusal(err) {
    if (err.status === 401) return "The server needs a token: open this server's address with ?token=<your token> once, then try again.";
    if (err.status === 403) return `The server refused the change: ${err.message}`;
    if (err.code === "NOT_IMPLEMENTED" || err.status === 501) return `This server is read-only: ${err.message}`;
    return err.message || "The change was not saved.";
  }

  function actionError(err, what) {
    return h("div", { class: "error action-error", role: "alert", "data-testid": "action-error" },
      h("strong", null, `${what} not saved`),
      h("span", { class: "error-message" }, refusal(err)),
      err.code ? h("code", { class: "error-code" }, err.code) : null);
  }

  // ---------------------------------------------------------------- Markdown (a safe subset)

  const SAFE_URL = /^(https?:\/\/|mailto:|\/(?!\/)|#)/i;
  const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\(([^)\s]+)\)/;

  /** Inline Markdown (code, strong, em, links) as nodes; anything else stays text. */
  function inline(text) {
    const out = [];
    let rest = text;
    while (rest) {
      const m = INLINE.exec(rest);
      if (!m) {
        out.push(rest);
        break;
      }
      if (m.index) out.push(rest.slice(0, m.index));
      if (m[2] !== undefined) out.push(h("code", null, m[2]));
      else if (m[3] !== undefined || m[4] !== undefined) out.push(h("strong", null, inline(m[3] ?? m[4])));
      else if (m[5] !== undefined || m[6] !== undefined) out.push(h("em", null, inline(m[5] ?? m[6])));
      else if (SAFE_URL.test(m[8])) {
        out.push(h("a", { href: m[8], rel: "noopener noreferrer nofollow", target: "_blank" }, inline(m[7])));
      } else {
        out.push(m[0]); // javascript:, data: and the like: the text as typed
      }
      rest = rest.slice(m.index + m[0].length);
    }
    return out;
  }

  /** Block Markdown: paragraphs, headings, lists, quotes, fenced code and rules. */
  function markdown(text) {
    const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    const blocks = [];
    let para = [];
    let list = null;
    const flush = () => {
      if (para.length) blocks.push(h("p", null, inline(para.join(" "))));
      para = [];
      list = null;
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if (/^\s*```/.test(line)) {
        flush();
        const code = [];
        for (i++; i < lines.length && !/^\s*```/.test(lines[i]); i++) code.push(lines[i]);
        blocks.push(h("pre", null, h("code", null, code.join("\n"))));
      } else if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
        flush();
        blocks.push(h(`h${Math.min(6, m[1].length + 2)}`, null, inline(m[2])));
      } else if ((m = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line))) {
        if (para.length) flush();
        const tag = /\d/.test(m[1]) ? "ol" : "ul";
        if (!list || list.tagName.toLowerCase() !== tag) {
          list = h(tag, null);
          blocks.push(list);
        }
        list.append(h("li", null, inline(m[2])));
      } else if ((m = /^>\s?(.*)$/.exec(line))) {
        flush();
        blocks.push(h("blockquote", null, inline(m[1])));
      } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
        flush();
        blocks.push(h("hr"));
      } else if (!line.trim()) {
        flush();
      } else {
        list = null;
        para.push(line.trim());
      }
    }
    flush();
    return blocks;
  }

  // ---------------------------------------------------------------- the run page

  /**
   * The run page's editing controls. `view` is app.js's RunView: its elements (nameEl,
   * description, tagsSlot, head) and refresh(), which reads the run again after a change.
   */
  class RunEditor {
    constructor(page, view) {
      this.page = page;
      this.view = view;
      this.run = null;
      this.errorSlot = h("div", { class: "action-slot" });
      this.renameBtn = h("button", { type: "button", class: "btn-small", "data-testid": "rename-run", onclick: () => this.rename() }, "Rename");
      this.deleteBtn = h("button", { type: "button", class: "btn-small btn-danger", "data-testid": "delete-run", onclick: () => this.remove() }, "Delete");
      this.restoreBtn = h("button", { type: "button", class: "btn-small", "data-testid": "restore-run", hidden: true, onclick: () => this.restore() }, "Restore");
      this.deletedBadge = h("span", { class: "status status-deleted", "data-testid": "run-deleted", hidden: true }, "deleted");
      this.controls = h("span", { class: "run-actions" }, this.deletedBadge, this.renameBtn, this.deleteBtn, this.restoreBtn);
      this.noteBody = h("div", { class: "note-body markdown", "data-testid": "run-description" });
      this.noteEdit = h("button", { type: "button", class: "btn-small", "data-testid": "edit-description", onclick: () => this.editNote() }, "Add a description");
      this.note = h("section", { class: "note" }, this.noteBody, this.noteEdit);
    }

    /** Where the controls go: beside the name, and the description in place of app.js's. */
    mount(head, description) {
      head.append(this.controls);
      description.replaceWith(this.note);
      this.note.before(this.errorSlot);
    }

    update(run) {
      this.run = run;
      const deleted = run.info.lifecycle_stage === "deleted";
      this.deletedBadge.hidden = !deleted;
      this.deleteBtn.hidden = deleted;
      this.restoreBtn.hidden = !deleted;
      const note = run.data?.tags?.[NOTE_TAG] || "";
      if (note !== this.noteText && !this.editing) {
        this.noteText = note;
        this.noteBody.replaceChildren(...markdown(note));
        this.noteBody.hidden = !note;
        this.noteEdit.textContent = note ? "Edit description" : "Add a description";
      }
    }

    /** One write, then the run read again; a refusal is shown and nothing else changes. */
    async write(what, path, body) {
      this.errorSlot.replaceChildren();
      try {
        await mlflowPost(this.page, path, body);
      } catch (err) {
        if (err.name === "AbortError" || !this.page.alive) return false;
        this.errorSlot.replaceChildren(actionError(err, what));
        return false;
      }
      try {
        await this.view.refresh();
      } catch (err) {
        if (err.name !== "AbortError") console.warn("steppe: could not read the run again", err);
      }
      return true;
    }

    get id() {
      return this.run.info.run_id;
    }

    rename() {
      const name = this.view.nameEl;
      const input = h("input", { type: "text", class: "search rename-input", value: this.run.info.run_name || "", "aria-label": "Run name", "data-testid": "rename-input" });
      const done = () => form.replaceWith(name);
      const form = h("form", { class: "inline-form", "data-testid": "rename-form" }, input,
        h("button", { type: "submit", class: "btn-small btn-primary" }, "Save"),
        h("button", { type: "button", class: "btn-small", onclick: done }, "Cancel"));
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const value = input.value.trim();
        if (!value) return input.focus();
        if (await this.write("Name", "/runs/update", { run_id: this.id, run_name: value })) done();
      });
      form.addEventListener("keydown", (e) => e.key === "Escape" && done());
      name.replaceWith(form);
      input.focus();
      input.select();
    }

    editNote() {
      this.editing = true;
      const area = h("textarea", { class: "note-input mono", rows: "6", "aria-label": "Description (Markdown)", "data-testid": "description-input" });
      area.value = this.noteText || "";
      const close = () => {
        this.editing = false;
        form.remove();
        this.noteBody.hidden = !this.noteText;
        this.noteEdit.hidden = false;
      };
      const form = h("form", { class: "note-form" }, area,
        h("div", { class: "inline-form" },
          h("button", { type: "submit", class: "btn-small btn-primary", "data-testid": "save-description" }, "Save"),
          h("button", { type: "button", class: "btn-small", onclick: close }, "Cancel"),
          h("span", { class: "muted small" }, "Markdown: **bold**, *italic*, `code`, [links](https://…), lists, # headings")));
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const ok = await this.write("Description", "/runs/set-tag", { run_id: this.id, key: NOTE_TAG, value: area.value });
        if (ok) {
          close();
          this.noteText = null; // render what the server now has
          this.update(this.run);
        }
      });
      this.noteBody.hidden = true;
      this.noteEdit.hidden = true;
      this.note.append(form);
      area.focus();
    }

    /** The user tags table (app.js's kvTable) with a remove button per row and an add form. */
    decorateTags(slot) {
      for (const row of slot.querySelectorAll("tbody tr[data-key]")) {
        const key = row.dataset.key;
        row.lastElementChild.append(h("button", {
          type: "button", class: "tag-remove", "aria-label": `Remove tag ${key}`, title: "Remove this tag",
          "data-testid": "remove-tag", onclick: () => this.write("Tag", "/runs/delete-tag", { run_id: this.id, key }),
        }, "×"));
      }
      const key = h("input", { type: "text", class: "search", placeholder: "key", "aria-label": "New tag key", "data-testid": "tag-key", required: true });
      const value = h("input", { type: "text", class: "search", placeholder: "value", "aria-label": "New tag value", "data-testid": "tag-value" });
      const form = h("form", { class: "inline-form tag-form", "data-testid": "add-tag" }, key, value,
        h("button", { type: "submit", class: "btn-small" }, "Add tag"));
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const k = key.value.trim();
        if (!k) return key.focus();
        await this.write("Tag", "/runs/set-tag", { run_id: this.id, key: k, value: value.value });
      });
      slot.append(form);
    }

    remove() {
      // Two steps, no modal: the button asks once more.
      if (this.deleteBtn.dataset.confirm !== "1") {
        this.deleteBtn.dataset.confirm = "1";
        this.deleteBtn.textContent = "Delete this run?";
        this.page.later(() => {
          delete this.deleteBtn.dataset.confirm;
          this.deleteBtn.textContent = "Delete";
        }, 4000);
        return;
      }
      delete this.deleteBtn.dataset.confirm;
      this.deleteBtn.textContent = "Delete";
      this.write("Deletion", "/runs/delete", { run_id: this.id });
    }

    restore() {
      this.write("Restore", "/runs/restore", { run_id: this.id });
    }
  }

  // ---------------------------------------------------------------- the experiment page

  /** Delete / restore buttons for an experiment's page head; onChange(experiment) after a change. */
  function experimentActions(page, experiment, onChange) {
    const slot = h("span", { class: "experiment-actions" });
    const errors = h("div", { class: "action-slot" });
    const render = (exp) => {
      const deleted = exp.lifecycle_stage === "deleted";
      const btn = h("button", {
        type: "button", class: `btn-small${deleted ? "" : " btn-danger"}`,
        "data-testid": deleted ? "restore-experiment" : "delete-experiment",
      }, deleted ? "Restore experiment" : "Delete experiment");
      btn.addEventListener("click", async () => {
        if (!deleted && btn.dataset.confirm !== "1") {
          btn.dataset.confirm = "1";
          btn.textContent = "Delete it and its runs?";
          return;
        }
        errors.replaceChildren();
        try {
          await mlflowPost(page, deleted ? "/experiments/restore" : "/experiments/delete", { experiment_id: exp.experiment_id });
          const fresh = await page.api(`/experiments/${S.enc(exp.experiment_id)}`);
          render(fresh.experiment);
          onChange(fresh.experiment);
        } catch (err) {
          if (err.name === "AbortError" || !page.alive) return;
          errors.replaceChildren(actionError(err, deleted ? "Restore" : "Deletion"));
        }
      });
      slot.replaceChildren(deleted ? h("span", { class: "status status-deleted", "data-testid": "experiment-deleted" }, "deleted") : "", btn);
    };
    render(experiment);
    return { el: slot, errors };
  }

  Object.assign(S, { RunEditor, experimentActions, markdown, mlflowPost });
})();
