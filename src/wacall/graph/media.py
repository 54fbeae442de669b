"""The Media API on the wire: the multipart upload of ``POST /{phone_number_id}/media`` (streamed to disk,
never held whole in memory), and the download URL ``/whatsapp_business/attachments/?mid=&ext=&hash=``
(Meta's ``lookaside.fbsbx.com`` shape) that ``GET /{media_id}`` hands out.

What this layer may do with the files is :class:`MediaHost` (``wacall.store.mediafiles.MediaLibrary``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from aiohttp import BodyPartReader, web

from ..domain.errors import GraphError
from ..domain.media import MAX_UPLOAD, check_upload, size_limit, too_large

CHUNK = 256 * 1024
FIELD_LIMIT = 64 * 1024          # a form field other than the file
DOWNLOAD_PATH = "/whatsapp_business/attachments/"


class Incoming(Protocol):
    size: int
    head: bytes

    def write(self, chunk: bytes) -> None: ...
    def discard(self) -> None: ...
    def ogg_facts(self) -> tuple[bool | None, float | None]: ...


class MediaHost(Protocol):
    """What the Graph media routes may do with the files (``wacall.store.mediafiles.MediaLibrary``)."""

    files: Any

    def publish(self, incoming: Any, phone_number_id: str, mime_type: str, *, use_case: str | None,
                retention_days: float | None, origin: str) -> str: ...
    def media_path(self, media_id: str) -> tuple[str, Path]: ...
    def delete(self, media_id: str) -> None: ...
    def url_query(self, media_id: str) -> str: ...
    def url_valid(self, media_id: str, ext: str, hash_: str) -> bool: ...


class Upload:
    """A parsed multipart upload: its form fields and the file, written to a temporary file."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.incoming: Incoming | None = None
        self.file_type: str | None = None      # the file part's Content-Type

    def discard(self) -> None:
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None


async def read_upload(http: web.Request, media: MediaHost) -> Upload:
    """Stream a ``multipart/form-data`` body: the ``file`` part to a temporary file (at most the largest
    size Meta takes, so a too-big upload is refused without filling the disk), other parts as fields."""
    upload = Upload()
    try:
        reader = await http.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue                       # a nested multipart: not Graph's
            if part.name == "file" and upload.incoming is None:
                upload.file_type = part.headers.get("Content-Type")
                declared = upload.params.get("type") or upload.file_type or ""
                limit = size_limit(declared)       # stop writing as soon as the file is over it
                incoming = upload.incoming = media.files.incoming()
                while chunk := await part.read_chunk(CHUNK):
                    incoming.write(chunk)
                    if incoming.size > limit:       # refused: the rest is read (so the client gets the
                        upload.discard()            # answer, not a reset) but not kept, up to a bound
                        drained = incoming.size
                        while drained < 2 * MAX_UPLOAD and (chunk := await part.read_chunk(CHUNK)):
                            drained += len(chunk)
                        raise too_large(declared)
            else:
                value = bytearray()
                while chunk := await part.read_chunk(CHUNK):
                    value += chunk
                    if len(value) > FIELD_LIMIT:
                        raise GraphError(100, f"Param {part.name} is too long.")
                try:
                    upload.params[str(part.name)] = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise GraphError(100, f"Param {part.name} must be UTF-8 text.") from None
    except GraphError:
        upload.discard()
        raise
    except Exception as exc:            # aiohttp's refusals of a malformed multipart body (ValueError, ...)
        upload.discard()
        raise GraphError(100, f"The multipart body could not be parsed: {exc}.") from None
    except BaseException:
        upload.discard()
        raise
    return upload


def store_upload(media: MediaHost, upload: Upload, phone_number_id: str, params: dict[str, Any]) -> dict:
    """Check one upload against Meta's rules and keep it: ``{"id": media_id}``."""
    incoming = upload.incoming
    try:
        if incoming is None:
            raise GraphError(100, "The parameter file is required.", message="The parameter file is required")
        declared = params.get("type") or upload.file_type
        if isinstance(declared, str) and declared.split(";")[0].strip().lower() == "application/octet-stream":
            declared = upload.file_type if upload.file_type != declared else None
        opus, seconds = incoming.ogg_facts()
        mime_type, use_case = check_upload(params, declared if isinstance(declared, str) else None, incoming.size,
                                           opus=opus, seconds=seconds)
        media_id = media.publish(incoming, phone_number_id, mime_type, use_case=use_case, retention_days=30,
                                 origin="upload")
    finally:
        upload.discard()          # the temporary file, unless publish renamed it to its media id
    return {"id": media_id}


def download_url(http: web.Request, media: MediaHost, media_id: str) -> str:
    return f"{http.url.origin()}{DOWNLOAD_PATH}?{media.url_query(media_id)}"


def file_response(media: MediaHost, media_id: str) -> web.StreamResponse:
    """The file, streamed from disk, with its Content-Type (what Meta's media URL answers)."""
    mime_type, path = media.media_path(media_id)
    return web.FileResponse(path, headers={"Content-Type": mime_type,
                                           "Content-Disposition": f"attachment; filename={media_id}"})
