"""Call recording and transcription (Meta, 2026): the ``recording`` and ``transcription`` objects on
``connect`` and ``accept``, the announcement both parties hear, and what the business is told after.

https://developers.facebook.com/docs/whatsapp/cloud-api/calling/call-recording and
https://developers.facebook.com/docs/whatsapp/cloud-api/calling/call-transcription: each object has
``status`` (ENABLED | DISABLED), ``purpose`` (required when enabled, at most 250 characters) and
``announcement_language``. Meta mixes a spoken announcement into both audio streams before capture
("The audio of this call will be recorded for the following purpose: <purpose>."; transcribed; both:
one combined sentence with the recording object's purpose and language); a user who hangs up before or
during it declines. After the call: ``call_recording_available`` and ``call_transcription_available``
on ``calls``. The audio work (TTS, capture, recogniser) is ``wacall.media.capture``; this module decides.
"""

from __future__ import annotations

from typing import Any

from .errors import GraphError

FEATURES = ("recording", "transcription")
STATUSES = ("ENABLED", "DISABLED")
PURPOSE_MAX = 250
LANGUAGES = ("en", "en_US", "en_AU", "en_CA", "en_GB", "en_IN", "en_NZ", "nl", "fr", "de", "hi", "it", "kn",
             "pt", "es", "es_ES", "te", "vi")
#: transcription's announcement in these languages is played in English (Meta's transcription page)
TRANSCRIPTION_ENGLISH = ("nl", "es_ES")

#: the espeak-ng voice of each announcement language (espeak-ng has no en-AU/CA/IN/NZ: the nearest)
VOICES = {"en": "en-us", "en_US": "en-us", "en_CA": "en-us", "en_AU": "en-gb", "en_GB": "en-gb",
          "en_IN": "en-gb", "en_NZ": "en-gb", "nl": "nl", "fr": "fr", "de": "de", "hi": "hi", "it": "it",
          "kn": "kn", "pt": "pt", "es": "es", "es_ES": "es", "te": "te", "vi": "vi"}

#: the sentence per language: {what} is "recorded" / "transcribed" / "recorded and transcribed"
_TEXTS: dict[str, tuple[str, dict[str, str]]] = {
    "en": ("The audio of this call will be {what} for the following purpose: {purpose}.",
           {"recording": "recorded", "transcription": "transcribed", "both": "recorded and transcribed"}),
    "nl": ("De audio van dit gesprek wordt {what} voor het volgende doel: {purpose}.",
           {"recording": "opgenomen", "transcription": "getranscribeerd",
            "both": "opgenomen en getranscribeerd"}),
    "fr": ("L'audio de cet appel sera {what} dans le but suivant : {purpose}.",
           {"recording": "enregistré", "transcription": "transcrit", "both": "enregistré et transcrit"}),
    "de": ("Der Ton dieses Anrufs wird zu folgendem Zweck {what}: {purpose}.",
           {"recording": "aufgezeichnet", "transcription": "transkribiert",
            "both": "aufgezeichnet und transkribiert"}),
    "it": ("L'audio di questa chiamata sarà {what} per il seguente scopo: {purpose}.",
           {"recording": "registrato", "transcription": "trascritto", "both": "registrato e trascritto"}),
    "pt": ("O áudio desta chamada será {what} para a seguinte finalidade: {purpose}.",
           {"recording": "gravado", "transcription": "transcrito", "both": "gravado e transcrito"}),
    "es": ("El audio de esta llamada será {what} con la siguiente finalidad: {purpose}.",
           {"recording": "grabado", "transcription": "transcrito", "both": "grabado y transcrito"}),
    "hi": ("इस कॉल का ऑडियो निम्नलिखित उद्देश्य के लिए {what} किया जाएगा: {purpose}।",
           {"recording": "रिकॉर्ड", "transcription": "ट्रांसक्राइब", "both": "रिकॉर्ड और ट्रांसक्राइब"}),
    "vi": ("Âm thanh của cuộc gọi này sẽ được {what} cho mục đích sau: {purpose}.",
           {"recording": "ghi âm", "transcription": "chép lời", "both": "ghi âm và chép lời"}),
}


def parse_feature(body: dict, name: str) -> dict | None:
    """The ``recording`` or ``transcription`` object of a ``connect`` / ``accept`` body, validated (Meta's
    error code 100 with a message naming the parameter), or None when absent."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise GraphError(100, f"Param {name} must be an object with status, purpose and announcement_language.")
    for key in value:
        if key not in ("status", "purpose", "announcement_language"):
            raise GraphError(100, f"Unexpected key '{key}' on param '{name}'.")
    status = value.get("status")
    if status not in STATUSES:
        raise GraphError(100, f"Param {name}[status] must be one of {{ENABLED, DISABLED}} - got {status!r}.")
    purpose = value.get("purpose")
    language = value.get("announcement_language")
    if status == "DISABLED":
        return {"status": "DISABLED"}
    if not isinstance(purpose, str) or not purpose.strip():
        raise GraphError(100, f"The parameter {name}[purpose] is required when {name} is enabled.")
    if len(purpose) > PURPOSE_MAX:
        raise GraphError(100, f"Param {name}[purpose] must be at most {PURPOSE_MAX} characters long.")
    if language is None:
        raise GraphError(100, f"The parameter {name}[announcement_language] is required.")
    if language not in LANGUAGES:
        raise GraphError(100, f"Param {name}[announcement_language] must be one of {{{', '.join(LANGUAGES)}}} "
                              f"- got {language!r}.")
    return {"status": "ENABLED", "purpose": purpose, "announcement_language": language}


def parse(body: dict) -> dict[str, dict]:
    """Both objects of a ``connect`` / ``accept`` body: {"recording": {...}, "transcription": {...}} for those
    present (``pre_accept`` takes neither: Meta names only connect and accept)."""
    out = {}
    for name in FEATURES:
        value = parse_feature(body, name)
        if value is not None:
            out[name] = value
    return out


def enabled(capture: dict | None, name: str) -> bool:
    return bool(capture) and (capture.get(name) or {}).get("status") == "ENABLED"


def announcement(capture: dict | None) -> dict | None:
    """What the announcement says and in which voice: {"text", "language", "voice"}, or None when neither
    feature is enabled. Both enabled: one combined sentence with the recording object's purpose and language."""
    recording, transcription = enabled(capture, "recording"), enabled(capture, "transcription")
    if not recording and not transcription:
        return None
    source: dict[str, Any] = capture["recording" if recording else "transcription"]
    language = source["announcement_language"]
    what = "both" if recording and transcription else "recording" if recording else "transcription"
    base = language.split("_")[0]
    if (what == "transcription" and language in TRANSCRIPTION_ENGLISH) or base not in _TEXTS:
        base, voice = "en", "en-us"            # Meta: played in English; kn, te: no wording here yet
    else:
        voice = VOICES[language]
    sentence, words = _TEXTS[base]
    return {"text": sentence.format(what=words[what], purpose=source["purpose"].strip().rstrip(".")),
            "language": language, "voice": voice}


__all__ = ["FEATURES", "LANGUAGES", "announcement", "enabled", "parse", "parse_feature"]


# -- after the call (the server's post-call processing reports here, through ``apply``) -----------------------
def wanted(call) -> bool:
    """Whether an ended call's audio is processed: a connected call with recording or transcription enabled."""
    return call is not None and call.accepted_at is not None and announcement(call.capture) is not None


def declined(platform, call_id: str) -> None:
    """The user hung up before the announcement ended: nothing is recorded nor transcribed, no webhook."""
    call = platform.call(call_id)
    if call is None:
        return
    call.captured = {"declined": True}
    platform.note(call, "recording", event="declined", reason="the user hung up during the announcement")
    platform.put(call)


def available(platform, call_id: str, recording: dict | None, transcript: dict | None,
              transcript_text: str | None = None) -> None:
    """The recording and / or the transcript of a call were published (each {"id", "sha256", "mime_type",
    "url"}): the call keeps their media ids, and the business gets ``call_recording_available`` and
    ``call_transcription_available`` on ``calls``."""
    from .events import CallRecordingAvailable, CallTranscriptionAvailable
    call = platform.call(call_id)
    if call is None:
        return
    now = platform.now()
    captured = dict(call.captured or {})
    if recording is not None:
        captured["recording"] = {"media_id": recording["id"], "mime_type": recording["mime_type"]}
        platform.note(call, "recording", event="call_recording_available", media_id=recording["id"])
        platform.emit(CallRecordingAvailable(call.id, recording, now))
    if transcript is not None:
        captured["transcript"] = {"media_id": transcript["id"], "text": transcript_text or ""}
        platform.note(call, "recording", event="call_transcription_available", media_id=transcript["id"])
        platform.emit(CallTranscriptionAvailable(call.id, transcript, now))
    call.captured = captured
    platform.put(call)
