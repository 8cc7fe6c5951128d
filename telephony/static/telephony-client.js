// telephony-client.js: send a softphone's audio tracks to the transcription service and get live captions back.
//
//   import { connect } from "/static/telephony-client.js";
//   const session = await connect({ url, token, tracks: [{ track: micTrack, speaker: "agent" },
//                                                        { track: remoteTrack, speaker: "caller" }] });
//   session.on("partial", (c) => ...);   // c: {call_id, leg_id, speaker, text, start_ms, end_ms}
//   session.on("final", (c) => ...);     // c also has seq (per leg) and confidence
//   await session.close();               // hangs up; resolves once every final is stored
//
// Each track is one speaker leg of one call. The caption feed (a WebSocket) reconnects by itself
// if it drops; the server replays the call's finals on reconnect and this module drops repeats.
// Plain ES module, no dependencies, no build step.

const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5000;
const ICE_GATHER_TIMEOUT_MS = 2000;

export class TelephonyError extends Error {
  constructor(status, body) {
    super(body && body.message ? `${status}: ${body.message}` : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

export async function connect({ url = location.origin, token = null, tracks, iceServers = [],
                                externalId = null, meta = null, captions = true } = {}) {
  if (!Array.isArray(tracks) || tracks.length === 0) throw new TypeError("connect: tracks must be a non-empty array");
  const base = url.replace(/\/+$/, "");
  const pc = new RTCPeerConnection({ iceServers });
  const labels = [];
  try {
    for (const { track, speaker, role } of tracks) {
      if (!track || track.kind !== "audio") throw new TypeError("connect: every track must be an audio MediaStreamTrack");
      // sendonly: the service never sends media back.
      const t = pc.addTransceiver(track, { direction: "sendonly", streams: [new MediaStream([track])] });
      labels.push({ transceiver: t, speaker: String(speaker || `speaker ${labels.length + 1}`), role });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc); // the service does not take trickled candidates
    const body = {
      type: "offer", sdp: pc.localDescription.sdp,
      tracks: labels.map(({ transceiver, speaker, role }) => ({ mid: transceiver.mid, speaker, ...(role ? { role } : {}) })),
      ...(externalId ? { external_id: externalId } : {}), ...(meta ? { meta } : {}),
    };
    const resp = await fetch(`${base}/webrtc/sessions`, {
      method: "POST", headers: { "Content-Type": "application/json", ...auth(token) }, body: JSON.stringify(body),
    });
    const answer = await resp.json().catch(() => null);
    if (resp.status !== 201) throw new TelephonyError(resp.status, answer);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    return new Session({ base, token, pc, answer, captions });
  } catch (err) {
    pc.close();
    throw err;
  }
}

function auth(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ICE_GATHER_TIMEOUT_MS); // send what we have: host candidates come first
    pc.addEventListener("icegatheringstatechange", check);
  });
}

export class Session extends EventTarget {
  constructor({ base, token, pc, answer, captions }) {
    super();
    this.base = base;
    this.token = token;
    this.pc = pc;
    this.sessionId = answer.session_id;
    this.callId = answer.call_id;
    this.location = answer.location;
    this.tracks = answer.tracks; // [{mid, leg_id, speaker, codec}]
    this.closed = false;
    this.ended = false;
    this._seen = new Set(); // finals already delivered: `${leg_id}:${seq}`
    this._socket = null;
    this._retry = RECONNECT_MIN_MS;
    this._retryTimer = null;
    this._onPageHide = () => this._hangUpOnUnload();
    addEventListener("pagehide", this._onPageHide);
    pc.addEventListener("connectionstatechange", () => {
      this._emit("state", { state: pc.connectionState });
      if (pc.connectionState === "failed") this._emit("error", { message: "media connection failed" });
    });
    if (captions) this._openCaptions();
  }

  on(type, listener) {
    const wrapped = (ev) => listener(ev.detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _openCaptions() {
    if (this.closed || this.ended) return;
    const ws = new URL(`${this.base}/api/calls/${this.callId}/captions`);
    ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
    if (this.token) ws.searchParams.set("access_token", this.token); // browsers cannot set headers on a WebSocket
    const socket = new WebSocket(ws);
    this._socket = socket;
    socket.onopen = () => { this._retry = RECONNECT_MIN_MS; this._emit("captions", { status: "open" }); };
    socket.onmessage = (msg) => this._caption(JSON.parse(msg.data));
    socket.onclose = () => {
      if (this._socket !== socket || this.closed || this.ended) return;
      this._emit("captions", { status: "reconnecting", in_ms: this._retry });
      this._retryTimer = setTimeout(() => this._openCaptions(), this._retry);
      this._retry = Math.min(this._retry * 2, RECONNECT_MAX_MS);
    };
  }

  _caption(c) {
    if (c.type === "final") {
      const key = `${c.leg_id}:${c.seq}`;
      if (this._seen.has(key)) return; // replayed after a reconnect
      this._seen.add(key);
      this._emit("final", c);
    } else if (c.type === "partial") {
      this._emit("partial", c);
    } else if (c.type === "call_end") {
      this.ended = true;
      this._emit("callend", c);
    }
  }

  // Hang up: the service ends the call and answers once every final is stored.
  async close() {
    if (this.closed) return null;
    this.closed = true;
    removeEventListener("pagehide", this._onPageHide);
    clearTimeout(this._retryTimer);
    let summary = null;
    try {
      const resp = await fetch(`${this.base}${this.location}`, { method: "DELETE", headers: auth(this.token) });
      summary = await resp.json().catch(() => null);
    } finally {
      this.pc.close();
      // Let the last finals arrive on the feed before closing it.
      setTimeout(() => this._socket && this._socket.close(), 1000);
    }
    return summary;
  }

  _hangUpOnUnload() {
    if (this.closed) return;
    this.closed = true;
    // keepalive: the request outlives the page being torn down.
    fetch(`${this.base}${this.location}`, { method: "DELETE", headers: auth(this.token), keepalive: true });
    this.pc.close();
  }
}
