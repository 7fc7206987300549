// headstart's page: drop or pick images, each is sent to POST predict on its own (the server batches
// concurrent requests), and shown with its label, confidence and top-k bars. Plain DOM, no dependencies.
"use strict";

const PARALLEL = 4; // requests in flight at once
const state = { model: null, queue: [], active: 0, cards: [] };

const $ = (selector, root = document) => root.querySelector(selector);
const percent = headstartPercent;  // topk.js

function setStatus(text) {
  $("#status").textContent = text;
}

// The server's message for a failed response: {"detail": "..."} when it is ours, else the status line.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    return JSON.stringify(body.detail ?? body);
  } catch {
    return `${response.status} ${response.statusText}`.trim();
  }
}

async function loadModel() {
  try {
    const response = await fetch("model");
    if (!response.ok) throw new Error(await errorMessage(response));
    const model = await response.json();
    state.model = model;
    const accuracy = model.metrics?.test?.accuracy;
    $("#model-info").textContent = `${model.backbone} · ${model.classes.length} classes (${model.classes.join(", ")})`
      + (accuracy !== undefined ? ` · test accuracy ${percent(accuracy)}` : "")
      + ` · ${model.engine} engine · "unsure" below ${percent(model.threshold)}`;
    $("#limits").textContent = `up to ${(model.max_body_bytes / 1e6).toFixed(1)} MB per image`;
    if (model.engine !== "torch") {
      $("#gradcam").disabled = true;
      $("#gradcam-note").textContent = "(needs the torch engine: headstart serve RUN --engine torch)";
    }
  } catch (err) {
    $("#model-info").textContent = `cannot reach the model: ${err.message}`;
  }
}

function newCard(file) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  $(".filename", card).textContent = file.name;
  const url = URL.createObjectURL(file);
  const photo = $(".photo", card);
  photo.src = url;
  photo.alt = file.name;
  // a file the browser cannot draw (not an image) should not show a broken-image icon
  photo.addEventListener("error", () => { photo.hidden = true; });
  $("#results").prepend(card);
  const entry = { card, file, url, camLoaded: false, ok: false };
  state.cards.push(entry);
  return entry;
}

function showError(entry, message) {
  const { card } = entry;
  card.classList.remove("pending");
  card.classList.add("failed");
  $(".label", card).textContent = "error";
  const error = $(".error", card);
  error.textContent = message;
  error.hidden = false;
}

function showPrediction(entry, prediction) {
  const { card } = entry;
  card.classList.remove("pending");
  const unsure = prediction.label === (state.model?.unsure_label ?? "unsure");
  card.classList.add(unsure ? "unsure" : "sure");
  card.dataset.label = prediction.label;
  card.dataset.confidence = String(prediction.confidence);
  $(".label", card).textContent = prediction.label;
  $(".confidence", card).textContent = percent(prediction.confidence);
  if (unsure) {
    const [best, p] = prediction.top_k[0];
    $(".note", card).textContent = `best guess ${best} (${percent(p)}) is below the ${percent(state.model?.threshold ?? 0.5)} threshold`;
  }
  headstartTopK($(".topk", card), prediction.top_k);
  entry.ok = true;
  if ($("#gradcam").checked) showCam(entry);
}

async function classify(entry) {
  const limit = state.model?.max_body_bytes;
  if (limit && entry.file.size > limit) {
    showError(entry, `${entry.file.name}: ${entry.file.size.toLocaleString()} bytes, over the server's limit of ${limit.toLocaleString()} bytes`);
    return;
  }
  const form = new FormData();
  form.append("files", entry.file, entry.file.name);
  try {
    const response = await fetch("predict", { method: "POST", body: form });
    if (!response.ok) {
      showError(entry, await errorMessage(response));
      return;
    }
    const prediction = (await response.json()).predictions[0];
    if (prediction.error) showError(entry, `${prediction.filename}: ${prediction.error}`);
    else showPrediction(entry, prediction);
  } catch (err) {
    showError(entry, `could not reach the server (${err.message})`);
  }
}

async function showCam(entry) {
  const { card } = entry;
  const cam = $(".cam", card);
  if (!entry.camLoaded) {
    entry.camLoaded = true;
    const form = new FormData();
    form.append("files", entry.file, entry.file.name);
    try {
      const response = await fetch("explain", { method: "POST", body: form });
      if (!response.ok) throw new Error(await errorMessage(response));
      const result = await response.json();
      cam.src = `data:image/png;base64,${result.overlay_png}`;
      cam.title = `Grad-CAM for ${result.label} (${percent(result.confidence)}), on the center crop the model sees`;
    } catch (err) {
      entry.camLoaded = false;
      $(".note", card).textContent = `Grad-CAM failed: ${err.message}`;
      return;
    }
  }
  if ($("#gradcam").checked) {
    cam.hidden = false;
    $(".photo", card).classList.add("under-cam");
  }
}

function hideCams() {
  for (const entry of state.cards) {
    $(".cam", entry.card).hidden = true;
    $(".photo", entry.card).classList.remove("under-cam");
  }
}

function pump() {
  while (state.active < PARALLEL && state.queue.length) {
    const entry = state.queue.shift();
    state.active += 1;
    classify(entry).finally(() => {
      state.active -= 1;
      const left = state.queue.length + state.active;
      setStatus(left ? `classifying… ${left} left` : `${state.cards.length} image(s)`);
      pump();
    });
  }
}

function addFiles(files) {
  for (const file of files) state.queue.push(newCard(file));
  setStatus(`classifying… ${state.queue.length + state.active} left`);
  pump();
}

function setup() {
  const drop = $("#drop");
  const input = $("#files");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles([...event.dataTransfer.files]);
  });
  $("#gradcam").addEventListener("change", (event) => {
    if (!event.target.checked) hideCams();
    else for (const entry of state.cards) if (entry.ok) showCam(entry);
  });
  $("#clear").addEventListener("click", () => {
    for (const entry of state.cards) URL.revokeObjectURL(entry.url);
    state.cards = [];
    state.queue = [];
    $("#results").replaceChildren();
    setStatus("");
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
