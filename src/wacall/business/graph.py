"""A Graph API client for the calling surface, as a business uses it against Meta (or against wacall by
swapping ``base_url`` and the token).

    async with GraphClient(phone_number_id, token) as graph:            # https://graph.facebook.com
        call_id = await graph.connect("447700900001", offer_sdp)
        await graph.terminate(call_id)

Requests and answers are Meta's (https://developers.facebook.com/docs/whatsapp/cloud-api/calling/reference):
``POST /{phone_number_id}/calls`` with ``action`` ``connect``, ``pre_accept``, ``accept``, ``reject`` or
``terminate``; ``GET``/``POST /{phone_number_id}/settings``; ``GET /{phone_number_id}/call_permissions``;
``POST /{phone_number_id}/messages`` for the call permission request and the voice call button. A refusal
raises the :mod:`wacall.business.errors` class for its code.

Retries: a request that never reached Meta (connection refused or reset before an answer) is sent again
for every method; a transient refusal (``is_transient``, rate limits, Meta's server errors) or a timeout
is retried only where sending twice is harmless: reads, and the actions on an existing call (``pre_accept``,
``accept``, ``reject``, ``terminate``, which name the call). ``connect`` and message sends are not retried
after they may have reached Meta: a second ``connect`` could ring the user twice (138003 at best) and a
second permission request counts against the user's limits; the caller decides.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .errors import GraphApiError, error_from

GRAPH_URL = "https://graph.facebook.com"
VERSION = "v23.0"


class GraphClient:
    def __init__(self, phone_number_id: str, token: str, *, base_url: str = GRAPH_URL, version: str = VERSION,
                 session: aiohttp.ClientSession | None = None, attempts: int = 3, backoff: float = 0.5,
                 timeout: float = 30.0) -> None:
        self.phone_number_id = str(phone_number_id)
        self.base = f"{base_url.rstrip('/')}/{version}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.attempts, self.backoff = max(1, attempts), backoff
        self._session, self._own_session = session, session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __aenter__(self) -> "GraphClient":
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- the wire ---------------------------------------------------------------------------------------
    async def request(self, method: str, path: str, *, json: dict | None = None, params: dict | None = None,
                      idempotent: bool | None = None) -> dict:
        """One Graph request (``path`` under the version, e.g. ``"106540352242922/calls"``); the answer's
        JSON, or the typed error. ``idempotent`` (default: GET) allows retrying transient refusals."""
        if self._session is None:
            await self.__aenter__()
        assert self._session is not None
        idempotent = method == "GET" if idempotent is None else idempotent
        url = f"{self.base}/{path.lstrip('/')}"
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.request(method, url, json=json, params=params,
                                                 headers=self.headers) as resp:
                    try:
                        body = await resp.json(content_type=None)
                    except ValueError:
                        body = None
                    if resp.status == 200 and isinstance(body, dict):
                        return body
                    error = error_from(resp.status, body)
            except aiohttp.ClientConnectorError:          # never reached Meta: always safe to send again
                if attempt == self.attempts:
                    raise
            except (asyncio.TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if not idempotent or attempt == self.attempts:
                    raise
            else:
                if not (idempotent and error.transient) or attempt == self.attempts:
                    raise error
            await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _calls(self, body: dict, idempotent: bool) -> Any:
        return self.request("POST", f"{self.phone_number_id}/calls",
                            json={"messaging_product": "whatsapp", **body}, idempotent=idempotent)

    # -- calls ------------------------------------------------------------------------------------------
    async def connect(self, to: str, sdp: str, *, biz_opaque_callback_data: str | None = None) -> str:
        """A business-initiated call to ``to`` (a wa_id) with the business's SDP offer; the new call's id."""
        body: dict[str, Any] = {"to": to, "action": "connect", "session": {"sdp_type": "offer", "sdp": sdp}}
        if biz_opaque_callback_data is not None:
            body["biz_opaque_callback_data"] = biz_opaque_callback_data
        answer = await self._calls(body, idempotent=False)
        return answer["calls"][0]["id"]

    async def pre_accept(self, call_id: str, sdp: str) -> None:
        """Media connects before the call is answered (Meta advises it against clipping)."""
        await self._calls({"call_id": call_id, "action": "pre_accept",
                           "session": {"sdp_type": "answer", "sdp": sdp}}, idempotent=True)

    async def accept(self, call_id: str, sdp: str, *, biz_opaque_callback_data: str | None = None) -> None:
        body: dict[str, Any] = {"call_id": call_id, "action": "accept", "session": {"sdp_type": "answer", "sdp": sdp}}
        if biz_opaque_callback_data is not None:
            body["biz_opaque_callback_data"] = biz_opaque_callback_data
        await self._calls(body, idempotent=True)

    async def reject(self, call_id: str) -> None:
        await self._calls({"call_id": call_id, "action": "reject"}, idempotent=True)

    async def terminate(self, call_id: str) -> None:
        await self._calls({"call_id": call_id, "action": "terminate"}, idempotent=True)

    # -- settings and permissions -----------------------------------------------------------------------
    async def settings(self, *, include_sip_credentials: bool = False) -> dict:
        params = {"include_sip_credentials": "true"} if include_sip_credentials else None
        return await self.request("GET", f"{self.phone_number_id}/settings", params=params)

    async def update_settings(self, calling: dict) -> None:
        """``POST /settings`` with ``{"calling": calling}`` (the same object twice changes nothing)."""
        await self.request("POST", f"{self.phone_number_id}/settings", json={"calling": calling}, idempotent=True)

    async def call_permission(self, user_wa_id: str) -> dict:
        """``{"permission": {"status", "expiration_time"?}, "actions": [...]}`` for this user."""
        return await self.request("GET", f"{self.phone_number_id}/call_permissions",
                                  params={"user_wa_id": user_wa_id})

    async def request_call_permission(self, to: str, text: str) -> str:
        """The call permission request message (inside the customer service window); its message id."""
        return await self._message(to, {"type": "call_permission_request", "body": {"text": text},
                                        "action": {"name": "call_permission_request"}})

    async def send_call_button(self, to: str, text: str, *, display_text: str | None = None,
                               ttl_minutes: int | None = None, payload: str | None = None) -> str:
        """The voice call button (an interactive ``voice_call`` message); its message id."""
        parameters = {k: v for k, v in (("display_text", display_text), ("ttl_minutes", ttl_minutes),
                                        ("payload", payload)) if v is not None}
        return await self._message(to, {"type": "voice_call", "body": {"text": text},
                                        "action": {"name": "voice_call", "parameters": parameters}})

    async def _message(self, to: str, interactive: dict) -> str:
        answer = await self.request("POST", f"{self.phone_number_id}/messages", idempotent=False, json={
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "interactive",
            "interactive": interactive})
        return answer["messages"][0]["id"]


__all__ = ["GraphClient", "GraphApiError", "GRAPH_URL", "VERSION"]
