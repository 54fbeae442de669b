"""The console in a real browser (Debian's Chromium driven by Playwright): the calls list updates live, over
the stream and without polling, when a call starts and ends; a call's page shows its timeline; a SIP call's
page draws its ladder."""

from __future__ import annotations

import asyncio

import pytest

from support.chromium_agent import CHROMIUM, chromium_available
from wacall.config import load_config as _load_config
from wacall.control.client import ControlClient
from wacall.server import Wacall

# scripts/test installs Debian's chromium and PyPI's playwright: a missing browser is a failure, not a skip.
assert chromium_available(), "needs /usr/bin/chromium (scripts/apt-packages) and playwright (test extras)"

ALICE = "447700900001"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"]


@pytest.fixture
async def emulator():
    config = _load_config()
    config.sip.port = -1
    wacall = await Wacall(config, db=":memory:", port=0).start()
    yield wacall
    await wacall.stop()


@pytest.fixture
async def page():
    from playwright.async_api import async_playwright
    playwright = await async_playwright().start()
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    yield page
    await browser.close()
    await playwright.stop()


def local(wacall: Wacall) -> str:
    """The URL the browser uses (the resolver rules above keep every name but localhost from resolving)."""
    return wacall.base_url.replace("127.0.0.1", "localhost")


async def test_the_calls_list_updates_live_when_a_call_starts_and_ends(emulator, page):
    await page.goto(local(emulator) + "/", wait_until="domcontentloaded")    # a browser at / lands on the console
    assert page.url.endswith("/_wacall/console")
    await page.wait_for_selector("#no-calls")        # the list read (a new emulator: none), only pushes from now
    await page.wait_for_function("document.getElementById('live').classList.contains('on')")   # stream open
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    async with ControlClient(emulator.base_url) as control:
        call_id = await control.user_calls(ALICE, emulator.info()["phone_number_id"])
        row = f"tr[data-call-id='{call_id}']"
        await page.wait_for_selector(f"{row}[data-state='RINGING']", timeout=10_000)
        assert "user → business" in await page.inner_text(row) and ALICE in await page.inner_text(row)
        await control.hangup(call_id)
        await page.wait_for_selector(f"{row}[data-state='ENDED']", timeout=10_000)
        assert "user_hangup" in await page.inner_text(row)
    assert not [url for url in asked if "/_wacall/calls" in url], f"the list polled: {asked}"    # pushed, not polled
    await page.click(f"tr[data-call-id='{call_id}'] a")
    await page.wait_for_selector("#timeline table")
    timeline = await page.inner_text("#timeline")
    assert "NEW → RINGING" in timeline and "RINGING → ENDED" in timeline
    assert page.errors == []


async def test_the_call_list_actions_go_through_the_control_api(emulator, page):
    await page.goto(local(emulator) + "/_wacall/console", wait_until="domcontentloaded")
    await page.wait_for_function("document.getElementById('live').classList.contains('on')")
    async with ControlClient(emulator.base_url) as control:
        call_id = await control.user_calls(ALICE, emulator.info()["phone_number_id"])
        row = f"tr[data-call-id='{call_id}']"
        await page.click(f"{row} button.danger")                       # Hang up, as the user
        await page.wait_for_selector(f"{row}[data-state='ENDED']", timeout=10_000)
        assert (await control.call(call_id))["ended_by"] == "user"
    assert page.errors == []


async def test_a_sip_calls_page_draws_its_ladder(wa, tmp_path, page):
    """A user's call to a SIP-enabled number, answered by SIPp (the business's SIP server, behind stunnel),
    drawn as a ladder from the call's timeline: each SIP message one arrow, in order, the right way."""
    from test_sip_user_calls import BusinessServer
    server = await asyncio.to_thread(lambda: BusinessServer(wa, tmp_path).start())
    try:
        call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
        await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 15)
        await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")
        await asyncio.to_thread(server.sipp.wait, 30)
    finally:
        await asyncio.to_thread(server.stop)
    timeline = (await asyncio.to_thread(wa.call, call_id))["timeline"]
    sent = [(e["direction"], e["line"].split(" ")[0] if not e["line"].startswith("SIP/2.0") else e["line"][8:])
            for e in timeline if e["kind"] == "sip_message"]
    await page.goto(f"{wa.url.replace('127.0.0.1', 'localhost')}/_wacall/console/calls/{call_id}")
    await page.wait_for_selector("#sip svg.ladder")
    arrows = await page.eval_on_selector_all("#sip svg.ladder g.message", """groups => groups.map(g => {
        const line = g.querySelector('line');
        return [Number(line.getAttribute('x1')) < Number(line.getAttribute('x2')) ? 'in' : 'out',
                g.querySelectorAll('text')[1].textContent.replace(' (SDP)', '')];
    })""")
    assert arrows == [list(item) for item in sent] and len(arrows) >= 8
    assert arrows[0] == ["out", "INVITE"] and arrows[1] == ["in", "401 Unauthorized"] and ["out", "BYE"] in arrows
    await page.locator("#sip svg.ladder g.message").nth(1).dispatch_event("click")
    assert (await page.inner_text("#sip pre.raw")).startswith("SIP/2.0 401 Unauthorized")
    assert page.errors == []
