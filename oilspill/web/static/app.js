// oilspill's page: follow the job of an uploaded zip or image/GeoTIFF scene live
// (counted in tiles: a plain image is one, a scene its tiles and an overview), show the
// overlays and each image's slicks (from its GeoJSON), download the zip or the GeoJSON.
// upload.js, loaded after this file, sends the file and calls follow(jobId).
// Plain JavaScript, no build step and no network but this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("oilspill-token") || "";
// Kept as typed: a reload in the middle of an upload finds it (resuming needs the token).
tokenInput.addEventListener("input", () =>
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

// --- following a job ----------------------------------------------------------------------

// The job followed: its id, the tasks shown, and the oil found so far (for its header).
let current = null;

function follow(jobId) {
  current = { id: jobId, shown: new Set(), finished: false,
              oil: { km2: 0, placedSlicks: 0, pixelSlicks: 0, pixels: 0, placed: false } };
  history.replaceState(null, "", `?job=${jobId}`);
  $("job").hidden = false;
  $("results").hidden = false;
  $("job-id").textContent = jobId;
  $("job-oil").hidden = true;
  $("gallery").replaceChildren();
  $("failed").replaceChildren();
  $("download").disabled = true;
  const geojson = $("geojson");
  geojson.hidden = true;
  geojson.href = `/api/job/${jobId}/spills.geojson`;
  geojson.download = `oilspill-spills-${jobId}.geojson`;
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
    $("geojson").hidden = false;
  }
}

// --- numbers ------------------------------------------------------------------------------

function km2Text(km2) {
  return `${km2.toFixed(2)} km\u00b2`;
}

// "54.0668° N, 15.1915° E": degrees to 4 decimals (about 10 m), hemisphere letters.
function latLonText(lat, lon) {
  const part = (value, positive, negative) => {
    const digits = Math.abs(value).toFixed(4);
    return `${digits}\u00b0 ${value < 0 && Number(digits) !== 0 ? negative : positive}`;
  };
  return `${part(lat, "N", "S")}, ${part(lon, "E", "W")}`;
}

const count = new Intl.NumberFormat("en");

// The job's oil in its header: km² over its georeferenced images (each task's
// total_area_km2, as it finishes), slicks and pixels over the pictures without one.
// Georeferenced: bounds_lonlat is set (total_area_km2 alone may be 0 for a scene without).
function addOil(result) {
  const oil = current.oil;
  const scene = result.scene || {};
  const slicks = typeof scene.slick_polygons === "number" ? scene.slick_polygons
    : result.slick_count || 0;
  if (result.bounds_lonlat) {
    oil.placed = true;
    oil.km2 += result.total_area_km2 || 0;
    oil.placedSlicks += slicks;
  } else if (result.spills_url) {
    oil.pixelSlicks += slicks;
    oil.pixels += result.oil_pixels || 0;
  } else {
    return;  // a picture from a YOLO-style service: no slicks
  }
  const parts = [];
  if (oil.placed) parts.push(`${km2Text(oil.km2)} of oil in ${plural(oil.placedSlicks, "slick")}`);
  if (oil.pixelSlicks || !oil.placed) {
    parts.push(`${plural(oil.pixelSlicks, "slick")}, ${count.format(oil.pixels)} px of oil ` +
               "in pictures without georeference");
  }
  const total = $("job-oil");
  total.textContent = parts.join(" \u00b7 ");
  total.dataset.km2 = oil.placed ? String(oil.km2) : "";
  total.dataset.slicks = String(oil.placedSlicks + oil.pixelSlicks);
  total.hidden = false;
}

async function imageUrl(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new Error(String(response.status));
  return URL.createObjectURL(await response.blob());
}

// Pictures and slick tables are fetched when they come near the screen: a job of thousands
// of images costs the server, and a slow link, only what is looked at.
const whenNearActions = new WeakMap();
const nearScreen = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    nearScreen.unobserve(entry.target);
    const action = whenNearActions.get(entry.target);
    whenNearActions.delete(entry.target);
    if (action) action();
  }
}, { rootMargin: "400px" });

function whenNear(element, action) {
  whenNearActions.set(element, action);
  nearScreen.observe(element);
}

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
    whenNear(img, () => imageUrl(link).then((url) => { img.src = url; })
      .catch(() => { img.alt = "no picture"; }));
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
  if (result.spills_url) {
    const slicks = document.createElement("div");
    slicks.className = "slicks";
    slicks.textContent = "Slicks: shown when in view";
    figure.append(slicks);
    whenNear(slicks, () => showSlicks(slicks, result.spills_url));
    if (result.bounds_lonlat) figure.classList.add("wide");  // room for the centroids
  }
  $("gallery").append(figure);
  addOil(result);
}

// --- slicks -------------------------------------------------------------------------------

const SLICK_ROWS = 50;  // rows shown at first; the rest on asking

async function showSlicks(box, url) {
  box.textContent = "Slicks: loading\u2026";
  let collection;
  try {
    collection = await api(url);
  } catch (error) {
    box.textContent = `Slicks: not available (${error.message})`;
    box.classList.add("warn");
    return;
  }
  const features = collection.features || [];
  const pixel = !!(collection.properties && collection.properties.coordinates === "pixel");
  box.dataset.coordinates = pixel ? "pixel" : "lonlat";
  box.dataset.count = String(features.length);
  box.replaceChildren();
  const summary = document.createElement("p");
  summary.className = "summary";
  const props = features.map((f) => f.properties || {});
  if (!features.length) {
    summary.textContent = "No slicks.";
  } else if (pixel) {
    const pixels = props.reduce((sum, p) => sum + (p.pixels || 0), 0);
    summary.textContent = `${plural(features.length, "slick")}, ${count.format(pixels)} px ` +
                          "(no georeference)";
  } else {
    const km2 = props.reduce((sum, p) => sum + (p.area_km2 || 0), 0);
    summary.textContent = `${plural(features.length, "slick")}, ${km2Text(km2)}`;
  }
  box.append(summary);
  if (!features.length) return;

  const table = document.createElement("table");
  const head = document.createElement("tr");
  const columns = pixel ? [["#", "id"], ["pixels", "pixels"]]
    : [["#", "id"], ["km\u00b2", "area"], ["length km", "length"],
       ["centroid (click to copy)", "centroid"]];
  for (const [label, name] of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = name;
    th.textContent = label;
    head.append(th);
  }
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  table.append(thead, tbody);
  const addRows = (from, to) => {
    for (const p of props.slice(from, to)) tbody.append(slickRow(p, pixel));
  };
  addRows(0, SLICK_ROWS);
  box.append(table);
  if (props.length > SLICK_ROWS) {
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = `Show all ${count.format(props.length)} slicks`;
    more.addEventListener("click", () => {
      addRows(SLICK_ROWS, props.length);
      more.remove();
    });
    box.append(more);
  }
}

function cell(row, name, text) {
  const td = document.createElement("td");
  td.className = name;
  td.textContent = text;
  row.append(td);
  return td;
}

function slickRow(p, pixel) {
  const row = document.createElement("tr");
  row.dataset.slickId = String(p.slick_id);
  cell(row, "id", String(p.slick_id));
  if (pixel) {
    cell(row, "pixels", count.format(p.pixels));
    return row;
  }
  cell(row, "area", typeof p.area_km2 === "number" ? p.area_km2.toFixed(2) : "n/a");
  cell(row, "length", typeof p.length_km === "number" ? p.length_km.toFixed(1) : "n/a");
  const where = cell(row, "centroid", "");
  if (typeof p.centroid_lat === "number" && typeof p.centroid_lon === "number") {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = latLonText(p.centroid_lat, p.centroid_lon);
    button.title = "Copy to the clipboard";
    button.addEventListener("click", () => copyCentroid(button));
    where.append(button);
  } else {
    where.textContent = "n/a";
  }
  return row;
}

async function copyCentroid(button) {
  const copied = await copyText(button.textContent);
  let note = button.parentElement.querySelector(".note");
  if (!note) {
    note = document.createElement("span");
    note.className = "note";
    note.setAttribute("role", "status");
    button.after(note);
  }
  note.textContent = copied ? "copied" : "select and copy by hand";
  clearTimeout(note.timer);
  note.timer = setTimeout(() => note.remove(), 2000);
}

// The clipboard API where the page may use it (a secure context: https or localhost), else
// the old way through a selected, hidden textarea.
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) { /* no permission: try the old way */ }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  let copied = false;
  try { copied = document.execCommand("copy"); } catch (_) { copied = false; }
  area.remove();
  return copied;
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

// Every slick of the job, as one GeoJSON file; fetched with the token (a plain link could
// not send it), saved under the server's name.
$("geojson").addEventListener("click", async (event) => {
  event.preventDefault();
  const link = $("geojson");
  try {
    const response = await fetch(link.href, { headers: authHeaders() });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(`${response.status}: ${(body.error && body.error.message) || response.statusText}`);
    }
    const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await response.blob());
    a.download = named ? named[1] : link.download;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    say(`Downloaded ${a.download}.`);
  } catch (error) {
    say(`The GeoJSON download failed: ${error.message}`, true);
  }
});

const resume = new URLSearchParams(location.search).get("job");
if (resume) follow(resume);

// --- the ML endpoints (GET /healthz is open: no token) -----------------------------------
function endpointProtocol(e) {
  if (e.protocol !== "oip") return "/segment";
  const parts = ["OIP v2"];
  if (e.model) parts.push(e.model);
  if (e.binary !== null) parts.push(e.binary ? "binary" : "JSON");
  if (e.batch > 1) parts.push(`batch ${e.batch}`);
  return parts.join(", ");
}

async function showEndpoints() {
  let health;
  try {
    health = await (await fetch("/healthz")).json();
  } catch (error) {
    return; // the server is away: the job's own view says so
  }
  const rows = (health.ml_endpoints || []).map((e) => {
    const state = !e.in_rotation ? "out of rotation (probed)"
      : e.reachable ? "reachable" : "unreachable";
    const cells = [e.url, endpointProtocol(e), state, `${e.in_flight} / ${e.limit}`,
                   String(e.calls), String(e.errors),
                   e.mean_latency_ms === null ? "-" : `${e.mean_latency_ms} ms`];
    const row = document.createElement("tr");
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text; // URLs come from the server's settings: never as HTML
      row.append(cell);
    }
    if (!(e.in_rotation && e.reachable)) row.className = "warn";
    return row;
  });
  $("ml-endpoints").tBodies[0].replaceChildren(...rows);
}
showEndpoints();
setInterval(() => { if (!document.hidden) showEndpoints(); }, 5000);
