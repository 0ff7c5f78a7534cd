// The page of `detr serve`: one /predict call per image (every detection, threshold 0), drawn and
// filtered by the slider here without asking the model again; a click asks /explain for that
// detection's attention map. No libraries: it works offline.
"use strict";

const state = { file: null, image: null, detections: [], chosen: null, colours: {} };
const $ = (id) => document.getElementById(id);

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function colour(classId) {
  // a distinct hue per class, stable across images
  if (!(classId in state.colours)) state.colours[classId] = `hsl(${(classId * 137.508) % 360}, 85%, 45%)`;
  return state.colours[classId];
}

function label(d) {
  return d.class_name !== null && d.class_name !== undefined ? d.class_name : String(d.class_id);
}

// COCO compressed RLE (pycocotools' string form) -> run lengths, then a column-major 0/1 mask
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function maskImage(rle, rgb) {
  const [h, w] = rle.size;
  const data = new ImageData(w, h);
  let index = 0, on = false;
  for (const run of rleCounts(rle.counts)) {
    if (on) {
      for (let i = index; i < index + run; i++) {
        const row = i % h, col = Math.floor(i / h), o = 4 * (row * w + col);
        data.data[o] = rgb[0]; data.data[o + 1] = rgb[1]; data.data[o + 2] = rgb[2]; data.data[o + 3] = 110;
      }
    }
    index += run;
    on = !on;
  }
  return data;
}

function rgbOf(css) {
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = css;
  probe.fillRect(0, 0, 1, 1);
  return Array.from(probe.getImageData(0, 0, 1, 1).data.slice(0, 3));
}

function visible() {
  const threshold = parseFloat($("threshold").value);
  return state.detections.map((d, i) => [d, i]).filter(([d]) => d.score >= threshold);
}

function draw() {
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  if (!state.image) return;
  canvas.width = state.image.naturalWidth;
  canvas.height = state.image.naturalHeight;
  // small images shown larger, large ones smaller: the drawing is in the image's own pixels
  canvas.style.width = Math.min(800, Math.max(480, canvas.width)) + "px";
  ctx.drawImage(state.image, 0, 0);
  const shown = visible();
  const line = Math.max(2, Math.round(canvas.width / 300));
  for (const [d] of shown) {
    if (d.segmentation) {
      const layer = document.createElement("canvas");
      layer.width = canvas.width; layer.height = canvas.height;
      layer.getContext("2d").putImageData(maskImage(d.segmentation, rgbOf(colour(d.class_id))), 0, 0);
      ctx.drawImage(layer, 0, 0);
    }
  }
  ctx.font = `${Math.max(12, Math.round(canvas.width / 50))}px sans-serif`;
  for (const [d, i] of shown) {
    const [x0, y0, x1, y1] = d.box;
    ctx.lineWidth = i === state.chosen ? line * 2 : line;
    ctx.strokeStyle = colour(d.class_id);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const text = `${label(d)} ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(text).width + 6, th = parseInt(ctx.font) + 4;
    ctx.fillStyle = colour(d.class_id);
    ctx.fillRect(x0, Math.max(0, y0 - th), tw, th);
    ctx.fillStyle = "white";
    ctx.fillText(text, x0 + 3, Math.max(0, y0 - th) + th - 5);
  }
  const list = $("detections");
  list.innerHTML = "";
  const classes = new Map();
  for (const [d, i] of shown) {
    const item = document.createElement("li");
    item.textContent = `${label(d)} ${d.score.toFixed(3)} [${d.box.map((v) => Math.round(v)).join(", ")}]`;
    item.dataset.index = i;
    item.dataset.className = label(d);
    item.dataset.score = d.score;
    item.dataset.box = JSON.stringify(d.box);
    item.style.borderLeft = `6px solid ${colour(d.class_id)}`;
    if (i === state.chosen) item.className = "chosen";
    item.onclick = () => explain(i);
    list.appendChild(item);
    classes.set(d.class_id, label(d));
  }
  $("legend").innerHTML = "";
  for (const [id, name] of classes) {
    const span = document.createElement("span");
    span.innerHTML = `<i style="background:${colour(id)}"></i>`;
    span.appendChild(document.createTextNode(name));
    $("legend").appendChild(span);
  }
  say(`${shown.length} of ${state.detections.length} detections at score >= ${$("threshold").value}` +
      (state.detections.length ? "; click one to see its attention" : ""));
}

async function answer(response) {
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function predict(file) {
  state.file = file; state.chosen = null; state.detections = [];
  $("attention").style.display = "none"; $("attention-title").textContent = "";
  const url = URL.createObjectURL(file);
  state.image = new Image();
  state.image.src = url;
  await state.image.decode().catch(() => null);
  const form = new FormData();
  form.append("image", file);
  form.append("threshold", "0");
  say("detecting...");
  $("detections").dataset.ready = "false";
  try {
    const result = await answer(await fetch("predict", { method: "POST", body: form, headers: headers() }));
    state.detections = result.images[0].detections;
    draw();
    $("detections").dataset.ready = "true";
  } catch (err) {
    say(err.message, true);
    $("detections").dataset.ready = "error";
  }
}

async function explain(index) {
  state.chosen = index;
  draw();
  const d = state.detections[index];
  const form = new FormData();
  form.append("image", state.file);
  form.append("threshold", "0");
  // the detections in score order, as /predict gave them, and two more: explain runs the model itself,
  // where near-ties may swap, so the answer's detection is found by class and box
  form.append("k", String(index + 3));
  form.append("png", "true");
  $("attention-title").textContent = `attention of ${label(d)} ${d.score.toFixed(2)}: loading...`;
  try {
    const result = await answer(await fetch("explain", { method: "POST", body: form, headers: headers() }));
    const distance = (e) => e.box.reduce((sum, v, j) => sum + Math.abs(v - d.box[j]), 0);
    const found = result.detections.filter((e) => e.class_id === d.class_id)
      .reduce((best, e) => (best === null || distance(e) < distance(best) ? e : best), null);
    if (!found) throw new Error("the model did not find this detection again");
    $("attention").src = found.attention_png;
    $("attention").style.display = "block";
    $("attention-title").textContent = `attention of ${label(d)} ${d.score.toFixed(2)} (decoder, last layer)`;
  } catch (err) {
    $("attention-title").textContent = "attention: " + err.message;
  }
}

function hit(event) {
  const canvas = $("canvas"), rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * canvas.width / rect.width;
  const y = (event.clientY - rect.top) * canvas.height / rect.height;
  // the smallest visible box under the click
  let best = null, area = Infinity;
  for (const [d, i] of visible()) {
    const [x0, y0, x1, y1] = d.box;
    const a = (x1 - x0) * (y1 - y0);
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && a < area) { best = i; area = a; }
  }
  if (best !== null) explain(best);
}

async function describe() {
  try {
    const m = await answer(await fetch("model", { headers: headers() }));
    const names = m.classes.map((c) => c.name ?? String(c.id)).filter((n) => n !== "N/A");
    $("model").textContent = `${m.model} (${m.precision}${m.masks ? ", masks" : ""}), ${names.length} classes: ` +
      names.slice(0, 20).join(", ") + (names.length > 20 ? ", ..." : "") +
      `; input short side ${m.preprocessing.short_side}, max ${m.preprocessing.max_size}`;
  } catch (err) {
    $("model").textContent = "model: " + err.message;
  }
}

$("file").onchange = (e) => e.target.files.length && predict(e.target.files[0]);
$("drop").onclick = (e) => { if (e.target.id === "drop") $("file").click(); };
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
};
$("threshold").oninput = () => { $("threshold-value").textContent = parseFloat($("threshold").value).toFixed(2); draw(); };
$("canvas").onclick = hit;
$("api-key").onchange = describe;
describe();
