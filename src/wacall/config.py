"""The one config loader: the built-in default, or a ``wacall.toml`` describing WABAs, numbers, apps,
users, the limits profile, webhook delivery and the pricing rate card. See docs/configuration.md."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from .domain.limits import Limits
from .domain.model import App, PhoneNumber, User, Waba
from .domain.pricing import DEFAULT_RATES, RateCard
from .domain.settings import default_calling_settings


@dataclass
class WebhookDelivery:
    timeout_seconds: float = 20.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    give_up_after_seconds: float = 7 * 86400.0
    verify_timeout_seconds: float = 5.0


@dataclass
class SipGatewayConfig:
    """``[sip]``: the gateway playing wa.meta.vc (docs/configuration.md)."""
    domain: str = "wa.meta.vc"
    port: int = 5061                       # 0: any free port; -1: no SIP gateway
    pki_dir: str = "~/.wacall/pki"         # the local CA and the gateway's certificate (wacall cert)
    hosts: dict[str, str] = field(default_factory=dict)   # business hostnames -> loopback addresses
    trust: list[str] = field(default_factory=list)        # extra CA files for business servers
    t1: float = 0.5                        # RFC 3261 T1; 64*T1 ends a dialog whose 200 is never ACKed


@dataclass
class RecordingsConfig:
    """``[recordings]``: what each user heard, one file per call (docs/configuration.md)."""
    dir: str = ""                          # "": next to the database (<db>.recordings/); a temporary one for :memory:
    retention_seconds: float = 7 * 86400.0  # removed this long (virtual time) after the call's last audio
    max_seconds: float = 180.0             # recorded per call (the first minutes); 0 records nothing


@dataclass
class Config:
    wabas: list[Waba]
    numbers: list[PhoneNumber]
    apps: list[App]
    users: list[User]
    limits: Limits
    rate_card: RateCard
    webhooks: WebhookDelivery = field(default_factory=WebhookDelivery)
    sip: SipGatewayConfig = field(default_factory=SipGatewayConfig)
    media_workers: int = 0       # 0: media in the server process; N: N worker processes
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)
    keep_ended: int = 1000       # [memory] ended calls and done messages kept in memory (older: read from the store)


DEFAULT_TOML = """
[limits]
profile = "production"

[[wabas]]
id = "102290129340398"
name = "Lucky Shrub"
currency = "USD"

[[numbers]]
id = "106540352242922"
waba_id = "102290129340398"
display_phone_number = "+44 7700 900123"
verified_name = "Lucky Shrub"
messaging_limit = 100000
calling = { status = "ENABLED", callback_permission_status = "ENABLED" }

[[apps]]
id = "1234567890123456"
name = "Lucky Shrub Support"
secret = "wacall-app-secret-0123456789abcdef"
access_token = "EAAwacall0000default0000token"
verify_token = "wacall-verify-token"
waba_ids = ["102290129340398"]
subscribed_to = ["102290129340398"]

[[users]]
wa_id = "447700900001"
name = "Alice Smith"

[[users]]
wa_id = "5511987650002"
name = "Bruno Costa"

[[users]]
wa_id = "919876500003"
name = "Chitra Rao"
platform = "ios"

[[users]]
wa_id = "14155550004"
name = "Dave Miller"
incoming = "reject"

[[users]]
wa_id = "4915200000005"
name = "Eva Becker"
device = "companion"

[[users]]
wa_id = "6281200000006"
name = "Farah Old Phone"
client_version = "2.23.20.0"
"""


def _digits(value: Any) -> str:
    return "".join(ch for ch in str(value) if ch.isdigit())


def region_of(e164_digits: str) -> str:
    """ISO country of a number; fictional ranges (e.g. UK 07700 900xxx) fall back to the calling code's."""
    try:
        parsed = phonenumbers.parse("+" + e164_digits)
    except phonenumbers.NumberParseException:
        return "ZZ"
    return (phonenumbers.region_code_for_number(parsed)
            or phonenumbers.region_code_for_country_code(parsed.country_code) or "ZZ")


def _take(table: dict, cls, fields: set[str]) -> dict:
    unknown = set(table) - fields
    if unknown:
        raise ValueError(f"{cls}: unknown keys {', '.join(sorted(unknown))}")
    return table


def build_config(raw: dict) -> Config:
    limits_raw = dict(raw.get("limits") or {})
    limits = Limits.for_profile(limits_raw.pop("profile", "production"), **limits_raw)
    wabas = [Waba(**_take(w, "wabas", {"id", "name", "currency", "timezone_id"})) for w in raw.get("wabas", [])]
    for waba in wabas:
        waba.id = str(waba.id)
    numbers = []
    for n in raw.get("numbers", []):
        _take(n, "numbers", {"id", "waba_id", "display_phone_number", "verified_name", "country",
                             "messaging_limit", "is_test_number", "allowed_recipients", "payment_method", "calling"})
        digits = _digits(n["display_phone_number"])
        calling = default_calling_settings(False)
        calling.update(n.get("calling") or {})
        numbers.append(PhoneNumber(
            id=str(n["id"]), waba_id=str(n["waba_id"]), display_phone_number=digits,
            verified_name=n.get("verified_name", "Business"), country=n.get("country") or region_of(digits),
            messaging_limit=int(n.get("messaging_limit", 100000)), is_test_number=bool(n.get("is_test_number", False)),
            allowed_recipients=[_digits(r) for r in n.get("allowed_recipients", [])],
            payment_method=bool(n.get("payment_method", True)), calling=calling))
    apps = []
    for a in raw.get("apps", []):
        _take(a, "apps", {"id", "name", "secret", "access_token", "verify_token", "waba_ids", "permissions",
                          "subscribed_to", "callback_url", "fields"})
        app = App(id=str(a["id"]), name=a.get("name", "App"), secret=a["secret"], access_token=a["access_token"],
                  verify_token=a.get("verify_token", ""), waba_ids=[str(w) for w in a.get("waba_ids", [])])
        if "permissions" in a:
            app.permissions = list(a["permissions"])
        app.subscriptions["whatsapp_business_account"] = {
            "object": "whatsapp_business_account", "callback_url": a.get("callback_url"),
            "verify_token": a.get("verify_token", ""), "active": True,
            "fields": list(a.get("fields", ["calls", "messages", "account_settings_update"]))}
        for waba in wabas:
            if waba.id in [str(w) for w in a.get("subscribed_to", [])]:
                waba.subscribed_apps.append(app.id)
        apps.append(app)
    users = []
    for u in raw.get("users", []):
        _take(u, "users", {"wa_id", "name", "country", "platform", "client_version", "device", "on_whatsapp",
                           "tos_accepted", "incoming", "answer_after", "permission_requests", "reply_after",
                           "audio"})
        wa_id = _digits(u["wa_id"])
        users.append(User(**{**u, "wa_id": wa_id, "country": u.get("country") or region_of(wa_id)}))
    pricing = raw.get("pricing") or {}
    rates = {str(code): [(int(t[0]), float(t[1])) for t in tiers]
             for code, tiers in (pricing.get("rates") or DEFAULT_RATES).items()}
    webhooks = WebhookDelivery(**(raw.get("webhooks") or {}))
    return Config(wabas=wabas, numbers=numbers, apps=apps, users=users, limits=limits,
                  rate_card=RateCard(currency=pricing.get("currency", "USD"), rates=rates), webhooks=webhooks,
                  sip=SipGatewayConfig(**_take(dict(raw.get("sip") or {}), "sip",
                                               {"domain", "port", "pki_dir", "hosts", "trust", "t1"})),
                  media_workers=int(_take(dict(raw.get("media") or {}), "media", {"workers"}).get("workers", 0)),
                  recordings=_recordings(raw.get("recordings") or {}),
                  keep_ended=_keep_ended(raw.get("memory") or {}))


def _keep_ended(table: dict) -> int:
    value = _take(table, "memory", {"keep_ended"}).get("keep_ended", 1000)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("memory: keep_ended must be a non-negative integer")
    return value


def _recordings(table: dict) -> RecordingsConfig:
    _take(table, "recordings", {"dir", "retention_seconds", "max_seconds"})
    config = RecordingsConfig(dir=str(table.get("dir", "")),
                              retention_seconds=float(table.get("retention_seconds", 7 * 86400.0)),
                              max_seconds=float(table.get("max_seconds", 180.0)))
    if not (config.retention_seconds >= 0 and 0 <= config.max_seconds <= 86400):
        raise ValueError("recordings: retention_seconds must be >= 0 and max_seconds between 0 and 86400")
    return config


def load_config(path: str | Path | None = None) -> Config:
    text = Path(path).read_text() if path else DEFAULT_TOML
    return build_config(tomllib.loads(text))
