// oilspill's page: sending the chosen file. Through tus (/api/uploads/, with tus-js-client,
// tus.min.js) when the server offers it: in chunks, retried from the server's offset when
// the link drops, and resumed after a reload of the page when the same file is chosen
// again. Else the multipart POST /api/upload/ of old. Either way the job is then followed
// (app.js's follow). Loaded after app.js, whose $, say, setBar, plural, api, authHeaders,
// current and follow it uses.
"use strict";

const TUS_ENDPOINT = new URL("/api/uploads/", location.href).href;
const TUS_VERSION = "1.0.0";
// Small enough for a proxy's body limit and a few seconds of a slow link; the server keeps
// the bytes of a broken PATCH anyway, so a drop costs nothing already sent.
const CHUNK_BYTES = 5 * 1024 * 1024;
// Waits before each new try after a failure, in ms. tus-js-client counts again from the
// start whenever bytes got through, so only about 12 minutes without any progress stop an
// upload (and then the Resume button, or the same file chosen again, goes on).
const RETRY_DELAYS_MS = [0, 1000, 3000, 5000, 10000, 20000, 30000, 60000, 60000, 60000,
                         60000, 60000, 60000, 60000, 60000, 60000];

// The tus upload under way: { file, upload, stopped, dropped, sentMax }.
let uploading = null;
// Stored entries being resumed: their notes (listUnfinished) are not shown again.
const resumedKeys = new Set();

function megabytes(bytes) {
  return (bytes / 1e6).toFixed(1);
}

function percent(done, total) {
  return total ? Math.floor((done * 100) / total) : 100;  // 100% only when all is there
}

function showUploadProgress(sent, total) {
  const bar = $("upload-bar");
  const shown = `${megabytes(sent)} of ${megabytes(total)} MB (${percent(sent, total)}%)`;
  setBar(bar, total ? sent / total : 1, `uploading ${shown}`);
  bar.dataset.sent = String(sent);
  bar.dataset.total = String(total);
}

function errorMessage(text, fallback) {
  try {
    const body = JSON.parse(text);
    if (body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return fallback;
}

// --- choosing a file --------------------------------------------------------------------

async function uploadFile(file) {
  if (uploading) {  // another file chosen mid-upload: this one stays resumable
    uploading.stopped = true;
    uploading.upload.abort();
    uploading = null;
  }
  $("resume-upload").hidden = true;
  say("");
  if (await tusOffered()) {
    await uploadTus(file);
  } else {
    uploadForm(file);
  }
}

// A server that answers OPTIONS without tus 1.0.0 (an older one, or a proxy that lets only
// POST /api/upload/ through) gets the multipart POST. A link down at this moment is no
// answer: tus is tried, and its retries wait for the link.
async function tusOffered() {
  if (!window.tus || !tus.isSupported) return false;
  let response;
  try {
    response = await fetch(TUS_ENDPOINT, { method: "OPTIONS", cache: "no-store" });
  } catch (_) {
    return true;
  }
  const versions = (response.headers.get("Tus-Version") || "").split(",")
    .map((version) => version.trim());
  return response.ok && versions.includes(TUS_VERSION);
}

$("file").addEventListener("change", (e) => {
  if (e.target.files[0]) uploadFile(e.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) uploadFile(e.dataTransfer.files[0]);
});

// --- tus --------------------------------------------------------------------------------

async function uploadTus(file) {
  const state = { file, upload: null, stopped: false, dropped: false, sentMax: 0 };
  state.upload = new tus.Upload(file, {
    endpoint: TUS_ENDPOINT,
    chunkSize: CHUNK_BYTES,
    retryDelays: RETRY_DELAYS_MS,
    metadata: { filename: file.name },
    headers: authHeaders(),
    // The stored entry (file name, type, size, lastModified, endpoint -> upload URL) is
    // what a reload finds; it goes once the upload is a job.
    removeFingerprintOnSuccess: true,
    onBeforeRequest: () => {
      if (state.stopped) throw new Error("the upload was stopped");
    },
    onAfterResponse: (req, res) => checkAnswer(state, req, res),
    onShouldRetry: (err, attempt, options) => retrying(state, err, attempt, options),
    onProgress: (sent, total) => progressed(state, sent, total),
    onSuccess: ({ lastResponse }) => uploaded(state, lastResponse),
    onError: (err) => stopped(state, err),
  });
  uploading = state;
  const previous = await previousUpload(state);
  if (uploading !== state) return;  // another file was chosen meanwhile
  if (previous === "settled") {
    uploading = null;
    return;
  }
  if (previous) {
    state.upload.resumeFromPreviousUpload(previous);
    resumedKeys.add(previous.urlStorageKey);
    forgetNote(previous.urlStorageKey);
  }
  state.upload.start();
}

// An unfinished upload of this very file (same name, type, size and modification time, to
// this server), newest first, asked for its offset. Chosen again, the file is resumed at
// once: whoever picks the same file after a reload wants the bytes already sent kept, and
// on a slow link a question would only cost a click. The message says so.
// Returns the stored entry to resume, null for none, or "settled" when there is nothing to
// send: the upload is over (it became a job, or it was refused), or the token is wrong (a
// new upload would be refused too, and tus-js-client would forget this one).
async function previousUpload(state) {
  let found = [];
  try {
    found = await state.upload.findPreviousUploads();
  } catch (_) {
    return null;
  }
  const created = (entry) => Date.parse(entry.creationTime) || 0;
  found.sort((a, b) => created(b) - created(a));
  for (const previous of found) {
    const where = await askUpload(previous.uploadUrl);
    if (where.gone || where.refused !== undefined || where.jobId) forgetUpload(previous);
    if (where.gone) continue;  // expired or discarded: not resumable
    if (where.refused !== undefined) {
      say(`This file was refused when it was sent before` +
          `${where.refused ? `: ${where.refused}` : ""}. Choose it again to send it anew.`,
          true);
      return "settled";
    }
    if (where.status === 401 || where.status === 403) {
      say(`Upload refused (${where.status}): give the right token and choose the file ` +
          "again: it goes on from what the server has.", true);
      return "settled";
    }
    if (where.jobId) {
      uploading = null;
      say(`This file was uploaded already: it is job ${where.jobId}, shown below. ` +
          "Choose it again to upload it anew.");
      follow(where.jobId);
      return "settled";
    }
    if (where.offset !== undefined) {
      const share = percent(where.offset, where.length);
      say(`An unfinished upload of this file was found (${share}%, ` +
          `${megabytes(where.offset)} of ${megabytes(where.length)} MB already on the ` +
          "server): resuming it from there.");
      showUploadProgress(where.offset, where.length);
    }
    return previous;  // offset unknown (no answer): tus-js-client asks again, and retries
  }
  return null;
}

// HEAD of an upload: { offset, length, jobId } when it is live or done, { gone } (404),
// { refused: reason } (410), { status } for another answer, {} for none.
async function askUpload(url) {
  let response;
  try {
    response = await fetch(url, {
      method: "HEAD", cache: "no-store",
      headers: { ...authHeaders(), "Tus-Resumable": TUS_VERSION } });
  } catch (_) {
    return {};
  }
  if (response.status === 404) return { gone: true };
  if (response.status === 410) return { refused: await refusal(url) };
  if (!response.ok) return { status: response.status };
  return { offset: Number(response.headers.get("Upload-Offset")),
           length: Number(response.headers.get("Upload-Length")),
           jobId: response.headers.get("Oilspill-Job-Id") };
}

// Why the server refused a complete upload (GET /api/uploads/{id} keeps it a while).
async function refusal(url) {
  try {
    const body = await api(new URL(url).pathname);
    if (body.error) return body.error.message;
  } catch (_) { /* no longer known */ }
  return "";
}

function forgetUpload(entry) {
  if (entry.urlStorageKey) localStorage.removeItem(entry.urlStorageKey);
  forgetNote(entry.urlStorageKey);
}

// The stored entry of a tus upload (found by its file's fingerprint and its URL).
async function forgetUploadOf(upload) {
  try {
    const found = await upload.findPreviousUploads();
    found.filter((entry) => entry.uploadUrl === upload.url).forEach(forgetUpload);
  } catch (_) { /* nothing stored */ }
}

// A HEAD (asked on resuming, and on each retry) that answers 4xx makes tus-js-client
// forget the upload and send the whole file anew. Not when the answer is 410: the whole
// file had reached the server and was refused (the final PATCH's answer was lost), and it
// would be refused again; nor 401/403: the token is wrong, and a new upload would be
// refused too while this one is still good. Stop, and say why.
async function checkAnswer(state, req, res) {
  const status = res.getStatus();
  if (req.getMethod() !== "HEAD" || ![401, 403, 410].includes(status) || state.stopped) {
    return;
  }
  state.stopped = true;
  state.upload.abort();
  if (uploading === state) uploading = null;
  if (status === 410) {
    say(`Upload refused (410): ${errorMessage(res.getBody(), "the server refused the file")}`,
        true);
    forgetUploadOf(state.upload);
  } else {
    say(`Upload refused (${status}): give the right token and choose the file again: it ` +
        "goes on from what the server has.", true);
  }
  // Thrown so that tus-js-client does not act on this answer (forget the upload, create
  // another); the upload is aborted, so the error is not reported.
  throw new Error(`HEAD answered ${status}`);
}

// The default rule without its navigator.onLine test: a flaky link that the system calls
// offline for a moment must not end the upload. A refusal (4xx) is final, except 409 (the
// offset moved, or the broken request still holds the upload) and 423.
function retrying(state, err, attempt, options) {
  const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
  const retry = !state.stopped &&
    (status < 400 || status >= 500 || status === 409 || status === 423);
  if (retry && status !== 409) {
    const delayMs = options.retryDelays[attempt];
    state.dropped = true;
    say(`The link dropped${status ? ` (${status})` : ""}: trying again ` +
        `${delayMs ? `in ${delayMs / 1000} s` : "now"}, from what the server has.`, true);
  }
  return retry;
}

function progressed(state, sent, total) {
  if (state.stopped) return;
  if (state.dropped && sent > state.sentMax) {
    state.dropped = false;
    say("The link is back: the upload goes on.");
  }
  state.sentMax = Math.max(state.sentMax, sent);
  showUploadProgress(sent, total);
}

// The final PATCH (or, after a lost answer, the HEAD) carries the job's id; a proxy that
// drops the header leaves GET /api/uploads/{id}.
async function uploaded(state, lastResponse) {
  if (state.stopped) return;
  if (uploading === state) uploading = null;
  const file = state.file;
  let jobId = lastResponse ? lastResponse.getHeader("Oilspill-Job-Id") : null;
  try {
    if (!jobId) jobId = (await api(new URL(state.upload.url).pathname)).job_id;
  } catch (error) {
    say(`${file.name} was uploaded, but its job is unknown: ${error.message}`, true);
    return;
  }
  setBar($("upload-bar"), 1, `uploaded ${megabytes(file.size)} MB (100%)`);
  say(`${file.name} uploaded: its job is queued.`);
  follow(jobId);
  try {
    const job = await api(`/api/job/${jobId}`);
    const skipped = job.skipped_total ? `; ${job.skipped_total} files skipped` : "";
    if (current && current.id === jobId) {
      say(`${plural(job.total, "image")} queued${skipped}.`);
    }
  } catch (_) { /* the job's own view says the rest */ }
}

function stopped(state, err) {
  if (state.stopped || uploading !== state) return;
  const response = err.originalResponse;
  const status = response ? response.getStatus() : 0;
  if (status >= 400 && status < 500) {
    uploading = null;
    const body = response.getBody();
    const reason = errorMessage(body, body || "no reason given");
    if (status === 401 || status === 403) {
      say(`Upload refused (${status}): ${reason}. Give the right token and choose the file ` +
          "again: it goes on from what the server has.", true);
      return;
    }
    say(`Upload refused (${status}): ${reason}`, true);
    forgetUploadOf(state.upload);  // the server will not take the rest: nothing to resume
    return;
  }
  const bar = $("upload-bar");
  const sent = Number(bar.dataset.sent || 0);
  const total = Number(bar.dataset.total || state.file.size);
  say(`The upload stopped at ${percent(sent, total)}%: the link stayed down. The server ` +
      "keeps what it received: resume when the link is back, or choose the same file " +
      "again later.", true);
  const resume = $("resume-upload");
  resume.hidden = false;
  resume.onclick = () => {
    resume.hidden = true;
    say("Resuming the upload.");
    state.dropped = false;
    state.upload.start();
  };
}

// --- multipart, where tus is not offered -------------------------------------------

function uploadForm(file) {
  // XMLHttpRequest, not fetch: only it reports upload progress.
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/upload/");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) showUploadProgress(e.loaded, e.total);
  };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 202 && body.job_id) {
      setBar($("upload-bar"), 1, `uploaded ${megabytes(file.size)} MB (100%)`);
      const skipped = body.skipped_total ? `; ${body.skipped_total} files skipped` : "";
      say(`${plural(body.task_ids.length, "image")} queued${skipped}.`);
      follow(body.job_id);
    } else {
      say(`Upload refused (${xhr.status}): ${errorMessage(xhr.responseText, xhr.statusText)}`,
          true);
    }
  };
  xhr.onerror = () => say("The upload failed: the server could not be reached.", true);
  xhr.send(form);
}

// --- unfinished uploads, after a reload ---------------------------------------------

// Every upload this browser left unfinished, with what the server has of it: the page
// cannot reopen a file by itself, so it asks for the same file again (or to discard it).
async function listUnfinished() {
  if (!window.tus || !tus.defaultOptions || !tus.defaultOptions.urlStorage) return;
  let entries = [];
  try {
    entries = await tus.defaultOptions.urlStorage.findAllUploads();
  } catch (_) {
    return;
  }
  for (const entry of entries) {
    if (!entry.uploadUrl) continue;
    const where = await askUpload(entry.uploadUrl);
    if (where.gone || where.refused) {
      forgetUpload(entry);
    } else if (where.jobId) {
      forgetUpload(entry);  // it became a job while the page was away: show it
      if (!current) follow(where.jobId);
    } else {
      showNote(entry, where);
    }
  }
}

function showNote(entry, where) {
  if (resumedKeys.has(entry.urlStorageKey)) return;  // the file was chosen meanwhile
  const name = (entry.metadata && entry.metadata.filename) || "a file";
  const item = document.createElement("li");
  item.dataset.key = entry.urlStorageKey;
  item.dataset.filename = name;
  const known = where.offset !== undefined;
  if (known) item.dataset.offset = String(where.offset);
  const size = known ? where.length : entry.size;
  item.append(`${name} (${megabytes(size)} MB): `, known
    ? `${percent(where.offset, where.length)}% is on the server. `
    : "the server could not be asked how much it has. ",
  "Choose or drop the same file to resume it. ");
  const discard = document.createElement("button");
  discard.type = "button";
  discard.className = "discard";
  discard.textContent = "Discard";
  discard.title = "Delete what the server has of this upload";
  discard.addEventListener("click", () => discardUpload(entry, discard));
  item.append(discard);
  $("unfinished-list").append(item);
  $("unfinished").hidden = false;
}

function forgetNote(key) {
  for (const item of $("unfinished-list").querySelectorAll("li")) {
    if (item.dataset.key === key) item.remove();
  }
  $("unfinished").hidden = !$("unfinished-list").children.length;
}

async function discardUpload(entry, button) {
  button.disabled = true;
  try {
    await tus.Upload.terminate(entry.uploadUrl, { headers: authHeaders() });
  } catch (error) {
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    if (status !== 404) {  // 404: already gone
      button.disabled = false;
      const why = status ? errorMessage(error.originalResponse.getBody(), String(status))
        : "the server did not answer";
      say(`The upload could not be discarded: ${why}`, true);
      return;
    }
  }
  forgetUpload(entry);
  say("The unfinished upload was discarded.");
}

listUnfinished();
