"""The Media API's files on disk, and the one interface other features publish and read media through.

:class:`MediaFiles` keeps one file per media id in a directory next to the database (``<db>.media``; a
temporary directory with ``--db :memory:``, removed at stop). A file is written under a temporary name,
flushed to disk, then renamed to its media id, and only then recorded by the platform: a kill -9 leaves
either no record (the temporary or orphan file is swept at the next start) or a record with its whole
file. Bytes are streamed in chunks, never held whole in memory by an upload or a download.

:class:`MediaLibrary` is the shared contract (docs/design.md, "Media store"):

- ``add_media(phone_number_id, data, mime_type, *, use_case=None, retention_days=7) -> media_id``:
  publish a file the business can download (a voicemail message, a call recording, a transcript);
  ``data`` is bytes or a path (copied; ``move=True`` renames it in instead).
- ``media_bytes(media_id) -> (mime_type, bytes)``: read an uploaded file (a voicemail announcement);
  ``media_path(media_id) -> (mime_type, path)`` for streaming readers.

Both are synchronous and must be called on the event loop's thread (they commit through ``apply``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from ..domain.media import URL_SECONDS, WEBHOOK_RETENTION_DAYS, new_media_id
from ..domain.platform import Platform

CHUNK = 256 * 1024
TMP = ".incoming"


class Incoming:
    """A file being written: bytes go to a temporary name, hashed and counted as they come."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / TMP / f"{secrets.token_hex(12)}.part"
        self._file = open(self.path, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""              # the first bytes (what the file holds: Ogg/Opus?)

    def write(self, chunk: bytes) -> None:
        if len(self.head) < 64:
            self.head += chunk[:64 - len(self.head)]
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    @property
    def sha256(self) -> str:
        return base64.b64encode(self._hash.digest()).decode()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def ogg_facts(self) -> tuple[bool | None, float | None]:
        """For an Ogg file: (holds Opus, seconds from the last page's granule position at 48 kHz)."""
        if not self.head.startswith(b"OggS"):
            return (None, None)
        opus = b"OpusHead" in self.head
        with open(self.path, "rb") as f:
            f.seek(max(0, self.size - 65536))
            tail = f.read()
        at = tail.rfind(b"OggS")
        seconds = None
        if at >= 0 and len(tail) >= at + 14:
            granule = int.from_bytes(tail[at + 6:at + 14], "little")
            if granule < 2 ** 63:
                seconds = granule / 48000.0
        return (opus, seconds)


class MediaFiles:
    def __init__(self, directory: str | os.PathLike[str], temporary: bool = False) -> None:
        self.dir = Path(directory)
        self.temporary = temporary
        (self.dir / TMP).mkdir(parents=True, exist_ok=True)

    def incoming(self) -> Incoming:
        return Incoming(self.dir)

    def place(self, incoming: Incoming, media_id: str) -> None:
        """Make a written file the media's (atomic rename), and make the rename durable."""
        incoming.close()
        os.replace(incoming.path, self.path(media_id))
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def path(self, media_id: str) -> Path:
        if not media_id.isdigit():
            raise ValueError(f"not a media id: {media_id!r}")
        return self.dir / media_id

    def chunks(self, media_id: str) -> Iterator[bytes]:
        with open(self.path(media_id), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def remove(self, media_id: str) -> None:
        self.path(media_id).unlink(missing_ok=True)

    def sweep(self, known: set[str]) -> int:
        """Remove temporary files and files no record knows (left by a crash); return how many."""
        removed = 0
        for entry in self.dir.iterdir():
            if entry.name == TMP:
                for part in entry.iterdir():
                    part.unlink(missing_ok=True)
                    removed += 1
            elif entry.is_file() and entry.name not in known:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def clear(self) -> None:
        self.sweep(set())

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class MediaLibrary:
    """Media files plus their records: what the Graph media routes and the platform's own features use."""

    def __init__(self, files: MediaFiles, platform: Platform, apply: Callable[[Callable[[], Any]], Any],
                 url_key: bytes) -> None:
        self.files = files
        self.platform = platform
        self.apply = apply
        self.url_key = url_key

    # -- the shared contract ---------------------------------------------------------------------
    def add_media(self, phone_number_id: str, data: bytes | str | os.PathLike[str], mime_type: str, *,
                  use_case: str | None = None, retention_days: float | None = WEBHOOK_RETENTION_DAYS,
                  move: bool = False) -> str:
        """Publish a file the business can download through the Media API; return its media id."""
        incoming = self.files.incoming()
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                incoming.write(bytes(data))
            else:
                with open(data, "rb") as f:
                    while chunk := f.read(CHUNK):
                        incoming.write(chunk)
            return self.publish(incoming, phone_number_id, mime_type, use_case=use_case,
                                retention_days=retention_days, origin="platform",
                                then=(lambda: os.unlink(data)) if move and not isinstance(
                                    data, (bytes, bytearray, memoryview)) else None)
        except BaseException:
            incoming.discard()
            raise

    def media_bytes(self, media_id: str) -> tuple[str, bytes]:
        """``(mime_type, bytes)`` of a media that exists (KeyError otherwise)."""
        mime_type, path = self.media_path(media_id)
        return mime_type, path.read_bytes()

    def media_path(self, media_id: str) -> tuple[str, Path]:
        media = self.platform.media_record(media_id)
        if media is None:
            raise KeyError(media_id)
        return media.mime_type, self.files.path(media.id)

    # -- uploads and downloads (the Graph routes) ------------------------------------------------
    def publish(self, incoming: Incoming, phone_number_id: str, mime_type: str, *, use_case: str | None,
                retention_days: float | None, origin: str, then: Callable[[], Any] | None = None) -> str:
        """Place a written file under a new media id, then record it (in that order: see the module)."""
        media_id = new_media_id()
        self.files.place(incoming, media_id)
        try:
            self.apply(lambda: self.platform.add_media(media_id, phone_number_id, mime_type, incoming.sha256,
                                                       incoming.size, use_case=use_case,
                                                       retention_days=retention_days, origin=origin))
        except BaseException:
            self.files.remove(media_id)
            raise
        if then is not None:
            then()
        return media_id

    def delete(self, media_id: str) -> None:
        self.files.remove(media_id)

    def url_hash(self, media_id: str, expires: int) -> str:
        digest = hmac.new(self.url_key, f"{media_id}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")

    def url_query(self, media_id: str) -> str:
        """The query of a fresh download URL (Meta's ``?mid=&ext=&hash=`` shape), valid URL_SECONDS."""
        expires = int(self.platform.now()) + URL_SECONDS
        return f"mid={media_id}&ext={expires}&hash={self.url_hash(media_id, expires)}"

    def url_valid(self, media_id: str, ext: str, hash_: str) -> bool:
        if not ext.isdigit() or not media_id.isdigit():
            return False
        if not hmac.compare_digest(self.url_hash(media_id, int(ext)).encode(), hash_.encode()):
            return False
        return self.platform.now() < int(ext)

    def expire(self) -> list[str]:
        """Delete the media past their retention, and their files."""
        if not self.platform.media_due():
            return []
        gone = self.apply(self.platform.expire_media)
        for media_id in gone:
            self.files.remove(media_id)
        return gone

    def sweep_orphans(self) -> int:
        return self.files.sweep(set(self.platform.media))
