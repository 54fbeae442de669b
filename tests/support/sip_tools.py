"""Real external SIP software for the SIP gateway tests and bench/sip_flows.py.

Meta's ``wa.meta.vc`` speaks SIP over TLS only (calling-wire-spec §8). The tools here are the real
programs on the other side of wacall's gateway, each a class with ``start``/``stop`` and
context-manager use; every process is started in its own session and killed at teardown; logs go to
a work directory and their tails are part of every failure message.

* :func:`make_test_pki`: a ``wacall.certs.LocalCA`` and its leaves (``wa.meta.vc``, the businesses).
* :class:`Stunnel`: TLS in front of Debian's SIPp, which is built without TLS. Client mode (local
  plain TCP port → TLS to the target, verifying CA and host name) and server mode (TLS port → plain
  TCP to a local port).
* :class:`Sipp`: runs a scenario from ``tests/data/sipp`` and returns a :class:`SippResult`
  (exit code, successful/failed calls, elapsed seconds, the message trace).
* :class:`Baresip`: a headless business endpoint (TLS, SRTP-SDES mandatory, Opus, WAV in,
  recordings out, RFC 4733 in and out) driven over its ``ctrl_tcp`` JSON-netstring socket.
* :class:`Kamailio`: plays Meta's gateway for business-initiated calls (407 digest challenge, then
  200 OK with a canned SDES answer) from ``bench/kamailio/wa-meta-vc.cfg``: the benchmark baseline.
* :class:`FakeDns`: the DNS server baresip asks (and the only one), so ``wa.meta.vc`` in Meta's
  Record-Route resolves to the gateway and no query leaves the machine.

Scenarios (``tests/data/sipp``): ``bic_digest.xml`` (the full business-initiated call),
``bic_expect_status.xml`` (a template: :func:`expect_status_scenario`), ``bic_cancel.xml``,
``uas_401.xml`` (a business server challenging Meta with 401) and ``uas_meta_cancel.xml`` (a
ringing stand-in for Meta). :func:`bic_keys` / :func:`uas_keys` give their ``-key`` values.

Binaries come from Debian packages listed in ``scripts/apt-packages`` (found with ``shutil.which``);
ports are free ports picked by binding port 0 on 127.0.0.1. Everything stays on loopback.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import wave
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wacall.certs import LocalCA

ROOT = Path(__file__).resolve().parents[2]
SIPP_DIR = ROOT / "tests" / "data" / "sipp"
KAMAILIO_DIR = ROOT / "bench" / "kamailio"
META_HOST = "wa.meta.vc"
LOOPBACK = "127.0.0.1"


class ToolError(RuntimeError):
    """A tool could not start, or misbehaved; the message carries the tool's log tails."""


# -- small helpers ----------------------------------------------------------------------------------

def find_binary(name: str, package: str) -> str:
    """The absolute path of ``name``; a clear error naming the Debian package when it is missing."""
    for candidate in (name, f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        path = shutil.which(candidate)
        if path:
            return path
    raise ToolError(f"{name} not found: install the Debian package {package} (scripts/apt-packages)")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections' local ports)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()      # free_port's ports so far (a few hundred in a test run at most)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago, for a tool that takes its port on its command line (SIPp, baresip,
    Kamailio). Chosen at random below the kernel's ephemeral range: a port from that range (what binding to port 0
    gives) can be taken by any outgoing connection before the tool binds it (seen: SIPp's "Unable to bind main
    socket, errno = 98" among 20 SIPp processes connecting through stunnel in bench/sip_flows.py). A port this
    process handed out before is not handed out again: two tools started one after the other do not both get it
    before either binds it (40 SIPp processes drawing from ~22 000 ports: two alike about once in 30 steps; a step
    of bench/sip_flows.py --users 40 failed with errno 98, likely so)."""
    low = _ephemeral_low()
    for _ in range(100 if low > 11024 else 0):
        port = random.randrange(10000, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


def free_port_pair(host: str = LOOPBACK) -> int:
    """A port ``p`` with ``p`` (TCP and UDP) and ``p + 1`` (TCP) free: baresip's SIP listen port, whose
    TLS transport listens on ``p + 1``."""
    for _ in range(200):
        port = free_port(host)
        if port >= 65535 or port + 1 in _HANDED_OUT:
            continue
        socks = []
        try:
            for kind, p in ((socket.SOCK_STREAM, port), (socket.SOCK_DGRAM, port),
                            (socket.SOCK_STREAM, port + 1)):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((host, p))
            _HANDED_OUT.add(port + 1)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise ToolError("no free port pair found")


def _listening_ports() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket on the machine, from /proc/net/tcp."""
    found: set[tuple[str, int]] = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A":
            hex_addr, hex_port = parts[1].split(":")
            addr = socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1])
            found.add((addr, int(hex_port, 16)))
    return found


def is_listening(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP socket listens on ``host:port`` (or the wildcard), without connecting to it."""
    ports = _listening_ports()
    return (host, port) in ports or ("0.0.0.0", port) in ports


def tail(path: Path, max_chars: int = 4000) -> str:
    """The end of a log file (empty if it does not exist)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data[-max_chars:].decode("utf-8", "replace")
    return ("…" if len(data) > max_chars else "") + text


def render(template: str, values: Mapping[str, object]) -> str:
    """Replace every ``{{NAME}}`` in ``template``; an unfilled placeholder is an error."""
    out = template
    for key, value in values.items():
        out = out.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{[A-Z0-9_]+\}\}", out)
    if left:
        raise ToolError(f"template placeholders left unfilled: {sorted(set(left))}")
    return out


def header_values(message: str, name: str) -> list[str]:
    """The values of every ``name`` header in a SIP message's text (case-insensitive; the body is not read)."""
    head = re.split(r"\r?\n\r?\n", message, maxsplit=1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines()
            if line.lower().startswith(name.lower() + ":")]


def write_tone_wav(path: Path, freq: float = 440.0, seconds: float = 120.0, sample_rate: int = 48000,
                   amplitude: float = 0.3) -> Path:
    """A mono 16-bit WAV holding a sine tone (what baresip's ``aufile`` source plays)."""
    import numpy as np

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pcm = (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def sdes_offer_sdp(*, host: str = LOOPBACK, port: int = 40000, session_id: int | None = None,
                   key_b64: str | None = None) -> str:
    """An SDES SDP offer as a business sends it (calling-wire-spec §8.6): ``RTP/SAVP`` with an
    AES_CM_128_HMAC_SHA1_80 ``a=crypto`` line, opus/48000/2 on PT 111, telephone-event/8000 on PT
    126; CRLF line ends, no trailing CRLF (the SIPp scenarios add it)."""
    import base64

    sid = session_id if session_id is not None else int(time.time() * 1000) % 10**9
    key = key_b64 or base64.b64encode(os.urandom(30)).decode()
    lines = [
        "v=0", f"o=- {sid} {sid} IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0",
        f"m=audio {port} RTP/SAVP 111 126",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}",
        "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:126 telephone-event/8000", "a=fmtp:126 0-15", "a=ptime:20", "a=sendrecv",
    ]
    return "\r\n".join(lines)


def bic_keys(user: str, business: str, from_domain: str, sdp: str | None = None) -> dict[str, str]:
    """The ``-key`` values of ``bic_digest.xml``/``bic_expect_status.xml``/``bic_cancel.xml``: E.164
    digits without ``+`` for ``user`` and ``business``, the business's SIP host name, an SDP offer
    (:func:`sdes_offer_sdp` by default)."""
    return {"user": user.lstrip("+"), "business": business.lstrip("+"), "from_domain": from_domain,
            "sdp": sdp if sdp is not None else sdes_offer_sdp()}


def bic_auth_uri(user: str) -> str:
    """The digest ``uri`` Meta expects for a business-initiated call: the Request-URI."""
    return f"sip:+{user.lstrip('+')}@{META_HOST};transport=tls"


def uas_keys(business: str, password: str, contact: str, *, realm: str = "business.example.com",
             sdp: str | None = None) -> dict[str, str]:
    """The ``-key`` values of ``uas_401.xml``: the business digits (digest username), the
    ``sip_user_password``, the challenge realm, this server's Contact URI and the SDP answer."""
    return {"business": business.lstrip("+"), "password": password, "realm": realm, "contact": contact,
            "sdp": sdp if sdp is not None else sdes_offer_sdp(port=40002)}


def tls_peer_certificate(address: tuple[str, int], server_hostname: str, ca: Path,
                         timeout: float = 5.0) -> dict[str, Any]:
    """Handshake with ``address`` as Meta's and the businesses' TLS clients do (SNI and host-name
    check against ``server_hostname``, chain against ``ca``) and return the peer certificate
    (``ssl.getpeercert()``). Raises ``ssl.SSLCertVerificationError`` on a bad certificate: the
    check calling-wire-spec §8.1 runs with ``openssl s_client -verify_hostname``."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(address, timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.getpeercert() or {}


# -- PKI ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeafCert:
    """A leaf certificate: ``cert`` and ``key`` as separate PEM files, ``pem`` both in one file
    (what baresip's ``sip_certificate`` wants)."""

    hostnames: tuple[str, ...]
    cert: Path
    key: Path
    pem: Path


@dataclass
class TestPki:
    """A throw-away CA (``wacall.certs.LocalCA``) and leaves issued from it.

    ``meta`` covers ``wa.meta.vc`` and ``localhost`` (the gateway's certificate); ``business`` covers
    the business host names given to :func:`make_test_pki` and ``localhost``. Every leaf also covers
    127.0.0.1 and ::1. :meth:`issue` makes more.
    """

    __test__ = False  # not a pytest test class

    ca: LocalCA
    meta: LeafCert = field(init=False)
    business: LeafCert = field(init=False)

    @property
    def directory(self) -> Path:
        return Path(self.ca.directory)

    @property
    def ca_cert(self) -> Path:
        """``ca.pem``: what every TLS client here trusts."""
        return Path(self.ca.cert_path)

    def issue(self, hostnames: Sequence[str], name: str | None = None) -> LeafCert:
        """A leaf for ``hostnames`` (IP literals become IP SANs), written as ``<name>.pem``/``.key``
        and ``<name>.combined.pem`` in the CA directory."""
        stem = name or re.sub(r"[^A-Za-z0-9.-]+", "_", hostnames[0])
        cert_path, key_path = (Path(p) for p in self.ca.issue(list(hostnames), out=stem))
        pem = self.directory / f"{stem}.combined.pem"
        pem.write_bytes(cert_path.read_bytes() + key_path.read_bytes())
        return LeafCert(tuple(hostnames), cert_path, key_path, pem)


def make_test_pki(tmpdir: str | Path, hostnames: Iterable[str] = ()) -> TestPki:
    """Create (or reuse) a CA in ``tmpdir`` with ``wacall.certs.LocalCA`` (ECDSA P-256) and issue the
    ``wa.meta.vc`` leaf and one leaf for the given business host names."""
    pki = TestPki(LocalCA.load_or_create(Path(tmpdir)))
    pki.meta = pki.issue([META_HOST, "localhost"], "wa.meta.vc")
    pki.business = pki.issue([*(h for h in hostnames if h), "localhost"], "business")
    return pki


# -- process base ------------------------------------------------------------------------------------

class _Process:
    """A child process in its own session, stdout/stderr to ``<workdir>/<name>.{stdout,stderr}.log``."""

    name = "process"

    def __init__(self, workdir: str | Path | None = None) -> None:
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"wacall-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_log = self.workdir / f"{self.name}.stdout.log"
        self.stderr_log = self.workdir / f"{self.name}.stderr.log"

    # subclasses: start() builds argv and calls _spawn, then waits for readiness
    def _spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
               cwd: Path | None = None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise ToolError(f"{self.name} already running")
        with open(self.stdout_log, "ab") as out, open(self.stderr_log, "ab") as err:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=cwd or self.workdir, env=dict(env) if env else None,
                                         start_new_session=True)
        self.argv = list(argv)
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self, max_chars: int = 4000) -> str:
        """The tails of this tool's logs, for assertion messages."""
        parts = [f"== {self.name} (pid {self.pid}, workdir {self.workdir})"]
        if self.proc is not None:
            argv = [a if len(a) < 120 else a[:60] + "…" for a in getattr(self, "argv", [])]
            parts.append(f"argv: {' '.join(argv)}")
            parts.append(f"exit code: {self.proc.poll()}")
        for path in self._log_files():
            text = tail(path, max_chars)
            if text.strip():
                parts.append(f"-- {path.name}:\n{text}")
        return "\n".join(parts)

    def _log_files(self) -> list[Path]:
        return [self.stdout_log, self.stderr_log]

    def _wait_listening(self, ports: Iterable[int], timeout: float, host: str = LOOPBACK) -> None:
        pending = list(ports)
        deadline = time.monotonic() + timeout
        while pending:
            if not self.running:
                raise ToolError(f"{self.name} exited during start-up\n{self.logs()}")
            pending = [p for p in pending if not is_listening(p, host)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ToolError(f"{self.name} not listening on {pending} after {timeout}s\n{self.logs()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL to the tool's own process group (its children included)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc, signal.SIGKILL)  # stragglers in the group (kamailio's children)
        if proc.poll() is None:
            proc.wait(5)
        return proc.returncode

    def __enter__(self) -> Any:
        return self.start()  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Any:
        return await asyncio.to_thread(self.start)  # type: ignore[attr-defined]

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


_LIVE: "weakref.WeakSet[_Process]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Safety net for a crashed test run: kill every tool process still running at exit."""
    for tool in list(_LIVE):
        if tool.proc is not None and tool.proc.poll() is None:
            _signal_group(tool.proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the process group that ``proc`` leads (we started it with start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- stunnel -------------------------------------------------------------------------------------------

class Stunnel(_Process):
    """stunnel4 in the foreground, one service.

    Client mode (:meth:`client`): plain TCP on ``127.0.0.1:accept_port`` → TLS to ``target``,
    verifying the chain against ``ca`` and the peer's name (``checkHost``), sending SNI. Server mode
    (:meth:`server`): TLS on ``127.0.0.1:accept_port`` with ``cert``/``key`` → plain TCP to
    ``target``. ``accept_port`` is what SIPp connects to (client mode) or what wacall dials
    (server mode).
    """

    name = "stunnel"

    def __init__(self, *, mode: str, target: tuple[str, int], accept_port: int = 0,
                 ca: Path | None = None, check_host: str | None = None, sni: str | None = None,
                 cert: Path | None = None, key: Path | None = None, workdir: str | Path | None = None,
                 debug: int = 5) -> None:
        super().__init__(workdir)
        if mode not in ("client", "server"):
            raise ValueError(mode)
        self.mode, self.target = mode, target
        self.accept_port = accept_port or free_port()
        self.ca, self.check_host, self.sni, self.cert, self.key = ca, check_host, sni, cert, key
        self.debug = debug
        self.config = self.workdir / "stunnel.conf"
        self.pid_file = self.workdir / "stunnel.pid"

    @classmethod
    def client(cls, target: tuple[str, int], *, ca: Path, check_host: str | None = META_HOST,
               sni: str | None = None, accept_port: int = 0, workdir: str | Path | None = None,
               cert: Path | None = None, key: Path | None = None) -> "Stunnel":
        """Plain TCP in, TLS out to ``target`` (checks ``check_host``; SNI defaults to it)."""
        return cls(mode="client", target=target, accept_port=accept_port, ca=ca, check_host=check_host,
                   sni=sni if sni is not None else check_host, cert=cert, key=key, workdir=workdir)

    @classmethod
    def server(cls, target: tuple[str, int], *, cert: Path, key: Path, accept_port: int = 0,
               workdir: str | Path | None = None) -> "Stunnel":
        """TLS in (``cert``/``key``, no client certificate requested), plain TCP out to ``target``."""
        return cls(mode="server", target=target, accept_port=accept_port, cert=cert, key=key,
                   workdir=workdir)

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.accept_port)

    def config_text(self) -> str:
        lines = ["foreground = yes", f"pid = {self.pid_file}", f"debug = {self.debug}", "syslog = no",
                 "", "[sip]", f"accept = {LOOPBACK}:{self.accept_port}",
                 f"connect = {self.target[0]}:{self.target[1]}", "sslVersionMin = TLSv1.2",
                 "TIMEOUTclose = 0", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1"]
        if self.mode == "client":
            lines.append("client = yes")
            if self.ca:
                lines += [f"CAfile = {self.ca}", "verifyChain = yes"]
            if self.check_host:
                lines.append(f"checkHost = {self.check_host}")
            if self.sni:
                lines.append(f"sni = {self.sni}")
        if self.cert:
            lines.append(f"cert = {self.cert}")
        if self.key:
            lines.append(f"key = {self.key}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> "Stunnel":
        binary = find_binary("stunnel4", "stunnel4")
        self.config.write_text(self.config_text())
        self._spawn([binary, str(self.config)])
        self._wait_listening([self.accept_port], timeout)
        return self


# -- SIPp ----------------------------------------------------------------------------------------------

@dataclass
class SippResult:
    """What a SIPp run did. ``messages`` is the ``-trace_msg`` file; ``stat`` the last line of the
    ``-trace_stat`` CSV as a dict; ``logs`` the tails of every log for assertion messages."""

    returncode: int | None
    successful: int
    failed: int
    elapsed: float
    messages: str
    errors: str
    stat: dict[str, str]
    logs: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.successful > 0

    @property
    def calls_per_second(self) -> float:
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0

    def exchanged(self) -> list[tuple[str, str]]:
        """The traced messages in order as ``("sent"|"received", text)``."""
        out: list[tuple[str, str]] = []
        for block in re.split(r"^-{20,}.*$", self.messages, flags=re.M):
            m = re.match(r"\s*\S+ message (sent|received)[^\n]*\n\n?(.*)", block, flags=re.S)
            if m:
                out.append((m.group(1), m.group(2).strip("\r\n") + "\r\n"))
        return out

    def received(self) -> list[str]:
        return [text for direction, text in self.exchanged() if direction == "received"]

    def sent(self) -> list[str]:
        return [text for direction, text in self.exchanged() if direction == "sent"]

    def statuses(self) -> list[int]:
        """Status codes of the responses SIPp received, in order."""
        return [int(t.split()[1]) for t in self.received() if t.startswith("SIP/2.0 ")]

    def describe(self) -> str:
        return (f"sipp exit {self.returncode}: {self.successful} successful, {self.failed} failed, "
                f"{self.elapsed:.2f}s\n{self.logs}")

    def assert_ok(self, calls: int | None = None) -> "SippResult":
        assert self.ok, self.describe()
        if calls is not None:
            assert self.successful == calls, self.describe()
        return self


def scenario_path(name: str) -> Path:
    """``tests/data/sipp/<name>`` (``.xml`` may be left off)."""
    path = SIPP_DIR / (name if name.endswith(".xml") else f"{name}.xml")
    if not path.exists():
        raise ToolError(f"no SIPp scenario {path}")
    return path


def ere_escape(text: str) -> str:
    """Escape ``text`` for a POSIX extended regular expression (SIPp's ``<ereg>``)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text)


def render_scenario(name: str, workdir: Path, **values: object) -> Path:
    """Fill a scenario template's ``{{NAME}}`` placeholders (XML-escaped) and write it to ``workdir``.

    ``bic_expect_status.xml`` is such a template: SIPp cannot take the expected status code from a
    keyword, so each negative case renders its own copy (``STATUS``, ``REASON_RE``)."""
    from xml.sax.saxutils import escape

    src = scenario_path(name).read_text()
    text = render(src, {k: escape(str(v), {'"': "&quot;"}) for k, v in values.items()})
    suffix = "-".join(re.sub(r"[^A-Za-z0-9]+", "", str(v))[:12] for v in values.values())
    out = workdir / f"{Path(name).stem}-{suffix or 'rendered'}.xml"
    out.write_text(text)
    return out


def expect_status_scenario(workdir: Path, status: int, reason: str | None = None) -> Path:
    """``bic_expect_status.xml`` rendered for one final ``status`` (and, if given, the exact reason
    phrase, matched as a literal)."""
    return render_scenario("bic_expect_status.xml", workdir, STATUS=status,
                           REASON_RE=ere_escape(reason) if reason else ".*")


class Sipp(_Process):
    """One SIPp run of a scenario over TCP (``-t t1``: one connection for every call).

    As a UAC give ``remote`` (the local stunnel client's address); as a UAS leave it out and connect
    to :attr:`port`. ``keys`` become ``-key name value`` (the scenarios' custom ``[keywords]``; values
    may hold CRLF, e.g. ``sdp``). ``auth`` is ``(user, password)`` for ``-au``/``-ap``;
    ``auth_uri`` is passed as ``-auth_uri`` with any leading ``sip:`` removed, because SIPp prefixes
    ``sip:`` itself. The message, error, stat, screen and log traces go to the work directory.
    """

    name = "sipp"

    def __init__(self, scenario: str | Path, remote: tuple[str, int] | None = None, *,
                 calls: int = 1, rate: float | None = None, rate_period_ms: int | None = None,
                 limit: int | None = None, service: str | None = None,
                 auth: tuple[str, str] | None = None, auth_uri: str | None = None,
                 keys: Mapping[str, object] | None = None, pause_ms: int | None = None,
                 port: int = 0, transport: str = "t1", timeout: float = 30.0,
                 trace_msg: bool = True, extra: Sequence[str] = (),
                 workdir: str | Path | None = None) -> None:
        super().__init__(workdir)
        path = Path(scenario)
        self.scenario = path if path.is_absolute() or path.exists() else scenario_path(str(scenario))
        self.remote, self.calls, self.rate, self.rate_period_ms = remote, calls, rate, rate_period_ms
        self.limit, self.service, self.auth, self.auth_uri = limit, service, auth, auth_uri
        self.keys = dict(keys or {})
        self.pause_ms, self.transport, self.timeout = pause_ms, transport, timeout
        self.trace_msg, self.extra = trace_msg, list(extra)
        self.port = port or free_port()
        self.message_file = self.workdir / "messages.log"
        self.error_file = self.workdir / "errors.log"
        self.stat_file = self.workdir / "stat.csv"
        self.screen_file = self.workdir / "screen.log"
        self.log_file = self.workdir / "actions.log"
        self.started_at = 0.0
        self.result: SippResult | None = None

    def argv(self) -> list[str]:
        args = [find_binary("sipp", "sip-tester"), "-sf", str(self.scenario), "-t", self.transport,
                "-i", LOOPBACK, "-p", str(self.port), "-m", str(self.calls), "-nostdin",
                "-timeout", f"{self.timeout}s", "-timeout_error",
                "-trace_err", "-error_file", str(self.error_file), "-error_overwrite", "false",
                "-trace_stat", "-stf", str(self.stat_file), "-fd", "1",
                "-trace_screen", "-screen_file", str(self.screen_file), "-screen_overwrite", "false",
                "-trace_logs", "-log_file", str(self.log_file), "-log_overwrite", "false"]
        if self.trace_msg:
            args += ["-trace_msg", "-message_file", str(self.message_file), "-message_overwrite", "false"]
        if self.rate is not None:
            args += ["-r", f"{self.rate:g}"]
        if self.rate_period_ms is not None:
            args += ["-rp", str(self.rate_period_ms)]
        if self.limit is not None:
            args += ["-l", str(self.limit)]
        if self.service:
            args += ["-s", self.service]
        if self.auth:
            args += ["-au", self.auth[0], "-ap", self.auth[1]]
        if self.auth_uri:
            args += ["-auth_uri", self.auth_uri.removeprefix("sip:")]
        if self.pause_ms is not None:
            args += ["-d", str(self.pause_ms)]
        for key, value in self.keys.items():
            args += ["-key", key, str(value)]
        args += self.extra
        if self.remote:
            args.append(f"{self.remote[0]}:{self.remote[1]}")
        return args

    def start(self, timeout: float = 10.0) -> "Sipp":
        """Start SIPp; as a UAS (no ``remote``), return once it listens on :attr:`port`."""
        self.started_at = time.monotonic()
        self._spawn(self.argv())
        if self.remote is None:
            self._wait_listening([self.port], timeout)
        return self

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit (killing it after ``timeout``) and collect the result."""
        assert self.proc is not None, "start() first"
        limit = timeout if timeout is not None else self.timeout + 15
        try:
            self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.stop()
        return self._collect(time.monotonic() - self.started_at)

    def run(self, timeout: float | None = None) -> SippResult:
        """start() + wait()."""
        return self.start().wait(timeout)

    async def arun(self, timeout: float | None = None) -> SippResult:
        """run() in a worker thread, for async tests."""
        return await asyncio.to_thread(self.run, timeout)

    async def await_result(self, timeout: float | None = None) -> SippResult:
        """wait() in a worker thread, for async tests (after start())."""
        return await asyncio.to_thread(self.wait, timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        code = super().stop(timeout)
        if self.result is None and self.proc is not None:
            self._collect(time.monotonic() - self.started_at)
        return code

    def _collect(self, elapsed: float) -> SippResult:
        stat = self._last_stat()
        successful = int(stat.get("SuccessfulCall(C)", 0) or 0)
        failed = int(stat.get("FailedCall(C)", 0) or 0)
        if not stat:  # no CSV line (fatal start-up error): fall back on the screen
            screen = tail(self.screen_file, 20000)
            m = re.findall(r"Successful call\s+\|\s+\d+\s+\|\s+(\d+)", screen)
            n = re.findall(r"Failed call\s+\|\s+\d+\s+\|\s+(\d+)", screen)
            successful = int(m[-1]) if m else 0
            failed = int(n[-1]) if n else 0
        span = _epoch(stat.get("CurrentTime", "")) - _epoch(stat.get("StartTime", ""))
        if stat and span > 0:
            elapsed = span
        messages = self.message_file.read_text(errors="replace") if self.message_file.exists() else ""
        errors = self.error_file.read_text(errors="replace") if self.error_file.exists() else ""
        code = self.proc.returncode if self.proc else None
        self.result = SippResult(code, successful, failed, elapsed, messages, errors, stat, self.logs())
        return self.result

    def _last_stat(self) -> dict[str, str]:
        if not self.stat_file.exists():
            return {}
        rows = [r for r in self.stat_file.read_text(errors="replace").splitlines() if r.strip()]
        if len(rows) < 2:
            return {}
        header = rows[0].split(";")
        return dict(zip(header, rows[-1].split(";")))

    def _log_files(self) -> list[Path]:
        return [self.stderr_log, self.error_file, self.log_file, self.screen_file, self.message_file]


def _epoch(value: str) -> float:
    """The epoch seconds at the end of a SIPp stat time (``date<TAB>time<TAB>epoch``), 0.0 if absent."""
    try:
        return float(value.split("\t")[-1])
    except ValueError:
        return 0.0


# -- DNS ---------------------------------------------------------------------------------------------

class FakeDns:
    """A tiny DNS server on 127.0.0.1 (UDP) answering from its own records, for baresip.

    Meta's Record-Route is ``<sip:wa.meta.vc;transport=tls;lr>``: a real UA sends ACK and BYE to
    that host, resolving ``_sips._tcp.wa.meta.vc`` (SRV) and then the A record (RFC 3263). With
    :meth:`add_host` ``("wa.meta.vc", tls_port=<gateway TLS port>)`` those lookups land on the gateway.
    Unknown names get NXDOMAIN, so no query ever leaves the machine. :attr:`queries` logs
    ``(name, type)`` of every question.
    """

    TYPES = {1: "A", 28: "AAAA", 33: "SRV", 35: "NAPTR"}

    def __init__(self) -> None:
        self.a: dict[str, str] = {}
        self.srv: dict[str, list[tuple[int, int, int, str]]] = {}
        self.queries: list[tuple[str, str]] = []
        self.port = 0
        self._sock: socket.socket | None = None
        self._thread: Any = None
        self._stopping = False

    def add_host(self, name: str, ip: str = LOOPBACK, *, tls_port: int | None = None,
                 tcp_port: int | None = None, udp_port: int | None = None) -> "FakeDns":
        """An A record for ``name`` and SRV records for the SIP transports given a port
        (``_sips._tcp``/``_sip._tls`` for TLS, ``_sip._tcp``, ``_sip._udp``)."""
        name = name.lower().rstrip(".")
        self.a[name] = ip
        for services, port in ((("_sips._tcp", "_sip._tls"), tls_port), (("_sip._tcp",), tcp_port),
                               (("_sip._udp",), udp_port)):
            if port:
                for service in services:
                    self.srv[f"{service}.{name}"] = [(0, 0, port, name)]
        return self

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def start(self) -> "FakeDns":
        import threading

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "FakeDns":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping:
            try:
                data, peer = self._sock.recvfrom(1500)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self.answer(data)
            except (IndexError, ValueError):
                continue
            if reply:
                self._sock.sendto(reply, peer)

    @staticmethod
    def _encode_name(name: str) -> bytes:
        return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"

    def answer(self, query: bytes) -> bytes:
        """The response to one DNS query message."""
        import struct

        qid, flags, qdcount = struct.unpack("!HHH", query[:6])
        if qdcount != 1 or flags & 0x8000:
            return b""
        labels, i = [], 12
        while query[i]:
            labels.append(query[i + 1:i + 1 + query[i]].decode("ascii", "replace"))
            i += 1 + query[i]
        qtype, _qclass = struct.unpack("!HH", query[i + 1:i + 5])
        question = query[12:i + 5]
        name = ".".join(labels).lower()
        self.queries.append((name, self.TYPES.get(qtype, str(qtype))))
        answers: list[bytes] = []
        if qtype == 1 and name in self.a:
            answers.append(struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(self.a[name]))
        elif qtype == 33 and name in self.srv:
            for prio, weight, port, target in self.srv[name]:
                rdata = struct.pack("!HHH", prio, weight, port) + self._encode_name(target)
                answers.append(struct.pack("!HHHIH", 0xC00C, 33, 1, 60, len(rdata)) + rdata)
        known = name in self.a or name in self.srv
        rcode = 0 if known else 3
        header = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)


# -- baresip -------------------------------------------------------------------------------------------

@dataclass
class BaresipEvent:
    """One ctrl_tcp event: ``type`` (CALL_INCOMING, CALL_ESTABLISHED, CALL_DTMF_START, …),
    ``param`` (the digit for CALL_DTMF_START, the reason for CALL_CLOSED) and the whole message."""

    type: str
    param: str
    raw: dict[str, Any]

    @property
    def call_id(self) -> str | None:
        return self.raw.get("id")


class Baresip(_Process):
    """baresip 1.0 as a headless SIP endpoint on 127.0.0.1, scripted over ``ctrl_tcp``.

    One account ``<sip:{user}@{domain};transport=tls>`` with auto-answer, SRTP-SDES mandatory
    (``mediaenc=srtp-mand``: AES_CM_128_HMAC_SHA1_80) and Opus only (``audio_codecs`` changes that:
    ``("PCMU/8000", "PCMA/8000")`` loads only the g711 module, a legacy endpoint without Opus). It
    plays ``source_wav`` (48 kHz mono; a 120 s tone is generated when none is given — baresip *hangs
    up* when the file ends) and
    records both directions with the ``sndfile`` module into :attr:`recordings_dir`
    (``dump-<time>-dec.wav`` = what it received, ``-enc.wav`` = what it sent). Received RFC 4733
    digits arrive as ``CALL_DTMF_START`` events (param = the digit) followed by ``CALL_DTMF_END``;
    :meth:`received_digits` collects them.

    It listens for SIP on ``sip_port`` (UDP/TCP) and ``sip_port + 1`` (TLS: :attr:`tls_port`) with
    ``cert`` (cert+key PEM) and trusts ``ca`` (but baresip 1.0 does not verify server certificates).
    For calls to Meta give ``auth_user``/``auth_pass`` and ``tls_hosts={"wa.meta.vc": <gateway TLS
    port>}``: its own :class:`FakeDns` (:attr:`dns`, the only DNS server it asks) then resolves
    ``wa.meta.vc`` (SRV ``_sips._tcp`` + A) to the gateway, for the INVITE and for ACK/BYE sent
    along Meta's Record-Route ``<sip:wa.meta.vc;transport=tls;lr>``. ``outbound`` (e.g.
    ``sip:127.0.0.1:5061;transport=tls``) only steers the initial INVITE.

    Use ``async with Baresip(...) as b`` (or ``await b.start()`` / ``await b.stop()``).
    """

    name = "baresip"

    def __init__(self, *, user: str, domain: str, ca: Path, cert: Path | None = None,
                 auth_user: str | None = None, auth_pass: str | None = None,
                 outbound: str | None = None, answermode: str = "auto", mediaenc: str = "srtp-mand",
                 source_wav: Path | None = None, tone_hz: float = 440.0, record: bool = True,
                 workdir: str | Path | None = None, extra_config: Mapping[str, str] | None = None,
                 account_params: Mapping[str, str] | None = None, sip_trace: bool = True,
                 dns: FakeDns | None = None, tls_hosts: Mapping[str, int] | None = None,
                 audio_codecs: Sequence[str] = ("opus/48000/2",)) -> None:
        super().__init__(workdir)
        self.audio_codecs = tuple(audio_codecs)
        self.sip_trace = sip_trace
        self._own_dns = dns is None
        self.dns = dns or FakeDns()
        for host, port in (tls_hosts or {}).items():
            self.dns.add_host(host, tls_port=port)
        self.user, self.domain, self.ca, self.cert = user, domain, ca, cert
        self.auth_user, self.auth_pass, self.outbound = auth_user, auth_pass, outbound
        self.answermode, self.mediaenc, self.tone_hz, self.record = answermode, mediaenc, tone_hz, record
        self.source_wav = source_wav
        self.extra_config = dict(extra_config or {})
        self.account_params = dict(account_params or {})
        self.config_dir = self.workdir / "config"
        # sndfile builds "<snd_path>/dump-<timestamp>-enc.wav" in a 128-byte buffer: keep it short
        self.recordings_dir = self.workdir / "rec"
        if len(str(self.recordings_dir)) > 90:
            self.recordings_dir = Path(tempfile.mkdtemp(prefix="bsrec-", dir="/tmp"))
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.sip_port = 0
        self.ctrl_port = 0
        self.events_log = self.workdir / "baresip.events.jsonl"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._events: list[BaresipEvent] = []
        self._event_cond: asyncio.Condition | None = None
        self._responses: asyncio.Queue[dict[str, Any]] | None = None
        self._token = 0

    # properties ------------------------------------------------------------------------------
    @property
    def tls_port(self) -> int:
        return self.sip_port + 1

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact_uri(self) -> str:
        """Where to send a call to this endpoint over TLS."""
        return f"sip:{self.user}@{LOOPBACK}:{self.tls_port};transport=tls"

    @property
    def history(self) -> list[BaresipEvent]:
        """Every event received so far (:meth:`events` iterates them as they come)."""
        return list(self._events)

    def recordings(self) -> dict[str, list[Path]]:
        """``{"dec": [...], "enc": [...]}``: received (decoded) and sent (encoded) audio, oldest first."""
        files = sorted(self.recordings_dir.glob("dump-*.wav"), key=lambda p: p.stat().st_mtime)
        return {kind: [p for p in files if p.name.endswith(f"-{kind}.wav")] for kind in ("dec", "enc")}

    def received_digits(self) -> str:
        """The RFC 4733 digits received so far (one per CALL_DTMF_START)."""
        return "".join(e.param for e in self._events if e.type == "CALL_DTMF_START")

    # configuration -----------------------------------------------------------------------------
    def account_line(self) -> str:
        params = {"answermode": self.answermode, "mediaenc": self.mediaenc,
                  "audio_codecs": ",".join(self.audio_codecs), "regint": "0", "ptime": "20"}
        if self.auth_user:
            params["auth_user"] = self.auth_user
        if self.auth_pass:
            params["auth_pass"] = self.auth_pass
        if self.outbound:
            params["outbound"] = f'"{self.outbound}"'
        params.update(self.account_params)
        return f"<{self.aor};transport=tls>" + "".join(f";{k}={v}" for k, v in params.items())

    def config_text(self) -> str:
        assert self.source_wav is not None
        names = {c.split("/")[0].lower() for c in self.audio_codecs}
        codec_modules = [m for m, wanted in (("opus.so", "opus" in names),
                                             ("g711.so", bool(names & {"pcmu", "pcma"}))) if wanted]
        modules = ["account.so", "ctrl_tcp.so", *codec_modules, "srtp.so", "aufile.so", "aubridge.so", "menu.so"]
        if self.record:
            modules.insert(0, "sndfile.so")
        settings: dict[str, str] = {
            "poll_method": "epoll",
            "sip_listen": f"{LOOPBACK}:{self.sip_port}",
            "sip_cafile": str(self.ca),
            "net_interface": LOOPBACK,
            "call_local_timeout": "120",
            "call_max_calls": "4",
            "audio_player": "aubridge,nilb",
            "audio_source": f"aufile,{self.source_wav}",
            "audio_alert": "aubridge,nilb",
            "ausrc_srate": "48000",
            "auplay_srate": "48000",
            "ausrc_channels": "1",
            "auplay_channels": "1",
            "audio_buffer": "20-160",
            "rtp_ports": "20000-40000",
            "rtcp_mux": "no",
            "jitter_buffer_delay": "1-10",
            "module_path": "/usr/lib/baresip/modules",
            "ctrl_tcp_listen": f"{LOOPBACK}:{self.ctrl_port}",
            "dns_server": f"{LOOPBACK}:{self.dns.port}",
            "snd_path": str(self.recordings_dir),
            "opus_bitrate": "32000",
        }
        if self.cert:
            settings["sip_certificate"] = str(self.cert)
        settings.update(self.extra_config)
        lines = [f"{k}\t\t{v}" for k, v in settings.items()]
        lines += [f"module\t\t{m}" for m in modules if m not in ("account.so", "menu.so", "ctrl_tcp.so")]
        lines += ["module_tmp\t\taccount.so", "module_app\t\tmenu.so", "module_app\t\tctrl_tcp.so"]
        return "\n".join(lines) + "\n"

    # lifecycle ---------------------------------------------------------------------------------
    def _start_process(self, timeout: float) -> None:
        binary = find_binary("baresip", "baresip-core")
        if self._own_dns:
            self.dns.start()
        elif not self.dns.port:
            raise ToolError("a shared FakeDns must be started before baresip")
        self.sip_port = free_port_pair()
        self.ctrl_port = free_port()
        if self.source_wav is None:
            self.source_wav = write_tone_wav(self.workdir / f"tone-{int(self.tone_hz)}.wav", self.tone_hz)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "config").write_text(self.config_text())
        (self.config_dir / "accounts").write_text(self.account_line() + "\n")
        (self.config_dir / "contacts").write_text("")
        self._spawn([binary, "-f", str(self.config_dir), "-n", LOOPBACK, *(["-s"] if self.sip_trace else [])])
        self._wait_listening([self.ctrl_port, self.tls_port], timeout)

    async def start(self, timeout: float = 15.0) -> "Baresip":
        """Write the config, start baresip, connect to ctrl_tcp."""
        await asyncio.to_thread(self._start_process, timeout)
        self._event_cond = asyncio.Condition()
        self._responses = asyncio.Queue()
        self._reader, self._writer = await asyncio.open_connection(LOOPBACK, self.ctrl_port)
        self._read_task = asyncio.create_task(self._read_loop())
        return self

    async def stop(self, timeout: float = 3.0) -> int | None:  # type: ignore[override]
        """``quit`` over ctrl_tcp, then SIGTERM/SIGKILL (baresip sometimes ignores SIGTERM)."""
        if self._writer is not None and self.running:
            try:
                await asyncio.wait_for(self.command("quit"), 2.0)
            except Exception:
                pass
            for _ in range(int(timeout / 0.05)):
                if not self.running:
                    break
                await asyncio.sleep(0.05)
        if self._read_task is not None:
            self._read_task.cancel()
            try:
                await self._read_task
            except (asyncio.CancelledError, Exception):
                pass
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        code = await asyncio.to_thread(_Process.stop, self, 1.0)
        if self._own_dns:
            self.dns.stop()
        return code

    async def __aenter__(self) -> "Baresip":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> Any:
        raise TypeError("Baresip is async: use 'async with'")

    # ctrl_tcp ----------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        assert self._reader is not None and self._event_cond is not None and self._responses is not None
        with open(self.events_log, "a") as log:
            while True:
                try:
                    length = await self._reader.readuntil(b":")
                    size = int(length[:-1])
                    payload = await self._reader.readexactly(size + 1)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                try:
                    msg = json.loads(payload[:-1])
                except ValueError:
                    continue
                log.write(json.dumps(msg) + "\n")
                log.flush()
                if msg.get("response"):
                    await self._responses.put(msg)
                elif msg.get("event"):
                    event = BaresipEvent(str(msg.get("type", "")), str(msg.get("param", "")), msg)
                    async with self._event_cond:
                        self._events.append(event)
                        self._event_cond.notify_all()

    async def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Send one ctrl_tcp command and return its response (``ok``, ``data``)."""
        assert self._writer is not None and self._responses is not None, "start() first"
        self._token += 1
        token = str(self._token)
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._writer.write(str(len(body)).encode() + b":" + body + b",")
        await self._writer.drain()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ToolError(f"baresip: no response to {command!r}\n{self.logs()}")
            try:
                response = await asyncio.wait_for(self._responses.get(), left)
            except asyncio.TimeoutError:
                continue
            if response.get("token") == token:
                return response

    async def dial(self, uri: str) -> dict[str, Any]:
        """Place a call (``dial``); follow it with :meth:`wait_event`. baresip appends the account's
        URI parameters (``;transport=tls``) to every dialled URI, so a ``;transport=tls`` in ``uri``
        is dropped here rather than sent twice."""
        uri = re.sub(r";transport=tls(?=;|$)", "", uri, flags=re.I)
        response = await self.command("dial", uri)
        if not response.get("ok", False):
            raise ToolError(f"baresip: dial {uri} failed: {response}\n{self.logs()}")
        return response

    async def hangup(self) -> dict[str, Any]:
        """Hang up the current call."""
        return await self.command("hangup")

    async def accept(self) -> dict[str, Any]:
        """Answer the ringing call (only needed with ``answermode="manual"``)."""
        return await self.command("accept")

    async def send_dtmf(self, digits: str, gap: float = 0.25) -> None:
        """Send each digit as RFC 4733 (``sndcode``, one digit per command, ``gap`` seconds apart:
        several digits in one ``sndcode`` start every tone but only end the last)."""
        for digit in digits:
            response = await self.command("sndcode", digit)
            if not response.get("ok", False):
                raise ToolError(f"baresip: sndcode {digit} failed: {response}")
            await asyncio.sleep(gap)

    async def wait_event(self, type_: str, timeout: float = 10.0, *, after: int = 0,
                         param: str | None = None) -> BaresipEvent:
        """The first event of ``type_`` (at or after index ``after`` of :attr:`history`), waiting up to
        ``timeout`` seconds; the error message holds the events seen and the logs."""
        assert self._event_cond is not None, "start() first"

        def find() -> BaresipEvent | None:
            for e in self._events[after:]:
                if e.type == type_ and (param is None or e.param == param):
                    return e
            return None

        async with self._event_cond:
            try:
                await asyncio.wait_for(self._event_cond.wait_for(lambda: find() is not None), timeout)
            except asyncio.TimeoutError:
                seen = [(e.type, e.param) for e in self._events]
                raise ToolError(f"baresip: no {type_} within {timeout}s; events: {seen}\n{self.logs()}") from None
        found = find()
        assert found is not None
        return found

    async def events(self, start: int = 0) -> AsyncIterator[BaresipEvent]:
        """Every event from index ``start`` of :attr:`history` on, as they arrive (runs until the
        caller stops iterating: wrap it in ``asyncio.timeout``)."""
        assert self._event_cond is not None, "start() first"
        index = start
        while True:
            async with self._event_cond:
                await self._event_cond.wait_for(lambda: len(self._events) > index)
                batch = self._events[index:]
            for event in batch:
                yield event
            index += len(batch)

    def _log_files(self) -> list[Path]:
        return [self.stdout_log, self.stderr_log, self.events_log]


# -- kamailio ------------------------------------------------------------------------------------------

KAMAILIO_ANSWER_SDP = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
    "m=audio 3480 RTP/SAVP 111 126",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 maxaveragebitrate=20000;minptime=20;useinbandfec=1",
    "a=ptime:20", "a=maxptime:20", "a=rtpmap:126 telephone-event/8000", "a=sendrecv", "",
])


class Kamailio(_Process):
    """Kamailio as Meta's gateway for business-initiated calls (``bench/kamailio/wa-meta-vc.cfg``).

    Listens on TLS ``127.0.0.1:port`` with ``cert``/``key`` (the ``wa.meta.vc`` leaf). A new INVITE to
    ``…@wa.meta.vc`` gets 407 (realm ``wa.meta.vc``, qop auth, MD5); with valid credentials for
    ``password`` and a digest username equal to the From user without ``+`` it is answered with
    a stateless 200 OK carrying Meta's two Record-Routes, Meta's Contact and a canned SDES SDP; a bad
    username gets 403, a Request-URI host other than wa.meta.vc 404, a re-INVITE 500. ACK is
    absorbed, BYE answered 200. Runs in the foreground (``-DD -E``) with ``tcp_children`` TLS
    workers (``children`` only sizes UDP workers, and there is no UDP listener), its own runtime
    directory and pid file.
    """

    name = "kamailio"

    def __init__(self, *, cert: Path, key: Path, ca: Path, password: str, port: int = 0,
                 children: int = 2, tcp_children: int = 2, debug: int = 1, sdp: str = KAMAILIO_ANSWER_SDP,
                 shm_mb: int = 128, workdir: str | Path | None = None) -> None:
        super().__init__(workdir)
        self.cert, self.key, self.ca, self.password = cert, key, ca, password
        self.port = port or free_port()
        self.children, self.tcp_children = children, tcp_children
        self.debug, self.sdp, self.shm_mb = debug, sdp, shm_mb
        self.config = self.workdir / "kamailio.cfg"
        self.tls_config = self.workdir / "tls.cfg"
        self.pid_file = self.workdir / "kamailio.pid"
        self.runtime_dir = self.workdir / "run"

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @staticmethod
    def _kam_string(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")

    def write_config(self) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._~!*+=-]+", self.password):
            raise ToolError("kamailio baseline password: keep it to [A-Za-z0-9._~!*+=-]")
        mpath = next((p for p in ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules")
                      if Path(p).is_dir()), "/usr/lib/x86_64-linux-gnu/kamailio/modules")
        self.config.write_text(render((KAMAILIO_DIR / "wa-meta-vc.cfg").read_text(), {
            "DEBUG": self.debug, "CHILDREN": self.children, "TCP_CHILDREN": self.tcp_children, "HOST": LOOPBACK, "PORT": self.port,
            "MPATH": mpath, "TLS_CFG": self.tls_config, "SECRET": os.urandom(8).hex(),
            "PASSWORD": self.password, "SDP": self._kam_string(self.sdp),
        }))
        self.tls_config.write_text(render((KAMAILIO_DIR / "tls.cfg").read_text(),
                                          {"CERT": self.cert, "KEY": self.key, "CA": self.ca}))
        return self.config

    def start(self, timeout: float = 15.0) -> "Kamailio":
        binary = find_binary("kamailio", "kamailio")
        self.write_config()
        self.runtime_dir.mkdir(exist_ok=True)
        self._spawn([binary, "-DD", "-E", "-f", str(self.config), "-P", str(self.pid_file),
                     "-Y", str(self.runtime_dir), "-m", str(self.shm_mb), "-M", "8"])
        self._wait_listening([self.port], timeout)
        return self

    def check_config(self) -> str:
        """``kamailio -c``: the config check output (raises on errors)."""
        self.write_config()
        out = subprocess.run([find_binary("kamailio", "kamailio"), "-c", "-f", str(self.config)],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise ToolError(f"kamailio config check failed:\n{out.stderr[-4000:]}")
        return out.stderr

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the main process and its children (workers), from /proc."""
        if self.proc is None:
            return 0.0
        return process_tree_cpu_seconds(self.proc.pid)


def process_tree_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every live descendant, in seconds (/proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry.name))
        stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


__all__ = [
    "Baresip", "BaresipEvent", "FakeDns", "bic_auth_uri", "bic_keys", "uas_keys", "KAMAILIO_ANSWER_SDP", "Kamailio", "LeafCert", "META_HOST", "Sipp",
    "SippResult", "Stunnel", "TestPki", "ToolError", "expect_status_scenario", "find_binary",
    "free_port", "free_port_pair", "make_test_pki", "process_tree_cpu_seconds", "render_scenario",
    "scenario_path", "sdes_offer_sdp", "tls_peer_certificate", "write_tone_wav",
]
