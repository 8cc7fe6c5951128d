// The demo softphone page: microphone or WAV file per speaker → telephony-client.js → live captions.

import { connect } from "./telephony-client.js";
import { CaptionView } from "./captions.js";
import { el, token, tokenField } from "./common.js";

const $ = (sel) => document.querySelector(sel);
const view = new CaptionView($("#captions"));
let session = null;
let cleanup = [];

tokenField($("#token"));
$("#start").addEventListener("click", () => start().catch(fail));
$("#stop").addEventListener("click", () => stop().catch(fail));

function status(text, cls = "") {
  $("#status").className = `status ${cls}`;
  $("#status").replaceChildren(text instanceof Node ? text : document.createTextNode(text));
}

function fail(err) {
  status(`Error: ${err.message || err}`, "error");
  $("#start").disabled = false;
  $("#stop").disabled = true;
  cleanup.forEach((f) => f());
  cleanup = [];
}

async function micTrack() {
  // Raw audio: echo cancellation and noise suppression alter speech the recogniser was trained on.
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  cleanup.push(() => stream.getTracks().forEach((t) => t.stop()));
  return stream.getAudioTracks()[0];
}

async function fileTrack(file, ctx, players) {
  const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
  const dest = ctx.createMediaStreamDestination();
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(dest);
  players.push(source); // started once the call is connected, so the start is not cut off
  return dest.stream.getAudioTracks()[0];
}

async function start() {
  $("#start").disabled = true;
  view.clear();
  status("Preparing audio…");
  const ctx = new AudioContext();
  cleanup.push(() => ctx.close());
  const players = [];
  const tracks = [];
  for (const row of document.querySelectorAll(".track")) {
    const speaker = row.querySelector("[name=speaker]").value.trim() || `speaker ${tracks.length + 1}`;
    const kind = row.querySelector("[name=source]").value;
    if (kind === "mic") tracks.push({ track: await micTrack(), speaker });
    if (kind === "file") {
      const file = row.querySelector("[name=file]").files[0];
      if (!file) throw new Error(`pick a WAV file for ${speaker}`);
      tracks.push({ track: await fileTrack(file, ctx, players), speaker });
    }
  }
  if (!tracks.length) throw new Error("choose at least one source");
  status("Connecting…");
  session = await connect({ url: location.origin, token: token() || null, tracks });
  window.telephonySession = session; // for a look from the console (and the browser test)
  session.on("partial", (c) => view.partial(c));
  session.on("final", (c) => view.final(c));
  session.on("state", ({ state }) => {
    if (state === "connected") players.forEach((p) => p.start());
    showCall(state);
  });
  session.on("captions", ({ status: s }) => { if (s === "reconnecting") showCall("captions reconnecting"); });
  session.on("error", (e) => status(e.message, "error"));
  if (session.pc.connectionState === "connected") players.forEach((p) => p.start());
  showCall(session.pc.connectionState);
  $("#stop").disabled = false;
}

function showCall(state) {
  status(el("span", {}, `Call `, el("a", { id: "call-id", href: `/calls/${session.callId}` }, session.callId),
    ` · ${session.tracks.map((t) => `${t.speaker} (${t.codec})`).join(", ")} · ${state}`));
}

async function stop() {
  $("#stop").disabled = true;
  status("Ending the call; storing the last finals…");
  const summary = await session.close();
  cleanup.forEach((f) => f());
  cleanup = [];
  status(el("span", { id: "ended" }, "Call ended and stored: ",
    el("a", { href: `/calls/${session.callId}` }, "transcript"),
    summary ? ` (${summary.end_reason})` : ""));
  $("#start").disabled = false;
}
