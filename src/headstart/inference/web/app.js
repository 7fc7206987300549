// headstart's static page: the exported model runs in this browser on onnxruntime-web (WebAssembly). Nothing is
// fetched: ort.js, ort-wasm.js (the runtime's wasm, gzip + base64) and model.js (the ONNX model, base64, and its
// metadata) are classic scripts, so the folder works from file:// as well as from any static host.
//
// Preprocessing is the Python pipeline's (headstart.runtime.preprocess, PREPROCESSING_STEPS), step by step:
// Pillow's antialiased resampling is ported below with its fixed-point arithmetic, so the tensor fed to the
// model is the one Python would build from the same decoded pixels.
"use strict";

(function () {
  const META = globalThis.HEADSTART_MODEL_META;
  const $ = (selector, root = document) => root.querySelector(selector);
  const percent = headstartPercent;  // topk.js

  // ---- Pillow's resampling (libImaging/Resample.c and Geometry.c), for 8-bit RGB ----
  const PRECISION_BITS = 32 - 8 - 2;
  const FILTERS = {
    bilinear: { support: 1.0, fn: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
    bicubic: {
      support: 2.0,
      fn: (x) => {
        const a = -0.5;
        x = Math.abs(x);
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
      },
    },
  };

  function precomputeCoeffs(inSize, outSize, filter) {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1.0);
    const support = filter.support * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const kk = new Int32Array(outSize * ksize);
    const weights = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1.0 / filterscale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        const w = filter.fn((x + xmin - center + 0.5) * ss);
        weights[x] = w;
        ww += w;
      }
      for (let x = 0; x < xmax; x++) {
        const k = ww !== 0.0 ? weights[x] / ww : weights[x];
        // normalize_coeffs_8bpc: (int)(+-0.5 + k * 2^PRECISION_BITS), truncated toward zero
        kk[xx * ksize + x] = Math.trunc((k < 0 ? -0.5 : 0.5) + k * (1 << PRECISION_BITS));
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { ksize, bounds, kk };
  }

  function clip8(ss) {
    if (ss >= (1 << PRECISION_BITS) * 256) return 255;
    if (ss <= 0) return 0;
    return Math.floor(ss / (1 << PRECISION_BITS));
  }

  // One separable pass along x (horizontal) or y over an RGB buffer of w x h.
  function resamplePass(src, w, h, outSize, filter, horizontal) {
    const { ksize, bounds, kk } = precomputeCoeffs(horizontal ? w : h, outSize, filter);
    const ow = horizontal ? outSize : w;
    const oh = horizontal ? h : outSize;
    const out = new Uint8Array(ow * oh * 3);
    const half = 1 << (PRECISION_BITS - 1);
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        const o = horizontal ? x : y;
        const min = bounds[o * 2];
        const n = bounds[o * 2 + 1];
        let s0 = half, s1 = half, s2 = half;
        for (let i = 0; i < n; i++) {
          const k = kk[o * ksize + i];
          const p = horizontal ? (y * w + min + i) * 3 : ((min + i) * w + x) * 3;
          s0 += src[p] * k;
          s1 += src[p + 1] * k;
          s2 += src[p + 2] * k;
        }
        const q = (y * ow + x) * 3;
        out[q] = clip8(s0);
        out[q + 1] = clip8(s1);
        out[q + 2] = clip8(s2);
      }
    }
    return out;
  }

  // Pillow's NEAREST resize: an affine scale, source positions accumulated as ImagingScaleAffine does.
  function resizeNearest(src, w, h, ow, oh) {
    const coord = (v) => (v < 0.0 ? -1 : Math.trunc(v));
    const a0 = w / ow;
    const a4 = h / oh;
    const xs = new Int32Array(ow);
    let xo = a0 * 0.5;
    for (let x = 0; x < ow; x++) { xs[x] = Math.min(coord(xo), w - 1); xo += a0; }
    const out = new Uint8Array(ow * oh * 3);
    let yo = a4 * 0.5;
    for (let y = 0; y < oh; y++) {
      const yi = Math.min(coord(yo), h - 1);
      for (let x = 0; x < ow; x++) {
        const p = (yi * w + xs[x]) * 3;
        const q = (y * ow + x) * 3;
        out[q] = src[p]; out[q + 1] = src[p + 1]; out[q + 2] = src[p + 2];
      }
      yo += a4;
    }
    return out;
  }

  function resize(src, w, h, ow, oh, interpolation) {
    if (ow === w && oh === h) return src;
    if (interpolation === "nearest") return resizeNearest(src, w, h, ow, oh);
    const filter = FILTERS[interpolation];
    if (!filter) throw new Error(`unsupported interpolation ${interpolation}`);
    let buf = src;
    if (ow !== w) buf = resamplePass(buf, w, h, ow, filter, true);
    if (oh !== h) buf = resamplePass(buf, ow, h, oh, filter, false);
    return buf;
  }

  // Python's round(): halves to even.
  function roundHalfEven(v) {
    const f = Math.floor(v);
    const d = v - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  }

  // RGB bytes (w x h) -> Float32Array [3, crop, crop], PREPROCESSING_STEPS 2-5.
  function preprocess(rgb, w, h, spec) {
    const size = spec.resize_size;
    const crop = spec.crop_size;
    let W = w, H = h;
    const short = Math.min(w, h);
    if (short !== size) {
      const long = Math.trunc((size * Math.max(w, h)) / short);
      [W, H] = w <= h ? [size, long] : [long, size];
    }
    const img = resize(rgb, w, h, W, H, spec.interpolation);
    const top = roundHalfEven((H - crop) / 2.0);
    const left = roundHalfEven((W - crop) / 2.0);
    const out = new Float32Array(3 * crop * crop);
    const mean = spec.mean.map(Math.fround);
    const std = spec.std.map(Math.fround);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < crop; y++) {
        for (let x = 0; x < crop; x++) {
          const v = Math.fround(img[((top + y) * W + left + x) * 3 + c] / 255);
          out[c * crop * crop + y * crop + x] = Math.fround(v - mean[c]) / std[c];
        }
      }
    }
    return out;
  }

  // ---- decoding: EXIF-oriented, no colour management, transparency composited on white (as open_image) ----
  async function decode(blob) {
    const bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none",
    });
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const rgb = new Uint8Array(canvas.width * canvas.height * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
      rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
    }
    return { rgb, width: canvas.width, height: canvas.height };
  }

  // ---- the model ----
  function bytesFromBase64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function gunzip(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function createSession() {
    ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which file:// cannot have
    ort.env.wasm.proxy = false;
    ort.env.wasm.wasmBinary = await gunzip(bytesFromBase64(globalThis.HEADSTART_ORT_WASM_GZ));
    return ort.InferenceSession.create(bytesFromBase64(globalThis.HEADSTART_MODEL_B64),
      { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  }

  function softmax(logits, temperature) {
    const z = Array.from(logits, (v) => v / temperature);
    const top = Math.max(...z);
    const e = z.map((v) => Math.exp(v - top));
    const sum = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / sum);
  }

  const session = (async () => createSession())();

  async function logitsOf(input, spec) {
    const crop = spec.crop_size;
    const s = await session;
    const result = await s.run({ [s.inputNames[0]]: new ort.Tensor("float32", input, [1, 3, crop, crop]) });
    return Array.from(result[s.outputNames[0]].data);
  }

  // One image file -> {label, confidence, top_k, logits}, like headstart's predict.
  async function classify(blob, { topK = 3, threshold = META.threshold } = {}) {
    const { rgb, width, height } = await decode(blob);
    const logits = await logitsOf(preprocess(rgb, width, height, META.preprocessing), META.preprocessing);
    const probs = softmax(logits, META.temperature);
    const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
    const k = Math.max(1, Math.min(topK, META.classes.length));
    const confidence = probs[order[0]];
    return {
      label: confidence >= threshold ? META.classes[order[0]] : "unsure",
      confidence,
      top_k: order.slice(0, k).map((i) => [META.classes[i], probs[i]]),
      logits,
    };
  }

  globalThis.headstart = { classify, preprocess, decode, logitsOf, ready: session, meta: META };

  // ---- the page ----
  function newCard(file) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    $(".filename", card).textContent = file.name;
    const photo = $(".photo", card);
    photo.src = URL.createObjectURL(file);
    photo.alt = file.name;
    photo.addEventListener("error", () => { photo.hidden = true; });
    $("#results").prepend(card);
    return card;
  }

  function showError(card, message) {
    card.classList.remove("pending");
    card.classList.add("failed");
    $(".label", card).textContent = "error";
    const error = $(".error", card);
    error.textContent = message;
    error.hidden = false;
  }

  function showPrediction(card, prediction) {
    card.classList.remove("pending");
    const unsure = prediction.label === "unsure";
    card.classList.add(unsure ? "unsure" : "sure");
    card.dataset.label = prediction.label;
    card.dataset.top1 = prediction.top_k[0][0];
    card.dataset.confidence = String(prediction.confidence);
    card.dataset.logits = JSON.stringify(prediction.logits);
    $(".label", card).textContent = prediction.label;
    $(".confidence", card).textContent = percent(prediction.confidence);
    if (unsure) {
      const [best, p] = prediction.top_k[0];
      $(".note", card).textContent = `best guess ${best} (${percent(p)}) is below the ${percent(META.threshold)} threshold`;
    }
    headstartTopK($(".topk", card), prediction.top_k);
  }

  let pending = 0;
  async function addFiles(files) {
    // One at a time, in order: the wasm session runs one inference at a time anyway.
    for (const file of files) {
      const card = newCard(file);
      card.dataset.name = file.name;
      pending += 1;
      $("#status").textContent = `classifying… ${pending} left`;
      try {
        showPrediction(card, await classify(file));
      } catch (err) {
        showError(card, `${file.name}: not an image this browser can decode (${err.message || err})`);
      }
      pending -= 1;
      $("#status").textContent = pending ? `classifying… ${pending} left` : `${$("#results").children.length} image(s)`;
    }
  }

  function setup() {
    const drop = $("#drop");
    const input = $("#files");
    $("#model-info").textContent = `${META.backbone} · ${META.classes.length} classes (${META.classes.join(", ")})`
      + ` · "unsure" below ${percent(META.threshold)} · loading the runtime…`;
    session.then(
      () => {
        $("#model-info").textContent = $("#model-info").textContent.replace(" · loading the runtime…", "");
        document.body.dataset.ready = "1";
      },
      (err) => {
        $("#model-info").textContent = `the model cannot run in this browser: ${err.message || err}`;
        document.body.dataset.ready = "error";
      },
    );
    input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
    drop.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
    });
    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
    }
    for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      addFiles([...event.dataTransfer.files]);
    });
    $("#clear").addEventListener("click", () => { $("#results").replaceChildren(); $("#status").textContent = ""; });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
