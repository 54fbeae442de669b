// The webhook journal: every delivery and its attempts, live; resend any entry.
import { api, prefix } from "./api.js";
import { act, badge, h, json, time } from "./ui.js";

const rows = new Map();
let body;

function eventOf(entry) {
  const value = entry.body?.entry?.[0]?.changes?.[0]?.value || {};
  return value.calls?.[0]?.event || value.statuses?.[0]?.status || value.messages?.[0]?.type || "";
}

function row(entry) {
  const last = entry.attempt_log[entry.attempt_log.length - 1];
  const status = entry.status === "delivered" ? badge("delivered", "good") : entry.status === "expired" ? badge("expired", "bad") : badge(entry.status);
  return h("tr", { dataset: { id: entry.id } },
    h("td", { class: "num mono" }, entry.id), h("td", { class: "mono" }, time(entry.created_at)),
    h("td", {}, entry.field, " ", h("span", { class: "muted" }, eventOf(entry))),
    h("td", {}, entry.call_id ? h("a", { href: `${prefix}/calls/${encodeURIComponent(entry.call_id)}` }, entry.call_id) : ""),
    h("td", { class: "mono" }, entry.url),
    h("td", {}, status, entry.fault ? h("div", { class: "muted" }, `fault: ${entry.fault.map((f) => f.kind).join(", ")}`) : ""),
    h("td", { class: "num" }, entry.attempt_log.length),
    h("td", {}, last ? `${last.status_code ?? ""} ${last.error || ""} (${last.duration_ms} ms)` : ""),
    h("td", {}, h("details", {}, h("summary", {}, "body"), json(entry.body), h("div", { class: "muted" }, "attempts"), json(entry.attempt_log))),
    h("td", {}, h("button", { onclick: () => act(`webhook ${entry.id} queued again`, () => api("POST", `webhooks/${entry.id}/resend`)) }, "Resend")));
}

function put(entry, flash) {
  const tr = row(entry);
  if (flash) tr.classList.add("flash");
  const known = rows.get(entry.id);
  if (known) known.replaceWith(tr); else body.prepend(tr);
  rows.set(entry.id, tr);
}

export async function render(main, bus) {
  body = h("tbody");
  main.append(h("h1", {}, "Webhooks"),
    h("p", { class: "muted" }, "Every webhook wacall sent or is retrying, newest first; attempts arrive live."),
    h("table", {}, h("thead", {}, h("tr", {}, ["#", "Created", "Field / event", "Call", "URL", "Status", "Attempts", "Last attempt", "", ""]
      .map((t) => h("th", {}, t)))), body));
  bus.on("webhook", (entry) => put(entry, true));
  const journal = (await api("GET", "webhooks?limit=200")).data;
  for (const entry of journal) put(entry, false);
}
