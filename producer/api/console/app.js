// The svdq console: plain JavaScript, no build step, nothing loaded from elsewhere.
// Everything shown from the server goes in through textContent or element attributes, never
// parsed as HTML, so no job field or file name can become markup.
"use strict";

const TOKEN = "svdq.token"; // sessionStorage only: this tab, until it closes
const FIELDS = ["variant", "width", "height", "resize", "num_frames", "num_inference_steps",
  "motion_bucket_id", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale", "fps",
  "formats"];
// The clip scores shown (shared/scores.py: SCORES); badges come computed from the server.
const SCORES = ["motion", "displacement", "flicker", "chunk_jump", "psnr", "ssim"];
const OPEN = new Set(["queued", "running", "retrying"]);
const $ = (id) => document.getElementById(id);
let schema = null;
let timer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function headers() {
  return { Authorization: "Bearer " + sessionStorage.getItem(TOKEN) };
}

async function failure(res) {
  // problem+json: its detail is the CLI's own sentence (field, value, what is allowed).
  let detail = res.status + " " + res.statusText;
  try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
  if (res.status === 401) { sessionStorage.removeItem(TOKEN); route(); }
  return new Error(detail);
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!res.ok) throw await failure(res);
  return res;
}

// ---- job events -------------------------------------------------------------------------
// EventSource cannot send an Authorization header, and a token in the URL would end up in
// proxy logs and history. So the event stream is read with fetch() (which sends the bearer
// header like every other call) and a ReadableStream reader, parsing the SSE framing here:
// blocks end with a blank line; "data: " lines carry the JSON event.
async function watch(jobId, onEvent, signal) {
  const res = await api("/v1/jobs/" + encodeURIComponent(jobId) + "/events", { signal });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: "))
        .map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

// ---- preview: the same boxes as shared/images.py (crop_box, pad_box) ------------------------
function pyRound(x) { // Python's round(): halves go to the even integer
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

function cropBox(sw, sh, dw, dh) {
  if (sw * dh > dw * sh) {
    const w = pyRound(sh * dw / dh);
    const left = Math.floor((sw - w) / 2);
    return [left, 0, w, sh];
  }
  const h = pyRound(sw * dh / dw);
  const top = Math.floor((sh - h) / 2);
  return [0, top, sw, h];
}

function padBox(sw, sh, dw, dh) {
  const scale = Math.min(dw / sw, dh / sh);
  const w = Math.max(1, pyRound(sw * scale));
  const h = Math.max(1, pyRound(sh * scale));
  return [Math.floor((dw - w) / 2), Math.floor((dh - h) / 2), w, h];
}

let picked = null; // { file, image }

function drawPreview() {
  const canvas = $("preview");
  const w = Number($("f-width").value) || 1024;
  const h = Number($("f-height").value) || 576;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  if (!picked) return;
  const img = picked.image;
  const sw = img.naturalWidth, sh = img.naturalHeight;
  const mode = $("f-resize").value;
  if (mode === "stretch") ctx.drawImage(img, 0, 0, w, h);
  else if (mode === "pad") {
    const [x, y, pw, ph] = padBox(sw, sh, w, h);
    ctx.drawImage(img, x, y, pw, ph);
  } else {
    const [x, y, cw, ch] = cropBox(sw, sh, w, h);
    ctx.drawImage(img, x, y, cw, ch, 0, 0, w, h);
  }
  $("preview-note").textContent = `${picked.file.name}: ${sw}×${sh} → ${w}×${h} (${mode})`;
}

function pick(file) {
  if (!file) return;
  const image = new Image();
  image.onload = () => { picked = { file, image }; $("submit").disabled = false; drawPreview(); };
  image.onerror = () => { $("submit-error").textContent = file.name + " is not an image this browser reads"; };
  image.src = URL.createObjectURL(file);
}

function field(name) {
  const prop = schema.properties[name];
  const label = el("label", { title: prop.description || "" }, name.replaceAll("_", " "));
  const id = "f-" + name;
  let input;
  if (name === "formats") {
    input = el("span", { id, class: "checks" });
    for (const kind of prop.items.enum) {
      const box = el("input", { type: "checkbox", value: kind, name: "formats" });
      box.checked = (prop.default || []).includes(kind);
      input.append(el("label", {}, box, " " + kind));
    }
  } else if (prop.enum) {
    input = el("select", { id, name });
    for (const v of prop.enum) {
      if (v === null) continue;
      input.append(el("option", { value: v, text: v }));
    }
    if (prop.default) input.value = prop.default;
    else if (name === "variant") input.value = "auto";
  } else {
    input = el("input", { id, name, type: "number" });
    if (prop.minimum !== undefined) input.min = prop.minimum;
    if (prop.maximum !== undefined) input.max = prop.maximum;
    input.step = prop.multipleOf || (String(prop.type).includes("number") ? "0.01" : "1");
    if (prop.default !== undefined && prop.default !== null) input.value = prop.default;
    else input.placeholder = "default";
  }
  input.addEventListener("change", drawPreview);
  label.append(input);
  return label;
}

async function showSubmit() {
  if (!schema) {
    schema = await (await api("/v1/schema")).json();
    const box = $("params");
    box.replaceChildren(...FIELDS.map(field));
    drawPreview();
  }
}

async function submitJob(event) {
  event.preventDefault();
  $("submit-error").textContent = "";
  const form = new FormData();
  form.append("image", picked.file, picked.file.name);
  for (const name of FIELDS) {
    if (name === "formats") {
      for (const box of $("f-formats").querySelectorAll("input:checked")) form.append("formats", box.value);
    } else if ($("f-" + name).value !== "") form.append(name, $("f-" + name).value);
  }
  let job;
  try {
    job = await (await api("/v1/jobs", { method: "POST", body: form })).json();
  } catch (e) { $("submit-error").textContent = e.message; return; }
  follow(job);
}

function showJob(view) {
  const box = $("job");
  box.hidden = false;
  box.dataset.state = view.state;
  $("job-id").textContent = view.job_id;
  const badge = $("job-state");
  badge.textContent = view.state;
  badge.className = "badge state-" + view.state;
  const progress = $("job-progress");
  if (view.state === "running" && view.steps) {
    progress.max = view.steps;
    progress.value = view.step || 0;
    $("job-step").textContent = `${view.phase || ""} ${view.step}/${view.steps}`;
    box.dataset.progress = (Number(box.dataset.progress || 0) + 1).toString();
  } else if (!OPEN.has(view.state)) {
    $("job-step").textContent = "";
    progress.value = view.state === "succeeded" ? progress.max : progress.value;
  }
  $("job-error").textContent = view.error || "";
  if (view.state === "succeeded") {
    showOutputs(view.links || {}, $("job-video"), $("job-gif"), $("job-links"));
    showScores((view.result || {}).scores || {}, view.badges || [], $("job-scores"), $("job-badges"));
  }
}

function fmt(value) {
  return typeof value === "number" ? String(Number(value.toPrecision(4))) : "";
}

function badgeSpans(badges) {
  return badges.map((b) => el("span", { class: "badge badge-" + b, text: b }));
}

function showScores(scores, badges, table, line) {
  table.replaceChildren(...SCORES.filter((k) => typeof scores[k] === "number")
    .map((k) => el("tr", { "data-score": k }, el("th", { text: k }), el("td", { text: fmt(scores[k]) }))));
  line.replaceChildren(...badgeSpans(badges));
}

function showOutputs(links, video, gif, list) {
  video.hidden = !links.mp4;
  if (links.mp4) video.src = links.mp4;
  gif.hidden = !links.gif;
  if (links.gif) gif.src = links.gif;
  list.replaceChildren(...["mp4", "gif", "poster"].filter((k) => links[k])
    .map((k) => el("a", { href: links[k], download: "", rel: "noreferrer", text: "download " + k })));
  if (list.parentElement) list.parentElement.hidden = false;
}

let watching = null;

async function follow(job) {
  if (watching) watching.abort();
  watching = new AbortController();
  $("job-outputs").hidden = true;
  $("job").dataset.progress = "0";
  showJob(job);
  try {
    await watch(job.job_id, showJob, watching.signal);
  } catch (e) {
    if (e.name !== "AbortError") $("job-error").textContent = e.message;
  }
}

// ---- batches -----------------------------------------------------------------------------
async function showBatches(batchId) {
  const list = (await (await api("/v1/batches")).json()).batches;
  $("batch-list").replaceChildren(...list.map((b) => el("li", {},
    el("a", { href: "#batches/" + encodeURIComponent(b.batch_id), text: b.batch_id }),
    ` ${b.jobs} jobs, ${new Date(b.created_at * 1000).toLocaleString()}`)));
  $("batch").hidden = !batchId;
  if (batchId) await showBatch(batchId);
}

async function showBatch(batchId) {
  const base = "/v1/batches/" + encodeURIComponent(batchId);
  const view = await (await api(base)).json();
  const text = await (await api(base + "/results")).text();
  const rows = text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  $("batch-id").textContent = batchId;
  const counts = Object.entries(view.counts).map(([s, n]) => `${n} ${s}`).join(", ");
  $("batch-counts").textContent = `${counts || "no jobs"} · submitted ${view.submitted}, invalid ${view.invalid}`;
  const grid = $("grid");
  grid.replaceChildren();
  for (const row of rows) {
    if (!row.job_id) {
      grid.append(el("div", { class: "card rejected" }, el("span", { class: "badge state-failed", text: row.status }),
        el("span", { class: "source", text: row.reason || "" })));
      continue;
    }
    const poster = row.links && row.links.poster
      ? el("img", { src: row.links.poster, alt: row.job_id, class: "poster" })
      : el("div", { class: "poster empty" });
    const scores = row.scores || {};
    const card = el("button", { type: "button", class: "card", "data-job": row.job_id, "data-state": row.state,
      "data-badges": (row.badges || []).join(" ") },
      poster, el("span", { class: "badge state-" + row.state, text: row.state }), ...badgeSpans(row.badges || []),
      el("span", { class: "source", text: row.source || row.job_id }),
      el("span", { class: "scores", text: ["motion", "flicker", "ssim"].filter((k) => typeof scores[k] === "number")
        .map((k) => `${k} ${fmt(scores[k])}`).join(" · ") }));
    card.addEventListener("click", () => openClip(row));
    grid.append(card);
  }
  grid.dataset.ready = "1";
  if (rows.some((r) => OPEN.has(r.state))) later(() => showBatch(batchId), 2000);
}

function openClip(row) {
  $("viewer-id").textContent = `${row.job_id}: ${row.state}${row.error ? " — " + row.error : ""}`;
  showOutputs(row.links || {}, $("viewer-video"), $("viewer-gif"), $("viewer-links"));
  showScores(row.scores || {}, row.badges || [], $("viewer-scores"), $("viewer-badges"));
  $("viewer").showModal();
}

// ---- fleet -------------------------------------------------------------------------------
function table(head, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: String(c) }))))));
}

async function showFleet() {
  const snap = await (await api("/v1/fleet")).json();
  $("fleet-time").textContent = new Date(snap.time * 1000).toLocaleTimeString();
  const queues = Object.entries(snap.queues).map(([name, q]) => [name, q.waiting, q.in_flight,
    q.oldest_age_seconds === null ? "-" : Math.round(q.oldest_age_seconds) + "s", q.workers]);
  const workers = snap.workers.map((w) => [w.name, w.device === "cuda" ? "gpu" + w.gpu : w.device,
    `${w.variant}/${w.profile}`, w.job_id ? `${w.job_id} ${w.phase || ""} ${w.step ?? ""}/${w.steps ?? ""}` : "idle"]);
  const throughput = Object.entries(snap.throughput).map(([win, t]) => [win, t.succeeded, t.failed, t.skipped]);
  const failures = Object.entries(snap.failures_60m).map(([reason, n]) => [reason, n]);
  $("fleet").replaceChildren(
    el("h3", { text: "Queues" }), table(["queue", "waiting", "running", "oldest", "workers"], queues),
    el("h3", { text: `Workers (${snap.workers.length})` }), table(["worker", "device", "model", "doing"], workers),
    el("h3", { text: "Throughput" }), table(["last", "succeeded", "failed", "already done"], throughput),
    el("h3", { text: "Failures, last 60 minutes" }), table(["reason", "jobs"], failures),
    el("p", { text: `dead-letter: ${snap.dead_letter} · batches: ${snap.batches.submitting} submitting, ${snap.batches.submitted} submitted` }));
  $("fleet").dataset.ready = "1";
  later(showFleet, 3000);
}

// ---- pages -------------------------------------------------------------------------------
function later(fn, ms) {
  clearTimeout(timer);
  timer = setTimeout(() => fn().catch(() => {}), ms);
}

async function route() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN);
  const [page, arg] = (location.hash.slice(1) || "submit").split("/");
  for (const id of ["login", "page-submit", "page-batches", "page-fleet"]) $(id).hidden = true;
  $("nav").hidden = !token;
  if (!token) { $("login").hidden = false; $("token").focus(); return; }
  const name = ["submit", "batches", "fleet"].includes(page) ? page : "submit";
  $("page-" + name).hidden = false;
  try {
    if (name === "submit") await showSubmit();
    else if (name === "batches") await showBatches(arg ? decodeURIComponent(arg) : "");
    else await showFleet();
  } catch (e) {
    $("page-" + name).prepend(el("p", { class: "error", text: e.message }));
  }
}

async function login(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  const res = await fetch("/v1/schema", { headers: { Authorization: "Bearer " + token } });
  if (!res.ok) {
    $("login-error").textContent = (await failure(res)).message;
    return;
  }
  sessionStorage.setItem(TOKEN, token);
  $("token").value = "";
  $("login-error").textContent = "";
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN); schema = null; route(); });
  $("file").addEventListener("change", (e) => pick(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  $("job-form").addEventListener("submit", submitJob);
  $("batch-open").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = "#batches/" + encodeURIComponent($("batch-input").value.trim());
  });
  $("batch-cancel").addEventListener("click", async () => {
    const id = $("batch-id").textContent;
    await api("/v1/batches/" + encodeURIComponent(id), { method: "DELETE" });
    await showBatch(id);
  });
  $("viewer-close").addEventListener("click", () => {
    $("viewer-video").pause();
    $("viewer").close();
  });
  window.addEventListener("hashchange", route);
  route();
});
