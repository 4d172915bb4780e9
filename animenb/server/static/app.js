// animenb gallery page: finished runs from /api/anime/gallery, running jobs from /api/anime/jobs
// followed live over /ws/job/<id>. No framework, no build step.
//
// Safety: every piece of server or user text (prompts above all) goes in through textContent or
// setAttribute on a known attribute; URLs are used only when they are our own API paths or
// data:image/ previews. Never innerHTML with data.
"use strict";

const API = "/api/anime";
const PHASE_LABELS = { 1: "1 · CHARACTER_SHEET", 2: "2 · ANIMATION_LOOP", 3: "3 · FULL_VIDEO" };
const VIDEO = /\.(mp4|webm)$/i;
const JOBS_POLL_MS = 2000;
const GALLERY_POLL_MS = 15000;
const LINK_KINDS = ["sheet", "gif", "mp4", "webp", "quality"];

const state = {
  phase: "",              // "" (all) or "1" / "2" / "3"
  galleryCards: new Map(),  // job_id -> card element
  running: new Map(),     // job_id -> {card, ws, done}
  manifests: new Map(),   // job_id -> Promise<manifest | null>
  nextCursor: null,
};

// -- tiny DOM helpers (textContent only) --------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key in node && typeof value === "boolean") node[key] = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Only our own API paths (files, thumbnails, notebooks) become src/href.
function apiUrl(url) {
  return typeof url === "string" && url.startsWith(API + "/") && !url.includes("..") ? url : null;
}
function previewUrl(url) {
  return typeof url === "string" && /^data:image\/(png|jpeg|webp|gif);base64,[A-Za-z0-9+/=]+$/.test(url) ? url : null;
}

async function getJSON(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    const message = body && body.error ? body.error.message : `${resp.status} ${resp.statusText}`;
    throw new Error(message);
  }
  return body;
}

function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function phaseBadge(phase, phaseName) {
  const label = PHASE_LABELS[phase] || (phaseName ? `${phase} · ${phaseName}` : "phase ?");
  return el("span", { class: "badge phase", text: label });
}

function qualityBadges(quality) {
  if (!quality || quality.score === null || quality.score === undefined) {
    return [el("span", { class: "badge", text: quality && quality.error ? "quality: error" : "not scored",
                         title: quality && quality.error ? String(quality.error) : null })];
  }
  const score = Number(quality.score);
  const threshold = quality.threshold === undefined || quality.threshold === null ? null : Number(quality.threshold);
  const passed = !!quality.passed;
  const review = quality.verdict === "review";  // close to a floor: a person should look
  const reasons = review && Array.isArray(quality.review_reasons) ? ` (${quality.review_reasons.join("; ")})` : "";
  return [
    el("span", { class: "badge score", text: `quality ${score.toFixed(3)}` }),
    el("span", { class: `badge gate ${review ? "review" : passed ? "pass" : "fail"}`,
                 text: review ? "needs review" : passed ? "gate passed" : "below gate",
                 title: threshold === null ? null : `gate at ${threshold.toFixed(2)}${reasons}` }),
  ];
}

// -- models label: from each run's manifest.json (profile label, tiny flag) ----------------
function manifestFor(jobId) {
  if (!state.manifests.has(jobId)) {
    const url = `${API}/outputs/${encodeURIComponent(jobId)}/manifest.json`;
    state.manifests.set(jobId, getJSON(url).catch(() => null));
  }
  return state.manifests.get(jobId);
}

function fillModels(jobId, slot, stepsSlot) {
  manifestFor(jobId).then((manifest) => {
    if (!manifest) return;
    // "models" is the profile label ("tiny (random weights)" for the tiny profile) or {profile, label, tiny}
    const models = manifest.models;
    const label = typeof models === "string" ? models : models && (models.label || models.profile);
    if (label) {
      const tiny = (models && models.tiny === true) || String(label).startsWith("tiny (random weights)");
      slot.append(el("span", { class: `badge models${tiny ? " tiny" : ""}`,
                               text: tiny ? "tiny (random weights)" : String(label),
                               title: tiny ? "random-weight models: images are noise (tests and demos)" : null }));
    }
    const params = manifest.parameters || {};
    const bits = [];
    if (params.steps !== undefined) bits.push(`${params.steps} steps`);
    if (params.width && params.height) bits.push(`${params.width}×${params.height}`);
    const total = manifest.timings && manifest.timings.total_seconds;
    if (typeof total === "number") bits.push(fmtSeconds(total));
    if (bits.length) stepsSlot.textContent = bits.join(" · ");
  });
}

// -- finished runs -------------------------------------------------------------------------
function mediaFor(item) {
  const url = apiUrl(item.url);
  const box = el("div", { class: "media" });
  if (!url) {
    box.append(el("span", { class: "waiting", text: "no image output" }));
  } else if (VIDEO.test(url)) {
    const video = el("video", { src: url, poster: apiUrl(item.thumbnail_url), controls: true, loop: true,
                                preload: "metadata", playsinline: true });
    video.muted = true;
    video.autoplay = true;
    box.append(video);
  } else {
    box.append(el("img", { src: url, alt: `output of job ${item.job_id}`, loading: "lazy", decoding: "async" }));
  }
  return box;
}

// Reviewers' verdicts (POST /generation/{id}/review) need a user token: asked once, kept for the tab.
async function postReview(jobId, verdict, button) {
  let token = sessionStorage.getItem("animenb-token");
  if (!token) {
    token = window.prompt("An animenb token (animenb token create NAME) to record your verdict:");
    if (!token) return;
    sessionStorage.setItem("animenb-token", token.trim());
  }
  const resp = await fetch(`${API}/generation/${encodeURIComponent(jobId)}/review`, {
    method: "POST", body: JSON.stringify({ verdict }),
    headers: { "Content-Type": "application/json", Accept: "application/json",
               Authorization: `Bearer ${sessionStorage.getItem("animenb-token")}` },
  });
  const body = await resp.json().catch(() => null);
  if (resp.status === 401) sessionStorage.removeItem("animenb-token");
  button.parentNode.dataset.verdict = resp.ok ? verdict : "";
  button.title = resp.ok ? `recorded: ${verdict}` : (body && body.error ? body.error.message : `HTTP ${resp.status}`);
}

function reviewButtons(jobId) {
  const box = el("div", { class: "review" });
  for (const verdict of ["good", "bad"]) {
    const button = el("button", { type: "button", class: `review-${verdict}`, text: verdict,
                                  title: `record "${verdict}" for this output (calibrates the gates)` });
    button.addEventListener("click", () => postReview(jobId, verdict, button));
    box.append(button);
  }
  return box;
}

function galleryCard(item) {
  const badges = el("div", { class: "badges" }, phaseBadge(item.phase, item.phase_name), ...qualityBadges(item.quality));
  const details = el("div", { class: "meta" });
  const links = el("div", { class: "links" });
  const notebook = apiUrl(item.notebook_url);
  if (notebook) links.append(el("a", { href: notebook, download: `${item.job_id}.ipynb`, text: "executed notebook" }));
  for (const file of item.files || []) {
    const href = apiUrl(file.url);
    if (href && LINK_KINDS.includes(file.kind)) {
      links.append(el("a", { href, target: "_blank", rel: "noopener", text: String(file.path) }));
    }
  }
  const manifest = `${API}/outputs/${encodeURIComponent(item.job_id)}/manifest.json`;
  links.append(el("a", { href: manifest, target: "_blank", rel: "noopener", text: "manifest" }));
  const card = el("article", { class: "card finished", "data-job": item.job_id, "data-phase": item.phase },
    mediaFor(item),
    el("div", { class: "body" },
      el("div", { class: "prompt", text: item.prompt || "(no prompt)" }),
      badges,
      el("div", { class: "meta", text: `seed ${item.seed ?? "–"} · ${item.finished_at ? item.finished_at.replace("T", " ").slice(0, 19) : ""}` }),
      details,
      links,
      reviewButtons(item.job_id)));
  fillModels(item.job_id, badges, details);
  return card;
}

function applyFilter() {
  for (const card of document.querySelectorAll(".card")) {
    card.hidden = state.phase !== "" && card.dataset.phase !== state.phase;
  }
  const visible = [...state.galleryCards.values()].filter((c) => !c.hidden).length;
  document.getElementById("empty").hidden = visible > 0;
  document.getElementById("running-section").hidden =
    ![...state.running.values()].some((r) => !r.card.hidden);
}

async function loadGallery({ more = false } = {}) {
  const params = new URLSearchParams({ limit: "48" });
  if (more && state.nextCursor) params.set("cursor", state.nextCursor);
  let body;
  try {
    body = await getJSON(`${API}/gallery?${params}`);
  } catch (err) {
    setServer(`gallery unavailable: ${err.message}`);
    return;
  }
  const grid = document.getElementById("gallery");
  const items = body.gallery || [];
  if (!more) {  // newest first: put new cards on top, keep the existing elements (no flicker)
    const fresh = items.filter((item) => !state.galleryCards.has(item.job_id)).map(galleryCard);
    for (let i = fresh.length - 1; i >= 0; i--) {
      state.galleryCards.set(fresh[i].dataset.job, fresh[i]);
      grid.prepend(fresh[i]);
    }
    if (state.nextCursor === null) state.nextCursor = body.next_cursor || null;
  } else {
    for (const item of items) {
      if (state.galleryCards.has(item.job_id)) continue;
      const card = galleryCard(item);
      state.galleryCards.set(item.job_id, card);
      grid.append(card);
    }
    state.nextCursor = body.next_cursor || null;
  }
  document.getElementById("more").hidden = !state.nextCursor;
  document.getElementById("count").textContent = `(${body.count ?? items.length})`;
  applyFilter();
}

// -- running jobs: one WebSocket each ------------------------------------------------------
function runningCard(job) {
  const bar = el("progress", { max: "100", value: "0" });
  const text = el("div", { class: "progress-text", text: job.status === "queued" ? "queued" : "starting…" });
  const preview = el("img", { class: "preview", alt: "step preview", hidden: true });
  const waiting = el("span", { class: "waiting", text: "no preview yet" });
  const status = el("span", { class: "badge status", text: job.status });
  const card = el("article", { class: "card running", "data-job": job.job_id, "data-phase": job.phase },
    el("div", { class: "media" }, preview, waiting),
    el("div", { class: "body" },
      el("div", { class: "prompt", text: job.prompt || "(no prompt)" }),
      el("div", { class: "badges" }, phaseBadge(job.phase, job.phase_name), status),
      el("div", { class: "meta", text: `seed ${job.seed ?? "–"} · job ${job.job_id.slice(0, 8)}` }),
      bar, text));
  return { card, bar, text, preview, waiting, status };
}

function showProgress(view, p, statusText) {
  if (p.percent !== undefined && p.percent !== null) {
    view.bar.value = Math.max(Number(view.bar.value) || 0, Number(p.percent));  // never moves back
  }
  const parts = [`${Number(view.bar.value).toFixed(0)}%`];
  if (p.total_steps) parts.push(`step ${p.step ?? 0}/${p.total_steps}`);
  if (p.stage) parts.push(String(p.stage));
  if (p.eta_seconds !== null && p.eta_seconds !== undefined) parts.push(`ETA ${fmtSeconds(Number(p.eta_seconds))}`);
  view.text.textContent = statusText ? `${statusText} · ${parts.join(" · ")}` : parts.join(" · ");
  const preview = previewUrl(p.preview);
  if (preview) {
    view.preview.src = preview;
    view.preview.hidden = false;
    view.waiting.hidden = true;
  }
}

function follow(job) {
  const view = runningCard(job);
  const entry = { card: view.card, view, ws: null, done: false };
  state.running.set(job.job_id, entry);
  document.getElementById("running").prepend(view.card);
  showProgress(view, job.progress || {});
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/ws/job/${encodeURIComponent(job.job_id)}`);
  entry.ws = ws;
  ws.onmessage = (msg) => {
    let event;
    try { event = JSON.parse(msg.data); } catch (_) { return; }
    if (event.event === "state" && event.state) {
      view.status.textContent = event.state.status;
      showProgress(view, event.state.progress || {});
    } else if (event.event === "started") {
      view.status.textContent = "running";
    } else if (event.event === "progress") {
      view.status.textContent = "running";
      showProgress(view, event);
    } else if (event.event === "finished") {
      finish(job.job_id, event.status, event.error);
    }
  };
  ws.onclose = () => {
    if (!entry.done) setTimeout(() => refreshJobs(), 500);  // dropped: the next poll decides
    if (!entry.done) state.running.delete(job.job_id), view.card.remove();
  };
  applyFilter();
}

function finish(jobId, status, error) {
  const entry = state.running.get(jobId);
  if (!entry || entry.done) return;
  entry.done = true;
  entry.view.status.textContent = status;
  if (status === "succeeded") {
    entry.view.bar.value = 100;
    entry.view.text.textContent = "done";
    loadGallery().then(() => { entry.card.remove(); state.running.delete(jobId); applyFilter(); });
  } else {
    entry.card.classList.add("ended");
    entry.view.text.textContent = `${status}${error && error.message ? ": " + error.message : ""}`;
    setTimeout(() => { entry.card.remove(); state.running.delete(jobId); applyFilter(); }, 10000);
  }
}

async function refreshJobs() {
  let body;
  try {
    body = await getJSON(`${API}/jobs?status=queued,running&limit=50`);
  } catch (err) {
    setServer(`jobs unavailable: ${err.message}`);
    return;
  }
  for (const job of body.jobs || []) {
    if (!state.running.has(job.job_id)) follow(job);
  }
}

// -- header ----------------------------------------------------------------------------------
function setServer(text, tiny) {
  const box = document.getElementById("server");
  box.replaceChildren(el("span", { text }));
  if (tiny) box.append(" ", el("span", { class: "badge tiny", text: "tiny (random weights)",
                                         title: "random-weight models: images are noise (tests and demos)" }));
}

async function loadHealth() {
  try {
    const health = await getJSON(`${API}/health`);
    const c = health.components || {};
    const models = c.models || {};
    const gpu = c.gpu && c.gpu.available ? "GPU" : "CPU";
    const jobs = c.jobs || {};
    setServer(`${health.status} · models ${models.tiny ? "tiny" : models.label || "?"} · ${gpu} · ` +
              `${jobs.active_count ?? 0} active / ${jobs.total_tracked ?? 0} jobs`, !!models.tiny);
  } catch (err) {
    setServer(`server unreachable: ${err.message}`);
  }
}

function init() {
  for (const button of document.querySelectorAll("#filters button")) {
    button.addEventListener("click", () => {
      state.phase = button.dataset.phase;
      for (const b of document.querySelectorAll("#filters button")) b.classList.toggle("active", b === button);
      applyFilter();
    });
  }
  document.getElementById("more").addEventListener("click", () => loadGallery({ more: true }));
  loadHealth();
  loadGallery();
  refreshJobs();
  setInterval(refreshJobs, JOBS_POLL_MS);
  setInterval(() => { loadGallery(); loadHealth(); }, GALLERY_POLL_MS);
}

document.addEventListener("DOMContentLoaded", init);
