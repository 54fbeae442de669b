"""``bridge.toml``: the bridge's configuration, read the way ``wacall.config`` reads ``wacall.toml`` (TOML tables
into dataclasses, unknown keys refused with the table's name, values checked at load). See docs/bridge.md.

    [graph]                       # Meta's Graph API, or wacall standing in for it
    base_url = "https://graph.facebook.com"
    version = "v23.0"
    phone_number_id = "106540352242922"
    token = "EAAG..."             # or token_env = "WA_TOKEN"

    [webhook]                     # where Meta delivers the calls field (behind the business's TLS proxy)
    host = "127.0.0.1"
    port = 8443
    path = "/webhook"
    app_secret = "..."            # or app_secret_env
    verify_token = "..."

    [sip]                         # the PBX side
    host = "127.0.0.1"            # the bridge's own SIP address (UDP)
    port = 5070
    pbx_host = "127.0.0.1"
    pbx_port = 5060
    domain = "pbx.example.com"    # the PBX's SIP domain (Request-URI and To host)
    extension = "c2b-sip"         # the bridging extension user-initiated calls go to
    from_domain = "whatsapp.bridge"
    number_from = "request-uri"   # business-initiated calls: the user's number in the INVITE (or "header:X-WA-To")
    transport = "udp"             # udp, tcp or tls toward the PBX (docs/bridge.md "SIP transport and registration")
    username = ""                 # digest credentials (registration, and INVITEs the PBX challenges)
    password = ""                 # or password_env = "PBX_PASSWORD"
    register = false              # true: REGISTER sip:<username>@<domain>; false: the PBX trusts the bridge's address
    tls_ca = ""                   # the CA file the PBX's certificate is checked against ("" : the system's CAs)

    [bridge]                      # operations (docs/bridge.md "Operating it")
    drain_seconds = 0             # SIGTERM: refuse new calls, let live ones finish this long, then end them
    state_dir = ""                # live calls kept here (SQLite) so a restart picks them up ("": not kept)

    [metrics]                     # Prometheus text format at http://host:port/metrics
    enabled = false
    host = "127.0.0.1"
    port = 9466                   # 0: any free port

    [media]
    mode = "rtpengine"            # or "builtin" (the bridge terminates ICE/DTLS-SRTP itself)
    rtpengine = "127.0.0.1:22222" # RtpEngine's ng listener (UDP)
    pbx_protocol = "RTP/AVP"      # RTP/AVP (plain) or RTP/SAVP (SDES) toward the PBX
    rtp_host = "127.0.0.1"        # builtin: the address both media legs bind and advertise
    transcode = []                # ["PCMU", "PCMA"]: G.711 offered to the PBX too, transcoded by RtpEngine
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from wacall.business.graph import GRAPH_URL, VERSION

MEDIA_MODES = ("rtpengine", "builtin")
PBX_PROTOCOLS = ("RTP/AVP", "RTP/SAVP")
SIP_TRANSPORTS = ("udp", "tcp", "tls")


@dataclass
class GraphSection:
    phone_number_id: str = ""
    token: str = ""
    token_env: str = ""
    base_url: str = GRAPH_URL
    version: str = VERSION
    permission_request: str = ""          # business-initiated calls without permission: this text is sent as
                                          # a call permission request ("" sends none)
    permission_checks_per_second: float = 5.0   # GET call_permissions paced to Meta's limit (5/s per number;
                                                # 613 above it); 0: not paced
    permission_wait_seconds: float = 10.0       # how long a PBX INVITE may wait for a rate-limited check
                                                # (capped below the PBX's INVITE timer, 64*T1)


@dataclass
class WebhookSection:
    app_secret: str = ""
    app_secret_env: str = ""
    verify_token: str = ""
    host: str = "127.0.0.1"
    port: int = 8443
    path: str = "/webhook"


@dataclass
class SipSection:
    pbx_host: str = "127.0.0.1"
    pbx_port: int = 5060
    domain: str = ""
    extension: str = "c2b-sip"
    host: str = "127.0.0.1"
    port: int = 5070
    from_domain: str = "whatsapp.bridge"
    t1: float = 0.5
    number_from: str = "request-uri"      # where the PBX's INVITE names the WhatsApp user: "request-uri" (its
                                          # user part) or "header:<Name>" (e.g. "header:X-WA-To")
    transport: str = "udp"                # udp, tcp or tls (RFC 3261 18)
    username: str = ""                    # digest username (also the user of the registered AOR and Contact)
    password: str = ""
    password_env: str = ""
    register: bool = False                # REGISTER with the PBX (else IP trust)
    register_expires: int = 600           # asked for; refreshed ahead of what the registrar grants
    register_retry: float = 30.0          # seconds before another REGISTER after a failure
    tls_ca: str = ""                      # CA file for the PBX's certificate ("": the system's CAs)
    tls_verify: bool = True               # False: the PBX's certificate is not checked (test PBXs only)
    tls_server_name: str = ""             # the name the PBX's certificate must carry (default: domain)
    tls_cert: str = ""                    # the bridge's certificate (PEM): its TLS listener, and a client
    tls_key: str = ""                     # certificate for a PBX that asks for one

    def check(self) -> None:
        """Refuse the [sip] values the UA cannot run with (ValueError naming the key)."""
        if self.password_env and not self.password:
            self.password = os.environ.get(self.password_env, "")
        if self.transport not in SIP_TRANSPORTS:
            raise ValueError(f"sip.transport must be one of {', '.join(SIP_TRANSPORTS)}, got {self.transport!r}")
        if self.register and not (self.username and self.password):
            raise ValueError("sip.register needs sip.username and sip.password (or sip.password_env)")
        if not isinstance(self.register_expires, int) or isinstance(self.register_expires, bool) \
                or not 1 <= self.register_expires <= 86400:
            raise ValueError(f"sip.register_expires must be 1..86400 seconds, got {self.register_expires!r}")
        if not isinstance(self.register_retry, (int, float)) or self.register_retry <= 0:
            raise ValueError(f"sip.register_retry must be a positive number of seconds, got {self.register_retry!r}")
        for key in ("register", "tls_verify"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"sip.{key} must be true or false")
        for key in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, key)
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise ValueError(f"sip.{key}: no such file {path!r}")
            setattr(self, key, os.path.expanduser(path) if path else "")
        if bool(self.tls_key) and not self.tls_cert:
            raise ValueError("sip.tls_key needs sip.tls_cert")


TRANSCODE_CODECS = ("PCMU", "PCMA")     # what RtpEngine may transcode Opus to toward the PBX


@dataclass
class MediaSection:
    mode: str = "rtpengine"
    rtpengine: str = "127.0.0.1:22222"
    pbx_protocol: str = "RTP/AVP"
    ng_timeout: float = 5.0
    rtp_host: str = "127.0.0.1"           # builtin: the address both media legs bind and advertise
    transcode: list = field(default_factory=list)   # rtpengine: G.711 toward a PBX without Opus ("PCMU", "PCMA")

    @property
    def rtpengine_address(self) -> tuple[str, int]:
        host, _, port = self.rtpengine.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass
class BridgeSection:
    drain_seconds: float = 0.0            # SIGTERM: new calls refused, live calls get this long to end by
                                          # themselves, then are ended (0: at once); a second signal: at once
    state_dir: str = ""                   # where live calls are kept (SQLite, written at each state change)
                                          # so that a restart, even after kill -9, picks them up ("": not kept)


@dataclass
class MetricsSection:
    enabled: bool = False                 # Prometheus text format at http://host:port/metrics
    host: str = "127.0.0.1"
    port: int = 9466                      # 0: any free port


@dataclass
class BridgeConfig:
    graph: GraphSection = field(default_factory=GraphSection)
    webhook: WebhookSection = field(default_factory=WebhookSection)
    sip: SipSection = field(default_factory=SipSection)
    media: MediaSection = field(default_factory=MediaSection)
    bridge: BridgeSection = field(default_factory=BridgeSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)

    def check(self) -> "BridgeConfig":
        """Refuse what the bridge cannot run with (ValueError naming the key); secrets from the environment."""
        if self.graph.token_env and not self.graph.token:
            self.graph.token = os.environ.get(self.graph.token_env, "")
        if self.webhook.app_secret_env and not self.webhook.app_secret:
            self.webhook.app_secret = os.environ.get(self.webhook.app_secret_env, "")
        for key, value in (("graph.phone_number_id", self.graph.phone_number_id), ("graph.token", self.graph.token),
                           ("webhook.app_secret", self.webhook.app_secret),
                           ("webhook.verify_token", self.webhook.verify_token)):
            if not value:
                raise ValueError(f"{key} is required")
        for key, port in (("webhook.port", self.webhook.port), ("sip.port", self.sip.port),
                          ("sip.pbx_port", self.sip.pbx_port)):
            if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
                raise ValueError(f"{key} must be a port number (0: any free port), got {port!r}")
        if self.media.mode not in MEDIA_MODES:
            raise ValueError(f"media.mode must be one of {', '.join(MEDIA_MODES)}, got {self.media.mode!r}")
        if self.media.pbx_protocol not in PBX_PROTOCOLS:
            raise ValueError(f"media.pbx_protocol must be one of {', '.join(PBX_PROTOCOLS)}")
        if not isinstance(self.media.transcode, list) or not set(self.media.transcode) <= set(TRANSCODE_CODECS):
            raise ValueError(f"media.transcode must be a list of {', '.join(TRANSCODE_CODECS)}, "
                             f"got {self.media.transcode!r}")
        try:
            self.media.rtpengine_address
        except ValueError:
            raise ValueError(f"media.rtpengine must be host:port, got {self.media.rtpengine!r}") from None
        if self.sip.number_from != "request-uri" and not (self.sip.number_from.startswith("header:")
                                                           and self.sip.number_from[7:].strip()):
            raise ValueError(f"sip.number_from must be request-uri or header:<Name>, got {self.sip.number_from!r}")
        for key, value in (("graph.permission_checks_per_second", self.graph.permission_checks_per_second),
                           ("graph.permission_wait_seconds", self.graph.permission_wait_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
                raise ValueError(f"{key} must be 0..3600, got {value!r}")
        if isinstance(self.bridge.drain_seconds, bool) or not isinstance(self.bridge.drain_seconds, (int, float)) \
                or not 0 <= self.bridge.drain_seconds <= 86400:
            raise ValueError(f"bridge.drain_seconds must be 0..86400, got {self.bridge.drain_seconds!r}")
        if not isinstance(self.bridge.state_dir, str):
            raise ValueError("bridge.state_dir must be a directory path (a string)")
        if not isinstance(self.metrics.enabled, bool):
            raise ValueError(f"metrics.enabled must be true or false, got {self.metrics.enabled!r}")
        if isinstance(self.metrics.port, bool) or not isinstance(self.metrics.port, int) \
                or not 0 <= self.metrics.port <= 65535:
            raise ValueError(f"metrics.port must be a port number (0: any free port), got {self.metrics.port!r}")
        if not self.webhook.path.startswith("/"):
            raise ValueError("webhook.path must start with /")
        if not self.sip.domain:
            self.sip.domain = self.sip.pbx_host
        self.sip.check()
        return self


def build_bridge_config(raw: dict) -> BridgeConfig:
    sections = {f.name: f.type for f in dataclasses.fields(BridgeConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"bridge config: unknown tables {', '.join(unknown)}")
    values = {}
    for name, cls in ((f.name, f.default_factory) for f in dataclasses.fields(BridgeConfig)):
        table = raw.get(name) or {}
        if not isinstance(table, dict):
            raise ValueError(f"[{name}] must be a table")
        keys = {f.name for f in dataclasses.fields(cls)}          # type: ignore[arg-type]
        extra = sorted(set(table) - keys)
        if extra:
            raise ValueError(f"[{name}]: unknown keys {', '.join(extra)}")
        values[name] = cls(**table)                               # type: ignore[operator]
    return BridgeConfig(**values).check()


def load_bridge_config(path: str | Path) -> BridgeConfig:
    text = Path(path).expanduser().read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return build_bridge_config(raw)


__all__ = ["BridgeConfig", "build_bridge_config", "load_bridge_config"]
