// The virtual clock, the limits profile, injected faults and the reset.
import { api } from "./api.js";
import { act, h, json, time } from "./ui.js";

const PRESETS = [["+1 s", 1], ["+10 s", 10], ["+1 min", 60], ["+5 min", 300], ["+1 h", 3600], ["+1 day", 86400],
                 ["+7 days", 7 * 86400], ["+30 days", 30 * 86400]];

export async function render(main, bus) {
  const now = h("div", { class: "mono" });
  const showClock = (clock) => now.replaceChildren(`${time(clock.now)} UTC · offset ${Math.round(clock.offset)} s`);
  bus.on("clock", showClock);
  showClock(await api("GET", "clock"));
  const clock = h("div", { class: "card" }, h("h2", { style: "margin-top: 0" }, "Virtual clock"), now, h("p"),
    h("div", { class: "actions" }, PRESETS.map(([label, seconds]) =>
      h("button", { onclick: () => act(null, () => api("POST", "clock/advance", { seconds })) }, label))),
    h("p", { class: "muted" }, "Advancing fires every timer now due: ring timeouts, accept windows, users' reactions, permission expiry, webhook retries."));

  const limits = await api("GET", "limits");
  const limitForm = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const changed = {};
    for (const [key, value] of new FormData(limitForm)) {
      if (String(limits[key]) !== value) changed[key] = typeof limits[key] === "number" ? Number(value) : value;
    }
    act("limits changed", () => api("PATCH", "limits", changed)).then((now) => now && Object.assign(limits, now));
  } }, Object.entries(limits).filter(([key]) => key !== "profile").map(([key, value]) =>
    h("label", {}, key, h("input", { name: key, value: String(value), size: 10 }))),
    h("button", { type: "submit" }, "Save limits"));

  const faults = await api("GET", "faults");
  const faultForm = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const body = Object.fromEntries([...new FormData(faultForm)].map(([k, v]) => [k, Number(v)]));
    act("faults set", () => api("POST", "faults", body));
  } }, Object.entries(faults).map(([key, value]) =>
    h("label", {}, `${key} (next n connect requests fail with 138004)`, h("input", { name: key, type: "number", min: "0", value }))),
    h("button", { type: "submit" }, "Set"));

  const plan = h("textarea", { rows: 8 }, JSON.stringify(await api("GET", "webhooks/faults"), null, 2));
  const example = { rules: [{ kind: "fail", field: "calls", event: "connect", attempts: 2 }], seed: 7 };
  const webhookFaults = h("div", {},
    h("p", { class: "muted" }, "Webhook fault plan (docs/control-api.md): e.g. ", h("code", {}, JSON.stringify(example))), plan, h("p"),
    h("div", { class: "actions" },
      h("button", { onclick: () => act("webhook fault plan set", async () => {
        plan.value = JSON.stringify(await api("POST", "webhooks/faults", JSON.parse(plan.value)), null, 2);
      }) }, "Replace plan"),
      h("button", { onclick: () => act("webhook faults cleared", async () => {
        plan.value = JSON.stringify(await api("DELETE", "webhooks/faults"), null, 2);
      }) }, "Clear")));

  main.append(h("h1", {}, "Clock, limits & faults"), clock,
    h("div", { class: "card" }, h("h2", { style: "margin-top: 0" }, `Limits (profile ${limits.profile})`), limitForm),
    h("div", { class: "card" }, h("h2", { style: "margin-top: 0" }, "Faults"), faultForm, h("p"), webhookFaults),
    h("div", { class: "card" }, h("h2", { style: "margin-top: 0" }, "Reset"),
      h("p", { class: "muted" }, "Back to the configured start: calls, webhooks, journal, clock, limits and faults."),
      h("button", { class: "danger", onclick: () => confirm("Reset wacall?") && act("reset", () => api("POST", "reset")).then(() => location.reload()) }, "Reset wacall")),
    h("details", {}, h("summary", {}, "health"), json(await api("GET", "health"))));
}
