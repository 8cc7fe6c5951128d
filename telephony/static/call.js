// One call: its speakers (with the jitter counters) and its transcript from PostgreSQL; live captions while it runs.

import { api, captionSocket, clock, el, token, when } from "./common.js";
import { CaptionView } from "./captions.js";

const $ = (sel) => document.querySelector(sel);
const callId = decodeURIComponent(location.pathname.split("/").pop());

async function load() {
  const call = await api(`/api/calls/${encodeURIComponent(callId)}`);
  document.title = `Call ${call.id} · telephony`;
  const rows = [["Source", call.source], ["Started", when(call.started_at)], ["Ended", when(call.ended_at)],
    ["Status", call.status], ["From", call.from_uri], ["To", call.to_uri], ["External id", call.external_id]];
  $("#summary").replaceChildren(...rows.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("#legs tbody").replaceChildren(...call.legs.map((l) => el("tr", {},
    el("td", {}, l.speaker), el("td", {}, l.role || ""), el("td", {}, l.codec || ""),
    el("td", {}, l.duration_ms != null ? clock(l.duration_ms) : "live"),
    el("td", {}, l.packets_received ?? ""), el("td", {}, l.packets_lost ?? ""),
    el("td", {}, l.jitter_ms != null ? `${l.jitter_ms.toFixed(1)} ms` : ""),
    el("td", {}, l.recording ? player(l) : ""))));
  const legs = Object.fromEntries(call.legs.map((l) => [l.id, l]));
  $("#seek-hint").hidden = !call.legs.some((l) => l.recording);
  $("#transcript tbody").replaceChildren(...call.utterances.map((u) => {
    const row = el("tr", { "data-speaker": u.speaker },
      el("td", { class: "muted" }, u.start_time), el("td", {}, u.speaker), el("td", {}, u.text));
    const leg = legs[u.leg_id];
    if (leg && leg.recording) {
      // The recording starts at the leg's start in the call: seek to the utterance within it.
      row.style.cursor = "pointer";
      row.addEventListener("click", () => seek(leg.id, (u.start_ms - leg.started_ms) / 1000));
    }
    return row;
  }));
  $("#status").textContent = call.utterances.length ? "" : "No utterances stored yet.";
  return call;
}

function player(leg) {
  const url = new URL(leg.recording.url, location.href);
  if (token()) url.searchParams.set("access_token", token()); // <audio> cannot send a header
  return el("audio", { controls: "", preload: "metadata", src: url.href, "data-leg": leg.id });
}

function seek(legId, seconds) {
  document.querySelectorAll("audio[data-leg]").forEach((a) => { if (a.dataset.leg !== legId) a.pause(); });
  const audio = document.querySelector(`audio[data-leg="${legId}"]`);
  audio.currentTime = Math.max(0, seconds);
  audio.play();
}

function live() {
  $("#live").hidden = false;
  const view = new CaptionView($("#captions"));
  const ws = captionSocket(`/api/calls/${encodeURIComponent(callId)}/captions`);
  ws.onmessage = (m) => {
    const c = JSON.parse(m.data);
    if (c.type === "partial") view.partial(c);
    if (c.type === "final") view.final(c);
    if (c.type === "call_end") setTimeout(() => load().catch(() => {}), 1500); // stored by then
  };
}

async function download(format) {
  const types = { text: "text/plain", vtt: "text/vtt", json: "application/json" };
  const body = await api(`/api/calls/${encodeURIComponent(callId)}/transcript?format=${format}`, { accept: types[format] });
  const blob = new Blob([typeof body === "string" ? body : JSON.stringify(body, null, 2)], { type: types[format] });
  const a = el("a", { href: URL.createObjectURL(blob), download: `call-${callId}.${format === "text" ? "txt" : format}` });
  a.click();
  URL.revokeObjectURL(a.href);
}

document.querySelectorAll("[data-format]").forEach((b) =>
  b.addEventListener("click", () => download(b.dataset.format).catch((e) => { $("#status").textContent = e.message; })));

load().then((call) => { if (call.status === "active") live(); })
  .catch((err) => { $("#status").textContent = `Error: ${err.message}`; $("#status").className = "status error"; });
