// Call permissions per business number and user, with their expiry and the counts Meta's limits judge.
import { api } from "./api.js";
import { badge, h, relative, time } from "./ui.js";

export async function render(main, bus) {
  const box = h("div");
  main.append(h("h1", {}, "Permissions"), box);
  const draw = async () => {
    const { data, now, limits } = await api("GET", "permissions");
    const limitText = `requests: ${limits.permission_requests_per_24h}/24 h, ${limits.permission_requests_per_7d}/7 d · ` +
      `temporary permission: ${relative(limits.temporary_permission_seconds)} · connected business calls: ` +
      `${limits.bic_connected_per_24h}/24 h · revoked after ${limits.unanswered_revoke} unanswered (nudge at ${limits.unanswered_nudge})`;
    const kind = (p) => (p === "permanent" || p === "temporary" ? "good" : p === "expired" ? "bad" : "");
    box.replaceChildren(h("p", { class: "muted" }, "Limits: ", limitText),
      data.length ? h("table", {}, h("thead", {}, h("tr", {}, ["Business number", "User", "Permission", "Expires",
        "Requests 24 h", "Requests 7 d", "Connected 24 h", "Unanswered in a row", "Service window"].map((t) => h("th", {}, t)))),
      h("tbody", {}, data.map((p) => h("tr", {},
        h("td", { class: "mono" }, p.phone_number_id), h("td", { class: "mono" }, p.wa_id),
        h("td", {}, badge(p.permission, kind(p.permission))),
        h("td", {}, p.expires_at ? `${time(p.expires_at)} (${p.expires_at > now ? "in " + relative(p.expires_at - now) : relative(now - p.expires_at) + " ago"})` : ""),
        h("td", { class: "num" }, `${p.requests_24h} / ${limits.permission_requests_per_24h}`),
        h("td", { class: "num" }, `${p.requests_7d} / ${limits.permission_requests_per_7d}`),
        h("td", { class: "num" }, `${p.bic_connected_24h} / ${limits.bic_connected_per_24h}`),
        h("td", { class: "num" }, `${p.unanswered_streak} / ${limits.unanswered_revoke}`),
        h("td", {}, p.window_open ? badge("open", "good") : badge("closed"))))))
      : h("p", { class: "muted" }, "No business has dealt with a user yet (a message, a permission request or a call makes an entry)."));
  };
  bus.on("clock", draw);
  bus.on("webhook", (entry) => { if (entry.field === "messages") draw(); });
  bus.on("call", draw);
  await draw();
}
