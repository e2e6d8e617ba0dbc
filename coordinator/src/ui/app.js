// The fleet dashboard: polls /ui/state every second and redraws. Everything the server sends
// is escaped before it becomes HTML (agent labels and errors come from agents).
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "mcpfier-token";

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function ago(ms) {
  if (ms == null) return "never";
  const s = ms / 1000;
  if (s < 1) return `${Math.round(ms)} ms ago`;
  if (s < 60) return `${s.toFixed(1)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

function uptime(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function ms(value) {
  if (value == null) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(1)} s` : `${value} ms`;
}

// Bars for one value per slot, scaled to the largest.
function spark(points, index, cls, errors) {
  const w = 180, h = 24, n = points.length, bw = w / n;
  const max = Math.max(1, ...points.map((p) => p[index] ?? 0));
  let bars = "";
  points.forEach((p, i) => {
    const v = p[index] ?? 0;
    if (v > 0) {
      const bh = Math.max(1, (v / max) * h);
      bars += `<rect class="${cls}" x="${(i * bw).toFixed(1)}" y="${(h - bh).toFixed(1)}" width="${Math.max(1, bw - 0.5).toFixed(1)}" height="${bh.toFixed(1)}"></rect>`;
    }
    if (errors && p[2] > 0) {
      const eh = Math.max(1, (p[2] / max) * h);
      bars += `<rect class="errors" x="${(i * bw).toFixed(1)}" y="${(h - eh).toFixed(1)}" width="${Math.max(1, bw - 0.5).toFixed(1)}" height="${eh.toFixed(1)}"></rect>`;
    }
  });
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">${bars}</svg>`;
}

function renderAgents(state) {
  // Agents that left etcd lately stay on the page, as gone, with why.
  const agents = (state.agents || []).concat(state.departed || []);
  const regions = new Map();
  for (const a of agents) {
    const r = (a.labels && a.labels.region) || "no region";
    if (!regions.has(r)) regions.set(r, []);
    regions.get(r).push(a);
  }
  const names = [...regions.keys()].sort();
  const counts = {};
  for (const a of agents) counts[a.state] = (counts[a.state] || 0) + 1;
  document.getElementById("agent-counts").textContent = agents.length
    ? `${agents.length}: ` + Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ")
    : (state.mode === "embedded" ? "none: tools run on the coordinator itself" : "none");
  const now = Date.now();
  let html = "";
  for (const name of names) {
    const list = regions.get(name).sort((a, b) => a.id.localeCompare(b.id));
    const healthy = list.filter((a) => a.state === "healthy").length;
    const trouble = healthy < list.length;
    let rows = "";
    for (const a of list) {
      const labels = Object.entries(a.labels || {})
        .filter(([k]) => k !== "region")
        .map(([k, v]) => `${k}=${v}`).join(", ");
      rows += `<tr data-agent="${esc(a.id)}" data-state="${esc(a.state)}">`
        + `<td>${esc(a.id)}</td><td class="state-${esc(a.state)}">${esc(a.state)}</td>`
        + `<td>${esc(a.running)}/${esc(a.capacity)}</td><td>${esc(labels)}</td>`
        + `<td>${esc(ago(a.last_seen_ms == null ? null : now - a.last_seen_ms))}</td>`
        + `<td class="wrap">${esc(a.last_error || "")}</td></tr>`;
    }
    html += `<div class="region${trouble ? " trouble" : ""}" data-region="${esc(name)}">`
      + `<h3>${esc(name)}: ${healthy} of ${list.length} healthy</h3>`
      + `<table><thead><tr><th>agent</th><th>state</th><th>running</th><th>labels</th><th>last seen</th><th>last error</th></tr></thead>`
      + `<tbody>${rows}</tbody></table></div>`;
  }
  document.getElementById("regions").innerHTML = html;
}

function renderTools(state) {
  const tools = state.board.tools || {};
  const perSlot = state.board.slot_seconds || 10;
  let rows = "";
  for (const name of Object.keys(tools).sort()) {
    const points = tools[name];
    const minute = points.slice(-Math.ceil(60 / perSlot));
    const calls = minute.reduce((s, p) => s + p[1], 0);
    const errors = minute.reduce((s, p) => s + p[2], 0);
    const p50 = Math.max(...minute.map((p) => p[3] ?? 0));
    const p99 = Math.max(...minute.map((p) => p[4] ?? 0));
    rows += `<tr data-tool="${esc(name)}"><td>${esc(name)}</td><td>${(calls / 60).toFixed(2)}</td>`
      + `<td>${calls ? ((100 * errors) / calls).toFixed(1) + " %" : "–"}</td>`
      + `<td>${ms(calls ? p50 : null)}</td><td>${ms(calls ? p99 : null)}</td>`
      + `<td>${spark(points, 1, "calls", true)}</td><td>${spark(points, 4, "p99", false)}</td></tr>`;
  }
  document.querySelector("#tools tbody").innerHTML = rows;
}

function renderRecent(state) {
  let rows = "";
  for (const c of state.board.recent || []) {
    const failed = c.outcome !== "ok";
    rows += `<tr class="${failed ? "fail" : ""}" data-outcome="${esc(c.outcome)}" data-tool="${esc(c.tool ?? "")}">`
      + `<td>${esc(new Date(c.at_ms).toLocaleTimeString())}</td>`
      + `<td>${esc(c.tool ?? "(unknown tool)")}</td><td>${esc(c.principal ?? "–")}</td>`
      + `<td>${esc(c.agent ?? (state.mode === "embedded" ? "local" : "–"))}</td>`
      + `<td>${esc(c.outcome)}</td><td>${esc(ms(c.duration_ms))}</td></tr>`;
  }
  document.querySelector("#recent tbody").innerHTML = rows;
}

function render(state) {
  const started = performance.now();
  const c = state.coordinator;
  document.getElementById("coordinator").textContent =
    `${c.version}, up ${uptime(c.uptime_s)}, ${state.mode === "embedded" ? "embedded (no agents)" : "fleet"}`;
  const etcd = state.etcd;
  const etcdEl = document.getElementById("etcd");
  if (etcd && etcd.configured) {
    etcdEl.textContent = etcd.connected
      ? "etcd connected"
      : `etcd unreachable: ${etcd.last_error || "not connected yet"}`;
    etcdEl.className = etcd.connected ? "" : "state-unhealthy";
  } else {
    etcdEl.textContent = "";
  }
  renderAgents(state);
  renderTools(state);
  renderRecent(state);
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
  document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
}

function banner(text) {
  const el = document.getElementById("banner");
  el.hidden = !text;
  el.textContent = text || "";
}

async function poll() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const response = await fetch("/ui/state", { headers, cache: "no-store" });
    if (response.status === 401) {
      document.getElementById("login").hidden = false;
      banner(token ? "That credential was refused." : "");
      return;
    }
    if (!response.ok) {
      banner(`The coordinator answered ${response.status}: ${(await response.text()).trim()}`);
      return;
    }
    document.getElementById("login").hidden = true;
    banner("");
    render(await response.json());
  } catch (e) {
    banner("The coordinator does not answer; retrying every second.");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
});

poll();
