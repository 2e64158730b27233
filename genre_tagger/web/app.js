// The page at /: sends the description to POST /v1/tag once, then marks the bars locally: first by the
// run's default decisions (each genre's own threshold, from GET /v1/model), then at the slider's one
// threshold once it moves (every genre's probability is in the response). It asks for explanations of every
// genre at or above 0.01 too: clicking a genre highlights its words, green up, red down.
"use strict";

const form = document.getElementById("tag-form");
const text = document.getElementById("description");
const example = document.getElementById("example");
const submit = document.getElementById("submit");
const errorBox = document.getElementById("error");
const result = document.getElementById("result");
const bars = document.getElementById("bars");
const slider = document.getElementById("threshold");
const sliderValue = document.getElementById("threshold-value");
const summary = document.getElementById("summary");
const words = document.getElementById("words");
const defaultsButton = document.getElementById("use-defaults");
const EXPLAIN_AT = 0.01; // genres explained: every one at or above this

let defaultCut = null; // genre -> the run's default threshold for it (from GET /v1/model), once known
let useDefaults = true; // until the slider moves

let probabilities = null; // [[genre, probability], ...] highest first
let explained = null; // {description, truncated, genres: {genre: {up, down}}}
let selected = null;

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function clearError() {
  errorBox.hidden = true;
  errorBox.textContent = "";
}

function render() {
  bars.replaceChildren();
  for (const [genre, p] of probabilities) {
    const item = document.createElement("li");
    item.className = "genre";
    item.dataset.genre = genre;
    item.dataset.probability = String(p);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = genre;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "img");
    track.setAttribute("aria-label", `${genre}: probability ${p.toFixed(2)}`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    const cut = document.createElement("span");
    cut.className = "cut";
    track.append(fill, cut);
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = p.toFixed(2);
    item.append(name, track, value);
    item.tabIndex = 0;
    item.setAttribute("role", "button");
    item.setAttribute("aria-pressed", String(genre === selected));
    item.title = `Highlight the words behind ${genre}`;
    item.addEventListener("click", () => select(genre));
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(genre);
      }
    });
    bars.append(item);
  }
  mark();
  highlight();
}

function select(genre) {
  selected = genre;
  for (const item of bars.children) {
    item.classList.toggle("selected", item.dataset.genre === genre);
    item.setAttribute("aria-pressed", String(item.dataset.genre === genre));
  }
  highlight();
}

// The description with the selected genre's words marked; offsets index the description as tagged, in code
// points (Python's str), so the text is sliced as an array of code points: a JS string counts an emoji twice.
function highlight() {
  words.replaceChildren();
  if (!explained) return;
  const points = Array.from(explained.description);
  const text = { slice: (start, end) => points.slice(start, end).join("") };
  const genre = selected && explained.genres[selected];
  const marks = [];
  if (genre) {
    for (const w of genre.up) marks.push([w, "up"]);
    for (const w of genre.down) marks.push([w, "down"]);
  }
  marks.sort((a, b) => a[0].start - b[0].start);
  let at = 0;
  for (const [w, kind] of marks) {
    words.append(text.slice(at, w.start));
    const span = document.createElement("mark");
    span.className = kind;
    span.dataset.score = String(w.score);
    span.title = `${w.score > 0 ? "+" : ""}${w.score.toFixed(3)} for ${selected}`;
    span.textContent = text.slice(w.start, w.end);
    words.append(span);
    at = w.end;
  }
  words.append(text.slice(at));
  if (selected && !genre) words.append(` (${selected} is under ${EXPLAIN_AT}: not explained)`);
  if (explained.truncated) words.append(" (only the words the model read are explained: the description is longer)");
}

function mark() {
  const threshold = Number(slider.value);
  const byRun = useDefaults && defaultCut !== null;
  sliderValue.textContent = byRun ? "the run's default decisions" : threshold.toFixed(2);
  defaultsButton.disabled = byRun || defaultCut === null;
  if (!probabilities) return;
  const tagged = [];
  for (const item of bars.children) {
    const cut = byRun ? defaultCut(item.dataset.genre) : threshold;
    const isTagged = Number(item.dataset.probability) >= cut;
    item.classList.toggle("tagged", isTagged);
    item.querySelector(".cut").style.left = `${(cut * 100).toFixed(1)}%`;
    if (isTagged) tagged.push(item.dataset.genre);
  }
  const rule = byRun ? "by the run's default decisions" : `at ${threshold.toFixed(2)}`;
  summary.textContent = tagged.length
    ? `Tagged ${rule}: ${tagged.join(", ")}`
    : `No genre tagged ${rule}; the most likely is ${probabilities[0][0]}.`;
}

async function tag() {
  clearError();
  const description = text.value.trim();
  if (!description) {
    showError("Type or paste a plot description first.");
    text.focus();
    return;
  }
  submit.disabled = true;
  submit.textContent = "Tagging…";
  try {
    const response = await fetch("/v1/tag", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ descriptions: [description], explain: true, threshold: EXPLAIN_AT }),
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const reason = body && body.error ? body.error : response.statusText;
      showError(`The server could not tag this (${response.status}): ${reason}`);
      return;
    }
    const first = body.results[0];
    probabilities = Object.entries(first.probabilities).sort((a, b) => b[1] - a[1]);
    const genres = {};
    for (const g of first.explanations.genres) genres[g.genre] = g;
    explained = { description: first.description, truncated: first.explanations.truncated, genres };
    selected = null;
    result.hidden = false;
    render();
  } catch (err) {
    showError(`Could not reach the server (${err.message}). Is serve.py still running?`);
  } finally {
    submit.disabled = false;
    submit.textContent = "Tag genres";
  }
}

async function describeModel() {
  try {
    const response = await fetch("/v1/model");
    if (!response.ok) return;
    const model = await response.json();
    const saved = model.thresholds || {};
    if (saved.default_per_label) defaultCut = (genre) => saved.default_per_label[genre];
    else if (typeof saved.default === "number") defaultCut = () => saved.default;
    mark();
    const f1 = model.metrics && model.metrics.test ? `, test macro-F1 ${model.metrics.test.macro_f1.toFixed(3)}` : "";
    document.getElementById("model-line").textContent =
      `Tags a movie's plot description with every genre that fits. Model: ${model.base_model} (${model.genres} genres${f1}).`;
  } catch {
    // the line keeps its generic text
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  tag();
});
text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    tag();
  }
});
example.addEventListener("change", () => {
  if (example.value) {
    text.value = example.value;
    tag();
  }
});
slider.addEventListener("input", () => {
  useDefaults = false;
  mark();
});
defaultsButton.addEventListener("click", () => {
  useDefaults = true;
  mark();
});
describeModel();
