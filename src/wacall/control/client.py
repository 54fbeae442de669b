"""The control API from Python: ``async with ControlClient(url) as wa: await wa.user_calls(...)``.

Thin and typed; each method is one request of docs/control-api.md. Refusals raise
:class:`ControlRefused` with the reason a WhatsApp user would see.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import aiohttp

from .. import codec


class ControlRefused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        self.status, self.reason, self.detail = status, reason, detail
        super().__init__(f"{status} {reason}: {detail}")


class ControlClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None, *,
                 token: str | None = None) -> None:
        """``base_url`` is the server's URL (``graph_url``) or its ``control_url``; ``token`` the control
        token when the server has one (``--control-token``), sent as ``Authorization: Bearer``."""
        self.base = base_url.rstrip("/").removesuffix("/_wacall") + "/_wacall"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = session
        self._owned = session is None

    async def __aenter__(self) -> "ControlClient":
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: dict | None = None, **query: Any) -> Any:
        if self._session is None:
            await self.__aenter__()
        params = {k: str(v) for k, v in query.items() if v is not None}
        async with self._session.request(method, f"{self.base}/{path.lstrip('/')}", json=body,
                                         params=params, headers=self.headers) as resp:
            try:
                data = await resp.json()
            except (aiohttp.ContentTypeError, ValueError):     # not wacall's control API answering
                raise ControlRefused(resp.status, "not_wacall", f"{resp.method} {resp.url} answered "
                                     f"{resp.content_type}, not the control API's JSON") from None
            if resp.status >= 400:
                error = data.get("error", {}) if isinstance(data, dict) else {}
                raise ControlRefused(resp.status, error.get("reason", "error"), error.get("detail", ""))
            return data

    # -- platform -----------------------------------------------------------------------------------
    async def health(self) -> dict:
        return await self.request("GET", "health")

    async def info(self) -> dict:
        return await self.request("GET", "info")

    async def reset(self) -> None:
        await self.request("POST", "reset")

    async def clock(self) -> dict:
        return await self.request("GET", "clock")

    async def advance(self, seconds: float) -> dict:
        return await self.request("POST", "clock/advance", {"seconds": seconds})

    async def limits(self) -> dict:
        return await self.request("GET", "limits")

    async def set_limits(self, **limits: Any) -> dict:
        return await self.request("PATCH", "limits", limits)

    async def update_number(self, phone_number_id: str, **fields: Any) -> dict:
        return await self.request("PATCH", f"numbers/{phone_number_id}", fields)

    async def restrict(self, phone_number_id: str, type: str, seconds: float = 7 * 86400) -> dict:
        return await self.request("POST", f"numbers/{phone_number_id}/restrictions",
                                  {"type": type, "seconds": seconds})

    async def inject(self, **faults: int) -> dict:
        return await self.request("POST", "faults", faults)

    # -- users ----------------------------------------------------------------------------------
    async def users(self) -> list[dict]:
        return (await self.request("GET", "users"))["data"]

    async def create_user(self, wa_id: str, **fields: Any) -> dict:
        return await self.request("POST", "users", {"wa_id": wa_id, **fields})

    async def update_user(self, wa_id: str, **fields: Any) -> dict:
        return await self.request("PATCH", f"users/{wa_id}", fields)

    async def send_message(self, wa_id: str, to: str, text: str) -> str:
        return (await self.request("POST", f"users/{wa_id}/messages", {"to": to, "text": text}))["message_id"]

    async def user_calls(self, wa_id: str, to: str, entry_point: str = "call_icon",
                         payload: str | None = None) -> str:
        body: dict[str, Any] = {"to": to, "entry_point": entry_point}
        if payload is not None:
            body["payload"] = payload
        return (await self.request("POST", f"users/{wa_id}/calls", body))["call_id"]

    async def reply_permission(self, wa_id: str, phone_number_id: str, response: str = "accept",
                               permanent: bool = False, via: str = "request") -> dict:
        return await self.request("POST", f"users/{wa_id}/permission_replies",
                                  {"phone_number_id": phone_number_id, "response": response,
                                   "permanent": permanent, "via": via})

    # -- calls ----------------------------------------------------------------------------------
    async def calls(self) -> list[dict]:
        return (await self.request("GET", "calls"))["data"]

    async def call(self, call_id: str) -> dict:
        return await self.request("GET", f"calls/{call_id}")

    async def answer(self, call_id: str) -> dict:
        return await self.request("POST", f"calls/{call_id}/answer")

    async def reject(self, call_id: str) -> dict:
        return await self.request("POST", f"calls/{call_id}/reject")

    async def hangup(self, call_id: str) -> dict:
        return await self.request("POST", f"calls/{call_id}/hangup")

    async def dtmf(self, call_id: str, digits: str) -> dict:
        return await self.request("POST", f"calls/{call_id}/dtmf", {"digits": digits})

    async def voicemail(self, call_id: str, seconds: float) -> dict:
        """If the call goes to voicemail, the user leaves a message of ``seconds``."""
        return await self.request("POST", f"calls/{call_id}/voicemail", {"seconds": seconds})

    async def webhooks(self, call_id: str | None = None, limit: int = 200) -> list[dict]:
        return (await self.request("GET", "webhooks", call_id=call_id, limit=limit))["data"]

    async def resend_webhook(self, outbox_id: int) -> dict:
        """Deliver a journal entry again (a new entry with the same body): the new entry."""
        return await self.request("POST", f"webhooks/{outbox_id}/resend")

    async def media_samples(self, call_id: str) -> list[dict]:
        return (await self.request("GET", f"calls/{call_id}/media/samples"))["data"]

    async def numbers(self) -> list[dict]:
        return (await self.request("GET", "numbers"))["data"]

    async def permissions(self, phone_number_id: str | None = None, wa_id: str | None = None) -> list[dict]:
        return (await self.request("GET", "permissions", phone_number_id=phone_number_id, wa_id=wa_id))["data"]

    async def stream(self, call_id: str | None = None) -> AsyncIterator[tuple[str, dict]]:
        """The live stream (``GET /_wacall/stream``, docs/console.md): ``(event, data)`` pairs, ``event`` one
        of ``call``, ``webhook``, ``clock``, until the server ends the stream or the caller stops iterating."""
        if self._session is None:
            await self.__aenter__()
        params = {"call_id": call_id} if call_id else {}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._session.get(f"{self.base}/stream", params=params, headers=self.headers,
                                     timeout=timeout) as resp:
            if resp.status >= 400:
                error = (await resp.json()).get("error", {})
                raise ControlRefused(resp.status, error.get("reason", "error"), error.get("detail", ""))
            event, data = "message", []
            async for raw in resp.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if data:
                        yield event, codec.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))

    # -- webhook faults (docs/control-api.md) ----------------------------------------------------
    async def webhook_faults(self) -> dict:
        return await self.request("GET", "webhooks/faults")

    async def set_webhook_faults(self, *rules: dict, seed: int | None = None, ordered: bool = False) -> dict:
        """Replace the plan: ``set_webhook_faults({"kind": "duplicate", "field": "calls"}, seed=7)``."""
        body: dict[str, Any] = {"rules": list(rules), "ordered": ordered}
        if seed is not None:
            body["seed"] = seed
        return await self.request("POST", "webhooks/faults", body)

    async def clear_webhook_faults(self) -> dict:
        return await self.request("DELETE", "webhooks/faults")
