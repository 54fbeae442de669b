"""Call recording / transcription rules (wacall.domain.recording): Meta's validation of the objects on
connect/accept and the announcement's wording, language and voice."""

import pytest

from wacall.domain import recording
from wacall.domain.errors import GraphError

ON = {"status": "ENABLED", "purpose": "quality assurance", "announcement_language": "en_US"}


def test_absent_objects_and_disabled_ones():
    assert recording.parse({}) == {}
    assert recording.parse({"recording": {"status": "DISABLED"}}) == {"recording": {"status": "DISABLED"}}
    assert recording.announcement({"recording": {"status": "DISABLED"}}) is None
    assert recording.announcement(None) is None


@pytest.mark.parametrize("value, details", [
    ("on", "must be an object"),
    ({**ON, "extra": 1}, "Unexpected key 'extra'"),
    ({**ON, "status": "enabled"}, "recording[status]"),
    ({"status": "ENABLED", "announcement_language": "en_US"}, "recording[purpose] is required"),
    ({**ON, "purpose": "   "}, "recording[purpose] is required"),
    ({**ON, "purpose": "p" * 251}, "at most 250"),
    ({"status": "ENABLED", "purpose": "x"}, "announcement_language] is required"),
    ({**ON, "announcement_language": "en-US"}, "announcement_language] must be one of"),
])
def test_bad_objects_get_code_100(value, details):
    with pytest.raises(GraphError) as raised:
        recording.parse({"recording": value})
    assert raised.value.code == 100 and details in str(raised.value.details)


def test_250_characters_and_every_language_pass():
    for language in recording.LANGUAGES:
        assert recording.parse({"transcription": {**ON, "purpose": "p" * 250, "announcement_language": language}})


def test_announcement_sentences():
    assert recording.announcement({"recording": ON})["text"] == \
        "The audio of this call will be recorded for the following purpose: quality assurance."
    assert recording.announcement({"transcription": ON})["text"] == \
        "The audio of this call will be transcribed for the following purpose: quality assurance."
    both = recording.announcement({"recording": {**ON, "purpose": "training", "announcement_language": "fr"},
                                   "transcription": ON})
    assert both == {"text": "L'audio de cet appel sera enregistré et transcrit dans le but suivant : training.",
                    "language": "fr", "voice": "fr"}


def test_transcription_in_dutch_or_spain_spanish_is_announced_in_english():
    for language in ("nl", "es_ES"):
        said = recording.announcement({"transcription": {**ON, "announcement_language": language}})
        assert said["text"].startswith("The audio of this call will be transcribed") and said["voice"] == "en-us"
    said = recording.announcement({"recording": {**ON, "announcement_language": "nl"}})
    assert said["text"].startswith("De audio van dit gesprek wordt opgenomen") and said["voice"] == "nl"
    assert recording.announcement({"recording": {**ON, "announcement_language": "en_GB"}})["voice"] == "en-gb"
