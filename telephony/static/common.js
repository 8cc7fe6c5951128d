// Helpers shared by the service's own pages: the API token (kept in this browser only) and API calls.

export function token() {
  return localStorage.getItem("telephony.token") || "";
}

export function setToken(value) {
  if (value) localStorage.setItem("telephony.token", value);
  else localStorage.removeItem("telephony.token");
}

export function tokenField(input) {
  input.value = token();
  input.addEventListener("change", () => setToken(input.value.trim()));
}

export async function api(path, { accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const resp = await fetch(path, { headers });
  if (!resp.ok) {
    const body = await resp.json().catch(() => ({}));
    throw new Error(body.message || `HTTP ${resp.status}`);
  }
  return accept === "application/json" ? resp.json() : resp.text();
}

export function captionSocket(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (token()) url.searchParams.set("access_token", token());
  return new WebSocket(url);
}

export function clock(ms) {
  const s = Math.floor(ms / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}.${String(ms % 1000).padStart(3, "0")}`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// Build an element: el("td", {class: "x"}, "text", child...). Text is always set as text, never as HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}
