// The lifeline page: the connection, the energy of each model drawn at the display's rate,
// the text of every session, rewards and errors, and a prompt box that posts to /prompt.
import { ConnectionState, WirthforgeClient } from "./wirthforge-client.js";

const CHART_SECONDS = 10;
const COLOURS = ["#ffb000", "#38bdf8", "#a3e635", "#f472b6", "#c084fc", "#fb923c"];
const COUNCIL_ID = "council";
const STATE_LABELS = {
  [ConnectionState.DISCONNECTED]: "Disconnected",
  [ConnectionState.CONNECTING]: "Connecting",
  [ConnectionState.CONNECTED]: "Connected",
  [ConnectionState.RECONNECTING]: "Reconnecting",
  [ConnectionState.CLOSED]: "Closed",
};

const $ = (id) => document.getElementById(id);
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

// A server with an access token is opened with "#token=..." after the page's address: the
// fragment never reaches the server or its logs. The token goes as the WebSocket subprotocol
// and as a Bearer header.
const token = new URLSearchParams(location.hash.slice(1)).get("token") || undefined;
const auth = token ? { Authorization: `Bearer ${token}` } : {};

const client = new WirthforgeClient({ token });

// What the page measures; exposed (read-only use) for tests and the curious.
const stats = {
  frames: 0, // energy frames received (distinct frame numbers)
  framesReplaced: 0, // frame numbers that never reached this page
  fps: 0,
  rttMs: null,
  lastFrame: null,
  arrivals: [], // receipt times of the last second's frames
};

// Per model: latest intensity E(t) (from energy_field), total EU, colour, chart samples.
const models = new Map();
let council = null; // latest interference/resonance, shown while fresh
let flashUntil = 0;

function model(modelId) {
  let m = models.get(modelId);
  if (!m) {
    m = {
      id: modelId,
      intensity: 0,
      total: 0,
      fieldType: "stream",
      colour: modelId === COUNCIL_ID ? "#ffffff" : COLOURS[models.size % COLOURS.length],
      samples: [], // [time ms, intensity]
      meter: null,
    };
    models.set(modelId, m);
    addMeter(m);
  }
  return m;
}

function addMeter(m) {
  const li = document.createElement("li");
  li.dataset.model = m.id;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = m.id === COUNCIL_ID ? "council (ensemble)" : m.id;
  name.style.borderColor = m.colour;
  const meter = document.createElement("meter");
  meter.min = 0;
  meter.max = 1;
  meter.value = 0;
  meter.setAttribute("aria-label", `E(t) of ${m.id}`);
  const value = document.createElement("span");
  value.className = "value";
  li.append(name, meter, value);
  $("meters").append(li);
  m.meter = { meter, value };
}

// --- connection header ---------------------------------------------------------------------

client.on("state", ({ state }) => {
  const el = $("state");
  el.textContent = STATE_LABELS[state];
  el.dataset.state = state;
  if (state !== ConnectionState.CONNECTED) stats.lastFrame = null;
});

client.on("reconnecting", ({ code, reason }) => {
  if (code !== 1006 || reason) showError("connection", `${code}`, reason || "connection lost");
});

client.on("startup_complete", (event) => {
  const p = event.payload;
  $("version").textContent = p.version;
  $("tier").textContent = p.tier;
  const council = p.capabilities?.includes("council") ? " + council" : "";
  $("handshake-models").textContent = `${p.model}${council}`;
  refreshModels();
});

client.on("rtt", ({ rttMs }) => {
  stats.rttMs = rttMs;
  $("rtt").textContent = `${rttMs.toFixed(1)} ms`;
});

// --- energy -------------------------------------------------------------------------------

client.on("energy_update", (event) => {
  const n = event.frameNumber;
  if (stats.lastFrame !== n) {
    if (stats.lastFrame !== null && n > stats.lastFrame + 1) {
      stats.framesReplaced += n - stats.lastFrame - 1;
    }
    if (stats.lastFrame === null || n > stats.lastFrame) {
      stats.frames += 1;
      stats.arrivals.push(performance.now());
      stats.lastFrame = n;
    }
  }
  const m = model(event.payload.modelId);
  m.total = event.payload.totalEnergy;
});

client.on("energy_field", (event) => {
  const p = event.payload;
  const m = model(p.modelId);
  m.intensity = p.intensity;
  m.fieldType = p.fieldType;
  if (p.fieldType === "lightning") flashUntil = performance.now() + 120;
});

client.on("interference_event", (event) => {
  const p = event.payload;
  council = { ...council, interference: p, at: performance.now() };
  showCouncil();
});

client.on("resonance_event", (event) => {
  const p = event.payload;
  council = { ...council, resonance: p, at: performance.now() };
  showCouncil();
});

function showCouncil() {
  const parts = [];
  if (council?.interference) {
    const i = council.interference;
    parts.push(
      `Interference ${i.patternType} between ${i.models.join(", ")}: ` +
        `intensity ${i.intensity.toFixed(2)}, coherence ${i.coherenceScore.toFixed(2)}`,
    );
  }
  if (council?.resonance) {
    const r = council.resonance;
    parts.push(
      `Resonance ${r.resonanceType} at ${r.frequency.toFixed(2)} Hz, ` +
        `amplitude ${r.amplitude.toFixed(2)} (${r.participants.join(", ")})`,
    );
  }
  const line = $("council-line");
  line.textContent = parts.join(" · ");
  line.hidden = parts.length === 0;
}

function updateHeader(now) {
  while (stats.arrivals.length && stats.arrivals[0] < now - 1000) stats.arrivals.shift();
  stats.fps = stats.arrivals.length;
  $("fps").textContent = client.state === ConnectionState.CONNECTED ? String(stats.fps) : "–";
  $("replaced").textContent = String(stats.framesReplaced);
}

// Drawn at the display's refresh rate (or 4 times a second with reduced motion).
const canvas = $("energy-canvas");
const ctx = canvas.getContext("2d");
let lastDraw = 0;

function draw(now) {
  requestAnimationFrame(draw);
  if (reducedMotion.matches && now - lastDraw < 250) return;
  lastDraw = now;
  updateHeader(now);
  const cutoff = now - CHART_SECONDS * 1000;
  for (const m of models.values()) {
    m.samples.push([now, m.intensity]);
    while (m.samples.length && m.samples[0][0] < cutoff) m.samples.shift();
    m.meter.meter.value = m.intensity;
    m.meter.value.textContent = `E ${m.intensity.toFixed(2)} · ${m.total.toFixed(1)} EU`;
  }
  const { width: w, height: h } = canvas;
  ctx.fillStyle = "#0b0d12";
  ctx.fillRect(0, 0, w, h);
  if (!reducedMotion.matches && now < flashUntil) {
    ctx.fillStyle = "rgba(255, 240, 180, 0.12)";
    ctx.fillRect(0, 0, w, h);
  }
  ctx.strokeStyle = "#1f2633";
  ctx.lineWidth = 1;
  for (let q = 1; q < 4; q++) {
    ctx.beginPath();
    ctx.moveTo(0, (h * q) / 4);
    ctx.lineTo(w, (h * q) / 4);
    ctx.stroke();
  }
  for (const m of models.values()) {
    if (m.samples.length < 2) continue;
    ctx.strokeStyle = m.colour;
    ctx.lineWidth = m.id === COUNCIL_ID ? 1 : m.fieldType === "lightning" ? 3 : 2;
    ctx.setLineDash(m.id === COUNCIL_ID ? [6, 4] : []);
    ctx.beginPath();
    m.samples.forEach(([t, e], i) => {
      const x = w - ((now - t) / (CHART_SECONDS * 1000)) * w;
      const y = h - 4 - e * (h - 8);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  ctx.setLineDash([]);
  if (council && now - council.at < 5000 && council.interference) {
    ctx.fillStyle = "#e5e7eb";
    ctx.font = "13px system-ui, sans-serif";
    ctx.fillText(
      `${council.interference.patternType} interference · coherence ` +
        council.interference.coherenceScore.toFixed(2),
      10,
      18,
    );
  }
}
requestAnimationFrame(draw);

// --- text ----------------------------------------------------------------------------------

const runs = new Map(); // run id -> {el, sessions: Set}
const sessionViews = new Map(); // session id -> {run, text, status}
let lastForeignRun = null; // sessions started elsewhere close together share one run
let currentRun = null; // this page's latest run (the cancel button's target)

function newRun(label) {
  $("runs-empty").hidden = true;
  const el = document.createElement("article");
  el.className = "run";
  const heading = document.createElement("h3");
  heading.textContent = label;
  const columns = document.createElement("div");
  columns.className = "columns";
  el.append(heading, columns);
  $("runs").prepend(el);
  const run = { el, columns, sessions: new Set(), startedAt: performance.now() };
  runs.set(run, run);
  return run;
}

function sessionView(sessionId, modelId, run) {
  let view = sessionViews.get(sessionId);
  if (view && run && view.run !== run) {
    // Its first tokens came before the answer to our POST: move it into our run.
    view.run.sessions.delete(sessionId);
    if (!view.run.sessions.size) view.run.el.remove();
    if (view.run === lastForeignRun && !view.run.sessions.size) lastForeignRun = null;
    view.run = run;
    run.columns.append(view.column);
    run.sessions.add(sessionId);
  }
  if (view) return view;
  if (!run) {
    const fresh = lastForeignRun && performance.now() - lastForeignRun.startedAt < 1000;
    run = fresh ? lastForeignRun : (lastForeignRun = newRun("Started elsewhere"));
  }
  const column = document.createElement("section");
  column.className = "session";
  column.dataset.session = sessionId;
  column.dataset.model = modelId ?? "";
  const header = document.createElement("h4");
  header.textContent = modelId ?? "model";
  const status = document.createElement("span");
  status.className = "status";
  status.textContent = "streaming";
  header.append(" ", status);
  const text = document.createElement("p");
  text.className = "text";
  column.append(header, text);
  run.columns.append(column);
  run.sessions.add(sessionId);
  view = { run, column, text, status, complete: false, failed: false };
  sessionViews.set(sessionId, view);
  return view;
}

client.on("session", ({ session }) => {
  const view = sessionView(session.sessionId, session.modelId);
  if (session.offset > 0) view.text.textContent = "… ";
});

client.on("token_stream", (event) => {
  const p = event.payload;
  const view = sessionView(p.sessionId, p.modelId);
  if (p.tokens.length) view.text.append(p.tokens.join(""));
  if (p.isComplete && !view.complete) {
    view.complete = true;
    view.column.dataset.complete = "true";
    showEnd(p.sessionId, view);
    updateCancel();
  }
});

function setStatus(view, status) {
  view.status.textContent = status;
  view.column.dataset.status = status;
}

// The last token_stream says only that a session ended: how (complete, cancelled, failed)
// the server tells on GET /prompt/{id}; an error_event naming the session means failed,
// whichever of the two arrives first.
async function showEnd(sessionId, view) {
  let status = null;
  if (!view.failed) {
    try {
      const response = await fetch(`/prompt/${encodeURIComponent(sessionId)}`, { headers: auth });
      if (response.ok) status = (await response.json()).status;
    } catch {
      // the server is gone for now: say only that it ended
    }
  }
  if (view.failed) status = "failed";
  setStatus(view, status && status !== "streaming" ? status : "ended");
}

client.on("session_lost", ({ sessionId, reason }) => {
  const view = sessionViews.get(sessionId);
  if (!view) return;
  view.status.textContent = `lost: ${reason}`;
  view.column.dataset.lost = "true";
  view.complete = true;
  updateCancel();
});

// --- rewards and errors --------------------------------------------------------------------

client.on("reward_event", (event) => {
  const p = event.payload;
  const li = document.createElement("li");
  const level = p.level ? ` · level ${p.level}` : "";
  li.textContent = `${p.title} (+${p.points}${level})${p.description ? `: ${p.description}` : ""}`;
  $("rewards").prepend(li);
});

client.on("error_event", (event) => {
  const p = event.payload;
  const view = sessionViews.get(p.details?.sessionId);
  if (view && p.severity !== "info" && p.severity !== "warning") {
    view.failed = true;
    setStatus(view, "failed");
  }
  const where = p.component ? ` [${p.component}]` : "";
  const next = p.recoverable ? "" : " (not recoverable)";
  showError(p.severity ?? "error", p.code, `${p.message}${where}${next}`);
});

function showError(severity, code, message) {
  const li = document.createElement("li");
  li.dataset.severity = severity;
  const strong = document.createElement("strong");
  strong.textContent = code;
  li.append(strong, ` ${message}`);
  $("errors").prepend(li);
  while ($("errors").children.length > 20) $("errors").lastChild.remove();
}

// --- prompt --------------------------------------------------------------------------------

async function refreshModels() {
  let body;
  try {
    const response = await fetch("/models", { headers: auth });
    body = await response.json();
  } catch {
    return;
  }
  const picker = $("model-picker");
  const checked = new Set(
    [...picker.querySelectorAll("input:checked")].map((input) => input.value),
  );
  for (const label of picker.querySelectorAll("label")) label.remove();
  const demos = body.models.filter((m) => m.source === "demo").map((m) => m.modelId);
  $("demo-note").hidden = demos.length === 0;
  $("demo-note").textContent =
    (demos.length > 1
      ? `The demo models (${demos.join(", ")}) run no AI: they stream`
      : `The demo model (${demos.join(", ")}) runs no AI: it streams`) +
    " canned sentences unrelated to the prompt. For a real model, serve one with" +
    " --model ollama:NAME or --model openai:NAME.";
  for (const m of body.models) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = "models";
    input.value = m.modelId;
    input.checked = checked.size ? checked.has(m.modelId) : m.modelId === body.defaultModel;
    input.disabled = m.status !== "ready";
    label.append(input, ` ${m.modelId}`);
    if (m.status !== "ready") label.append(` (${m.status})`);
    picker.append(label);
  }
}

function updateCancel() {
  const live = currentRun && [...currentRun.sessions].some((s) => !sessionViews.get(s)?.complete);
  $("cancel").disabled = !live;
}

$("prompt-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt.trim()) return;
  const chosen = [...document.querySelectorAll("#model-picker input:checked")].map((i) => i.value);
  $("send").disabled = true;
  try {
    const response = await fetch("/prompt", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...auth },
      body: JSON.stringify(chosen.length ? { prompt, models: chosen } : { prompt }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status !== 202) {
      showError("error", `HTTP ${response.status}`, body.error ?? response.statusText);
      return;
    }
    // The heading names the models, never the prompt (which stays out of the page's runs).
    const label = body.sessions.length > 1 ? "Council" : "Model";
    currentRun = newRun(`${label}: ${body.sessions.map((s) => s.modelId).join(", ")}`);
    for (const s of body.sessions) sessionView(s.sessionId, s.modelId, currentRun);
    updateCancel();
  } catch (error) {
    showError("error", "HTTP", `the server could not be reached (${error})`);
  } finally {
    $("send").disabled = false;
  }
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("prompt-form").requestSubmit();
  }
});

$("cancel").addEventListener("click", async () => {
  if (!currentRun) return;
  for (const sessionId of currentRun.sessions) {
    if (sessionViews.get(sessionId)?.complete) continue;
    const response = await fetch(`/prompt/${encodeURIComponent(sessionId)}`, {
      method: "DELETE",
      headers: auth,
    });
    if (response.status !== 202 && response.status !== 409) {
      const body = await response.json().catch(() => ({}));
      showError("error", `HTTP ${response.status}`, body.error ?? response.statusText);
    }
  }
});

window.wirthforge = { client, stats, models };
client.start();
