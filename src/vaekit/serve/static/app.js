// vaekit explorer: a plain ES module over the service's JSON API (no build step, no dependencies).

const MAX_SLIDERS = 10;
const SLIDER_SPAN = 3;          // sliders cover [-3, 3], about the range of the N(0, I) prior
const GALLERY_SIZE = 60;        // oldest items drop out beyond this
const PATH_STEPS = 24;          // points fetched for an interpolation; scrubbing then needs no request
const MAP_STEPS = 16;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

const $ = (selector, root = document) => root.querySelector(selector);
const state = { info: null, z: [], gallery: [], nextId: 1, picks: { A: null, B: null }, path: null, analysis: null, map: null, label: null };

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, { json, form, signal } = {}) {
  // Same origin only: the service refuses other origins, and its session cookie (set by the token link) travels.
  const options = { method: json || form ? "POST" : "GET", signal, headers: {}, credentials: "same-origin" };
  if (json) { options.headers["Content-Type"] = "application/json"; options.body = JSON.stringify(json); }
  if (form) options.body = form;
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) throw new ApiError(response.status, (body && body.detail) || `${response.status} ${response.statusText}`);
  return body;
}

function say(message, kind = "info") {
  const status = $("#status");
  status.textContent = message;
  status.className = kind;
}

function failed(error) {
  if (error.name === "AbortError") return;
  say(error instanceof ApiError ? `The service refused: ${error.message} (HTTP ${error.status})` : `Error: ${error.message}`, "error");
}

const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toPrecision(digits).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, ""));
const fixed2 = (v) => (Math.abs(v) < 0.005 ? 0 : v).toFixed(2);
const fmtBytes = (n) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${Math.round(n / 1024)} KiB`);
const svgNode = (tag, attrs = {}) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
};

// --- the class of a conditional model ------------------------------------------------------------------

// A conditional model generates, decodes and reads examples of one class: the selector's, sent with every such
// request as ``label``. An unconditional model takes no label, and none is sent.
const withLabel = (body) => (state.label === null ? body : { ...body, label: state.label });
const labelQuery = () => (state.label === null ? "" : `&label=${encodeURIComponent(state.label)}`);
const ofClass = (caption) => (state.label === null ? caption : `${state.label} · ${caption}`);  // the class first: captions are cut short

function buildClassSelector() {
  const select = $("#class-select");
  select.replaceChildren(...state.info.classes.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    return option;
  }));
  state.label = state.info.classes[0];
  select.value = state.label;
  $("#class-picker").hidden = false;
  select.addEventListener("change", () => {
    state.label = select.value;
    requestDecode();
    if (state.picks.A && state.picks.B) fetchPath();
    if (state.info.latent_dim === 2) loadMap();
    say(`class ${state.label}: samples, decodings and uploads are now of this class`);
  });
}

// --- rendering outputs ---------------------------------------------------------------------------

// One decoded example of an API ``outputs`` object: a PNG for images, a table of named values for rows.
function outputAt(outputs, i) {
  return outputs.kind === "image" ? { kind: "image", image: outputs.images[i] } : { kind: "vector", row: outputs.rows[i], columns: outputs.columns };
}

function renderOutput(container, output, { compact = false } = {}) {
  container.replaceChildren();
  container.classList.toggle("vector", output.kind === "vector");
  if (output.kind === "image") {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${output.image}`;
    img.alt = "decoded image";
    container.append(img);
    return;
  }
  const table = document.createElement("table");
  table.className = compact ? "row compact" : "row";
  const count = compact ? Math.min(4, output.row.length) : output.row.length;
  for (let j = 0; j < count; j++) {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = output.columns[j];
    tr.append(th);
    const cell = output.row[j];  // a table's labels are text; numbers are shown to a few digits
    tr.insertCell().textContent = typeof cell === "string" ? cell : fmt(cell, compact ? 3 : 5);
  }
  if (count < output.row.length) table.insertRow().insertCell().textContent = `+${output.row.length - count} more`;
  container.append(table);
}

// --- the latent explorer: sliders with live decoding -------------------------------------------------

function shownDimensions() {
  return state.info.dimensions.slice(0, Math.min(MAX_SLIDERS, state.info.latent_dim));
}

function buildSliders() {
  const box = $("#sliders");
  box.replaceChildren();
  for (const dim of shownDimensions()) {
    const row = document.createElement("div");
    row.className = "slider";
    const label = document.createElement("label");
    label.htmlFor = `slider-${dim.index}`;
    label.textContent = `z${dim.index}`;
    if (dim.kl !== null) {
      const small = document.createElement("small");
      small.textContent = `KL ${fmt(dim.kl, 3)}`;
      small.title = "average KL(q(z_d|x) || N(0,1)) over the reference data, nats: how much this dimension carries";
      label.append(small);
    }
    const input = document.createElement("input");
    Object.assign(input, { type: "range", id: `slider-${dim.index}`, min: -SLIDER_SPAN, max: SLIDER_SPAN, step: 0.01, value: 0 });
    input.dataset.dim = dim.index;
    const output = document.createElement("output");
    output.textContent = "0.00";
    input.addEventListener("input", () => {
      state.z[dim.index] = Number(input.value);
      output.textContent = fixed2(Number(input.value));
      requestDecode();
    });
    row.append(label, input, output);
    box.append(row);
  }
  const hidden = state.info.latent_dim - shownDimensions().length;
  const ranked = state.info.dimensions_ranked_by ? "the most informative first (average KL to the prior over the reference data)" : "in index order (no reference data to rank them)";
  $("#explorer-hint").textContent = `Move a slider and the decoder's output for that latent point follows: ${ranked}.` +
    (hidden > 0 ? ` The other ${hidden} dimensions stay at the base point.` : "");
}

function setZ(z, baseLabel) {
  state.z = z.map(Number);
  for (const input of document.querySelectorAll("#sliders input")) {
    const v = state.z[Number(input.dataset.dim)];
    const span = Math.max(SLIDER_SPAN, Math.ceil(Math.abs(v)));
    input.min = -span; input.max = span; input.value = v;
    input.nextElementSibling.textContent = fixed2(v);
  }
  $("#explorer-base").textContent = `base point: ${baseLabel}`;
  requestDecode();
}

// Live decoding while a slider moves: at most one request in flight; values that arrive meanwhile are
// coalesced, and the newest one is sent as soon as the previous answer is in. Intermediate positions
// are skipped (never queued), so the picture keeps up with the hand and ends on the final value.
const live = { inFlight: false, dirty: false, shown: 0 };

function requestDecode() {
  live.dirty = true;
  if (!live.inFlight) pumpDecode();
}

async function pumpDecode() {
  live.inFlight = true;
  try {
    while (live.dirty) {
      live.dirty = false;
      const z = state.z.slice();
      const result = await api("api/decode", { json: withLabel({ z: [z] }) });
      const box = $("#explorer-output");
      renderOutput(box, outputAt(result.outputs, 0));
      box.dataset.z = JSON.stringify(result.z[0]);
      box.dataset.updates = String(++live.shown);
      updateMapMarker();
    }
  } catch (error) {
    failed(error);
  } finally {
    live.inFlight = false;
  }
}

// --- gallery ---------------------------------------------------------------------------------------

function addToGallery(items) {
  for (const item of items) state.gallery.unshift({ id: state.nextId++, ...item });
  state.gallery.length = Math.min(state.gallery.length, GALLERY_SIZE);
  renderGallery();
}

function renderGallery() {
  const box = $("#gallery");
  box.replaceChildren();
  for (const item of state.gallery) {
    const figure = document.createElement("figure");
    figure.className = `item ${item.output.kind}`;
    figure.dataset.id = item.id;
    const view = document.createElement("div");
    view.className = "output small";
    view.title = "explore around this point";
    renderOutput(view, item.output, { compact: true });
    view.addEventListener("click", () => setZ(item.z, item.caption));
    const caption = document.createElement("figcaption");
    caption.textContent = item.caption;
    caption.title = item.caption;
    const marks = document.createElement("div");
    marks.className = "marks";
    for (const slot of ["A", "B"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = slot;
      button.dataset.slot = slot;
      button.title = `walk ${slot === "A" ? "from" : "to"} this item`;
      button.addEventListener("click", () => pick(slot, item));
      marks.append(button);
    }
    figure.append(view, caption, marks);
    box.append(figure);
  }
  updatePickMarks();
}

function updatePickMarks() {
  for (const button of document.querySelectorAll("#gallery .marks button")) {
    const chosen = state.picks[button.dataset.slot];
    button.classList.toggle("on", Boolean(chosen) && String(chosen.id) === button.closest(".item").dataset.id);
  }
}

async function randomSamples() {
  try {
    const result = await api("api/sample", { json: withLabel({ n: 8 }) });
    addToGallery(result.z.map((z, i) => ({ z, output: outputAt(result.outputs, i), caption: ofClass(`sample ${result.seed}:${i}`) })));
    say(`8 draws from the prior${state.label === null ? "" : `, decoded as class ${state.label}`} (seed ${result.seed})`);
  } catch (error) { failed(error); }
}

async function referenceExamples() {
  try {
    const result = await api("api/examples?n=8");
    addToGallery(result.z.map((z, i) => ({
      z, output: outputAt(result.outputs, i),
      caption: result.labels[i] !== null ? `#${result.indices[i]} ${result.labels[i]}` : `#${result.indices[i]}`,
    })));
  } catch (error) { failed(error); }
}

// --- your example: upload, reconstruction, score, latent position ------------------------------------

let analysisController = null;

async function analyzeFile(file) {
  const limit = state.info.limits.max_upload_bytes;
  if (file.size > limit) {
    say(`${file.name} has ${fmtBytes(file.size)}; the service accepts at most ${fmtBytes(limit)}`, "error");
    return;
  }
  if (analysisController) analysisController.abort();  // a newer upload replaces an unfinished one
  analysisController = new AbortController();
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("invert", $("#invert").checked ? "true" : "false");
  if (state.label !== null) form.append("label", state.label);
  say(`reading ${file.name}…`);
  try {
    const result = await api("api/analyze", { form, signal: analysisController.signal });
    showAnalysis(result, ofClass(file.name));
    addToGallery([{ z: result.mean, output: outputAt(result.input, 0), caption: ofClass(file.name) }]);
    say(`${ofClass(file.name)}: ${result.note}`);
  } catch (error) { failed(error); }
}

function showAnalysis(result, name) {
  state.analysis = { z: result.mean, output: outputAt(result.input, 0), caption: name, id: state.nextId++ };
  $("#analysis").hidden = false;
  renderOutput($("#analysis-input"), outputAt(result.input, 0));
  renderOutput($("#analysis-reconstruction"), outputAt(result.reconstruction, 0));
  showExplanation(result.explanation);
  const a = result.anomaly;
  const box = $("#analysis-score");
  box.replaceChildren();
  const line = document.createElement("div");
  const value = document.createElement("span");
  value.className = "value";
  value.id = "score-value";
  value.textContent = fmt(a.value, 4);
  const desc = document.createElement("span");
  desc.textContent = `${a.score} — ${state.info.anomaly.description}; higher = more unusual`;
  line.append(value, desc);
  box.append(line);
  if (a.percentile !== null) {
    const meter = document.createElement("div");
    meter.className = "meter";
    const mark = document.createElement("span");
    mark.style.left = `calc(${Math.min(100, Math.max(0, a.percentile))}% - 1px)`;
    meter.append(mark);
    const text = document.createElement("div");
    text.id = "score-percentile";
    text.textContent = `More unusual than ${a.percentile.toFixed(1)}% of the reference data (${state.info.reference.source}).`;
    box.append(meter, text);
  }
  if (a.is_anomaly !== null) {
    const verdict = document.createElement("div");
    verdict.className = `verdict ${a.is_anomaly ? "bad" : "good"}`;
    verdict.textContent = `${a.is_anomaly ? "Flagged as an anomaly" : "Normal"} by the run's detector (threshold ${fmt(a.threshold, 4)}).`;
    box.append(verdict);
  }
  drawLatentPosition(result.mean, result.variance);
  $("#analysis-note").textContent = `${name}: ${result.note}. Other scores: ` +
    Object.entries(a.scores).filter(([k]) => k !== a.score).map(([k, v]) => `${k} ${fmt(v, 4)}`).join(", ");
  updateMapMarker();
}

// Each pixel's (or column's) share of -log p(x|z): where the model finds the example hard to explain.
function showExplanation(e) {
  const box = $("#analysis-heat");
  box.replaceChildren();
  if (e.kind === "image") {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${e.image}`;
    img.alt = "heat map of each pixel's share of -log p(x|z)";
    box.append(img);
    $("#analysis-heat-caption").textContent = `heat map: each pixel's share of -log p(x|z), 0 to ${fmt(e.max_nats, 3)} nats`;
    return;
  }
  const order = e.contributions.map((v, j) => j).sort((i, j) => e.contributions[j] - e.contributions[i]);
  const table = document.createElement("table");
  table.className = "row";
  for (const j of order.slice(0, 8)) {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = e.columns[j];
    tr.append(th);
    tr.insertCell().textContent = `${fmt(e.contributions[j], 4)} nats`;
  }
  box.append(table);
  $("#analysis-heat-caption").textContent = "columns with the largest share of -log p(x|z)";
}

function drawLatentPosition(mean, variance) {
  const svg = $("#analysis-latent");
  svg.replaceChildren();
  const dims = shownDimensions();
  const width = 400, rowHeight = 16, left = 48, right = 12, top = 14;
  const height = top + dims.length * rowHeight + 6;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const x = (v) => left + ((Math.max(-4, Math.min(4, v)) + 4) / 8) * (width - left - right);
  for (const tick of [-4, -2, 0, 2, 4]) {
    svg.append(svgNode("line", { x1: x(tick), x2: x(tick), y1: top - 4, y2: height - 4, stroke: tick === 0 ? "#b0b7c3" : "#e6e8ec" }));
    const label = svgNode("text", { x: x(tick), y: 10, "text-anchor": "middle" });
    label.textContent = tick;
    svg.append(label);
  }
  dims.forEach((dim, row) => {
    const y = top + row * rowHeight + rowHeight / 2;
    const m = mean[dim.index], s = Math.sqrt(variance[dim.index]);
    const name = svgNode("text", { x: 4, y: y + 3 });
    name.textContent = `z${dim.index}`;
    svg.append(name);
    svg.append(svgNode("line", { x1: x(m - 2 * s), x2: x(m + 2 * s), y1: y, y2: y, stroke: "#9db0ea", "stroke-width": 5, "stroke-linecap": "round" }));
    svg.append(svgNode("circle", { cx: x(m), cy: y, r: 4, fill: "#3056d3" }));
  });
}

// --- interpolation ------------------------------------------------------------------------------------

let pathController = null;

function pick(slot, item) {
  state.picks[slot] = item;
  const figure = $(`#pick-${slot}`);
  renderOutput($(".output", figure), item.output, { compact: true });
  $("figcaption", figure).textContent = `${slot}: ${item.caption}`;
  updatePickMarks();
  if (state.picks.A && state.picks.B) fetchPath();
}

async function fetchPath() {
  if (pathController) pathController.abort();  // only the newest pair (or method) matters
  pathController = new AbortController();
  const body = withLabel({ z_start: state.picks.A.z, z_end: state.picks.B.z, steps: PATH_STEPS, method: $("#interp-method").value });
  try {
    state.path = await api("api/interpolate", { json: body, signal: pathController.signal });
    const scrub = $("#scrub");
    scrub.max = PATH_STEPS - 1;
    scrub.disabled = false;
    const strip = $("#interp-strip");
    strip.replaceChildren();
    for (let i = 0; i < PATH_STEPS; i++) {
      const cell = document.createElement("div");
      cell.className = "output";
      renderOutput(cell, outputAt(state.path.outputs, i), { compact: true });
      cell.addEventListener("click", () => { scrub.value = i; showFrame(i); });
      if (state.path.outputs.kind === "image") strip.append(cell);
    }
    showFrame(Number(scrub.value));
  } catch (error) { failed(error); }
}

function showFrame(i) {
  const t = i / (PATH_STEPS - 1);
  $("#scrub-t").textContent = `t = ${t.toFixed(2)}`;
  const box = $("#interp-output");
  renderOutput(box, outputAt(state.path.outputs, i));
  box.dataset.step = String(i);
  document.querySelectorAll("#interp-strip .output").forEach((cell, j) => cell.classList.toggle("current", j === i));
}

// --- the latent map (2-D latents) ---------------------------------------------------------------------

// Cell centres sit at (i + 0.5) / n of the map; between them z changes linearly, and the first and last
// segments extend to the edges. The service places the reference points by the same rule.
function fractionToZ(f, axis) {
  const n = axis.length;
  const position = f * n - 0.5;
  const i = Math.max(0, Math.min(n - 2, Math.floor(position)));
  return axis[i] + (position - i) * (axis[i + 1] - axis[i]);
}

function zToFraction(z, axis) {
  const n = axis.length;
  let i = 0;
  const increasing = axis[n - 1] > axis[0];
  while (i < n - 2 && (increasing ? z > axis[i + 1] : z < axis[i + 1])) i++;
  return (i + 0.5 + (z - axis[i]) / (axis[i + 1] - axis[i])) / n;
}

let mapController = null;

async function loadMap() {
  if (mapController) mapController.abort();  // only the newest class's map matters
  mapController = new AbortController();
  try {
    const map = await api(`api/latent-map?steps=${MAP_STEPS}${labelQuery()}`, { signal: mapController.signal });
    state.map = map;
    $("#map-card").hidden = false;
    if (map.image) $("#map-image").src = `data:image/png;base64,${map.image}`;
    const svg = $("#map-overlay");
    svg.replaceChildren();
    const classes = map.points ? map.points.classes : [];
    if (map.points) {
      map.points.u.forEach((u, i) => {
        const label = map.points.labels[i];
        const color = label === null ? "#3056d3" : PALETTE[classes.indexOf(label) % PALETTE.length];
        svg.append(svgNode("circle", { cx: u, cy: map.points.v[i], r: 0.005, fill: color, "fill-opacity": 0.8 }));
      });
    }
    svg.append(svgNode("circle", { id: "map-marker", r: 0.018, fill: "none", stroke: "#fff", "stroke-width": 0.006, visibility: "hidden" }));
    svg.append(svgNode("circle", { id: "map-upload", r: 0.014, fill: "#f1c40f", stroke: "#000", "stroke-width": 0.003, visibility: "hidden" }));
    const legend = $("#map-legend");
    legend.replaceChildren(...classes.map((name, i) => {
      const span = document.createElement("span");
      const dot = document.createElement("i");
      dot.style.background = PALETTE[i % PALETTE.length];
      span.append(dot, name);
      return span;
    }));
    updateMapMarker();
  } catch (error) { failed(error); }
}

function mapClicked(event) {
  if (!state.map) return;
  const box = event.currentTarget.getBoundingClientRect();
  const u = (event.clientX - box.left) / box.width, v = (event.clientY - box.top) / box.height;
  const z = [fractionToZ(u, state.map.z1_axis), fractionToZ(v, state.map.z2_axis)];
  setZ(z, `map (${fixed2(z[0])}, ${fixed2(z[1])})`);
}

function placeMarker(id, z) {
  const marker = document.getElementById(id);
  if (!marker || !state.map || !z) return;
  marker.setAttribute("cx", zToFraction(z[0], state.map.z1_axis));
  marker.setAttribute("cy", zToFraction(z[1], state.map.z2_axis));
  marker.setAttribute("visibility", "visible");
}

function updateMapMarker() {
  placeMarker("map-marker", state.z);
  if (state.analysis) placeMarker("map-upload", state.analysis.z);
}

// --- start ----------------------------------------------------------------------------------------------

function describeModel(info) {
  const parts = [info.run || "model", `data ${info.data_source}`, `${info.arch} ${info.hidden.join(",")} → latent ${info.latent_dim}`,
    info.likelihood + (info.binarize !== "none" ? ` (${info.binarize} binarization)` : ""), `${info.epochs_trained} epochs`];
  if (info.conditional) parts.splice(3, 0, `conditional on ${info.classes.length} classes`);
  if (info.val_neg_elbo !== null) parts.push(`validation −ELBO ${fmt(info.val_neg_elbo, 5)} nats/example`);
  return parts.join(" · ");
}

function describeLimits(limits) {
  return `Limits: uploads up to ${fmtBytes(limits.max_upload_bytes)} and ${limits.max_image_pixels.toLocaleString()} pixels; ` +
    `${limits.max_samples} samples and ${limits.max_latent_batch} latent vectors per request; ` +
    `${limits.max_interpolation_steps} interpolation steps; latent values within ±${limits.max_latent_abs}.`;
}

function wireControls() {
  $("#reset-origin").addEventListener("click", () => setZ(new Array(state.info.latent_dim).fill(0), "the origin"));
  $("#random-point").addEventListener("click", async () => {
    try {
      const result = await api("api/sample", { json: withLabel({ n: 1 }) });
      setZ(result.z[0], `a prior draw (seed ${result.seed})`);
    } catch (error) { failed(error); }
  });
  $("#add-current").addEventListener("click", () => {
    const box = $("#explorer-output");
    const img = $("img", box);
    const output = img ? { kind: "image", image: img.src.split(",")[1] } : null;
    if (output) addToGallery([{ z: state.z.slice(), output, caption: ofClass("explored point") }]);
    else api("api/decode", { json: withLabel({ z: [state.z] }) }).then((r) => addToGallery([{ z: state.z.slice(), output: outputAt(r.outputs, 0), caption: ofClass("explored point") }])).catch(failed);
  });
  $("#random-samples").addEventListener("click", randomSamples);
  $("#reference-examples").addEventListener("click", referenceExamples);
  $("#clear-gallery").addEventListener("click", () => { state.gallery = []; renderGallery(); });
  $("#interp-method").addEventListener("change", () => { if (state.picks.A && state.picks.B) fetchPath(); });
  $("#scrub").addEventListener("input", (event) => { if (state.path) showFrame(Number(event.target.value)); });
  $("#analysis-explore").addEventListener("click", () => state.analysis && setZ(state.analysis.z, state.analysis.caption));
  $("#analysis-a").addEventListener("click", () => state.analysis && pick("A", state.analysis));
  $("#analysis-b").addEventListener("click", () => state.analysis && pick("B", state.analysis));
  $("#map").addEventListener("click", mapClicked);

  const zone = $("#dropzone");
  const input = $("#file-input");
  input.addEventListener("change", () => { if (input.files.length) analyzeFile(input.files[0]); input.value = ""; });
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); } });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) analyzeFile(file);
  });
  // A file dropped anywhere else would make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

async function start() {
  try {
    state.info = await api("api/info");
  } catch (error) { failed(error); return; }
  const info = state.info;
  $("#model-summary").textContent = describeModel(info);
  $("#limits").textContent = describeLimits(info.limits);
  if (info.kind !== "image") {
    $("#drop-text").replaceChildren("Drop a JSON file here (an array of ", String(info.input_shape[0]), " numbers, or an object with the columns), or ");
    const u = document.createElement("u");
    u.textContent = "choose a file";
    $("#drop-text").append(u);
  }
  if (!info.reference) $("#reference-examples").disabled = true;
  if (info.conditional) buildClassSelector();
  wireControls();
  buildSliders();
  setZ(new Array(info.latent_dim).fill(0), "the origin");
  if (info.latent_dim === 2) loadMap();
  document.body.dataset.ready = "true";
  say(info.anomaly.detector_problem ? `Note: ${info.anomaly.detector_problem}` : "Ready.");
}

start();
