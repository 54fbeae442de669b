// Small DOM helpers shared by the pages.
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "class") element.className = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key in element && typeof value !== "string") element[key] = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function toast(message, bad = false) {
  const box = h("div", { class: bad ? "toast bad" : "toast" }, message);
  document.body.append(box);
  setTimeout(() => box.remove(), bad ? 6000 : 2500);
}

// run an action, say what went wrong if it did
export async function act(what, fn) {
  try {
    const result = await fn();
    if (what) toast(what);
    return result;
  } catch (error) {
    toast(String(error.message || error), true);
    return undefined;
  }
}

export const time = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "");
export const clockTime = (t) => (t ? new Date(t * 1000).toISOString().slice(11, 23) : "");
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
export function relative(seconds) {
  const abs = Math.abs(seconds), sign = seconds < 0 ? "-" : "";
  if (abs < 120) return `${sign}${Math.round(abs)} s`;
  if (abs < 7200) return `${sign}${Math.round(abs / 60)} min`;
  if (abs < 172800) return `${sign}${(abs / 3600).toFixed(1)} h`;
  return `${sign}${(abs / 86400).toFixed(1)} d`;
}
// seconds after a start, as "+1.234 s" (a timestamp a hair before the start shows as +0.000)
export const since = (t, start) => `+${Math.max(0, t - start).toFixed(3)}`;
export const badge = (text, kind) => h("span", { class: `badge ${kind || text}` }, text);
export const json = (value) => h("pre", {}, JSON.stringify(value, null, 2));
