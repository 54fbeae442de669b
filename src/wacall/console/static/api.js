// The control API and the live stream, as the console uses them (docs/control-api.md, docs/console.md).
export const app = document.getElementById("app");
export const prefix = app.dataset.prefix;

export async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(`/_wacall/${path}`, options);
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const error = data && data.error;
    throw new Error(error ? `${error.reason}: ${error.detail}` : `HTTP ${response.status}`);
  }
  return data;
}

// handlers: {call(data), webhook(data), clock(data), open()}; the indicator in the header shows the connection.
// open() runs each time the stream (re)connects: the stream tells changes only, so what changed while it was
// not connected is for the page to read again (the server listens before it answers: nothing is lost after).
export function follow({ open, ...handlers }, callId) {
  const url = "/_wacall/stream" + (callId ? `?call_id=${encodeURIComponent(callId)}` : "");
  const source = new EventSource(url);
  const dot = document.getElementById("live");
  source.onopen = () => { if (dot) dot.classList.add("on"); if (open) open(); };
  source.onerror = () => dot && dot.classList.remove("on");
  for (const [kind, handler] of Object.entries(handlers)) {
    source.addEventListener(kind, (event) => handler(JSON.parse(event.data)));
  }
  return source;
}
