// The review page at /review: one title at a time from GET /v1/review/next, its genres as toggles (the
// run's suggestion on), keyboard first (Prodigy's keys: a accept, x skip, 1-9 toggle a genre, Backspace
// undo). Each decision is sent to POST /v1/review/{id} with the title's version (so a title someone else
// decided first is not decided twice) and a request id (so a retried request is not recorded twice).
"use strict";

const reviewer = document.getElementById("reviewer");
const progress = document.getElementById("progress");
const errorBox = document.getElementById("error");
const card = document.getElementById("card");
const done = document.getElementById("done");
const toggles = document.getElementById("toggles");
const statusLine = document.getElementById("status");
const undoButton = document.getElementById("undo");

let item = null; // the title shown
let chosen = new Set(); // its genres as toggled
let busy = false; // a request is on its way: keys wait for it
const history = []; // [{id, version, title}] of this page's decisions, newest last: what Backspace undoes

reviewer.value = localStorage.getItem("genre-tagger-reviewer") || "";
reviewer.addEventListener("change", () => localStorage.setItem("genre-tagger-reviewer", reviewer.value.trim()));
document.getElementById("who").addEventListener("submit", (event) => {
  event.preventDefault();
  reviewer.blur();
});

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function clearError() {
  errorBox.hidden = true;
  errorBox.textContent = "";
}

function requestId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

function showProgress(counts) {
  progress.textContent = `${counts.decided} of ${counts.titles} reviewed, ${counts.left} left`;
  progress.dataset.decided = String(counts.decided);
  progress.dataset.left = String(counts.left);
}

function show(next) {
  item = next;
  clearError();
  if (!item) {
    card.hidden = true;
    done.hidden = false;
    return;
  }
  done.hidden = true;
  card.hidden = false;
  card.dataset.id = String(item.id);
  card.dataset.key = item.key;
  const standing = item.decision && item.decision.action === "accept" ? item.decision.genres : item.suggested;
  chosen = new Set(standing);
  document.getElementById("title").textContent = item.title || `Title ${item.key}`;
  document.getElementById("text").textContent = item.description;
  const given = document.getElementById("given");
  given.hidden = !item.given;
  given.textContent = item.given ? `Genres given: ${item.given.join(", ")}` : "";
  renderToggles();
}

function renderToggles() {
  toggles.replaceChildren();
  item.candidates.forEach((candidate, index) => {
    const row = document.createElement("li");
    row.className = "toggle" + (chosen.has(candidate.genre) ? " on" : "");
    row.dataset.genre = candidate.genre;
    row.setAttribute("role", "checkbox");
    row.setAttribute("aria-checked", String(chosen.has(candidate.genre)));
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = index < 9 ? String(index + 1) : "";
    const name = document.createElement("span");
    name.textContent = candidate.genre;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-label", `probability ${candidate.probability.toFixed(2)}, threshold ${candidate.threshold.toFixed(2)}`);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(candidate.probability * 100).toFixed(1)}%`;
    const cut = document.createElement("span");
    cut.className = "cut";
    cut.style.left = `${(candidate.threshold * 100).toFixed(1)}%`;
    track.append(fill, cut);
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = candidate.probability.toFixed(2);
    row.append(key, name, track, value);
    row.addEventListener("click", () => toggle(index));
    toggles.append(row);
  });
}

function toggle(index) {
  const candidate = item && item.candidates[index];
  if (!candidate) return;
  if (chosen.has(candidate.genre)) chosen.delete(candidate.genre);
  else chosen.add(candidate.genre);
  renderToggles();
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  return { ok: response.ok, status: response.status, answer };
}

async function loadNext() {
  const { ok, answer } = await call("GET", "/v1/review/next");
  if (!ok) throw new Error(answer.error);
  showProgress(answer.progress);
  show(answer.item);
}

function name() {
  const value = reviewer.value.trim();
  if (!value) {
    showError("Type your name first: it is recorded with each decision.");
    reviewer.focus();
  }
  return value;
}

async function decide(action) {
  if (!item || busy || !name()) return;
  const body = { reviewer: name(), action, version: item.version, request_id: requestId() };
  if (action === "accept") body.genres = item.genres.filter((genre) => chosen.has(genre));
  busy = true;
  try {
    const { ok, status, answer } = await call("POST", `/v1/review/${item.id}`, body);
    if (status === 409) {
      statusLine.textContent = answer.error;
      await loadNext();
      return;
    }
    if (!ok) throw new Error(answer.error);
    history.push({ id: item.id, version: answer.item.version, title: item.title || item.key });
    undoButton.disabled = false;
    statusLine.textContent = action === "accept"
      ? `Accepted ${item.title || item.key}: ${answer.decision.genres.join(", ") || "no genres"}.`
      : `Skipped ${item.title || item.key}.`;
    await loadNext();
  } catch (err) {
    showError(String(err.message || err));
  } finally {
    busy = false;
  }
}

async function undo() {
  const last = history[history.length - 1];
  if (!last || busy || !name()) return;
  busy = true;
  try {
    const body = { reviewer: name(), action: "undo", version: last.version, request_id: requestId() };
    const { ok, answer } = await call("POST", `/v1/review/${last.id}`, body);
    if (!ok) throw new Error(answer.error);
    history.pop();
    undoButton.disabled = history.length === 0;
    statusLine.textContent = `Undid the decision on ${last.title}.`;
    showProgress(answer.progress);
    show(answer.item);
  } catch (err) {
    showError(String(err.message || err));
  } finally {
    busy = false;
  }
}

document.getElementById("accept").addEventListener("click", () => decide("accept"));
document.getElementById("skip").addEventListener("click", () => decide("skip"));
undoButton.addEventListener("click", undo);

document.addEventListener("keydown", (event) => {
  if (event.target === reviewer || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "a") decide("accept");
  else if (event.key === "x") decide("skip");
  else if (event.key === "Backspace") undo();
  else if (/^[1-9]$/.test(event.key)) toggle(Number(event.key) - 1);
  else return;
  event.preventDefault();
});

loadNext().catch((err) => showError(String(err.message || err)));
