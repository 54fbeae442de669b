"""The one config loader: the built-in default, with a ``wacall.toml`` merged over it that holds only what
differs (WABAs, numbers, apps, users, the limits profile, webhook delivery, the pricing rate card...).
See docs/configuration.md."""

from __future__ import annotations

import dataclasses
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers

from .domain import fields
from .domain.limits import Limits
from .domain.model import App, PhoneNumber, User, Waba
from .domain.pricing import DEFAULT_RATES, RateCard
from .domain.settings import default_calling_settings
from .domain.state import KEEP_ENDED
from .graph.versions import GraphVersions
from .webhooks.settings import WebhookDelivery

DEFAULT_PORT = 8080          # the Graph and control APIs of the default instance
DEFAULT_SIP_PORT = 5061      # the SIP gateway of the default instance (docs/configuration.md, "Ports")


@dataclass
class SipGatewayConfig:
    """``[sip]``: the gateway playing wa.meta.vc (docs/configuration.md)."""
    domain: str = "wa.meta.vc"
    port: int | None = None                # None: 5061 beside --port 8080, else any free port (sip_port_for);
                                           # 0: any free port; -1: no SIP gateway
    pki_dir: str = "~/.wacall/pki"         # the local CA and the gateway's certificate (wacall cert)
    hosts: dict[str, str] = field(default_factory=dict)   # business hostnames -> loopback addresses
    trust: list[str] = field(default_factory=list)        # extra CA files for business servers
    t1: float = 0.5                        # RFC 3261 T1; 64*T1 ends a dialog whose 200 is never ACKed
    idle_timeout: float = 300.0            # close a connection quiet this long (CRLF keep-alives count); 0: never
    max_connections: int = 512             # incoming SIP/TLS connections at once; more are refused; 0: no limit
    handshake_timeout: float = 10.0        # a client must finish its TLS handshake within this

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse values the transport cannot run with (ValueError names the key)."""
        if not self.handshake_timeout > 0:
            raise ValueError(f"sip.handshake_timeout must be > 0, got {self.handshake_timeout}")
        if self.idle_timeout < 0 or self.max_connections < 0:
            raise ValueError("sip.idle_timeout and sip.max_connections must be >= 0 (0: off)")
        if self.port is not None and (not fields.is_number(self.port, integer=True) or not -1 <= self.port <= 65535):
            raise ValueError(f"sip.port must be a TCP port number (0: any free port, -1: no SIP gateway), "
                             f"got {self.port!r}")

    def port_for(self, graph_port: int) -> int:
        """The port the gateway listens on: the configured one, else 5061 beside the default Graph port 8080
        (the default instance), else any free port (so ``--port 0`` or a second instance on another port
        never collides with a running default one)."""
        if self.port is not None:
            return self.port
        return DEFAULT_SIP_PORT if graph_port == DEFAULT_PORT else 0


@dataclass
class ServerConfig:
    """``[server]``: who may reach the Graph and control APIs (docs/configuration.md, "Exposure")."""
    allowed_hosts: list[str] = field(default_factory=list)   # Host header names accepted besides loopback
    control_token: str | None = None       # when set, the control API demands "Authorization: Bearer <token>"


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
    media_port: int = 0          # the relay's shared UDP port (worker i: port + i); 0: any free port
    media_fastpath: bool = True  # [media] fastpath: established legs' packets in C (False: all in Python)
    server: ServerConfig = field(default_factory=ServerConfig)
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)
    keep_ended: int = KEEP_ENDED  # [memory] ended calls and done messages kept in memory (older: read from the store)
    graph: GraphVersions = field(default_factory=GraphVersions)   # [graph] the Graph API versions served


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


def region_of(e164_digits: str) -> str:
    """ISO country of a number; fictional ranges (e.g. UK 07700 900xxx) fall back to the calling code's."""
    try:
        parsed = phonenumbers.parse("+" + e164_digits)
    except phonenumbers.NumberParseException:
        return "ZZ"
    return (phonenumbers.region_code_for_number(parsed)
            or phonenumbers.region_code_for_country_code(parsed.country_code) or "ZZ")


def _take(table: dict, cls, keys: set[str]) -> dict:
    unknown = set(table) - keys
    if unknown:
        raise ValueError(f"{cls}: unknown keys {', '.join(sorted(unknown))}")
    return table


def _keys_of(table_class) -> set[str]:
    """The keys a ``[table]`` read into a dataclass takes: its fields."""
    return {f.name for f in dataclasses.fields(table_class)}


def build_config(raw: dict) -> Config:
    limits_raw = dict(raw.get("limits") or {})
    limits = Limits.for_profile(limits_raw.pop("profile", "production"), **limits_raw)
    wabas = [Waba(**_take(w, "wabas", {"id", "name", "currency", "timezone_id"})) for w in _tables(raw, "wabas")]
    for waba in wabas:
        waba.id = str(waba.id)
    numbers = []
    for i, n in enumerate(_tables(raw, "numbers")):
        _take(n, "numbers", {"id", "waba_id", "display_phone_number", "verified_name", "country",
                             "messaging_limit", "is_test_number", "allowed_recipients", "payment_method", "calling"})
        with _where(f"numbers[{i}]"):
            digits = fields.phone(n["display_phone_number"], "display_phone_number")
            settable = fields.check_number_fields({k: n[k] for k in fields.NUMBER_SETTABLE if k in n})
            if not isinstance(n.get("verified_name", ""), str) or not isinstance(n.get("calling", {}), dict):
                raise ValueError("verified_name must be a string and calling a table")
        calling = default_calling_settings(False)
        calling.update(n.get("calling") or {})
        numbers.append(PhoneNumber(
            id=str(n["id"]), waba_id=str(n["waba_id"]), display_phone_number=digits,
            verified_name=n.get("verified_name", "Business"), country=settable.get("country") or region_of(digits),
            messaging_limit=settable.get("messaging_limit", 100000),
            is_test_number=settable.get("is_test_number", False),
            allowed_recipients=settable.get("allowed_recipients", []),
            payment_method=settable.get("payment_method", True), calling=calling))
    apps = []
    for i, a in enumerate(_tables(raw, "apps")):
        _take(a, "apps", {"id", "name", "secret", "access_token", "verify_token", "waba_ids", "permissions",
                          "subscribed_to", "callback_url", "fields", "require_appsecret_proof"})
        app = App(id=str(a["id"]), name=a.get("name", "App"), secret=a["secret"], access_token=a["access_token"],
                  verify_token=a.get("verify_token", ""), waba_ids=[str(w) for w in a.get("waba_ids", [])])
        if "permissions" in a:
            app.permissions = list(a["permissions"])
        app.require_appsecret_proof = a.get("require_appsecret_proof", False)
        if not isinstance(app.require_appsecret_proof, bool):
            raise ValueError(f"apps[{i}].require_appsecret_proof must be true or false")
        if "callback_url" in a or "fields" in a:
            # A new Meta app has no webhook subscription until the business subscribes (POST
            # /{app_id}/subscriptions or the App Dashboard); a config may declare one, e.g. for tests.
            app.subscriptions["whatsapp_business_account"] = {
                "object": "whatsapp_business_account", "callback_url": a.get("callback_url"),
                "verify_token": a.get("verify_token", ""), "active": True, "fields": list(a.get("fields", []))}
        for waba in wabas:
            if waba.id in [str(w) for w in a.get("subscribed_to", [])]:
                waba.subscribed_apps.append(app.id)
        apps.append(app)
    users = []
    for i, u in enumerate(_tables(raw, "users")):
        with _where(f"users[{i}]"):
            if "wa_id" not in u or "name" not in u:
                raise ValueError("wa_id and name are required")
            u = fields.check_user_fields(u)
        users.append(User(**{**u, "country": u.get("country") or region_of(u["wa_id"])}))
    pricing = raw.get("pricing") or {}
    rates = {str(code): [(int(t[0]), float(t[1])) for t in tiers]
             for code, tiers in (pricing.get("rates") or DEFAULT_RATES).items()}
    webhooks = WebhookDelivery(**_take(dict(raw.get("webhooks") or {}), "webhooks", _keys_of(WebhookDelivery)))
    return Config(wabas=wabas, numbers=numbers, apps=apps, users=users, limits=limits,
                  rate_card=RateCard(currency=pricing.get("currency", "USD"), rates=rates), webhooks=webhooks,
                  sip=SipGatewayConfig(**_take(dict(raw.get("sip") or {}), "sip", _keys_of(SipGatewayConfig))),
                  server=_server_config(raw.get("server") or {}),
                  recordings=_recordings(raw.get("recordings") or {}),
                  keep_ended=_keep_ended(raw.get("memory") or {}),
                  graph=GraphVersions(**_take(dict(raw.get("graph") or {}), "graph", _keys_of(GraphVersions))),
                  **_media(raw.get("media") or {}))


def _media(table: dict) -> dict:
    media = _take(dict(table), "media", {"workers", "port", "fastpath"})
    workers, port, fastpath = media.get("workers", 0), media.get("port", 0), media.get("fastpath", True)
    if not isinstance(fastpath, bool):
        raise ValueError("media.fastpath must be true or false")
    if not fields.is_number(workers, integer=True) or workers < 0:
        raise ValueError("media.workers must be a whole number of processes, 0 or more")
    if not fields.is_number(port, integer=True) or not 0 <= port <= 65535:
        raise ValueError("media.port must be a UDP port number (0: any free port)")
    return {"media_workers": workers, "media_port": port, "media_fastpath": fastpath}


def _server_config(table: dict) -> ServerConfig:
    _take(table, "server", _keys_of(ServerConfig))
    hosts, token = table.get("allowed_hosts", []), table.get("control_token")
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ValueError("server.allowed_hosts must be a list of host names")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("server.control_token must be a non-empty string")
    return ServerConfig(allowed_hosts=list(hosts), control_token=token)


def _keep_ended(table: dict) -> int:
    value = _take(table, "memory", {"keep_ended"}).get("keep_ended", KEEP_ENDED)
    if not fields.is_number(value, integer=True) or value < 0:
        raise ValueError("memory: keep_ended must be a non-negative integer")
    return value


def _recordings(table: dict) -> RecordingsConfig:
    _take(table, "recordings", _keys_of(RecordingsConfig))
    config = RecordingsConfig(dir=str(table.get("dir", "")),
                              retention_seconds=float(table.get("retention_seconds", 7 * 86400.0)),
                              max_seconds=float(table.get("max_seconds", 180.0)))
    if not (config.retention_seconds >= 0 and 0 <= config.max_seconds <= 86400):
        raise ValueError("recordings: retention_seconds must be >= 0 and max_seconds between 0 and 86400")
    return config


TOP_LEVEL = {"limits", "wabas", "numbers", "apps", "users", "pricing", "webhooks", "sip", "server", "recordings",
             "memory", "media", "graph"}


class ConfigError(ValueError):
    """A config file that is not what docs/configuration.md describes; the message names the file, the line
    (when it can be found) and the key."""


def merged(default: dict, override: dict) -> dict:
    """``override`` over ``default``: tables merge key by key (recursively); anything else, arrays of tables
    (``[[users]]``, ``[[numbers]]``...) included, replaces the default's value as a whole."""
    out = dict(default)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None) -> Config:
    """The built-in default, with the file at ``path`` (if any) merged over it (:func:`merged`). A file that
    cannot be read or is not what docs/configuration.md describes raises :class:`ConfigError` (a
    ValueError) with a sentence naming the file, the line and the key, never another exception."""
    raw = tomllib.loads(DEFAULT_TOML)
    if not path:
        return build_config(raw)
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read it ({exc})") from None
    try:
        mine = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:       # its message says "(at line L, column C)"
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    unknown = sorted(set(mine) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{name}{_line_of(text, unknown[0])}: unknown key {unknown[0]!r} (the tables are "
                          f"{', '.join(sorted(TOP_LEVEL))})")
    try:
        return build_config(merged(raw, mine))
    except KeyError as exc:
        message = f"a required key is missing: {exc}"
    except (TypeError, AttributeError, IndexError, OverflowError) as exc:
        message = f"a value has the wrong type ({exc})"
    except ValueError as exc:
        message = str(exc)
    raise ConfigError(f"{name}{_line_of(text, message)}: {message}") from None


def _line_of(text: str, message: str) -> str:
    """Best effort: the line of the key a message names (``users[1]: on_whatsapp ...``, ``sip.port ...``,
    ``media: ...``), as ``":L"``, or ``""`` when it cannot be found."""
    import re

    match = re.match(r"(?:(\w+)\[(\d+)\]|(\w+)[.:]? ?)(?::\s*|\.)?(\w+)?", message)
    if not match:
        return ""
    table, index, plain, key = match.group(1) or match.group(3), match.group(2), match.group(3), match.group(4)
    lines = text.splitlines()
    start, seen = None, -1
    for i, line in enumerate(lines):
        stripped = line.strip()
        if index is not None and stripped == f"[[{table}]]":
            seen += 1
            if seen == int(index):
                start = i
                break
        elif index is None and plain and (stripped == f"[{plain}]" or stripped.startswith(f"[{plain}.")):
            start = i
            break
    if start is None:
        for i, line in enumerate(lines):        # a top-level key (``users = 5``)
            if re.match(rf"\s*{re.escape(table or '')}\s*=", line):
                return f":{i + 1}"
        return _key_line(lines, message)
    if key:
        for i in range(start + 1, len(lines)):
            stripped = lines[i].strip()
            if stripped.startswith("["):
                break
            if re.match(rf"{re.escape(key)}\s*=", stripped):
                return f":{i + 1}"
    return _key_line(lines, message, start + 1) or f":{start + 1}"


def _key_line(lines: list[str], message: str, after: int = 0) -> str:
    """The first line from ``after`` on that sets a key the message names (``unknown keys bogus``)."""
    import re

    for word in re.findall(r"[A-Za-z_]\w*", message):
        for i in range(after, len(lines)):
            if re.match(rf"\s*{re.escape(word)}\s*=", lines[i]):
                return f":{i + 1}"
    return ""


def _tables(raw: dict, name: str) -> list[dict]:
    """``[[name]]``: a list of tables."""
    items = raw.get(name, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{name} must be an array of tables ([[{name}]])")
    return items


@contextmanager
def _where(place: str):
    """Prefix a ValueError raised inside with where in the file it happened."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"{place}: {exc}") from None
