"""The console (docs/console.md) served by an in-process wacall: every page renders, its static files are
served from the package, a browser's ``GET /`` lands on it while API clients still get Graph's answer, it
sits behind the same guard as the control API, and the control endpoints it added (numbers, permissions,
webhook resend, media samples) answer."""

from __future__ import annotations

import asyncio

import aiohttp
import yarl
import pytest

from support.inprocess import VERSION, config, hook_receiver
from wacall.console.routes import PAGES, SAMPLES, STATIC
from wacall.control.client import ControlClient, ControlRefused
from wacall.server import Wacall

ALICE = "447700900001"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture
async def emulator():
    wacall = await Wacall(config(), db=":memory:", port=0).start()
    yield wacall
    await wacall.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_every_page_renders(emulator, http):
    async with ControlClient(emulator.base_url) as control:
        call_id = await control.user_calls(ALICE, emulator.info()["phone_number_id"])
    paths = [f"/_wacall/console{path}" for path, _, _ in PAGES] + [f"/_wacall/console/calls/{call_id}",
                                                                   "/_wacall/console/phone"]
    for path in paths:
        async with http.get(emulator.base_url + path, headers=BROWSER) as resp:
            text = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html", (path, resp.status, text[:200])
            assert '<main id="app" data-page=' in text and "/_wacall/console/static/console.js" in text, path
    async with http.get(f"{emulator.base_url}/_wacall/console/", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/_wacall/console"
    async with http.get(f"{emulator.base_url}/_wacall/console/calls/{call_id}") as resp:
        assert f'data-call-id="{call_id}"' in await resp.text()
    async with http.get(f"{emulator.base_url}/_wacall/console/calls/%3Cscript%3E") as resp:   # escaped, not run
        text = await resp.text()
        assert "<script>" not in text and 'data-call-id="&lt;script&gt;"' in text


async def test_static_files_ship_in_the_package(emulator, http):
    modules = sorted(p.name for p in STATIC.glob("*.js"))
    assert {"console.js", "api.js", "calls.js", "call.js", "ladder.js"} <= set(modules)
    for name in modules + ["console.css"]:
        async with http.get(f"{emulator.base_url}/_wacall/console/static/{name}") as resp:
            assert resp.status == 200, name
            wanted = {"text/css"} if name.endswith(".css") else {"text/javascript", "application/javascript"}
            assert resp.content_type in wanted, (name, resp.content_type)      # what a module script needs
            assert await resp.read() == (STATIC / name).read_bytes()
    async with http.get(f"{emulator.base_url}/_wacall/console/static/../routes.py") as resp:
        assert resp.status in (403, 404)


async def test_a_browser_opening_root_lands_on_the_console_and_api_clients_do_not(emulator, http):
    async with http.get(emulator.base_url + "/", headers=BROWSER, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/_wacall/console"
    async with http.get(emulator.base_url + "/", allow_redirects=False) as resp:   # an SDK or curl
        assert resp.status != 302 and resp.content_type == "application/json"
        assert "error" in await resp.json()
    async with http.get(f"{emulator.base_url}/{VERSION}/", headers=BROWSER, allow_redirects=False) as resp:
        assert resp.status != 302 and resp.content_type == "application/json"
    async with http.post(emulator.base_url + "/", headers=BROWSER, allow_redirects=False) as resp:
        assert resp.status != 302


async def test_the_console_is_guarded_like_the_control_api():
    wacall = await Wacall(config(token="s3cret"), db=":memory:", port=0).start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{wacall.base_url}/_wacall/console"
            async with http.get(url, headers=BROWSER) as resp:
                assert resp.status == 401
            async with http.get(url, headers={**BROWSER, "Authorization": "Bearer s3cret"}) as resp:
                assert resp.status == 200
            async with http.get(url, headers={**BROWSER, "Authorization": "Bearer s3cret",
                                              "Host": "rebound.example"}) as resp:
                assert resp.status == 403
            async with http.post(f"{wacall.base_url}/_wacall/reset", headers={
                    "Authorization": "Bearer s3cret", "Origin": "http://evil.example"}) as resp:
                assert resp.status == 403
            async with http.get(f"{url}/users?token=s3cret", headers=BROWSER) as resp:     # only the entry page
                assert resp.status == 401
            async with http.get(f"{wacall.base_url}/_wacall/clock?token=s3cret") as resp:
                assert resp.status == 401
            async with http.get(f"{url}?token=wrong", headers=BROWSER) as resp:
                assert resp.status == 401 and not resp.cookies
        name = f"wacall_control_token_{wacall.base_url.rsplit(':', 1)[1]}"    # one cookie per wacall (port)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            # a cookie left by another wacall, or by this one before a restart with another token
            browser.cookie_jar.update_cookies({name: "stale"}, response_url=yarl.URL(wacall.base_url))
            async with browser.get(url, headers=BROWSER) as resp:
                assert resp.status == 401
            async with browser.get(f"{url}?token=s3cret", headers=BROWSER, allow_redirects=False) as resp:
                assert resp.status == 302 and resp.headers["Location"] == "/_wacall/console"
                cookie = resp.cookies[name]
                assert cookie.value == "s3cret" and cookie["httponly"] and cookie["samesite"] == "Strict"
                assert cookie["path"] == "/_wacall"
            # another page never sets it: a page on another local port cannot log the console out
            async with browser.get(f"{url}/users?token=garbage", headers=BROWSER, allow_redirects=False) as resp:
                assert resp.status == 200 and not resp.cookies
            for path in ("/_wacall/console/users", "/_wacall/clock"):       # the cookie now stands for the token
                async with browser.get(wacall.base_url + path, headers=BROWSER) as resp:
                    assert resp.status == 200, path
            async with browser.post(f"{wacall.base_url}/_wacall/clock/advance", json={"seconds": 1}) as resp:
                assert resp.status == 200
            async with browser.post(f"{wacall.base_url}/_wacall/clock/advance", json={"seconds": 1},
                                    headers={"Origin": "http://evil.example"}) as resp:
                assert resp.status == 403                      # a cross-site page cannot ride on the cookie
    finally:
        await wacall.stop()


async def test_numbers_and_permissions(emulator):
    info = emulator.info()
    async with ControlClient(emulator.base_url) as control:
        numbers = await control.numbers()
        assert [n["id"] for n in numbers][0] == info["phone_number_id"]
        assert all("sip_passwords" not in n for n in numbers)
        assert (await control.request("GET", "permissions"))["data"] == []
        await control.send_message(ALICE, info["phone_number_id"], "hi")
        [pair] = await control.permissions(wa_id=ALICE)
        assert pair["permission"] == "no_permission" and pair["window_open"] is True
        assert pair["requests_24h"] == 0
        await control.advance(2 * 86400)
        [pair] = (await control.request("GET", "permissions"))["data"]
        assert pair["window_open"] is False
        body = await control.request("GET", "permissions", phone_number_id="nope")
        assert body["data"] == [] and body["limits"]["permission_requests_per_24h"] >= 1


async def test_resend_delivers_a_journal_entry_again(emulator):
    info = emulator.info()
    async with aiohttp.ClientSession() as http:
        runner, url, got = await hook_receiver(info, http)
    try:
        async with ControlClient(emulator.base_url) as control:
            await control.user_calls(ALICE, info["phone_number_id"])
            for _ in range(200):
                journal = await control.webhooks()
                if journal and journal[0]["status"] == "delivered":
                    break
                await asyncio.sleep(0.02)
            first = journal[0]
            copy = await control.resend_webhook(first["id"])
            assert copy["id"] != first["id"] and copy["body"] == first["body"] and copy["url"] == url
            for _ in range(200):
                if len(got) >= 2:
                    break
                await asyncio.sleep(0.02)
            assert got[-1] == got[0]
            with pytest.raises(ControlRefused) as refused:
                await control.resend_webhook(999999)
            assert refused.value.reason == "unknown_webhook" and refused.value.status == 404
    finally:
        await runner.cleanup()


async def test_media_samples_are_taken_while_someone_follows(emulator):
    info = emulator.info()
    samples = emulator.runner.app[SAMPLES]
    async with ControlClient(emulator.base_url) as control:
        call_id = await control.user_calls(ALICE, info["phone_number_id"])
        await samples.sample()                      # nobody follows: the loop would not sample (wanted is False)
        assert samples.wanted() is False
        body = await control.request("GET", f"calls/{call_id}/media/samples")
        assert body["call_id"] == call_id and len(body["data"]) == 1 == len(await control.media_samples(call_id))
        assert set(body["data"][0]) >= {"t", "rx_packets", "loss", "jitter_ms", "level_dbfs", "tx_packets"}
        assert (await control.request("GET", "calls/nope/media/samples"))["data"] == []
