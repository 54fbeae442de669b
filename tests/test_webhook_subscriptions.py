"""App webhook subscriptions as on Meta: a new app has none; the business subscribes to the fields it
wants (POST /{app_id}/subscriptions merges fields), gets only those, and DELETE with fields removes just
those fields (Graph API reference, /{app-id}/subscriptions)."""

from __future__ import annotations

from support.harness import Receiver

ALICE = "447700900001"
BRUNO = "5511987650002"


def subscriptions(wa) -> list[dict]:
    response = wa.graph("GET", f"{wa.app_id}/subscriptions", token=wa.app_token)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def fields_of(wa) -> list[str]:
    return [f["name"] for s in subscriptions(wa) for f in s["fields"]]


def unsubscribe(wa, **params):
    return wa.graph("DELETE", f"{wa.app_id}/subscriptions", token=None,
                    params={"access_token": wa.app_token, **params})


def test_fresh_app_has_no_subscription_and_gets_no_webhook(wa):
    assert subscriptions(wa) == []
    listed = wa.graph("GET", f"{wa.waba_id}/subscribed_apps").json()["data"]
    assert [a["whatsapp_business_api_data"]["id"] for a in listed] == [wa.app_id]   # linked to its WABA...
    call = wa.user_calls(ALICE)
    assert call.status_code == 201, call.text
    assert wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": "hi"}).status_code == 201
    assert wa.graph("POST", f"{wa.pnid}/settings",
                    json={"calling": {"call_icon_visibility": "DEFAULT"}}).status_code == 200
    assert wa.ctl("GET", "webhooks").json()["data"] == []                          # ...but subscribed to nothing
    # and calling cannot be (re-)enabled until some app subscribes to `calls` (138018)
    enable = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"status": "ENABLED"}})
    assert enable.status_code == 400 and enable.json()["error"]["code"] == 138018, enable.text


def test_fields_calls_delivers_no_messages_then_merge_and_delete_with_fields(wa):
    rx = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
    try:
        assert wa.subscribe(rx.url, fields="calls").status_code == 200          # Meta's steps: calls only
        assert fields_of(wa) == ["calls"]
        assert wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"status": "ENABLED"}}).status_code == 200
        call_id = wa.user_calls(ALICE).json()["call_id"]
        hello = wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": "hi"}).json()["message_id"]
        rx.wait(lambda r: r.call_events(call_id), what="the connect webhook")
        journal = wa.ctl("GET", "webhooks").json()["data"]
        assert {i["field"] for i in journal} == {"calls"}    # no message, no permission reply, no settings
        assert rx.values("messages") == [] and rx.values("account_settings_update") == []

        # a later POST merges fields (Graph's semantics) without repeating the callback
        merged = wa.graph("POST", f"{wa.app_id}/subscriptions", token=None, params={
            "object": "whatsapp_business_account", "fields": "messages", "access_token": wa.app_token})
        assert merged.status_code == 200, merged.text
        assert sorted(fields_of(wa)) == ["calls", "messages"]
        second = wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": "again"}).json()["message_id"]
        rx.wait(lambda r: [m for v in r.values("messages") for m in v.get("messages", []) if m["id"] == second])
        assert not [m for v in rx.values("messages") for m in v.get("messages", []) if m["id"] == hello]

        # DELETE with fields removes just those; the callback and the other fields stay
        removed = unsubscribe(wa, object="whatsapp_business_account", fields="calls")
        assert removed.status_code == 200 and removed.json() == {"success": True}, removed.text
        subs = subscriptions(wa)
        assert fields_of(wa) == ["messages"] and subs[0]["callback_url"] == rx.url
        after = wa.user_calls(BRUNO).json()["call_id"]
        third = wa.ctl("POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "3"}).json()["message_id"]
        rx.wait(lambda r: [m for v in r.values("messages") for m in v.get("messages", []) if m["id"] == third])
        assert [i for i in wa.ctl("GET", f"webhooks?call_id={after}").json()["data"] if i["field"] == "calls"] == []

        # DELETE without fields: the whole object, as before
        assert unsubscribe(wa, object="whatsapp_business_account").json() == {"success": True}
        assert subscriptions(wa) == []
        assert rx.bad_signatures == 0
    finally:
        rx.stop()
