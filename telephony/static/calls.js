// Calls page: recent calls from PostgreSQL (any source), the calls live right now, refreshed by the all-calls feed.

import { api, captionSocket, el, tokenField, when } from "./common.js";

const $ = (sel) => document.querySelector(sel);
tokenField($("#token"));

function query() {
  const form = new FormData($("#filters"));
  const params = new URLSearchParams();
  for (const [k, v] of form) if (v && k !== "token") params.set(k, v);
  params.set("limit", "100");
  return params;
}

async function loadCalls() {
  try {
    const { calls } = await api(`/api/calls?${query()}`);
    $("#calls tbody").replaceChildren(...calls.map((c) => el("tr", { "data-call": c.id },
      el("td", {}, el("a", { href: `/calls/${c.id}` }, when(c.started_at))),
      el("td", {}, c.source), el("td", {}, c.status), el("td", {}, c.legs),
      el("td", {}, c.utterances + (c.matches !== undefined ? ` (${c.matches} matching)` : "")),
      el("td", { class: "muted" }, c.from_uri || c.external_id || ""))));
    $("#status").textContent = calls.length ? "" : "No calls match.";
  } catch (err) {
    $("#status").textContent = `Error: ${err.message}`;
    $("#status").className = "status error";
  }
}

async function loadLive() {
  try {
    const { calls } = await api("/api/calls/live");
    $("#live tbody").replaceChildren(...calls.map((c) => el("tr", {},
      el("td", {}, when(c.started_at)), el("td", {}, c.source),
      el("td", {}, c.legs.map((l) => l.speaker).join(", ")),
      el("td", {}, el("a", { href: `/calls/${c.id}` }, "live transcript")))));
  } catch (err) {
    $("#live tbody").replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "error" }, err.message)));
  }
}

function follow() {
  // Calls starting and ending anywhere (SIP included) refresh both tables.
  const ws = captionSocket("/api/captions");
  let timer = null;
  ws.onmessage = (m) => {
    const c = JSON.parse(m.data);
    if (c.type !== "call_start" && c.type !== "call_end") return;
    clearTimeout(timer);
    timer = setTimeout(() => { loadLive(); loadCalls(); }, 300);
  };
  ws.onclose = () => setTimeout(follow, 3000);
}

$("#filters").addEventListener("submit", (e) => { e.preventDefault(); loadCalls(); });
loadCalls();
loadLive();
follow();
