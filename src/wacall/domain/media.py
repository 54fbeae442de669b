"""The Media API's rules: which files Meta takes (types and sizes), who may see a media id, how long it is
kept, and what ``GET /{media_id}`` shows. No I/O: the bytes are on disk, written and read by
``wacall.store.mediafiles``; the rules only decide on the facts it hands over (type, size, hash).

Meta's rules (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media):
- uploads persist 30 days unless deleted earlier; media ids from webhooks are downloadable for 7 days;
  voicemail announcements (``use_case=call_voicemail_announcement``) do not expire;
- a media URL from ``GET /{media_id}`` works for 5 minutes, then a fresh one must be fetched;
- supported types and their size limits are :data:`MEDIA_TYPES`.
"""

from __future__ import annotations

import secrets
from typing import Any

from .errors import GraphError
from .model import App, Media
from .state import PlatformState, unsupported

DAY = 86400.0
UPLOAD_RETENTION_DAYS = 30        # "persist for 30 days, unless they are deleted earlier"
WEBHOOK_RETENTION_DAYS = 7        # media ids in webhooks: downloadable for 7 days
URL_SECONDS = 300                 # a media URL "is only valid for 5 minutes"
ANNOUNCEMENT = "call_voicemail_announcement"
ANNOUNCEMENT_MAX_SECONDS = 60     # "less than 60 seconds"
USE_CASES = {ANNOUNCEMENT}
MB = 1024 * 1024

# MIME type -> (media kind, largest size in bytes), in the order Graph lists them when it refuses a type.
MEDIA_TYPES: dict[str, tuple[str, int]] = {
    "audio/aac": ("audio", 16 * MB), "audio/mp4": ("audio", 16 * MB), "audio/mpeg": ("audio", 16 * MB),
    "audio/amr": ("audio", 16 * MB), "audio/ogg": ("audio", 16 * MB), "audio/opus": ("audio", 16 * MB),
    "application/vnd.ms-powerpoint": ("document", 100 * MB), "application/msword": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("document", 100 * MB),
    "application/pdf": ("document", 100 * MB), "text/plain": ("document", 100 * MB),
    "application/vnd.ms-excel": ("document", 100 * MB),
    "image/jpeg": ("image", 5 * MB), "image/png": ("image", 5 * MB),
    "image/webp": ("sticker", 500 * 1024),              # animated stickers: 500 KB (static: 100 KB)
    "video/mp4": ("video", 16 * MB), "video/3gpp": ("video", 16 * MB),
}
UPLOAD_TYPES = list(MEDIA_TYPES)      # what a business may upload (the platform publishes any type it makes)
MAX_UPLOAD = max(size for _, size in MEDIA_TYPES.values())


def base_type(mime_type: str) -> str:
    """``"audio/ogg; codecs=opus"`` -> ``"audio/ogg"``."""
    return mime_type.split(";", 1)[0].strip().lower()


def size_limit(mime_type: str | None) -> int:
    """The largest file Meta takes of this type (the largest of all for a type it does not take)."""
    known = MEDIA_TYPES.get(base_type(mime_type or ""))
    return known[1] if known else MAX_UPLOAD


def too_large(mime_type: str, size: int | None = None) -> GraphError:
    base = base_type(mime_type)
    kind, limit = MEDIA_TYPES.get(base, ("file", MAX_UPLOAD))
    got = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return GraphError(131053, f"Media file size ({got}) is too big; the maximum for {kind} ({base or 'any type'}) "
                              f"is {limit} bytes.", message="Media upload error")


def new_media_id() -> str:
    """A fresh media id: a numeric string of 15-16 digits, like Meta's (``"1037543291543636"``)."""
    return str(10 ** 14 + secrets.randbelow(9 * 10 ** 15))


def check_upload(params: dict[str, Any], mime_type: str | None, size: int, *, opus: bool | None = None,
                 seconds: float | None = None) -> tuple[str, str | None]:
    """Meta's rules for ``POST /{phone_number_id}/media`` on the facts of one upload: the declared type
    (``type``, else the file part's Content-Type), the size in bytes, whether an Ogg file holds Opus and
    its length. Returns ``(mime_type, use_case)`` or raises Graph's error."""
    if params.get("messaging_product") != "whatsapp":
        raise GraphError(100, "The parameter messaging_product is required and must be 'whatsapp'.",
                         message="The parameter messaging_product is required")
    use_case = params.get("use_case") or None
    if use_case is not None and use_case not in USE_CASES:
        raise GraphError(100, f"Param use_case must be one of {{{', '.join(sorted(USE_CASES))}}} - got "
                              f"\"{use_case}\".")
    declared = (mime_type or "").strip()
    base = base_type(declared)
    if base not in UPLOAD_TYPES:
        raise GraphError(100, f"Param file must be a file with one of the following types: "
                              f"{', '.join(UPLOAD_TYPES)}. Received file of type '{declared}'.",
                         message=f"Param file must be a file with one of the following types: "
                                 f"{', '.join(UPLOAD_TYPES)}. Received file of type '{declared}'.")
    kind, limit = MEDIA_TYPES[base]
    if size <= 0:
        raise GraphError(100, "Param file must be a non-empty file.")
    if size > limit:
        raise too_large(declared, size)
    if base == "audio/ogg" and opus is False:
        raise GraphError(131053, "audio/ogg files must hold Opus audio (OPUS codecs only; base audio/ogg "
                                 "is not supported).", message="Media upload error")
    if use_case == ANNOUNCEMENT:
        if base != "audio/ogg" or opus is False:
            raise GraphError(100, "A call_voicemail_announcement must be an Ogg file holding Opus audio "
                                  "(audio/ogg).")
        if seconds is not None and seconds >= ANNOUNCEMENT_MAX_SECONDS:
            raise GraphError(100, f"A call_voicemail_announcement must be shorter than "
                                  f"{ANNOUNCEMENT_MAX_SECONDS} seconds (got {seconds:.1f} s).")
    return declared, use_case


class MediaRules(PlatformState):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.media: dict[str, Media] = {}
        self._tables[Media.KIND] = self.media

    def add_media(self, media_id: str, phone_number_id: str, mime_type: str, sha256: str, file_size: int, *,
                  use_case: str | None = None, retention_days: float | None = UPLOAD_RETENTION_DAYS,
                  origin: str = "upload") -> Media:
        """Record a file whose bytes are already on disk under ``media_id``. ``retention_days`` None: kept
        until deleted (what Meta does for voicemail announcements, whatever is passed)."""
        if phone_number_id not in self.numbers:
            raise GraphError(100, f"Unknown phone_number_id {phone_number_id}.")
        now = self.now()
        if use_case == ANNOUNCEMENT:
            retention_days = None
        expires = None if retention_days is None else now + retention_days * DAY
        return self.put(Media(id=media_id, phone_number_id=phone_number_id, mime_type=mime_type, sha256=sha256,
                              file_size=int(file_size), use_case=use_case, created_at=now, expires_at=expires,
                              origin=origin))

    def media_record(self, media_id: object) -> Media | None:
        """The media, if it exists and is neither deleted nor past its retention."""
        media = self._find(Media.KIND, media_id)
        if not isinstance(media, Media):
            return None
        if media.deleted:                    # read back from the store: not kept in memory
            self.media.pop(media.id, None)
            return None
        if media.expires_at is not None and media.expires_at <= self.now():
            return None
        return media

    def media_for(self, app: App, media_id: str, method: str = "get") -> Media:
        """The media ``app`` may see (its WABAs' numbers' media), or Graph's "does not exist" error: another
        app's media reads exactly like a media id that never existed."""
        media = self.media_record(media_id)
        number = self.numbers.get(media.phone_number_id) if media is not None else None
        if media is None or number is None or number.waba_id not in app.waba_ids:
            raise unsupported(media_id, method)
        return media

    def media_view(self, media: Media, url: str) -> dict:
        return {"messaging_product": "whatsapp", "url": url, "mime_type": media.mime_type, "sha256": media.sha256,
                "file_size": str(media.file_size), "id": media.id}

    def delete_media(self, media: Media) -> None:
        media.deleted = True
        self.put(media)
        self.media.pop(media.id, None)       # the commit persists it (dirty holds it); memory lets it go

    def media_due(self) -> bool:
        """Whether a media is past its retention (so :meth:`expire_media` has work)."""
        now = self.now()
        return any(m.expires_at is not None and m.expires_at <= now and not m.deleted for m in self.media.values())

    def expire_media(self) -> list[str]:
        """Delete every media past its retention; return their ids (the caller removes the files)."""
        now = self.now()
        gone = [m for m in self.media.values() if m.expires_at is not None and m.expires_at <= now and not m.deleted]
        for media in gone:
            self.delete_media(media)
        return [m.id for m in gone]
