// The console's entry point: one live stream per page, shared by the header's clock and the page module.
import { api, app, follow } from "./api.js";
import { clockTime } from "./ui.js";

const listeners = { call: [], webhook: [], clock: [], open: [] };     // open: the stream (re)connected
export const bus = { on: (kind, fn) => listeners[kind].push(fn) };

function showClock(clock) {
  const element = document.getElementById("clock");
  if (element) element.textContent = `${clock.iso.slice(0, 10)} ${clockTime(clock.now)} (+${Math.round(clock.offset)} s)`;
}
bus.on("clock", showClock);

const pages = {
  calls: () => import("./calls.js"), call: () => import("./call.js"), users: () => import("./users.js"),
  permissions: () => import("./permissions.js"), numbers: () => import("./numbers.js"),
  webhooks: () => import("./webhooks.js"), platform: () => import("./platform.js"), phone: () => import("./phone.js"),
};

async function main() {
  const page = app.dataset.page;
  follow({
    call: (data) => listeners.call.forEach((fn) => fn(data)),
    webhook: (data) => listeners.webhook.forEach((fn) => fn(data)),
    clock: (data) => listeners.clock.forEach((fn) => fn(data)),
    open: () => listeners.open.forEach((fn) => fn()),
  }, page === "call" ? app.dataset.callId : undefined);
  api("GET", "clock").then(showClock).catch(() => {});
  const module = await pages[page]();
  app.replaceChildren();
  await module.render(app, bus);
}

main().catch((error) => { app.textContent = `The console could not start: ${error.message || error}`; });
