// A SIP ladder diagram from a call's timeline.
import { h, since } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}, text) => {
  const element = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
};

// The SIP messages on a call's timeline, oldest first: {t, direction: "in" (business -> Meta) | "out", line, raw}.
// The one place that reads the gateway's timeline entries (kind "sip_message"): adapt it if they change shape.
export function sipEntries(timeline) {
  return timeline.filter((entry) => entry.kind === "sip_message").map((entry) => {
    const raw = entry.raw || "";
    return { t: entry.t, direction: entry.direction, line: entry.line || raw.split("\r\n", 1)[0], raw };
  });
}

// "INVITE sip:+1555@x SIP/2.0" -> "INVITE"; "SIP/2.0 200 OK" -> "200 OK"
export function label(line) {
  return line.startsWith("SIP/2.0 ") ? line.slice(8) : line.split(" ", 1)[0];
}

function cseq(raw) {
  const match = /\r\n(?:CSeq|cseq):\s*([^\r\n]+)/.exec(raw);
  return match ? match[1] : "";
}

export function ladder(entries, start, onPick) {
  const width = 760, row = 30, top = 44, left = 90;
  const business = left + 70, meta = width - 90;
  const height = top + entries.length * row + 20;
  const root = svg("svg", { class: "ladder", viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": "SIP ladder" });
  root.style.maxWidth = `${width}px`;
  const defs = svg("defs");
  defs.append(Object.assign(svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7",
    markerHeight: "7", orient: "auto-start-reverse" }), {}));
  defs.firstChild.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#34405a" }));
  root.append(defs);
  root.append(svg("text", { x: business, y: 18, "text-anchor": "middle", "font-weight": "bold" }, "business SIP server"),
              svg("text", { x: meta, y: 18, "text-anchor": "middle", "font-weight": "bold" }, "Meta (wacall)"));
  for (const x of [business, meta]) {
    root.append(svg("line", { x1: x, y1: 26, x2: x, y2: height - 6, stroke: "#c3c8d2", "stroke-dasharray": "4 3" }));
  }
  entries.forEach((entry, i) => {
    const y = top + i * row;
    const [from, to] = entry.direction === "in" ? [business, meta] : [meta, business];
    const text = label(entry.line) + (/\r\n\r\nv=0/.test(entry.raw) ? " (SDP)" : "");
    const colour = /^[456]\d\d/.test(text) ? "#c0362c" : /^[12]\d\d/.test(text) ? "#1a7f37" : "#34405a";
    const group = svg("g", { class: "message", style: "cursor: pointer" });
    group.append(svg("text", { x: 4, y: y + 4, fill: "#6b7385" }, since(entry.t, start)));
    group.append(svg("line", { x1: from, y1: y, x2: to, y2: y, stroke: colour, "stroke-width": "1.6",
                               "marker-end": "url(#arrow)" }));
    group.append(svg("text", { x: (business + meta) / 2, y: y - 5, "text-anchor": "middle", fill: colour }, text));
    const seq = cseq(entry.raw);
    if (seq) group.append(svg("text", { x: meta + 8, y: y + 4, fill: "#9aa1b1" }, seq));
    group.append(svg("title", {}, entry.line));
    group.addEventListener("click", () => onPick(entry));
    root.append(group);
  });
  return h("div", {}, root);
}
