"""Webhook subscriptions: which app hears which field of a WABA's events, and at which URL.

This is business state, decided here; the webhooks layer only renders and delivers what
:meth:`SubscriptionRules.webhook_targets` decides. As Meta has it, an app gets a WABA's webhooks when it
is subscribed to the WABA (``POST /{waba_id}/subscribed_apps``) and to the field (``POST
/{app_id}/subscriptions`` with ``object=whatsapp_business_account``,
https://developers.facebook.com/docs/graph-api/webhooks/getting-started), at the most specific URL it
set: the number's override, then the WABA's override for the app, then the app's callback
(https://developers.facebook.com/docs/whatsapp/embedded-signup/webhooks/override).
"""

from __future__ import annotations

from .model import App, PhoneNumber, Waba
from .state import PlatformState


class SubscriptionRules(PlatformState):
    def webhook_targets(self, field: str, number: PhoneNumber) -> list[tuple[str, str]]:
        """(app_id, url) for every subscribed app that wants ``field`` and has somewhere to receive it."""
        waba = self.wabas[number.waba_id]
        out = []
        for app_id in waba.subscribed_apps:
            app = self.apps.get(app_id)
            if app is None or field not in app.subscribed_fields():
                continue
            url = None
            if number.override_callback and number.override_callback.get("app_id", app_id) == app_id:
                url = number.override_callback.get("override_callback_uri")
            url = url or (waba.app_overrides.get(app_id) or {}).get("override_callback_uri")
            url = url or (app.subscriptions.get("whatsapp_business_account") or {}).get("callback_url")
            if url:
                out.append((app_id, url))
        return out

    # -- POST/DELETE /{waba_id}/subscribed_apps ---------------------------------------------------------
    def subscribe_waba(self, app: App, waba: Waba, override: dict | None) -> None:
        """Subscribe ``app`` to the WABA; ``override`` (``override_callback_uri``, ``verify_token``) replaces
        the app's URL for this WABA, or drops a previous override when None."""
        if app.id not in waba.subscribed_apps:
            waba.subscribed_apps.append(app.id)
        if override:
            waba.app_overrides[app.id] = override
        else:
            waba.app_overrides.pop(app.id, None)
        self.put(waba)

    def unsubscribe_waba(self, app: App, waba: Waba) -> None:
        waba.subscribed_apps = [a for a in waba.subscribed_apps if a != app.id]
        waba.app_overrides.pop(app.id, None)
        self.put(waba)

    # -- POST/DELETE /{app_id}/subscriptions -------------------------------------------------------------
    def subscribe_app(self, app: App, obj: str, callback_url: str | None, verify_token: str | None,
                      fields: list[str]) -> None:
        """Add ``fields`` to the app's subscription to ``obj`` (they merge with the ones it has); a new
        ``callback_url`` and ``verify_token`` replace the old ones, absent ones keep them."""
        existing = app.subscriptions.get(obj) or {}
        merged = sorted(set(existing.get("fields", [])) | set(fields)) if fields else existing.get("fields", [])
        app.subscriptions[obj] = {"object": obj, "callback_url": callback_url or existing.get("callback_url"),
                                  "verify_token": str(verify_token or existing.get("verify_token", "")),
                                  "fields": merged, "active": True}
        self.put(app)

    def unsubscribe_app(self, app: App, obj: str | None, fields: set[str]) -> None:
        """Without ``fields`` drop the subscription to ``obj`` (every object when ``obj`` is None); with
        ``fields`` drop just those, and the callback stays."""
        for name in [obj] if obj else list(app.subscriptions):
            if not fields:
                app.subscriptions.pop(name, None)
            elif name in app.subscriptions:
                sub = app.subscriptions[name]
                sub["fields"] = [f for f in sub.get("fields", []) if f not in fields]
        self.put(app)
