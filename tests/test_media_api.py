"""The Media API over HTTP (issue 11 part 1): ``POST /{phone_number_id}/media`` (multipart), ``GET /{media_id}``,
the download URL with the bearer token (5 minutes on the virtual clock, 404 afterwards, a fresh URL from a new
``GET``), ``DELETE /{media_id}``, Meta's type and size rules and errors in the Graph envelope, retention
(30 days uploads, 7 days webhook media, voicemail announcements kept), files on disk that survive kill -9, and
the shared ``MediaLibrary.add_media`` / ``media_bytes`` contract other features publish through.

pywa 4.5.0 supports the Media API (``upload_media``, ``get_media_url``, ``get_media_bytes``,
``delete_media``): ``test_pywa_uploads_downloads_and_deletes`` drives it unmodified.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import httpx
import pytest

from support.harness import VERSION, Wacall
from wacall.testing.running import running

CONFIG = Path(__file__).parent / "data" / "two_wabas.toml"
A = {"number": "301000000000001", "token": "EAAwacallALPHA0000token"}
B = {"number": "302000000000002", "token": "EAAwacallBETA0000token"}
DAY = 86400
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def ogg_opus(seconds: float) -> bytes:
    """A real Ogg/Opus file (PyAV's libopus) of a 440 Hz tone."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        n = int(48000 * seconds)
        pcm = (np.sin(2 * np.pi * 440 * np.arange(n) / 48000) * 8000).astype(np.int16).reshape(1, -1)
        for i in range(0, n, 960):
            frame = av.AudioFrame.from_ndarray(pcm[:, i:i + 960], format="s16", layout="mono")
            frame.sample_rate = 48000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def srv():
    server = Wacall(config=str(CONFIG)).start()
    yield server
    server.close()


@pytest.fixture
def wa(srv):
    srv.reset()
    return srv


def upload(wa, data: bytes, mime: str, *, token: str = A["token"], number: str = A["number"], name: str = "f",
           **fields) -> httpx.Response:
    form = {"messaging_product": "whatsapp", "type": mime, **fields}
    return wa.graph("POST", f"{number}/media", token=token, files={"file": (name, data, mime)}, data=form)


def envelope(response: httpx.Response, code: int, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"].startswith(f"(#{code})"), error
    assert error["type"] == "OAuthException" and error["fbtrace_id"] and error["error_data"]["details"], error
    return error


def download(wa, url: str, token: str | None = A["token"]) -> httpx.Response:
    return wa.http.get(url, headers={"Authorization": f"Bearer {token}"} if token else {})


def test_upload_get_download_delete(wa):
    response = upload(wa, PNG, "image/png", name="plant.png")
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"id"}
    media_id = response.json()["id"]
    assert media_id.isdigit()

    info = wa.graph("GET", media_id, token=A["token"])
    assert info.status_code == 200, info.text
    body = info.json()
    assert body == {"messaging_product": "whatsapp", "url": body["url"], "mime_type": "image/png",
                    "sha256": base64.b64encode(hashlib.sha256(PNG).digest()).decode(),
                    "file_size": str(len(PNG)), "id": media_id}
    assert "/whatsapp_business/attachments/?mid=" in body["url"]

    got = download(wa, body["url"])
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "image/png"
    head = wa.http.head(body["url"], headers={"Authorization": f"Bearer {A['token']}"})
    assert head.status_code == 200 and head.headers["content-length"] == str(len(PNG))
    envelope(wa.http.post(body["url"], headers={"Authorization": f"Bearer {A['token']}"}), 100, 400)

    deleted = wa.graph("DELETE", media_id, token=A["token"])
    assert deleted.status_code == 200 and deleted.json() == {"success": True}
    envelope(wa.graph("GET", media_id, token=A["token"]), 100, 400)
    assert download(wa, body["url"]).status_code == 404      # the URL is gone with the media
    envelope(wa.graph("DELETE", media_id, token=A["token"]), 100, 400)


def test_url_expires_after_five_minutes_and_a_fresh_one_works(wa):
    media_id = upload(wa, PNG, "image/png").json()["id"]
    url = wa.graph("GET", media_id, token=A["token"]).json()["url"]
    wa.advance(299)
    assert download(wa, url).status_code == 200
    wa.advance(2)
    error = envelope(download(wa, url), 100, 404)
    assert "expired" in error["error_data"]["details"]
    fresh = wa.graph("GET", media_id, token=A["token"]).json()["url"]
    assert fresh != url
    assert download(wa, fresh).content == PNG
    tampered = fresh.replace("hash=", "hash=x")
    envelope(download(wa, tampered), 100, 404)


def test_foreign_token_and_other_apps_media(wa):
    media_id = upload(wa, PNG, "image/png").json()["id"]
    url = wa.graph("GET", media_id, token=A["token"]).json()["url"]
    # another business's token: the media reads as not existing, on GET, DELETE and the URL
    error = envelope(wa.graph("GET", media_id, token=B["token"]), 100, 400)
    assert error["error_subcode"] == 33 and media_id in error["message"]
    envelope(wa.graph("DELETE", media_id, token=B["token"]), 100, 400)
    envelope(download(wa, url, token=B["token"]), 100, 404)
    # no token, a bad token
    envelope(download(wa, url, token=None), 104, 400)
    envelope(download(wa, url, token="garbage"), 190, 401)
    envelope(wa.graph("GET", media_id, token=None), 104, 400)
    # nor may B upload to A's number
    envelope(upload(wa, PNG, "image/png", token=B["token"]), 100, 400)
    # phone_number_id, when given, must be the media's
    envelope(wa.graph("GET", media_id, token=A["token"], params={"phone_number_id": B["number"]}), 100, 400)
    assert wa.graph("GET", media_id, token=A["token"], params={"phone_number_id": A["number"]}).status_code == 200
    assert download(wa, url).content == PNG         # A's still works


def test_size_and_type_rules(wa):
    error = envelope(upload(wa, b"PK\x03\x04" + b"z" * 100, "application/zip"), 100, 400)
    assert "Param file must be a file with one of the following types" in error["message"]
    assert "Received file of type 'application/zip'" in error["message"]
    too_big = envelope(upload(wa, b"\xff\xd8" + b"\0" * (5 * 1024 * 1024), "image/jpeg"), 131053, 400)
    assert "5242880" in too_big["error_data"]["details"]
    assert upload(wa, b"\xff\xd8" + b"\0" * (5 * 1024 * 1024 - 2), "image/jpeg").status_code == 200
    # far too large: refused once over the limit (the rest read, not kept), the answer still arrives
    body = wa.graph("POST", f"{A['number']}/media", token=A["token"],
                    files={"file": ("big.png", io.BytesIO(bytes(20 * 1024 * 1024)), "image/png")},
                    data={"messaging_product": "whatsapp"})
    envelope(body, 131053, 400)
    # a sticker (image/webp) up to 500 KB; a document (PDF) far above an image's 5 MB
    envelope(upload(wa, b"RIFF" + b"\0" * 600 * 1024, "image/webp"), 131053, 400)
    assert upload(wa, b"%PDF-1.4\n" + b"\0" * (6 * 1024 * 1024), "application/pdf").status_code == 200
    # audio/ogg must hold Opus
    envelope(upload(wa, b"OggS" + b"\0" * 24 + b"\x01vorbis" + b"\0" * 100, "audio/ogg"), 131053, 400)
    assert upload(wa, ogg_opus(0.5), "audio/ogg").status_code == 200
    # empty file, missing parameters
    envelope(upload(wa, b"", "image/png"), 100, 400)
    envelope(wa.graph("POST", f"{A['number']}/media", token=A["token"],
                      files={"file": ("x.png", PNG, "image/png")}, data={"type": "image/png"}), 100, 400)
    envelope(wa.graph("POST", f"{A['number']}/media", token=A["token"],
                      files={"messaging_product": (None, "whatsapp")}), 100, 400)
    envelope(wa.graph("POST", f"{A['number']}/media", token=A["token"], json={"messaging_product": "whatsapp"}),
             100, 400)
    envelope(upload(wa, PNG, "image/png", use_case="bogus"), 100, 400)
    # GET on the upload edge, POST on a media node: Graph's "unsupported" answers
    media_id = upload(wa, PNG, "image/png").json()["id"]
    envelope(wa.graph("POST", media_id, token=A["token"], json={}), 100, 400)
    envelope(wa.graph("GET", f"{A['number']}/media", token=A["token"]), 100, 400)


def test_hostile_multipart_bodies_get_the_envelope(wa):
    url = f"{wa.url}/{VERSION}/{A['number']}/media"
    headers = {"Authorization": f"Bearer {A['token']}"}
    for ctype, body in [("multipart/form-data", b"--x\r\n"), ("multipart/form-data; boundary=x", b"garbage"),
                        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--"),
                        ("multipart/form-data; boundary=x", b"--x\r\n" + b"A" * 200000)]:
        response = wa.http.post(url, headers={**headers, "Content-Type": ctype}, content=body)
        assert 400 <= response.status_code < 500 and "error" in response.json(), (ctype, body[:40], response.text)
    # an upload to a wrong edge is refused, its temporary file dropped
    response = wa.graph("POST", f"{A['number']}/calls", token=A["token"],
                        files={"file": ("x.png", PNG, "image/png")}, data={"messaging_product": "whatsapp"})
    assert response.status_code == 400


def test_announcement_upload_rules_and_retention(wa):
    announcement = ogg_opus(2.0)
    response = upload(wa, announcement, "audio/ogg", use_case="call_voicemail_announcement")
    assert response.status_code == 200, response.text
    kept = response.json()["id"]
    envelope(upload(wa, PNG, "image/png", use_case="call_voicemail_announcement"), 100, 400)
    error = envelope(upload(wa, ogg_opus(61.0), "audio/ogg", use_case="call_voicemail_announcement"), 100, 400)
    assert "60 seconds" in error["error_data"]["details"]
    ordinary = upload(wa, PNG, "image/png").json()["id"]
    wa.advance(29 * DAY)
    assert wa.graph("GET", ordinary, token=A["token"]).status_code == 200
    wa.advance(1 * DAY + 1)
    envelope(wa.graph("GET", ordinary, token=A["token"]), 100, 400)       # 30 days: gone
    info = wa.graph("GET", kept, token=A["token"])
    assert info.status_code == 200, info.text                          # the announcement is kept
    assert download(wa, info.json()["url"]).content == announcement


def test_files_on_disk_survive_kill_9_and_retention_removes_them(tmp_path):
    db = tmp_path / "wacall.db"
    wa = Wacall(db=str(db)).start()
    try:
        media_dir = Path(str(db) + ".media")
        media_id = upload(wa, PNG, "image/png", token=wa.token, number=wa.pnid).json()["id"]
        assert (media_dir / media_id).read_bytes() == PNG         # on disk, named after its id
        (media_dir / "999").write_bytes(b"orphan")                 # a file no record knows (a crash mid-upload)
        (media_dir / ".incoming" / "x.part").write_bytes(b"half")
        wa.kill()
        wa.start()
        info = wa.graph("GET", media_id)
        assert info.status_code == 200, info.text
        assert download(wa, info.json()["url"], token=wa.token).content == PNG
        assert not (media_dir / "999").exists() and not list((media_dir / ".incoming").iterdir())
        wa.advance(30 * DAY + 1)
        wa.wait_for(lambda: not (media_dir / media_id).exists(), what="the expired file to be removed")
        wa.kill()
        wa.start()
        envelope(wa.graph("GET", media_id), 100, 400)
    finally:
        wa.close()


def test_kill_9_mid_upload_leaves_nothing_behind(tmp_path):
    """An upload cut by a crash was never answered: after the restart there is neither a record nor a file."""
    import threading

    db = tmp_path / "wacall.db"
    wa = Wacall(db=str(db)).start()
    media_dir = Path(str(db) + ".media")
    stop = threading.Event()

    def body():
        yield (b'--b\r\nContent-Disposition: form-data; name="messaging_product"\r\n\r\nwhatsapp\r\n'
               b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.pdf"\r\n'
               b"Content-Type: application/pdf\r\n\r\n")
        while not stop.is_set():
            yield b"%" * 65536
            stop.wait(0.01)

    def send():
        try:
            wa.http.post(f"{wa.url}/{VERSION}/{wa.pnid}/media", content=body(),
                         headers={"Authorization": f"Bearer {wa.token}",
                                  "Content-Type": "multipart/form-data; boundary=b"})
        except httpx.HTTPError:
            pass                                     # the server died under it
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        wa.wait_for(lambda: any(p.stat().st_size > 0 for p in (media_dir / ".incoming").iterdir()),
                    what="the upload to reach the disk")
        wa.kill()
        stop.set()
        sender.join(10)
        wa.start()
        assert list(media_dir.iterdir()) == [media_dir / ".incoming"]
        assert not list((media_dir / ".incoming").iterdir())
    finally:
        stop.set()
        wa.close()


def test_add_media_contract_in_process():
    """``MediaLibrary.add_media`` (what voicemail and recording publish through): webhook media, downloadable
    through the Media API, kept 7 days; ``media_bytes`` reads it back; the temporary directory of a
    ``:memory:`` instance is removed at stop."""
    with running("inprocess", sip=False) as w:
        server = w.server
        library = server.media_library

        async def publish() -> str:
            return library.add_media(w.phone_number_id, b"OggS-fake-voicemail", "audio/ogg; codecs=opus")
        media_id = w._portal.run(publish())
        directory = library.files.dir
        assert library.media_bytes(media_id) == ("audio/ogg; codecs=opus", b"OggS-fake-voicemail")
        with httpx.Client() as http:
            auth = {"Authorization": f"Bearer {w.access_token}"}
            info = http.get(f"{w.graph_url}/{VERSION}/{media_id}", headers=auth).json()
            assert info["mime_type"] == "audio/ogg; codecs=opus" and info["file_size"] == "19"
            got = http.get(info["url"], headers=auth)
            assert got.content == b"OggS-fake-voicemail"
            assert got.headers["content-type"].startswith("audio/ogg")
            assert http.post(f"{w.control_url}/clock/advance", json={"seconds": 7 * DAY + 1}).status_code == 200
            assert http.get(f"{w.graph_url}/{VERSION}/{media_id}", headers=auth).status_code == 400
        with pytest.raises(KeyError):
            library.media_bytes(media_id)
        assert directory.exists()
    assert not directory.exists()


def test_pywa_uploads_downloads_and_deletes(wa):
    """pywa 4.5.0, unmodified: its httpx session sends Graph requests to wacall (graph.facebook.com
    rewritten) and the media URL, which is wacall's own, as it is."""
    from pywa import WhatsApp
    from pywa.errors import WhatsAppError

    target = httpx.URL(wa.url)

    class ToWacall(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "graph.facebook.com":
                request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
                request.headers["Host"] = request.url.netloc.decode("ascii")
            return super().handle_request(request)

    client = WhatsApp(phone_id=A["number"], token=A["token"], session=httpx.Client(transport=ToWacall()))
    announcement = ogg_opus(1.0)
    uploaded = client.upload_media(announcement, mime_type="audio/ogg", filename="hello.ogg")
    media_id = uploaded if isinstance(uploaded, str) else uploaded.id
    url = client.get_media_url(media_id)
    assert url.mime_type == "audio/ogg"
    assert url.sha256 == base64.b64encode(hashlib.sha256(announcement).digest()).decode()
    assert int(url.file_size) == len(announcement)
    assert client.get_media_bytes(url.url) == announcement
    assert client.delete_media(media_id).success is True
    with pytest.raises(WhatsAppError) as gone:
        client.get_media_url(media_id)
    assert gone.value.code == 100


def test_graph_versions(wa):
    for version in ("v21.0", "v22.0", "v23.0", "v24.0", "v25.0", "v26.0"):
        response = wa.http.get(f"{wa.url}/{version}/{A['number']}/settings",
                               headers={"Authorization": f"Bearer {A['token']}"})
        assert response.status_code == 200, (version, response.text)
        assert response.headers["facebook-api-version"] == version
    for version in ("v20.0", "v17.0", "v2.12"):
        response = wa.http.get(f"{wa.url}/{version}/{A['number']}/settings",
                               headers={"Authorization": f"Bearer {A['token']}"})
        error = envelope(response, 2635, 400)
        assert "deprecated version" in error["message"] and "v26.0" in error["message"]


def test_graph_versions_configurable(tmp_path):
    config = tmp_path / "wacall.toml"
    config.write_text('[graph]\noldest_version = "v19.0"\nlatest_version = "v23.0"\nnewer = "refuse"\n'
                      'retired = "upgrade"\n')
    wa = Wacall(config=str(config)).start()
    try:
        def get(version: str) -> httpx.Response:
            return wa.http.get(f"{wa.url}/{version}/{wa.pnid}/settings",
                               headers={"Authorization": f"Bearer {wa.token}"})
        assert get("v19.0").status_code == 200
        upgraded = get("v18.0")                        # retired: served as the oldest version
        assert upgraded.status_code == 200 and upgraded.headers["facebook-api-version"] == "v19.0"
        envelope(get("v24.0"), 100, 400)               # newer than latest, refused
    finally:
        wa.close()


def test_a_large_upload_and_download_are_streamed_not_held_in_memory(wa):
    """90 MB up and down: the server's peak resident memory grows by far less than the file."""
    def peak_kb() -> int:
        status = Path(f"/proc/{wa.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])

    class Zeros(io.RawIOBase):
        left = 90 * 1024 * 1024

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    before = peak_kb()
    response = wa.graph("POST", f"{A['number']}/media", token=A["token"], data={"messaging_product": "whatsapp"},
                        files={"file": ("big.pdf", io.BufferedReader(Zeros(), 1 << 20), "application/pdf")})
    assert response.status_code == 200, response.text
    info = wa.graph("GET", response.json()["id"], token=A["token"]).json()
    assert info["file_size"] == str(90 * 1024 * 1024)
    got = 0
    with wa.http.stream("GET", info["url"], headers={"Authorization": f"Bearer {A['token']}"}) as download:
        for chunk in download.iter_bytes(1 << 20):
            assert not chunk.strip(b"\0")
            got += len(chunk)
    assert got == 90 * 1024 * 1024
    assert peak_kb() - before < 24 * 1024, (before, peak_kb())
