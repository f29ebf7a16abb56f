// artlens page: pick or drop a picture, show per task the top labels, the Grad-CAM heat map and
// similar artworks. Plain JS, no build step; talks only to this server's /v1 API.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    dropzone: $("dropzone"), file: $("file"), dropLabel: $("drop-label"), viewer: $("viewer"),
    original: $("original"), overlay: $("overlay"), frameBusy: $("frame-busy"), toggle: $("view-toggle"),
    viewOriginal: $("view-original"), viewHeat: $("view-heat"), explainTask: $("explain-task"),
    change: $("change"), caption: $("explain-caption"), examplesBlock: $("examples-block"),
    examples: $("examples"), results: $("results"), alert: $("alert"), alertTitle: $("alert-title"),
    alertDetail: $("alert-detail"), status: $("status"), empty: $("empty"), emptyTasks: $("empty-tasks"),
    tasks: $("tasks"), similarBlock: $("similar-block"), similar: $("similar"), similarHint: $("similar-hint"),
    similarTitle: $("similar-title"), similarBy: $("similar-by"), similarByLabel: $("similar-by-label"),
    modelFacts: $("model-facts"), limitMb: $("limit-mb"), taskTemplate: $("task-template"),
  };

  const TASK_NAMES = {
    style: "Style", genre: "Genre", origin: "Made by", artist: "Artist", movement: "Movement", family: "Generator family",
  };
  const LABEL_NAMES = {
    origin: { human: "A person", ai: "AI (generated)" },
    family: {
      flux: "FLUX", sdxl: "SDXL", sd1: "SD 1.x", sd2: "SD 2.x", dalle: "DALL·E", "dalle-mini": "DALL·E mini",
      ldm: "Latent Diffusion", glide: "GLIDE", disco: "Disco Diffusion", midjourney: "Midjourney",
    },
  };
  // Answers reported inside another task's card (origin's generator family), by their key.
  const ATTACH_TITLES = { family: "Most like" };
  const ERROR_TITLES = {
    payload_too_large: "That file is too big.",
    unsupported_media_type: "That file is not a picture artlens can read.",
    truncated_image: "That picture seems to be cut off.",
    image_too_large: "That picture has too many pixels.",
    invalid_image: "That picture could not be read.",
    busy: "The server is busy.",
    timeout: "That took too long.",
    request_timeout: "The upload took too long.",
    network: "The server could not be reached.",
  };

  // Search modes of an index (`artlens index --by`), as the page names them.
  const MODE_NAMES = { style: "style", artist: "artist (the same hand)", visual: "look (plain CLIP)", features: "all features" };

  const state = {
    index: null, models: null, limits: { max_upload_bytes: 20e6, accepted_types: [] }, features: {},
    file: null, run: 0, objectUrl: null, touchedToggle: false, prediction: null,
  };

  // ------------------------------------------------------------------ helpers
  const taskTitle = (t) => TASK_NAMES[t] || t.replace(/[_+]/g, " ").replace(/^./, (c) => c.toUpperCase());
  const labelText = (task, label) => (LABEL_NAMES[task] && LABEL_NAMES[task][label]) || String(label).replace(/_/g, " ");
  const pct = (p) => (p < 0.005 ? "<1%" : p > 0.995 && p < 1 ? ">99%" : `${Math.round(p * 100)}%`);
  const mb = (bytes) => (bytes / 1e6).toFixed(bytes < 10e6 ? 1 : 0);
  const sentence = (s) => String(s).charAt(0).toUpperCase() + String(s).slice(1);
  // Tasks with a card of their own: an attached task (origin's family) shows inside its parent's.
  const cardTasks = () => (state.models ? state.models.tasks.filter((t) => !t.attach) : []);

  function node(tag, props = {}, children = []) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k.startsWith("data-") || k.startsWith("aria-")) n.setAttribute(k, v);
      else n[k] = v;
    }
    for (const c of [].concat(children)) if (c != null) n.append(c);
    return n;
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw { code: "network", detail: "Check that `artlens serve` is still running." };
    }
    const type = response.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await response.json().catch(() => null) : null;
    if (!response.ok) {
      throw {
        status: response.status,
        code: (body && body.error) || `http_${response.status}`,
        detail: (body && (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))) || response.statusText,
      };
    }
    return body;
  }

  function showError(err, fallbackTitle) {
    el.alertTitle.textContent = ERROR_TITLES[err.code] || fallbackTitle || "Something went wrong.";
    el.alertDetail.textContent = err.detail || "";
    el.alert.hidden = false;
    el.alert.dataset.code = err.code || "";
  }
  const clearError = () => { el.alert.hidden = true; el.alert.dataset.code = ""; };
  function setStatus(text, busy = false) {
    el.status.textContent = text;
    el.status.classList.toggle("busy", busy);
    el.results.setAttribute("aria-busy", busy ? "true" : "false");
  }

  // ------------------------------------------------------------------ start-up
  async function init() {
    try {
      const info = await api("/v1/models");
      state.models = info.model;
      state.limits = info.limits;
      state.features = info.features || {};
      state.index = info.index || null;
      renderIndexFacts(state.index);
      el.limitMb.textContent = mb(info.limits.max_upload_bytes);
      renderModelFacts(info);
      el.emptyTasks.replaceChildren(...cardTasks().map((t) => node("li", { text: taskTitle(t.name) })));
      el.explainTask.replaceChildren(
        ...cardTasks().map((t) => node("option", { value: t.name, text: taskTitle(t.name).toLowerCase() })),
      );
    } catch (err) {
      showError(err, "The model information could not be loaded.");
    }
    try {
      const ex = await api("/v1/examples");
      renderExamples(ex.examples || []);
    } catch (_) { /* examples are optional */ }
  }

  function renderIndexFacts(index) {
    if (!index) return;
    if (index.collection) el.similarTitle.textContent = `Similar works in ${index.collection}`;
    const modes = index.modes || [];
    if (modes.length > 1) {
      el.similarBy.replaceChildren(...modes.map((m) => node("option", { value: m, text: MODE_NAMES[m] || m })));
      el.similarBy.value = index.default_mode || modes[0];
      el.similarByLabel.hidden = false;
    }
  }

  function renderModelFacts(info) {
    const m = info.model;
    const parts = [`Model: ${m.name}`];
    if (m.backbone && m.backbone.name) parts.push(`backbone ${m.backbone.name}`);
    parts.push(cardTasks().map((t) => `${taskTitle(t.name).toLowerCase()} (${t.labels.length} labels)`).join(", "));
    if (info.index && info.index.size) parts.push(`${info.index.size.toLocaleString()} artworks indexed`);
    el.modelFacts.textContent = parts.join(" · ");
  }

  function renderExamples(items) {
    if (!items.length) return;
    el.examples.replaceChildren(
      ...items.map((item) => {
        const who = item.artist ? `${item.title} by ${item.artist}` : item.title;
        const img = node("img", { src: `${item.image_url}?size=192`, alt: "", loading: "lazy", width: 96, height: 96 });
        const button = node("button", { type: "button", class: "example", title: who, "aria-label": `Try ${who}` }, [
          img, node("span", { text: item.artist ? item.artist.split(" ").slice(-1)[0] : item.title }),
        ]);
        button.dataset.id = item.id;
        button.addEventListener("click", () => useExample(item));
        return node("li", {}, button);
      }),
    );
    el.examplesBlock.hidden = false;
  }

  async function useExample(item) {
    clearError();
    setStatus(`Fetching “${item.title}”…`, true);
    try {
      const response = await fetch(`${item.image_url}?size=1024`);
      if (!response.ok) throw { code: "not_found", detail: `The example “${item.title}” is not available.` };
      const blob = await response.blob();
      const name = `${item.artist ? item.artist + " - " : ""}${item.title}.jpg`;
      await analyse(new File([blob], name, { type: blob.type || "image/jpeg" }));
    } catch (err) {
      setStatus("");
      showError(err, "That example could not be loaded.");
    }
  }

  // ------------------------------------------------------------------ one picture
  function rejectLocally(file) {
    const limit = state.limits.max_upload_bytes;
    if (file.size > limit) {
      return { code: "payload_too_large", detail: `${file.name} is ${mb(file.size)} MB; the limit is ${mb(limit)} MB.` };
    }
    if (file.size === 0) return { code: "invalid_image", detail: `${file.name} is empty (0 bytes).` };
    if (file.type && !file.type.startsWith("image/")) {
      return { code: "unsupported_media_type", detail: `${file.name} is ${file.type}, not an image.` };
    }
    if (file.type === "image/svg+xml") {
      return { code: "unsupported_media_type", detail: `${file.name} is an SVG drawing; use a JPEG, PNG or WebP.` };
    }
    return null;
  }

  function showPicture(file) {
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(file);
    el.original.src = state.objectUrl;
    el.original.alt = `The picture you chose: ${file.name}`;
    el.overlay.hidden = true;
    el.overlay.removeAttribute("src");
    el.viewOriginal.checked = true;
    el.toggle.disabled = true;
    state.touchedToggle = false;
    el.dropLabel.hidden = true;
    el.viewer.hidden = false;
    el.dropzone.dataset.state = "loaded";
    el.change.hidden = false;
    el.caption.textContent = "";
  }

  function resetPicture() {
    el.viewer.hidden = true;
    el.dropLabel.hidden = false;
    el.dropzone.dataset.state = "empty";
    el.change.hidden = true;
  }

  async function analyse(file) {
    clearError();
    const problem = rejectLocally(file);
    if (problem) { showError(problem); return; }
    const run = ++state.run;
    state.file = file;
    showPicture(file);
    renderSkeleton();
    el.similarBlock.hidden = true;
    setStatus(`Looking at ${file.name}…`, true);
    el.frameBusy.hidden = false;

    let result, ms;
    try {
      const body = new FormData();
      body.append("file", file, file.name);
      const data = await api("/v1/predict?top_k=3", { method: "POST", body });
      result = data.results[0];
      ms = data.elapsed_ms;
      if (result.error) throw { code: result.code, detail: result.error };
    } catch (err) {
      if (run !== state.run) return;
      el.frameBusy.hidden = true;
      el.tasks.replaceChildren();
      el.empty.hidden = false;
      setStatus("");
      showError(err, "The picture could not be analysed.");
      resetPicture();
      return;
    }
    if (run !== state.run) return;
    state.prediction = result;
    el.frameBusy.hidden = true;
    renderTasks(result);
    setStatus(`${file.name} · ${result.width} × ${result.height} px · ${Math.round(ms)} ms`);
    el.explainTask.value = state.models ? cardTasks()[0].name : el.explainTask.value;
    await Promise.all([explain(run), similar(run)]);
  }

  // ------------------------------------------------------------------ predictions
  function renderSkeleton() {
    el.empty.hidden = true;
    const tasks = state.models ? cardTasks() : [{ name: "…" }];
    el.tasks.replaceChildren(
      ...tasks.map((t) => {
        const card = el.taskTemplate.content.firstElementChild.cloneNode(true);
        card.classList.add("skeleton");
        card.querySelector(".task-name").textContent = taskTitle(t.name);
        card.querySelector(".verdict").textContent = "…";
        const bars = card.querySelector(".bars");
        for (let i = 0; i < 3; i++) bars.append(barNode("…", 0, null, true));
        return card;
      }),
    );
  }

  // `tick`: { at, title } marks the threshold on this bar, or null.
  function barNode(label, prob, tick, skeleton = false) {
    const fill = node("div", { class: "bar-fill" });
    const track = node("div", { class: "bar-track", "aria-hidden": "true" }, fill);
    if (tick && tick.at > 0) {
      const mark = node("span", { class: "bar-threshold", title: tick.title });
      mark.style.left = `${Math.min(100, tick.at * 100)}%`;
      track.append(mark);
    }
    const li = node("li", { class: "bar" }, [
      node("span", { class: "bar-label", text: label }),
      node("span", { class: "bar-value", text: skeleton ? "" : pct(prob) }),
      track,
    ]);
    requestAnimationFrame(() => { fill.style.width = `${Math.max(0, Math.min(1, prob)) * 100}%`; });
    return li;
  }

  // The threshold drawn on a bar: a banded task's accept threshold on its label's bar (P(AI) must
  // reach it for an "AI" answer), else the "unsure" threshold on the top bar.
  function tickFor(task, name, item, i) {
    const band = task.band;
    if (band) {
      if (item.label !== band.label) return null;
      return { at: band.accept, title: `“${labelText(name, band.label)}” from ${pct(band.accept)}` };
    }
    return i === 0 && task.threshold ? { at: task.threshold, title: `“unsure” below ${pct(task.threshold)}` } : null;
  }

  // An attached answer (origin's family) as a compact list with small bars.
  function attachedNode(task, items) {
    const key = task.attach.key;
    const title = ATTACH_TITLES[key] || taskTitle(key);
    const shown = items.filter((x, i) => i === 0 || x.prob >= 0.01);
    const aria = `${title} (${taskTitle(task.name).toLowerCase()}), with probabilities`;
    const list = node("ul", { class: "attached-list", "aria-label": aria },
      shown.map((x) => {
        const fill = node("span", { class: "mini-fill" });
        fill.style.width = `${(Math.max(0, Math.min(1, x.prob)) * 100).toFixed(1)}%`;
        return node("li", {}, [
          node("span", { class: "attached-label", text: labelText(task.name, x.label) }),
          node("span", { class: "attached-pct", text: pct(x.prob) }),
          node("span", { class: "mini-track", "aria-hidden": "true" }, fill),
        ]);
      }));
    return node("div", { class: "attached", "data-key": key }, [
      node("span", { class: "attached-title", text: `${title}:` }), list,
    ]);
  }

  function renderTasks(result) {
    const tasks = state.models ? cardTasks() : Object.keys(result.tasks).map((name) => ({ name }));
    const attached = state.models ? state.models.tasks.filter((t) => t.attach) : [];
    const cards = [];
    for (const task of tasks) {
      const name = task.name;
      const r = result.tasks[name];
      if (!r) continue;
      const card = el.taskTemplate.content.firstElementChild.cloneNode(true);
      const top = r.top[0];
      card.dataset.task = name;
      card.dataset.top = top.label;
      card.dataset.label = r.label;
      card.querySelector(".task-name").textContent = taskTitle(name);
      const head = card.querySelector(".task-head");
      const verdict = card.querySelector(".verdict");
      if (r.unsure || r.label !== top.label) {
        card.classList.add("is-unsure");
        const shown = r.unsure ? "Unsure" : labelText(name, r.label);
        verdict.append(node("span", { class: "badge unsure", text: shown }));
        if (r.reason) {
          // A banded answer says why it is unsure; its probabilities are in the bars, not in the verdict.
          head.append(node("p", { class: "reason", text: sentence(r.reason) }));
        } else {
          verdict.append(node("span", {
            class: "guess",
            text: `best guess: ${labelText(name, top.label)} (${pct(top.prob)})` +
              (r.unsure && task.threshold ? `, under the ${pct(task.threshold)} needed for an answer` : ""),
          }));
        }
      } else {
        verdict.append(labelText(name, top.label), node("span", { class: "pct", text: pct(top.prob) }));
        for (const a of attached) {
          const items = a.attach.task === name ? r[a.attach.key] : null;
          if (items && items.length) head.append(attachedNode(a, items));
        }
      }
      const bars = card.querySelector(".bars");
      bars.setAttribute("aria-label", `${taskTitle(name)}: top ${r.top.length} labels with probabilities`);
      r.top.forEach((t, i) => bars.append(barNode(labelText(name, t.label), t.prob, tickFor(task, name, t, i))));
      cards.push(card);
    }
    el.tasks.replaceChildren(...cards);
  }

  // ------------------------------------------------------------------ heat map
  async function explain(run) {
    const f = state.features.explain;
    if (f && !f.available) {
      el.toggle.hidden = true;
      el.explainTask.parentElement.hidden = true;
      el.caption.textContent = "Heat maps are not available on this server.";
      return;
    }
    const task = el.explainTask.value || (state.models && cardTasks()[0].name);
    el.caption.textContent = "Drawing the heat map…";
    el.toggle.disabled = true;
    try {
      const body = new FormData();
      body.append("file", state.file, state.file.name);
      // Explain the label the page shows: the fp32 Grad-CAM model's own top class can differ
      // slightly from the INT8 prediction on close calls.
      const pred = state.prediction && state.prediction.tasks && state.prediction.tasks[task];
      const target = pred && pred.top && pred.top.length ? `&target_class=${encodeURIComponent(pred.top[0].label)}` : "";
      const data = await api(`/v1/explain?format=json&task=${encodeURIComponent(task)}${target}`, { method: "POST", body });
      if (run !== state.run) return;
      el.overlay.src = `data:${data.overlay.media_type};base64,${data.overlay.base64}`;
      const what = `${taskTitle(data.task).toLowerCase()} “${labelText(data.task, data.label)}” (${pct(data.prob)})`;
      el.overlay.alt = `Heat map over the picture: the warm regions raised the score of ${what}.`;
      el.caption.textContent = `Heat map: warm colours mark what raised the score of ${what}.`;
      el.toggle.disabled = false;
      if (!state.touchedToggle) el.viewHeat.checked = true;
      applyView();
    } catch (err) {
      if (run !== state.run) return;
      el.caption.textContent = `No heat map: ${err.detail || "the server could not draw it."}`;
    }
  }

  function applyView() {
    const heat = el.viewHeat.checked && el.overlay.getAttribute("src");
    el.overlay.hidden = !heat;
    el.original.hidden = !!heat;
  }

  // ------------------------------------------------------------------ similar artworks
  async function similar(run) {
    const f = state.features.similar;
    if (!f || !f.available) return;
    try {
      const body = new FormData();
      body.append("file", state.file, state.file.name);
      const by = el.similarByLabel.hidden ? "" : `&by=${encodeURIComponent(el.similarBy.value)}`;
      const data = await api(`/v1/similar?k=8${by}`, { method: "POST", body });
      if (run !== state.run) return;
      renderSimilar(data.results || [], data.by);
    } catch (err) {
      if (run !== state.run) return;
      el.similarHint.textContent = `Similar artworks could not be found: ${err.detail || err.code}`;
      el.similar.replaceChildren();
      el.similarBlock.hidden = false;
    }
  }

  function renderSimilar(items, by) {
    const index = state.index || {};
    const where = index.collection ? `${index.collection} (${(index.size || 0).toLocaleString()} works)` : "the index";
    const how = by ? `, by ${MODE_NAMES[by] || by}` : "";
    el.similarHint.textContent = items.length ? `The ${items.length} nearest works in ${where}${how}; closest first.` : "The index is empty.";
    el.similar.replaceChildren(
      ...items.map((n) => {
        const who = n.artist ? `${n.title} by ${n.artist}` : n.title;
        const labels = Object.entries(n.labels || {})
          .filter(([k]) => k !== "artist")
          .map(([k, v]) => labelText(k, v)).join(" · ");
        const cap = node("figcaption", {}, [
          node("span", { class: "t", text: n.title, title: who }),
          n.artist ? node("span", { class: "a", text: n.artist }) : null,
          labels ? node("span", { class: "l", text: labels }) : null,
          node("span", {
            class: "s", text: `${pct(Math.max(0, n.similarity))} similar`,
            title: n.distance === undefined ? "" : `cosine distance ${n.distance.toFixed(3)}`,
          }),
          n.duplicate ? node("span", { class: "dup", text: "same picture" }) : null,
        ]);
        const src = n.thumb_url || `${n.image_url}?size=264`;
        const img = node("img", { src, alt: who, loading: "lazy", width: 132, height: 132 });
        return node("li", { "data-id": n.id, "data-row": n.row === undefined ? "" : String(n.row) }, node("figure", {}, [img, cap]));
      }),
    );
    el.similarBlock.hidden = false;
  }

  // ------------------------------------------------------------------ input events
  function takeFiles(files) {
    if (!files || !files.length) return;
    const list = Array.from(files);
    analyse(list[0]);
    if (list.length > 1) setTimeout(() => setStatus(`Only the first of ${list.length} files is analysed.`), 0);
  }

  el.file.addEventListener("change", () => { takeFiles(el.file.files); el.file.value = ""; });
  el.change.addEventListener("click", () => el.file.click());
  el.toggle.addEventListener("change", () => { state.touchedToggle = true; applyView(); });
  el.explainTask.addEventListener("change", () => { if (state.file) explain(state.run); });
  el.similarBy.addEventListener("change", () => { if (state.file) similar(state.run); });

  let depth = 0;
  el.dropzone.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; el.dropzone.classList.add("dragging"); });
  el.dropzone.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; el.dropzone.classList.remove("dragging"); } });
  el.dropzone.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; });
  el.dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    el.dropzone.classList.remove("dragging");
    takeFiles(e.dataTransfer.files);
  });
  // A picture dropped next to the zone must not replace the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const files = Array.from((e.clipboardData && e.clipboardData.files) || []).filter((f) => f.type.startsWith("image/"));
    if (files.length) takeFiles(files);
  });

  init();
})();
