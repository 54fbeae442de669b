// Virtual users: create, change how they behave and what they say, call a business, reply to permission requests.
import { api, prefix } from "./api.js";
import { act, h } from "./ui.js";

const INCOMING = ["answer", "reject", "ignore", "manual"];
const PERMISSIONS = ["manual", "accept", "accept_permanent", "reject", "ignore"];
const ENTRY_POINTS = ["call_icon", "call_button", "deeplink", "call_log"];
const select = (name, options, value) => h("select", { name }, options.map((o) => h("option", { value: o, selected: o === value }, o)));

function userRow(user, numbers, refresh) {
  const form = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    data.answer_after = Number(data.answer_after); data.reply_after = Number(data.reply_after);
    act(`${user.wa_id} saved`, () => api("PATCH", `users/${user.wa_id}`, data)).then(refresh);
  } },
    h("label", {}, "name", h("input", { name: "name", value: user.name, size: 10 })),
    h("label", {}, "incoming calls", select("incoming", INCOMING, user.incoming)),
    h("label", {}, "answer after (s)", h("input", { name: "answer_after", type: "number", step: "0.1", min: "0", value: user.answer_after, style: "width: 70px" })),
    h("label", {}, "permission requests", select("permission_requests", PERMISSIONS, user.permission_requests)),
    h("label", {}, "reply after (s)", h("input", { name: "reply_after", type: "number", step: "0.1", min: "0", value: user.reply_after, style: "width: 70px" })),
    h("label", {}, "audio (tone:HZ, file:PATH, silence, tts:TEXT)", h("input", { name: "audio", value: user.audio, size: 16 })),
    h("button", { type: "submit" }, "Save"));
  const to = select("to", numbers.map((n) => n.id), numbers[0] && numbers[0].id);
  const entry = select("entry_point", ENTRY_POINTS, "call_icon");
  const payload = h("input", { name: "payload", placeholder: "payload (button/deeplink)", size: 14 });
  const call = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    const body = { to: to.value, entry_point: entry.value };
    if (payload.value) body.payload = payload.value;
    const placed = await act(null, () => api("POST", `users/${user.wa_id}/calls`, body));
    if (placed) location.href = `${prefix}/calls/${encodeURIComponent(placed.call_id)}`;
  } }, h("label", {}, "business", to), h("label", {}, "entry point", entry), payload,
    h("button", { class: "primary", type: "submit" }, "Call"));
  const reply = (response, permanent) => act(`permission ${response}${permanent ? " (permanent)" : ""}`, () =>
    api("POST", `users/${user.wa_id}/permission_replies`, { phone_number_id: to.value, response, permanent }));
  const message = () => act("message sent (customer service window open)", () =>
    api("POST", `users/${user.wa_id}/messages`, { to: to.value, text: "Hello from the wacall console" }));
  return h("div", { class: "card", dataset: { waId: user.wa_id } },
    h("h2", { style: "margin-top: 0" }, user.name, " ", h("span", { class: "mono muted" }, `+${user.wa_id}`),
      h("span", { class: "muted" }, ` · ${user.country} · ${user.platform} ${user.client_version}${user.on_whatsapp ? "" : " · not on WhatsApp"}`)),
    form, h("p"), call, h("p"),
    h("div", { class: "actions" },
      h("button", { onclick: message }, "Send a message"),
      h("button", { onclick: () => reply("accept", false) }, "Accept permission request"),
      h("button", { onclick: () => reply("accept", true) }, "Accept permanently"),
      h("button", { onclick: () => reply("reject", false) }, "Reject permission request"),
      h("a", { class: "button", href: `${prefix}/phone?wa_id=${encodeURIComponent(user.wa_id)}` }, "Be this user (phone)")));
}

export async function render(main) {
  const list = h("div");
  const numbers = (await api("GET", "numbers")).data;
  const refresh = async () => {
    const users = (await api("GET", "users")).data;
    list.replaceChildren(...users.map((user) => userRow(user, numbers, refresh)));
  };
  const create = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const data = Object.fromEntries([...new FormData(create)].filter(([, v]) => v !== ""));
    act(`user ${data.wa_id} created`, () => api("POST", "users", data)).then((made) => { if (made) { create.reset(); refresh(); } });
  } },
    h("label", {}, "wa_id (phone number)", h("input", { name: "wa_id", required: true, placeholder: "447700900099" })),
    h("label", {}, "name", h("input", { name: "name" })),
    h("label", {}, "incoming calls", select("incoming", INCOMING, "answer")),
    h("label", {}, "audio", h("input", { name: "audio", value: "tone:440" })),
    h("button", { class: "primary", type: "submit" }, "Create user"));
  main.append(h("h1", {}, "Users"), h("div", { class: "card" }, create), list);
  await refresh();
}
