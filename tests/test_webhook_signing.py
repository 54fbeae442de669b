"""Webhook bodies are signed the way Meta documents it, and verify both ways businesses check them.

Meta (Graph API Webhooks, "Validating Payloads"): "we generate the signature using an escaped unicode
version of the payload, with lowercase hex digits. If you just calculate against the decoded bytes,
you will end up with a different signature." So the body wacall sends is that escaped form: a verifier
that re-escapes the parsed payload (Meta's rule) and one that HMACs the raw bytes (pywa's) agree.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from pywa import utils as pywa_utils

ALICE = "447700900001"
JOAO = "5511900000777"
NAME = "João Ninguém 🌵"
TEXT = "Olá! Posso ligar às 15h? 👋🏽"


def hub_signature(secret: str, data: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def meta_rule_signature(secret: str, raw: bytes) -> str:
    """What Meta's docs tell a business to do: take the payload, escape every non-ASCII character as
    \\uXXXX with lowercase hex digits (UTF-16 code units, so an emoji is a surrogate pair), HMAC-SHA256."""
    text = json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)   # JSON.stringify
    escaped = []
    for ch in text:
        if ord(ch) < 0x80:
            escaped.append(ch)
        else:
            units = ch.encode("utf-16-be")
            escaped += [f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2)]
    return hub_signature(secret, "".join(escaped).encode("ascii"))


def test_non_ascii_webhook_verifies_under_metas_rule_and_raw_bytes(wa, receiver):
    secret = wa.info["app_secret"]
    created = wa.ctl("POST", "users", {"wa_id": JOAO, "name": NAME})
    assert created.status_code == 201, created.text
    sent = wa.ctl("POST", f"users/{JOAO}/messages", {"to": wa.pnid, "text": TEXT})
    assert sent.status_code == 201, sent.text
    call = wa.ctl("POST", f"users/{JOAO}/calls", {"to": wa.pnid, "entry_point": "call_icon"})
    assert call.status_code == 201, call.text
    call_id = call.json()["call_id"]

    message = receiver.wait(lambda r: [d for d in r.snapshot() if d.value.get("messages", [{}])[0].get("type")
                                       == "text"], what="the text message webhook")[0]
    connect = receiver.wait(lambda r: [d for d in r.snapshot() if any(
        c["id"] == call_id and c["event"] == "connect" for c in d.value.get("calls", []))], what="connect")[0]

    for delivery in (message, connect):
        header = next(v for k, v in delivery.headers.items() if k.lower() == "x-hub-signature-256")
        raw = delivery.raw
        # the body is the escaped form: pure ASCII, lowercase hex, surrogate pairs for astral characters
        assert raw.isascii()
        assert b"Jo\\u00e3o Ningu\\u00e9m \\ud83c\\udf35" in raw
        assert delivery.value["contacts"][0]["profile"]["name"] == NAME
        # Meta's documented rule and a raw-bytes check (pywa's own validator) both accept it
        assert meta_rule_signature(secret, raw) == header
        assert pywa_utils.webhook_updates_validator(app_secret=secret, request_body=raw, x_hub_signature=header)
        # and the check can fail: the raw UTF-8 form (what an unescaped body would be) signs differently
        utf8 = json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False).encode()
        assert hub_signature(secret, utf8) != header
        assert not pywa_utils.webhook_updates_validator(app_secret=secret, request_body=utf8, x_hub_signature=header)

    assert message.value["messages"][0]["text"]["body"] == TEXT
    assert b"\\ud83d\\udc4b\\ud83c\\udffd" in message.raw          # 👋🏽: two astral characters, lowercase
    assert receiver.bad_signatures == 0

    # the journal keeps the exact bytes: its body parses to what arrived
    item = next(i for i in wa.ctl("GET", "webhooks").json()["data"]
                if i["call_id"] == call_id and i["field"] == "calls")
    assert item["body"] == connect.body
