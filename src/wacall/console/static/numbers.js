// Business phone numbers and their settings (calling settings are the business's, set through Graph).
import { api } from "./api.js";
import { act, h, json, relative } from "./ui.js";

const RESTRICTIONS = ["RESTRICTED_BUSINESS_INITIATED_CALLING", "RESTRICTED_USER_INITIATED_CALLING"];

function card(number, refresh) {
  const form = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const body = { payment_method: data.payment_method === "true", is_test_number: data.is_test_number === "true",
                   messaging_limit: Number(data.messaging_limit) };
    act(`${number.id} saved`, () => api("PATCH", `numbers/${number.id}`, body)).then(refresh);
  } },
    h("label", {}, "payment method", h("select", { name: "payment_method" }, ["true", "false"].map((v) =>
      h("option", { value: v, selected: String(number.payment_method) === v }, v)))),
    h("label", {}, "test number", h("select", { name: "is_test_number" }, ["true", "false"].map((v) =>
      h("option", { value: v, selected: String(number.is_test_number) === v }, v)))),
    h("label", {}, "messaging limit", h("input", { name: "messaging_limit", type: "number", min: "0", value: number.messaging_limit })),
    h("button", { type: "submit" }, "Save"));
  const type = h("select", {}, RESTRICTIONS.map((r) => h("option", { value: r }, r)));
  const days = h("input", { type: "number", min: "0", step: "0.5", value: "7", style: "width: 70px" });
  const restrict = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    act("restriction added", () => api("POST", `numbers/${number.id}/restrictions`,
      { type: type.value, seconds: Number(days.value) * 86400, reason: "set from the console" })).then(refresh);
  } }, h("label", {}, "restriction", type), h("label", {}, "days", days), h("button", { type: "submit" }, "Restrict"));
  const calling = number.calling || {};
  return h("div", { class: "card" },
    h("h2", { style: "margin-top: 0" }, number.verified_name, " ", h("span", { class: "mono muted" }, `+${number.display_phone_number}`)),
    h("p", { class: "muted" }, `phone_number_id ${number.id} · WABA ${number.waba_id} · ${number.country} · calling ${calling.status || "not set"}` +
      `${calling.sip && calling.sip.status === "ENABLED" ? " · SIP" : ""}`),
    form, h("p"), restrict,
    (number.restrictions || []).length ? h("ul", {}, number.restrictions.map((r) =>
      h("li", {}, `${r.type} until ${new Date(r.expiration * 1000).toISOString()} (${r.reason || ""})`))) : "",
    h("details", {}, h("summary", {}, "calling settings (set by the business through Graph's /settings)"), json(calling)));
}

export async function render(main) {
  const list = h("div");
  const refresh = async () => {
    const numbers = (await api("GET", "numbers")).data;
    list.replaceChildren(...numbers.map((number) => card(number, refresh)));
  };
  main.append(h("h1", {}, "Numbers"), list);
  await refresh();
}
