// The console's phone page: this browser takes a virtual WhatsApp user's place on a call.
//
// wacall offers SDP (its relay: ICE-lite, DTLS-SRTP, Opus, RFC 4733) the way Meta's relay offers it to a
// business; this page answers with one RTCPeerConnection. Signalling: JSON under /_wacall/console/phone
// (see wacall/console/phone.py); keys, answer and hang-up: the control API (/_wacall/calls/{id}/...).
// Incoming calls and state changes come from the console's live stream (the bus console.js hands to
// render); the page also polls the call it is on, and looks at the ringing calls when it starts, each time
// the stream (re)connects and while it is down (see lookForRinging).
// window.phone exposes what the page knows (used by the tests).

const PAGE = `<div class="phone">
  <h1>Phone</h1>
  <p class="hint">Be a WhatsApp user with this browser's microphone and speaker: call a business, or answer
    the business's call to the user you pick. Audio goes through wacall's relay exactly as it would through Meta's.</p>

  <form id="dial" autocomplete="off">
    <label>User <select id="user" required></select></label>
    <label>Business <input id="to" required placeholder="phone_number_id or number"></label>
    <label>Entry point
      <select id="entry-point">
        <option>call_icon</option><option>call_button</option><option>deeplink</option><option>call_log</option>
      </select>
    </label>
    <label class="check"><input type="checkbox" id="processing" checked> echo cancellation, noise suppression, gain control</label>
    <button id="call" type="submit" class="green">Call</button>
  </form>

  <section id="incoming" hidden>
    <p>Incoming call from <strong id="incoming-from"></strong></p>
    <button id="answer" class="green">Answer</button>
    <button id="reject" class="red">Decline</button>
  </section>

  <section id="in-call" hidden>
    <p class="parties" id="parties"></p>
    <p class="status"><span id="state">-</span> <span id="duration"></span></p>
    <p class="call-id">call <code id="call-id"></code></p>
    <div class="meters">
      <label>microphone <meter id="mic-level" min="-60" max="0" value="-60"></meter></label>
      <label>speaker <meter id="speaker-level" min="-60" max="0" value="-60"></meter></label>
    </div>
    <div id="keypad" class="keypad">
      <button>1</button><button>2</button><button>3</button>
      <button>4</button><button>5</button><button>6</button>
      <button>7</button><button>8</button><button>9</button>
      <button>*</button><button>0</button><button>#</button>
    </div>
    <p class="digits">keys sent: <code id="digits"></code></p>
    <button id="hangup" class="red">Hang up</button>
  </section>

  <p id="message" role="status"></p>
  <audio id="speaker" autoplay></audio>
</div>`;

const $ = (id) => document.getElementById(id);
const LIVE = new Set(["RINGING", "PRE_ACCEPTED", "ACCEPTED"]);

let pc = null, mic = null, ctx = null, speakerAnalyser = null, micAnalyser = null;
let call = null;            // {call_id, state, direction, wa_id, accepted_at, ...} of the call in this browser
let ringing = null;         // a business-initiated call ringing on the chosen user's phone
let digitsSent = "";
// the console's header shows whether its live stream is connected
const streamUp = () => { const dot = document.getElementById("live"); return !!(dot && dot.classList.contains("on")); };
const events = [];
const log = (what, data) => {      // what the page did, for its tests: the last 500 entries
  events.push({t: Math.round(performance.now()), what, data});
  if (events.length > 500) events.splice(0, events.length - 500);
};

async function api(method, path, body) {
  const init = {method, headers: {}};
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || {};
    throw new Error(error.detail || error.reason || error.message || `${method} ${path}: ${response.status}`);
  }
  return data;
}

function say(text) { $("message").textContent = text || ""; }

// -- audio ---------------------------------------------------------------------------------------------
function analyserFor(stream) {
  ctx = ctx || new AudioContext({sampleRate: 48000});
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 32768;
  analyser.smoothingTimeConstant = 0;
  ctx.createMediaStreamSource(stream).connect(analyser);
  ctx.resume();
  return analyser;
}

function levelDbfs(analyser) {
  if (!analyser) return null;
  const buf = new Float32Array(4096);
  analyser.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const x of buf) sum += x * x;
  const rms = Math.sqrt(sum / buf.length);
  return rms > 0 ? 20 * Math.log10(rms) : -120;
}

async function connect(offerSdp, callId) {
  hangUpMedia();
  const processing = $("processing").checked;
  mic = await navigator.mediaDevices.getUserMedia({audio: processing ? true :
    {echoCancellation: false, noiseSuppression: false, autoGainControl: false}, video: false});
  micAnalyser = analyserFor(mic);
  pc = new RTCPeerConnection({iceServers: []});
  pc.addTrack(mic.getAudioTracks()[0], mic);
  pc.addEventListener("connectionstatechange", () => { log("connection", pc && pc.connectionState); show(); });
  pc.addEventListener("track", (e) => {
    const stream = e.streams[0] || new MediaStream([e.track]);
    $("speaker").srcObject = stream;        // Chromium renders a remote track only when an element plays it
    speakerAnalyser = analyserFor(stream);
    log("track", e.track.kind);
  });
  await pc.setRemoteDescription({type: "offer", sdp: offerSdp});
  await pc.setLocalDescription(await pc.createAnswer());
  // wacall's relay is ICE-lite: it needs no candidates from the browser, only its credentials
  await api("POST", `/_wacall/console/phone/calls/${callId}/browser/answer`, {sdp: pc.localDescription.sdp});
  log("answered", callId);
}

function hangUpMedia() {
  if (pc) pc.close();
  if (mic) mic.getTracks().forEach((t) => t.stop());
  pc = mic = speakerAnalyser = micAnalyser = null;
  $("speaker").srcObject = null;
}

// -- actions -------------------------------------------------------------------------------------------
async function placeCall(event) {
  event.preventDefault();
  if (call) return;
  say("");
  $("call").disabled = true;
  try {
    const placed = await api("POST", "/_wacall/console/phone/calls",
      {wa_id: $("user").value, to: $("to").value.trim(), entry_point: $("entry-point").value});
    call = {call_id: placed.call_id, state: placed.state, direction: "USER_INITIATED", wa_id: $("user").value,
            business: $("to").value.trim()};
    digitsSent = "";
    show();
    await connect(placed.sdp, placed.call_id);
  } catch (error) {
    say(error.message);
    if (call) await endCall();
  } finally {
    $("call").disabled = false;
  }
}

// The browser takes the user's place on a call: one ringing on the user's phone (then the user answers),
// or one in progress (?call=<call_id>: the console's call page links here), which the browser takes over.
async function takeOver(callId) {
  say("");
  try {
    const joined = await api("POST", `/_wacall/console/phone/calls/${callId}/browser`);
    const view = await api("GET", `/_wacall/calls/${callId}`);
    delete view.timeline;
    call = view;
    ringing = null;
    digitsSent = "";
    show();
    await connect(joined.sdp, callId);
    if (view.direction === "BUSINESS_INITIATED" && view.state === "RINGING") {
      const answered = await api("POST", `/_wacall/calls/${callId}/answer`);
      delete answered.timeline;
      call = answered;
    }
  } catch (error) {
    say(error.message);
  }
  show();
}

async function answerCall() {
  if (ringing) await takeOver(ringing.call_id);
}

async function rejectCall() {
  if (!ringing) return;
  try { await api("POST", `/_wacall/calls/${ringing.call_id}/reject`); } catch (error) { say(error.message); }
  ringing = null;
  show();
}

async function endCall() {
  const current = call;
  if (current && LIVE.has(current.state)) {
    try { await api("POST", `/_wacall/calls/${current.call_id}/hangup`); } catch (error) { say(error.message); }
  }
  finished();
}

function finished() {
  hangUpMedia();
  call = null;
  show();
}

async function press(key) {
  if (!call) return;
  try {
    await api("POST", `/_wacall/calls/${call.call_id}/dtmf`, {digits: key});
    digitsSent += key;
  } catch (error) { say(error.message); }
  show();
}

// -- what the server says about calls --------------------------------------------------------------------
function onCall(full) {
  const {timeline, webhooks, ...view} = full;    // (GET /_wacall/calls/{id} has them; the page needs neither)
  for (const heard of looking) heard.add(view.call_id);
  if (call && view.call_id === call.call_id) {
    call = {...call, ...view};
    if (view.state === "ENDED") {
      say(`call ended: ${view.end_reason || view.end_status || ""}`);
      finished();
    }
  } else if (!call && view.direction === "BUSINESS_INITIATED" && view.wa_id === $("user").value) {
    if (view.state === "RINGING") ringing = view;
    else if (ringing && ringing.call_id === view.call_id) ringing = null;
  }
  show();
}

// The stream tells changes only: a call that began ringing before it connected (the page opening, the
// stream reconnecting, another user picked) sends this page no event. So the page looks at the ringing
// calls when it starts, each time the stream connects (the server listens before it answers: nothing is
// lost after that), when the user changes and while the stream is down. A look's answer is older than the
// events that came while it was on its way and than a later look's answer: it overrules neither.
const looking = new Set();     // per look on its way: the calls the stream told of meanwhile
let looksSent = 0, lookApplied = 0;
async function lookForRinging() {
  const number = ++looksSent, heard = new Set();
  looking.add(heard);
  try {
    const live = await api("GET", "/_wacall/calls?state=live&limit=100");
    if (number < lookApplied) return;
    lookApplied = number;
    if (call || (ringing && heard.has(ringing.call_id))) return;
    const mine = (live.data || []).map((c) => ({...c, call_id: c.call_id || c.id})).find((c) =>
      c.direction === "BUSINESS_INITIATED" && c.state === "RINGING" && c.wa_id === $("user").value
      && !heard.has(c.call_id));
    ringing = mine || null;
    show();
  } catch (_) { /* the server restarts: the next look */ } finally {
    looking.delete(heard);
    log("looked", number);
  }
}

async function poll() {               // the stream's safety net (and all there is without it)
  try {
    if (call) onCall(await api("GET", `/_wacall/calls/${call.call_id}`));
  } catch (_) { /* the server restarts, or the call is gone: next time */ }
  if (!streamUp() && !call) await lookForRinging();
  setTimeout(poll, 1000);
}

// -- the page ------------------------------------------------------------------------------------------
function show() {
  $("dial").hidden = !!call;
  $("incoming").hidden = !ringing || !!call;
  if (ringing) $("incoming-from").textContent = ringing.business || ringing.phone_number_id || "a business";
  $("in-call").hidden = !call;
  if (call) {
    $("state").textContent = call.state === "ACCEPTED" ? "connected" : (call.state || "").toLowerCase();
    $("call-id").textContent = call.call_id;
    const user = `+${call.wa_id}`, business = call.business ? `+${String(call.business).replace(/^\+/, "")}`
                                                              : call.phone_number_id || "the business";
    $("parties").textContent = call.direction === "BUSINESS_INITIATED" ? `${business} → ${user} (you)`
                                                                         : `${user} (you) → ${business}`;
    $("digits").textContent = digitsSent;
  }
}

function meters() {
  const mic = levelDbfs(micAnalyser), speaker = levelDbfs(speakerAnalyser);
  $("mic-level").value = mic === null ? -60 : Math.max(-60, mic);
  $("speaker-level").value = speaker === null ? -60 : Math.max(-60, speaker);
  if (call && call.accepted_at) {
    const seconds = Math.max(0, Math.round(Date.now() / 1000 - call.accepted_at));
    $("duration").textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  } else {
    $("duration").textContent = "";
  }
  requestAnimationFrame(meters);
}

export async function render(main, bus) {
  if (!document.querySelector('link[href$="/phone.css"]')) {
    document.head.append(Object.assign(document.createElement("link"),
                                       {rel: "stylesheet", href: "/_wacall/console/static/phone.css"}));
  }
  main.innerHTML = PAGE;             // (static markup: nothing from the server goes in as HTML)
  bus.on("call", onCall);
  bus.on("open", () => { lookForRinging(); });
  await start();
}

async function start() {
  const [info, users] = await Promise.all([api("GET", "/_wacall/info"), api("GET", "/_wacall/users")]);
  const select = $("user");
  for (const user of users.data || []) {
    const option = document.createElement("option");
    option.value = user.wa_id;
    option.textContent = user.name && user.name !== user.wa_id ? `${user.name} (+${user.wa_id})` : `+${user.wa_id}`;
    select.append(option);
  }
  const wanted = new URLSearchParams(location.search);
  const chosen = wanted.get("user") || wanted.get("wa_id");    // (the console's Users page says wa_id)
  if (chosen) select.value = chosen;
  const processing = wanted.get("processing") || localStorage.getItem("wacall.phone.processing");
  if (processing) $("processing").checked = processing !== "off";
  $("processing").addEventListener("change", () =>
    localStorage.setItem("wacall.phone.processing", $("processing").checked ? "on" : "off"));
  $("to").value = wanted.get("to") || info.display_phone_number || info.phone_number_id || "";
  $("dial").addEventListener("submit", placeCall);
  $("hangup").addEventListener("click", endCall);
  $("answer").addEventListener("click", answerCall);
  $("reject").addEventListener("click", rejectCall);
  $("user").addEventListener("change", () => { ringing = null; show(); lookForRinging(); });
  for (const key of $("keypad").querySelectorAll("button")) key.addEventListener("click", () => press(key.textContent));
  // closing or leaving the page hangs up, as a phone's user does (keepalive: the request outlives the page)
  window.addEventListener("pagehide", () => {
    if (call && LIVE.has(call.state)) {
      fetch(`/_wacall/calls/${call.call_id}/hangup`, {method: "POST", keepalive: true,
        headers: {"Content-Type": "application/json"}, body: "{}"}).catch(() => {});
    }
  });
  if (wanted.get("call")) await takeOver(wanted.get("call"));
  lookForRinging();                  // what rang before this page listened (and the stream's opens since)
  setTimeout(poll, 1000);
  show();
  requestAnimationFrame(meters);
  window.phone.ready = true;
}

window.phone = {
  ready: false, events,
  state() {
    return {call: call && {call_id: call.call_id, state: call.state}, ringing: ringing && ringing.call_id,
            connection: pc ? pc.connectionState : null, audioContext: ctx ? ctx.state : null,
            micDbfs: levelDbfs(micAnalyser), speakerDbfs: levelDbfs(speakerAnalyser), digits: digitsSent,
            message: $("message").textContent};
  },
  // the last ~0.68 s the speaker played (float samples in [-1, 1]) and the sample rate
  heard() {
    if (!speakerAnalyser) return null;
    const buf = new Float32Array(speakerAnalyser.fftSize);
    speakerAnalyser.getFloatTimeDomainData(buf);
    return {sampleRate: ctx.sampleRate, samples: Array.from(buf)};
  },
  async stats() {
    if (!pc) return null;
    const out = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.inbound = {packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, audioLevel: s.audioLevel,
                       totalAudioEnergy: s.totalAudioEnergy, totalSamplesDuration: s.totalSamplesDuration};
      }
      if (s.type === "outbound-rtp" && s.kind === "audio") out.outbound = {packetsSent: s.packetsSent};
      if (s.type === "transport") out.transport = {dtlsState: s.dtlsState, dtlsRole: s.dtlsRole, iceRole: s.iceRole};
    });
    return out;
  },
};

