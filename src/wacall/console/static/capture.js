// A call's published media on its page: the voicemail the user left, the call recording (stereo Ogg/Opus,
// business left, customer right) with a player, and the transcript (segments per speaker, word timings).
// The files come from the control API (/_wacall/calls/{id}/media/{media_id}), not the Media API's signed URLs.
import { h, json } from "./ui.js";

const mediaUrl = (callId, mediaId) => `/_wacall/calls/${encodeURIComponent(callId)}/media/${encodeURIComponent(mediaId)}`;

// what is shown, as a key: the section is redrawn only when it changes
export function captureKey(call) {
  return JSON.stringify([call.voicemail && call.voicemail.media_id, call.recording && call.recording.media_id,
                         call.transcript && call.transcript.media_id, call.state]);
}

function player(callId, mediaId, type, label) {
  const url = mediaUrl(callId, mediaId);
  return h("div", { class: "player" },
    h("audio", { controls: true, preload: "none" }, h("source", { src: url, type })), " ",
    h("a", { href: url, download: `${callId}-${label}` }, "download"),
    h("span", { class: "muted mono" }, ` media ${mediaId}`));
}

function voicemail(call) {
  const vm = call.voicemail;
  if (!vm) return null;
  return h("div", { class: "card", id: "voicemail" },
    h("h3", {}, "Voicemail"),
    h("p", {}, `The user left a message of ${vm.seconds ?? "?"} s after the call was `,
      vm.trigger === "TIMEOUT" ? "not answered in time" : vm.trigger === "REJECT" ? "rejected" : String(vm.trigger || "ended"),
      "; the business got it on messages as an audio message."),
    vm.media_id ? player(call.call_id, vm.media_id, "audio/ogg; codecs=opus", "voicemail.ogg") : h("p", { class: "muted" }, "no audio"));
}

function recordingCard(call) {
  const asked = call.capture || {};
  const enabled = (name) => asked[name] && asked[name].status === "ENABLED";
  if (!call.recording && !enabled("recording")) return null;
  const box = h("div", { class: "card", id: "call-recording" }, h("h3", {}, "Call recording"));
  if (asked.recording) box.append(h("p", { class: "muted" }, `purpose: ${asked.recording.purpose || ""} · announced in ${asked.recording.announcement_language || ""}`));
  if (call.recording) {
    box.append(h("p", {}, "Stereo: the business on the left channel (0), the customer on the right (1); the announcement is in both."),
               player(call.call_id, call.recording.media_id, "audio/ogg; codecs=opus", "recording.ogg"));
  } else {
    box.append(h("p", { class: "muted" }, call.state === "ENDED" ? "Being processed, or declined (the user hung up during the announcement): see the timeline."
                                                                  : "Delivered after the call ends (call_recording_available)."));
  }
  return box;
}

function transcriptCard(call, documentBody) {
  const asked = call.capture || {};
  if (!call.transcript && !(asked.transcription && asked.transcription.status === "ENABLED")) return null;
  const box = h("div", { class: "card", id: "transcript" }, h("h3", {}, "Transcript"));
  if (!call.transcript) {
    box.append(h("p", { class: "muted" }, call.state === "ENDED" ? "Being processed, or declined: see the timeline."
                                                                  : "Delivered after the call ends (call_transcription_available)."));
    return box;
  }
  const url = mediaUrl(call.call_id, call.transcript.media_id);
  const transcript = documentBody && documentBody.transcript;
  if (!transcript) {
    box.append(h("p", {}, call.transcript.text || h("span", { class: "muted" }, "(nothing recognised)")));
  } else {
    box.append(h("p", { class: "muted" }, `language ${transcript.language || "—"} · confidence ${transcript.confidence} · ${transcript.duration} s`),
      h("table", { class: "timeline transcript" },
        h("thead", {}, h("tr", {}, h("th", {}, "t"), h("th", {}, "speaker"), h("th", {}, "said"), h("th", {}, "confidence"))),
        h("tbody", {}, (transcript.segments || []).map((s) => h("tr", { class: `speaker-${s.channel}` },
          h("td", {}, `${Number(s.start).toFixed(2)}–${Number(s.end).toFixed(2)} s`),
          h("td", {}, `${s.speaker} (ch ${s.channel})`),
          h("td", { title: (s.words || []).map((w) => `${w.word} ${w.start}–${w.end} (${w.confidence})`).join("\n") }, s.text),
          h("td", {}, String(s.confidence)))))));
    if (!(transcript.segments || []).length) box.append(h("p", { class: "muted" }, "(nothing recognised)"));
  }
  box.append(h("p", {}, h("a", { href: url, download: `${call.call_id}-transcript.json` }, "download the document")),
             documentBody ? h("details", {}, h("summary", {}, "document"), json(documentBody)) : "");
  return box;
}

// the section's content for a call view (fetches the transcript document when there is one)
export async function capture(call) {
  let documentBody = null;
  if (call.transcript && call.transcript.media_id) {
    try {
      const response = await fetch(mediaUrl(call.call_id, call.transcript.media_id));
      if (response.ok) documentBody = await response.json();
    } catch (error) { /* the text from the call view is shown instead */ }
  }
  const cards = [voicemail(call), recordingCard(call), transcriptCard(call, documentBody)].filter(Boolean);
  return cards.length ? h("div", {}, cards) : h("p", { class: "muted" }, "No voicemail, recording or transcript for this call.");
}
