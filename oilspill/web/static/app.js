// oilspill's page: upload a zip of images or one image/GeoTIFF scene, follow the job live
// (counted in tiles: a plain image is one, a scene its tiles and an overview), show the
// overlays, download the zip.
// Plain JavaScript, no build step and no network but this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("oilspill-token") || "";
tokenInput.addEventListener("change", () =>
  localStorage.setItem("oilspill-token", tokenInput.value.trim()));

function authHeaders() {
  const token = tokenInput.value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: authHeaders() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

function setBar(bar, fraction, text) {
  bar.hidden = false;
  bar.querySelector("div").style.width = `${Math.round(fraction * 100)}%`;
  bar.querySelector("span").textContent = text;
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

function say(text, bad) {
  $("message").textContent = text;
  $("message").className = bad ? "warn" : "";
}

// --- upload -------------------------------------------------------------------------------

function upload(file) {
  // XMLHttpRequest, not fetch: only it reports upload progress.
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/upload/");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  const bar = $("upload-bar");
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      setBar(bar, e.loaded / e.total,
             `uploading ${(e.loaded / 1e6).toFixed(1)} of ${(e.total / 1e6).toFixed(1)} MB`);
    }
  };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 202) {
      setBar(bar, 1, "uploaded");
      const skipped = body.skipped.length ? `; ${body.skipped.length} files skipped` : "";
      say(`${plural(body.task_ids.length, "image")} queued${skipped}.`);
      follow(body.job_id);
    } else {
      say(`Upload refused (${xhr.status}): ${(body.error && body.error.message) || xhr.statusText}`, true);
    }
  };
  xhr.onerror = () => say("The upload failed: the server could not be reached.", true);
  say("");
  xhr.send(form);
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
});

// --- following a job ----------------------------------------------------------------------

let current = null;  // {id, shown: Set of task ids}

function follow(jobId) {
  current = { id: jobId, shown: new Set(), finished: false };
  history.replaceState(null, "", `?job=${jobId}`);
  $("job").hidden = false;
  $("results").hidden = false;
  $("job-id").textContent = jobId;
  $("gallery").replaceChildren();
  $("failed").replaceChildren();
  $("download").disabled = true;
  stream(current).catch(() => poll(current));
}

// The bar counts tiles (units of work for the ML service: a plain image is one, a scene its
// tiles and an overview), so a big scene moves it as it goes; the text counts images too.
function showProgress(job) {
  const finished = job.done + job.failed;
  const tiled = typeof job.tiles_total === "number" && job.tiles_total > 0;
  const unitsDone = tiled ? job.tiles_done : finished;
  const units = tiled ? job.tiles_total : job.total;
  const bar = $("job-bar");
  let text = `${finished} of ${job.total} images (${job.done} done, ${job.failed} failed)`;
  if (tiled && job.tiles_total !== job.total) {
    text += ` · ${job.tiles_done} of ${job.tiles_total} tiles`;
  }
  setBar(bar, units ? unitsDone / units : 0, text);
  bar.setAttribute("aria-valuenow", String(unitsDone));
  bar.setAttribute("aria-valuemax", String(units));
  bar.dataset.tilesDone = String(unitsDone);
  bar.dataset.tilesTotal = String(units);
  const stitching = tiled && job.tiles_done >= job.tiles_total && job.running > 0;
  $("job-state").textContent = job.finished_at ? "Finished." :
    job.status === "queued" ? "Queued." :
    stitching ? "Working: every tile is back; stitching the scene's mask." :
    `Working: ${plural(job.running, "image")} with the ML service.`;
  $("ml-down").hidden = !job.waiting_for_ml_service;
  if (job.finished_at) {
    current.finished = true;
    $("download").disabled = false;
  }
}

async function imageUrl(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new Error(String(response.status));
  return URL.createObjectURL(await response.blob());
}

// Pictures are fetched when they come near the screen: a job of thousands of images costs
// the server, and a slow link, only what is looked at.
const pictures = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const img = entry.target;
    pictures.unobserve(img);
    imageUrl(img.dataset.link).then((url) => { img.src = url; })
      .catch(() => { img.alt = "no picture"; });
  }
}, { rootMargin: "400px" });

function showTask(task) {
  if (current.shown.has(task.task_id) || (task.status !== "done" && task.status !== "failed")) return;
  current.shown.add(task.task_id);
  if (task.status === "failed") {
    const item = document.createElement("li");
    item.dataset.filename = task.filename;
    item.append(task.filename, " ");
    const reason = document.createElement("span");
    reason.textContent = task.error;
    item.append(reason);
    $("failed").append(item);
    $("failed-title").hidden = false;
    return;
  }
  const result = task.result;
  const figure = document.createElement("figure");
  figure.dataset.filename = task.filename;
  const img = document.createElement("img");
  img.alt = `${task.filename}: oil tinted orange`;
  const link = result.overlay_url || result.picture_url;
  if (link) {
    img.dataset.link = link;
    pictures.observe(img);
  }
  const caption = document.createElement("figcaption");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = task.filename;
  name.title = task.filename;
  const fraction = document.createElement("span");
  fraction.className = "fraction";
  if (result.oil_fraction === null) {
    fraction.textContent = "n/a";
  } else {
    fraction.dataset.fraction = String(result.oil_fraction);
    fraction.textContent = `${(result.oil_fraction * 100).toFixed(2)}% oil`;
    if (result.oil_fraction > 0) fraction.classList.add("oil");
  }
  caption.append(name, fraction);
  figure.append(img, caption);
  if (result.scene) figure.append(sceneFacts(result, result.scene));
  $("gallery").append(figure);
}

// A scene's size, CRS and tiles, under its card.
function sceneFacts(result, scene) {
  const facts = document.createElement("p");
  facts.className = "scene";
  const size = document.createElement("span");
  size.className = "size";
  size.textContent = `${result.width} × ${result.height} px`;
  const crs = document.createElement("span");
  crs.className = "crs";
  if (scene.crs) {
    // A CRS without an EPSG code comes as WKT: show its name, keep the whole in the tooltip.
    const named = /^[A-Z]+CRS\["([^"]*)"|^[A-Z_]+CS\["([^"]*)"/.exec(scene.crs);
    crs.textContent = named ? named[1] || named[2] : scene.crs;
    crs.title = scene.crs;
  } else {
    crs.textContent = "no CRS";
  }
  if (scene.georeference === "gcps") crs.textContent += " (GCPs)";
  const tiles = document.createElement("span");
  tiles.className = "tiles";
  tiles.textContent = plural(scene.tiles, "tile");
  facts.dataset.width = String(result.width);
  facts.dataset.height = String(result.height);
  facts.dataset.crs = scene.crs || "";
  facts.dataset.tiles = String(scene.tiles);
  facts.append(size, crs, tiles);
  return facts;
}

// Server-sent events read with fetch, so the token can go in a header.
async function stream(job) {
  const response = await fetch(`/api/job/${job.id}/events`, { headers: authHeaders() });
  if (!response.ok || !response.body) throw new Error("no event stream");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data || job !== current) continue;
      const body = JSON.parse(data);
      if (event === "task") showTask(body);
      else if (event === "progress" || event === "end") showProgress(body);
      if (event === "end") return;
    }
  }
  if (!job.finished) throw new Error("the event stream stopped");
}

// When the stream drops (a proxy, a restart), fall back to asking every two seconds.
async function poll(job) {
  while (job === current) {
    try {
      const body = await api(`/api/job/${job.id}`);
      for (let offset = 0; offset < body.total; offset += 500) {
        const page = await api(`/api/job/${job.id}/tasks?offset=${offset}&limit=500`);
        page.tasks.forEach(showTask);
      }
      showProgress(body);
      if (body.finished_at) return;
    } catch (error) {
      $("job-state").textContent = `Waiting for the server (${error.message})...`;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

$("download").addEventListener("click", async () => {
  const button = $("download");
  button.disabled = true;
  try {
    const { archive_url: url } = await api(`/api/archive/${current.id}`);
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) throw new Error(String(response.status));
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await response.blob());
    a.download = url.split("/").pop();
    document.body.append(a);
    a.click();
    a.remove();
    say(`Downloaded ${a.download}.`);
  } catch (error) {
    say(`The download failed: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
});

const resume = new URLSearchParams(location.search).get("job");
if (resume) follow(resume);
