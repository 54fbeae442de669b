// The calls list, kept current by the live stream's call events.
import { api, prefix } from "./api.js";
import { act, badge, duration, h, time } from "./ui.js";

const LIMIT = 100;
const rows = new Map();        // call_id -> {call, tr}
let body, skew = 0, names = {};          // skew: the virtual clock minus the wall clock, seconds

function direction(call) {
  return call.direction === "USER_INITIATED" ? "user → business" : "business → user";
}

function liveDuration(call) {
  if (call.state === "ACCEPTED" && call.accepted_at) return Date.now() / 1000 + skew - call.accepted_at;
  return call.duration ?? (call.accepted_at && call.ended_at ? call.ended_at - call.accepted_at : null);
}

function actions(call) {
  const out = [];
  const run = (action) => act(null, () => api("POST", `calls/${call.call_id}/${action}`));
  if (call.direction === "BUSINESS_INITIATED" && call.state === "RINGING") {
    out.push(h("button", { class: "primary", onclick: () => run("answer") }, "Answer"),
             h("button", { onclick: () => run("reject") }, "Reject"));
  }
  if (call.state !== "ENDED") out.push(h("button", { class: "danger", onclick: () => run("hangup") }, "Hang up"));
  return h("div", { class: "actions" }, out);
}

function row(call) {
  return h("tr", { dataset: { callId: call.call_id, state: call.state } },
    h("td", { class: "mono" }, time(call.created_at)),
    h("td", {}, h("a", { href: `${prefix}/calls/${encodeURIComponent(call.call_id)}` }, call.call_id)),
    h("td", {}, direction(call)),
    h("td", {}, names[call.wa_id] ? `${names[call.wa_id]} ` : "", h("span", { class: "mono" }, call.wa_id),
      h("div", { class: "muted" }, call.business ? `business ${call.business}` : call.phone_number_id)),
    h("td", { class: "state" }, badge(call.state)),
    h("td", { class: "num duration" }, duration(liveDuration(call))),
    h("td", { class: "num" }, call.cost ? `$${Number(call.cost).toFixed(4)}` : ""),
    h("td", {}, badge(call.signalling || "graph")),
    h("td", {}, call.end_reason || "", call.errors && call.errors.length ? h("div", { class: "muted" }, call.errors.map((e) => e.code).join(", ")) : ""),
    h("td", {}, actions(call)));
}

function put(call, flash) {
  const known = rows.get(call.call_id);
  const tr = row(call);
  if (flash) tr.classList.add("flash");
  if (known) known.tr.replaceWith(tr);
  else body.prepend(tr);
  rows.set(call.call_id, { call, tr });
  const empty = document.getElementById("no-calls");
  if (empty) empty.remove();
}

export async function render(main, bus) {
  body = h("tbody", { id: "calls" });
  main.append(
    h("h1", {}, "Calls"),
    h("p", { class: "muted" }, "Live: new calls and every state change appear here as they happen. ",
      h("a", { href: `${prefix}/users` }, "Place a call"), " from a user."),
    h("table", { class: "calls" },
      h("thead", {}, h("tr", {}, ["Created", "Call", "Direction", "User / business", "State", "Duration", "Cost",
        "Signalling", "End reason", ""].map((t) => h("th", { class: ["Duration", "Cost"].includes(t) ? "num" : "" }, t)))),
      body));
  bus.on("call", (call) => put(call, true));
  const setSkew = (clock) => { skew = clock.now - Date.now() / 1000; };
  bus.on("clock", setSkew);
  api("GET", "clock").then(setSkew);
  names = Object.fromEntries((await api("GET", "users")).data.map((user) => [user.wa_id, user.name]));
  const index = (await api("GET", `calls?limit=${LIMIT}`)).data;
  if (!index.length) main.append(h("p", { id: "no-calls", class: "muted" }, "No calls yet."));
  for (const item of index) {               // oldest first: each prepended, the newest ends on top
    if (!rows.has(item.call_id)) put({ ...item, signalling: "", business: "" }, false);
  }
  // the index has the essentials; the details (cost, end reason, signalling) come from each call's view
  const details = index.slice(-40).reverse();
  for (let i = 0; i < details.length; i += 6) {
    await Promise.all(details.slice(i, i + 6).map(async (item) => {
      try {
        const call = await api("GET", `calls/${item.call_id}`);
        delete call.timeline; delete call.webhooks;
        const known = rows.get(call.call_id);
        if (known && known.call.signalling === "") put(call, false);
      } catch (e) { /* gone meanwhile */ }
    }));
  }
  setInterval(() => {                      // connected calls' durations tick
    for (const { call, tr } of rows.values()) {
      if (call.state === "ACCEPTED") tr.querySelector(".duration").textContent = duration(liveDuration(call));
    }
  }, 1000);
}
