// Shown when this wacall has no browser phone (wacall/console/phone.py).
import { h } from "./ui.js";

export async function render(main) {
  main.append(h("h1", {}, "Phone"), h("p", { class: "muted" }, "This wacall has no browser phone."));
}
