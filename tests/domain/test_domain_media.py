"""The Media API's rules on the virtual clock: Meta's types and sizes, who sees a media id, retention (30 days
for uploads, 7 for webhook media, announcements kept), deletion, and the record surviving a restart."""

from __future__ import annotations

import pytest

from wacall.domain.errors import GraphError
from wacall.domain.media import (ANNOUNCEMENT, DAY, MEDIA_TYPES, UPLOAD_RETENTION_DAYS, WEBHOOK_RETENTION_DAYS,
                                 check_upload, new_media_id)
from wacall.domain.model import App, Media
from wacall.graph.versions import GraphVersions

WA = {"messaging_product": "whatsapp"}


def add(domain, **kwargs) -> Media:
    return domain.platform.add_media(new_media_id(), domain.number.id, kwargs.pop("mime", "image/png"), "c2hh",
                                     kwargs.pop("size", 10), **kwargs)


def code_of(call) -> int:
    with pytest.raises(GraphError) as error:
        call()
    return error.value.code


def test_media_ids_are_numeric_strings_like_metas():
    ids = {new_media_id() for _ in range(200)}
    assert len(ids) == 200 and all(i.isdigit() and 15 <= len(i) <= 16 for i in ids)


@pytest.mark.parametrize("mime,size,ok", [
    ("image/png", 5 * 1024 * 1024, True), ("image/png", 5 * 1024 * 1024 + 1, False),
    ("image/jpeg", 1, True), ("video/mp4", 16 * 1024 * 1024, True), ("video/mp4", 16 * 1024 * 1024 + 1, False),
    ("application/pdf", 100 * 1024 * 1024, True), ("application/pdf", 100 * 1024 * 1024 + 1, False),
    ("image/webp", 500 * 1024, True), ("image/webp", 500 * 1024 + 1, False),
    ("audio/mpeg", 16 * 1024 * 1024, True), ("audio/ogg; codecs=opus", 100, True)])
def test_sizes(mime, size, ok):
    if ok:
        assert check_upload(WA, mime, size, opus=True) == (mime, None)
    else:
        assert code_of(lambda: check_upload(WA, mime, size)) == 131053


@pytest.mark.parametrize("mime", ["application/zip", "image/gif", "", None, "text/html", "audio/wav"])
def test_unsupported_types(mime):
    with pytest.raises(GraphError) as error:
        check_upload(WA, mime, 10)
    assert error.value.code == 100 and error.value.http_status == 400
    assert error.value.message.startswith("(#100) Param file must be a file with one of the following types")
    assert all(t in error.value.message for t in MEDIA_TYPES)


def test_parameters():
    assert code_of(lambda: check_upload({}, "image/png", 10)) == 100
    assert code_of(lambda: check_upload({"messaging_product": "sms"}, "image/png", 10)) == 100
    assert code_of(lambda: check_upload({**WA, "use_case": "other"}, "image/png", 10)) == 100
    assert code_of(lambda: check_upload(WA, "image/png", 0)) == 100
    assert code_of(lambda: check_upload(WA, "audio/ogg", 10, opus=False)) == 131053


def test_announcement_rules():
    params = {**WA, "use_case": ANNOUNCEMENT}
    assert check_upload(params, "audio/ogg", 1000, opus=True, seconds=59.9) == ("audio/ogg", ANNOUNCEMENT)
    assert code_of(lambda: check_upload(params, "audio/ogg", 1000, opus=True, seconds=60.0)) == 100
    assert code_of(lambda: check_upload(params, "audio/mpeg", 1000)) == 100
    assert code_of(lambda: check_upload(params, "audio/ogg", 1000, opus=False)) == 131053


def test_retention_on_the_virtual_clock(domain):
    upload = add(domain)
    webhook = add(domain, retention_days=WEBHOOK_RETENTION_DAYS, origin="platform")
    announcement = add(domain, mime="audio/ogg", use_case=ANNOUNCEMENT, retention_days=1)   # kept whatever is asked
    kept = add(domain, retention_days=None)
    assert upload.expires_at == domain.now() + UPLOAD_RETENTION_DAYS * DAY
    assert announcement.expires_at is None
    domain.advance(7 * DAY - 1)
    assert domain.platform.expire_media() == []
    assert domain.platform.media_record(webhook.id) is webhook
    domain.advance(1)
    assert domain.platform.media_record(webhook.id) is None            # past retention even before the sweep
    assert domain.platform.expire_media() == [webhook.id]
    domain.advance(23 * DAY)
    assert domain.platform.expire_media() == [upload.id]
    domain.advance(365 * DAY)
    assert domain.platform.expire_media() == []
    assert domain.platform.media_record(announcement.id) is announcement
    assert domain.platform.media_record(kept.id) is kept


def test_only_the_numbers_apps_see_the_media(domain):
    media = add(domain)
    assert domain.platform.media_for(domain.app, media.id) is media
    stranger = App(id="999", name="Other", secret="s", access_token="t", verify_token="v", waba_ids=["777"])
    with pytest.raises(GraphError) as error:
        domain.platform.media_for(stranger, media.id, "delete")
    assert error.value.subcode == 33 and "Unsupported delete request" in error.value.message
    assert code_of(lambda: domain.platform.media_for(domain.app, "123")) == 100
    assert code_of(lambda: domain.platform.add_media("1", "no-such-number", "image/png", "x", 1)) == 100


def test_view_and_delete(domain):
    media = add(domain, size=303833)
    assert domain.platform.media_view(media, "https://u") == {
        "messaging_product": "whatsapp", "url": "https://u", "mime_type": "image/png", "sha256": "c2hh",
        "file_size": "303833", "id": media.id}
    domain.platform.drain()
    domain.platform.delete_media(media)
    _, dirty = domain.platform.drain()
    assert dirty == [media] and media.deleted and not media.live      # persisted as deleted: not loaded at start
    assert domain.platform.media_record(media.id) is None
    assert media.id not in domain.platform.media


def test_the_record_round_trips_through_its_document(domain):
    media = add(domain, mime="audio/ogg; codecs=opus", use_case=None, retention_days=7, origin="platform")
    again = Media.from_doc(media.fields_view())
    assert again == media
    domain.platform.clear()
    domain.platform.load([(Media.KIND, media.to_doc())])
    assert domain.platform.media[media.id] == media


def test_graph_versions():
    versions = GraphVersions()
    assert [versions.served(f"v{n}.0") for n in range(21, 27)] == [f"v{n}.0" for n in range(21, 27)]
    assert versions.served(None) == "v23.0" and versions.served("v99.0") == "v99.0"
    for retired in ("v20.0", "v17.0", "v2.12", "v0.0"):
        assert code_of(lambda: versions.served(retired)) == 2635
    assert code_of(lambda: versions.served("v23")) == 100
    upgrading = GraphVersions(retired="upgrade", newer="refuse")
    assert upgrading.served("v20.0") == "v21.0"
    assert code_of(lambda: upgrading.served("v27.0")) == 100
    for bad in ({"oldest_version": "21"}, {"retired": "maybe"}, {"newer": "x"},
                {"oldest_version": "v26.0", "latest_version": "v21.0"}):
        with pytest.raises(ValueError):
            GraphVersions(**bad)
