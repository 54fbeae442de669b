// One call: what happened (timeline, SIP ladder, SDPs, media quality, recording), kept current by the stream.
import { api, app, prefix } from "./api.js";
import { capture, captureKey } from "./capture.js";
import { ladder, sipEntries } from "./ladder.js";
import { plot } from "./plots.js";
import { act, badge, duration, h, json, since, time } from "./ui.js";

const callId = app.dataset.callId;
let view, sections = {}, wave = null;

function summary(call) {
  const kv = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  const run = (action) => act(null, () => api("POST", `calls/${callId}/${action}`));
  const buttons = [];
  if (call.direction === "BUSINESS_INITIATED" && call.state === "RINGING") {
    buttons.push(h("button", { class: "primary", onclick: () => run("answer") }, "Answer"),
                 h("button", { onclick: () => run("reject") }, "Reject"));
  }
  if (call.state !== "ENDED") buttons.push(h("button", { class: "danger", onclick: () => run("hangup") }, "Hang up"));
  if (call.state !== "ENDED") {          // the browser phone takes the user's place (and answers a ringing call)
    buttons.push(h("a", { class: "button", href: `${prefix}/phone?call=${encodeURIComponent(callId)}` },
                   call.state === "RINGING" && call.direction === "BUSINESS_INITIATED" ? "Answer in the browser"
                                                                                       : "Talk in the browser"));
  }
  const keypad = call.state === "ACCEPTED" ? h("div", { class: "keypad", title: "the user presses keys (RFC 4733)" },
    [..."123A456B789C*0#D"].map((key) => h("button", {
      onclick: () => act(`sent ${key}`, () => api("POST", `calls/${callId}/dtmf`, { digits: key })) }, key))) : "";
  return h("div", { class: "card" },
    h("h1", {}, "Call ", h("span", { class: "mono" }, call.call_id), " ", badge(call.state), " ", badge(call.signalling)),
    h("div", { class: "row" },
      h("dl", { class: "kv" },
        kv("direction", call.direction === "USER_INITIATED" ? "user → business" : "business → user"),
        kv("user", call.wa_id), kv("business", `${call.business || ""} (${call.phone_number_id})`),
        kv("entry point", call.entry_point || ""), kv("created", time(call.created_at)),
        kv("accepted", time(call.accepted_at)), kv("ended", time(call.ended_at)),
        kv("duration", duration(call.duration)), kv("cost", call.cost ? `$${Number(call.cost).toFixed(4)} (${call.pulses} pulses)` : ""),
        kv("end", [call.end_status, call.end_reason, call.ended_by && `by ${call.ended_by}`].filter(Boolean).join(" · ")),
        call.errors && call.errors.length ? kv("errors", call.errors.map((e) => `${e.code} ${e.message || e.title || ""}`).join("; ")) : []),
      h("div", {}, h("div", { class: "actions" }, buttons), h("p"), keypad)));
}

function describe(entry, webhooks) {
  const { t, kind, ...rest } = entry;
  switch (kind) {
    case "state": return `${rest.previous || "—"} → ${rest.state}${rest.reason ? ` (${rest.reason})` : ""}${rest.by ? ` by ${rest.by}` : ""}`;
    case "api": return `${rest.action}${rest.to ? ` to ${rest.to}` : ""} (app ${rest.app_id})`;
    case "sip_message": return `${rest.direction === "in" ? "business → Meta" : "Meta → business"}: ${rest.line}`;
    case "webhook_attempt": {
      const entry = webhooks.get(rest.outbox_id);
      const event = entry ? eventOf(entry.body) : "";
      return `${rest.field}${event ? ` ${event}` : ""} → ${rest.url}: ${rest.status_code ?? ""} ${rest.error || ""}`;
    }
    case "media": return `${rest.event}${Object.keys(rest).length > 1 ? " " + compact(rest, ["event"]) : ""}`;
    default: return compact(rest, []);
  }
}

function compact(data, skip) {
  return Object.entries(data).filter(([k, v]) => !skip.includes(k) && v !== null && v !== undefined && k !== "raw")
    .map(([k, v]) => (typeof v === "object" ? `${k}={…}` : `${k}=${v}`)).join(" ");
}

function eventOf(body) {
  const value = body?.entry?.[0]?.changes?.[0]?.value || {};
  return value.calls?.[0]?.event || value.statuses?.[0]?.status || "";
}

function timeline(call) {
  const webhooks = new Map((call.webhooks || []).map((w) => [w.id, w]));
  const start = call.created_at;
  const rows = call.timeline.map((entry) => {
    let detail = null;
    if (entry.kind === "webhook_attempt") {
      const w = webhooks.get(entry.outbox_id);
      const attempt = w && w.attempt_log.find((a) => a.at === entry.t);
      detail = h("div", { class: "row" },
        h("div", {}, h("div", { class: "muted" }, "request body (signed, X-Hub-Signature-256)"), json(w ? w.body : {})),
        h("div", {}, h("div", { class: "muted" }, "response"), json(attempt || { status_code: entry.status_code, error: entry.error })));
    } else if (entry.kind === "sip_message") {
      detail = h("pre", {}, entry.raw || entry.line);
    } else if (Object.keys(entry).length > 4) {
      detail = json(entry);
    }
    const text = describe(entry, webhooks);
    return h("tr", {},
      h("td", { title: time(entry.t) }, `${since(entry.t, start)} s`),
      h("td", {}, h("span", { class: `kind ${entry.kind}` }, entry.kind)),
      h("td", {}, detail ? h("details", {}, h("summary", {}, text), detail) : text));
  });
  return h("table", { class: "timeline" }, h("thead", {}, h("tr", {}, h("th", {}, "t"), h("th", {}, "kind"), h("th", {}, "what"))),
           h("tbody", {}, rows));
}

function sip(call) {
  const entries = sipEntries(call.timeline);
  if (!entries.length) return h("p", { class: "muted" }, "No SIP messages (yet).");
  const raw = h("pre", { class: "raw" }, "Click a message for its text.");
  return h("div", {}, ladder(entries, call.created_at, (entry) => { raw.textContent = entry.raw || entry.line; }), h("p"), raw);
}

function sdp(call) {
  const media = call.media || {};
  const pts = new Set(Object.values(media.payload_types || {}).map(String));
  const negotiated = (line) => {
    const match = /^a=(rtpmap|fmtp):(\d+)/.exec(line);
    return match && pts.has(match[2]);
  };
  const column = (title, text) => h("div", {}, h("h2", {}, title),
    text ? h("pre", {}, text.split(/\r?\n/).filter(Boolean).map((line) =>
      h("div", { class: negotiated(line) ? "" : /^a=(candidate|ice|fingerprint|crypto|setup)/.test(line) ? "" : "same",
                 style: negotiated(line) ? "font-weight: 700; color: #1a7f37" : "" }, line)))
      : h("p", { class: "muted" }, "none"));
  const businessOffers = call.direction === "BUSINESS_INITIATED";
  const offer = businessOffers ? ["Offer (business)", call.business_sdp] : ["Offer (Meta)", call.meta_sdp];
  const answer = businessOffers ? ["Answer (Meta)", call.meta_sdp] : ["Answer (business)", call.business_sdp];
  const result = {
    key_exchange: media.key_exchange, send_codec: media.send_codec, payload_types: media.payload_types,
    dtls: media.dtls, ice: media.ice,
  };
  return h("div", { class: "sdp" }, h("div", { class: "row" }, column(...offer), column(...answer)),
           h("h2", {}, "Negotiated"), json(result));
}

async function quality(call) {
  const box = h("div", {});
  const samples = (await api("GET", `calls/${callId}/media/samples`)).data;
  const media = call.media;
  const figure = (caption) => {
    const canvas = h("canvas", { class: "plot" });
    box.querySelector(".plots").append(h("figure", {}, h("figcaption", {}, caption), canvas));
    return canvas;
  };
  box.append(h("div", { class: "plots" }));
  const t0 = samples.length ? samples[0].t : 0;
  const series = (key, scale = 1) => samples.map((s) => [s.t - t0, s[key] === null ? null : s[key] * scale]);
  const packets = figure("packets (cumulative): received from the business, sent by the user");
  const loss = figure("loss (%) of what the business sent");
  const jitter = figure("jitter (ms) of what the business sent");
  const level = figure("level (dBFS): what the user hears (live samples, and the recording)");
  requestAnimationFrame(() => {
    plot(packets, [{ label: "received", colour: "#0a58ca", points: series("rx_packets") },
                   { label: "sent", colour: "#128c7e", points: series("tx_packets") }]);
    plot(loss, [{ label: "loss", colour: "#c0362c", points: series("loss", 100) }], { unit: "%", min: 0 });
    plot(jitter, [{ label: "jitter", colour: "#9a6700", points: series("jitter_ms") }], { unit: " ms", min: 0 });
    const levels = [{ label: "received (live)", colour: "#6f32a8", points: series("level_dbfs") }];
    if (wave && wave.levels.length) levels.push({ label: "recording", colour: "#128c7e", points: wave.levels });
    plot(level, levels, { unit: "", max: 0 });
  });
  if (!samples.length) {
    box.append(h("p", { class: "muted" }, "Samples are taken once a second while the console is open and the call is live."));
  }
  if (media) box.append(h("details", {}, h("summary", {}, "media statistics now"), json(media)));
  return box;
}

async function recording(call) {
  const box = h("div", {});
  if (!call.media || !call.media.recording_url) {
    box.append(h("p", { class: "muted" }, "No media for this call."));
    return box;
  }
  const url = `/_wacall/calls/${callId}/recording.wav`;
  const audio = h("audio", { controls: true, preload: "none", src: url });
  const canvas = h("canvas", { class: "wave", title: "click to play from here" });
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error((await response.json()).error.detail);
    const decoded = await new OfflineAudioContext(1, 1, 48000).decodeAudioData(await response.arrayBuffer());
    const data = decoded.getChannelData(0), rate = decoded.sampleRate;
    const levels = [];
    for (let i = 0; i < data.length; i += rate / 10) {
      let sum = 0; const end = Math.min(data.length, i + rate / 10);
      for (let j = i; j < end; j++) sum += data[j] * data[j];
      const rms = Math.sqrt(sum / Math.max(1, end - i));
      levels.push([i / rate, rms > 0 ? Math.max(-90, 20 * Math.log10(rms)) : -90]);
    }
    wave = { data, rate, levels, seconds: data.length / rate };
    box.append(h("p", { class: "muted" }, "What the user heard (the business's audio), as wacall recorded it."), canvas, h("p"),
               audio, " ", h("a", { href: url, download: `${callId}.wav` }, "download"));
    const draw = () => drawWave(canvas, wave, audio.currentTime);
    requestAnimationFrame(draw);
    audio.addEventListener("timeupdate", draw);
    canvas.addEventListener("click", (event) => {
      const rect = canvas.getBoundingClientRect();
      audio.currentTime = ((event.clientX - rect.left) / rect.width) * wave.seconds;
      audio.play();
    });
    box.dataset.seconds = wave.seconds.toFixed(2);
  } catch (error) {
    box.append(h("p", { class: "muted" }, `No recording: ${error.message || error}`));
  }
  return box;
}

function drawWave(canvas, wave, position) {
  const ratio = window.devicePixelRatio || 1, width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.fillStyle = "#0f1a24"; g.fillRect(0, 0, width, height);
  const per = Math.max(1, Math.floor(wave.data.length / width));
  g.fillStyle = "#3ddc84";
  for (let x = 0; x < width; x++) {
    let low = 1, high = -1;
    for (let j = x * per; j < Math.min(wave.data.length, (x + 1) * per); j++) {
      const v = wave.data[j]; if (v < low) low = v; if (v > high) high = v;
    }
    if (high < low) continue;
    g.fillRect(x, (1 - high) * height / 2, 1, Math.max(1, (high - low) * height / 2));
  }
  g.fillStyle = "#fff";
  g.fillRect((position / wave.seconds) * width, 0, 1.5, height);
  g.font = "11px system-ui"; g.fillText(`${wave.seconds.toFixed(1)} s`, width - 44, 14);
}

async function draw() {
  view = await api("GET", `calls/${callId}`);
  const main = app;
  const isSip = view.signalling === "sip" || sipEntries(view.timeline).length > 0;
  if (!sections.summary) {
    sections = {
      summary: h("div"), timeline: h("div"), sip: h("div"), sdp: h("div"), media: h("div"), recording: h("div"),
      capture: h("div"),
    };
    main.append(sections.summary,
      h("section", { id: "timeline" }, h("h2", {}, "Timeline"), sections.timeline),
      h("section", { id: "sip", hidden: !isSip }, h("h2", {}, "SIP ladder"), sections.sip),
      h("section", { id: "sdp" }, h("h2", {}, "SDP"), sections.sdp),
      h("section", { id: "capture" }, h("h2", {}, "Voicemail, call recording and transcript"), sections.capture),
      h("section", { id: "recording" }, h("h2", {}, "Recording"), sections.recording),
      h("section", { id: "media" }, h("h2", {}, "Media quality"), sections.media));
  }
  main.querySelector("#sip").hidden = !isSip;
  sections.summary.replaceChildren(summary(view));
  sections.timeline.replaceChildren(timeline(view));
  if (isSip) sections.sip.replaceChildren(sip(view));
  sections.sdp.replaceChildren(sdp(view));
  if (sections.capture.dataset.key !== captureKey(view)) {     // players keep playing across redraws
    sections.capture.dataset.key = captureKey(view);
    sections.capture.replaceChildren(await capture(view));
  }
  if (view.state === "ENDED" && !sections.recording.dataset.done) {
    sections.recording.dataset.done = "1";
    sections.recording.replaceChildren(await recording(view));
  } else if (view.state !== "ENDED" && !sections.recording.childNodes.length) {
    const load = h("button", { onclick: async () => {
      load.disabled = true;
      sections.recording.replaceChildren(await recording(view));
    } }, "Load what was recorded so far");
    sections.recording.replaceChildren(h("p", { class: "muted" }, "The whole recording loads when the call ends. "), load);
  }
  sections.media.replaceChildren(await quality(view));
  document.title = `Call ${callId} · wacall console`;
}

export async function render(main, bus) {
  let pending = null;
  const soon = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; draw().catch(() => {}); }, 250);
  };
  bus.on("call", (call) => { if (call.call_id === callId) soon(); });
  bus.on("webhook", (entry) => { if (entry.call_id === callId) soon(); });
  try {
    await draw();
  } catch (error) {
    main.append(h("h1", {}, "Call ", callId), h("p", { class: "muted" }, String(error.message || error)),
                h("p", {}, h("a", { href: prefix }, "All calls")));
    return;
  }
  setInterval(() => { if (view && view.state !== "ENDED") soon(); }, 3000);   // media samples grow
}
