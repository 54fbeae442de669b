"""The real programs around ``wacall bridge`` in its tests: RtpEngine (Debian's ``rtpengine-daemon``, userspace
only), Kamailio as the PBX (registrar and proxy over UDP, ``tests/data/bridge/kamailio-pbx.cfg``), baresip as the
agent's phone registered to it over UDP, and the bridge itself as a subprocess. Everything on 127.0.0.1, free
ports, each process in its own session and killed at teardown (``sip_tools._Process``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from support.sip_tools import (LOOPBACK, Baresip, ToolError, _Process, find_binary, free_port, render)

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parents[2]
KAMAILIO_PBX_CFG = ROOT / "tests" / "data" / "bridge" / "kamailio-pbx.cfg"


def free_udp_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def udp_bound(port: int, host: str = LOOPBACK) -> bool:
    """Whether a UDP socket is bound to ``host:port`` (or the wildcard), from /proc/net/udp."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        hex_addr, hex_port = line.split()[1].split(":")
        addr = socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1])
        if int(hex_port, 16) == port and addr in (host, "0.0.0.0"):
            return True
    return False

def bridge_toml(info: dict, *, sip: str, media: str, graph: str = "") -> str:
    """A ``bridge.toml`` toward the wacall of ``info`` (``wacall serve --json``: its Graph URL, number, token, app
    secret and verify token), webhook listener on a free port; ``sip`` and ``media`` are those tables' lines,
    ``graph`` more ``[graph]`` lines."""
    return f"""
[graph]
base_url = "{info['graph_url']}"
phone_number_id = "{info['phone_number_id']}"
token = "{info['access_token']}"
{graph}

[webhook]
host = "127.0.0.1"
port = 0
app_secret = "{info['app_secret']}"
verify_token = "{info['verify_token']}"

[sip]
{sip}

[media]
{media}
"""


def pbx_sip(pbx: "PbxKamailio", extra: str = "") -> str:
    """``[sip]`` lines for the bridge beside :class:`PbxKamailio` over UDP (its bridging extension, its domain)."""
    return (f'host = "127.0.0.1"\nport = {pbx.bridge_port}\npbx_host = "127.0.0.1"\npbx_port = {pbx.port}\n'
            f'domain = "{pbx.domain}"\nextension = "{pbx.extension}"\n{extra}')


def rtpengine_media(rtpengine: "RtpEngineDaemon", extra: str = "") -> str:
    return f'mode = "rtpengine"\nrtpengine = "{rtpengine.address}"\n{extra}'



class _UdpProcess(_Process):
    def _wait_udp(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ToolError(f"{self.name} exited early\n{self.logs()}")
            if udp_bound(port):
                return
            time.sleep(0.05)
        raise ToolError(f"{self.name}: UDP {port} not bound within {timeout}s\n{self.logs()}")


class RtpEngineDaemon(_UdpProcess):
    """``rtpengine`` in the foreground, no kernel module (``--table=-1``), ng on a free UDP port, media ports
    from a range of ``span`` ports starting at a free one."""

    name = "rtpengine"

    def __init__(self, *, span: int = 60, workdir: str | Path | None = None) -> None:
        super().__init__(workdir)
        self.ng_port = 0
        self.span = span

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.ng_port}"

    def start(self, timeout: float = 15.0) -> "RtpEngineDaemon":
        binary = find_binary("rtpengine", "rtpengine-daemon")
        self.ng_port = free_udp_port()
        low = free_udp_port()
        low = min(low, 65535 - self.span) & ~1
        self._spawn([binary, "--config-file=none", "--foreground", "--log-stderr", "--table=-1",
                     f"--interface={LOOPBACK}", f"--listen-ng={LOOPBACK}:{self.ng_port}",
                     f"--port-min={low}", f"--port-max={low + self.span}", f"--log-level={os.environ.get('WACALL_RTPENGINE_LOG', '6')}",
                     f"--pidfile={self.workdir / 'rtpengine.pid'}"])
        self._wait_udp(self.ng_port, timeout)
        return self


class PbxKamailio(_UdpProcess):
    """Kamailio as the business's PBX: registrar and proxy on UDP; ``extension`` rings the ``agent``; a number
    dialled as ``+<digits>`` goes to the bridge at ``bridge_port`` (chosen here: the bridge starts later)."""

    name = "kamailio-pbx"

    def __init__(self, *, domain: str = "pbx.example.com", extension: str = "c2b-sip", agent: str = "agent",
                 debug: int = 2, workdir: str | Path | None = None) -> None:
        super().__init__(workdir)
        self.domain, self.extension, self.agent, self.debug = domain, extension, agent, debug
        self.port = 0
        self.bridge_port = free_udp_port()
        self.config = self.workdir / "kamailio-pbx.cfg"

    def write_config(self) -> Path:
        mpath = next((p for p in ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules")
                      if Path(p).is_dir()), "/usr/lib/x86_64-linux-gnu/kamailio/modules")
        self.config.write_text(render(KAMAILIO_PBX_CFG.read_text(), {
            "DEBUG": self.debug, "HOST": LOOPBACK, "PORT": self.port, "DOMAIN": self.domain, "MPATH": mpath,
            "EXTENSION": self.extension, "AGENT": self.agent, "BRIDGE": f"{LOOPBACK}:{self.bridge_port}"}))
        return self.config

    def start(self, timeout: float = 15.0) -> "PbxKamailio":
        binary = find_binary("kamailio", "kamailio")
        self.port = free_udp_port()
        self.write_config()
        (self.workdir / "run").mkdir(exist_ok=True)
        self._spawn([binary, "-DD", "-E", "-f", str(self.config), "-P", str(self.workdir / "kamailio.pid"),
                     "-Y", str(self.workdir / "run"), "-m", "32", "-M", "8"])
        self._wait_udp(self.port, timeout)
        return self


#: ``audio_codecs`` of a phone without Opus (baresip loads only its g711 module): PCMU only, 8 kHz.
PCMU_ONLY = ("PCMU/8000",)


class AgentPhone(Baresip):
    """baresip as the agent's phone: registers ``sip:{user}@{domain}`` with the PBX over UDP, plain RTP, Opus,
    manual answer (it rings; the test answers with :meth:`accept`).

    ``audio_codecs=PCMU_ONLY`` makes a phone that speaks no Opus (its recordings are then 8 kHz: see
    :meth:`heard`); ``srtp=True`` one that insists on SDES-SRTP (``mediaenc=srtp-mand``: it offers and accepts
    only ``RTP/SAVP`` with ``a=crypto``). baresip sends RFC 4733 digits with :meth:`send_dtmf` and reports the
    ones it receives in :meth:`received_digits` / :meth:`wait_digits`."""

    name = "agent"

    def __init__(self, *, user: str, domain: str, registrar: tuple[str, int], srtp: bool = False, **kwargs) -> None:
        super().__init__(user=user, domain=domain, answermode="manual", mediaenc="srtp-mand" if srtp else "",
                         **kwargs)
        self.registrar = registrar

    def account_line(self) -> str:
        host, port = self.registrar
        menc = f";mediaenc={self.mediaenc}" if self.mediaenc else ""
        return (f"<sip:{self.user}@{self.domain}>;outbound=\"sip:{host}:{port};transport=udp\";"
                f"regint=600;answermode={self.answermode};audio_codecs={','.join(self.audio_codecs)};ptime=20"
                f"{menc}")

    @property
    def sample_rate(self) -> int:
        """The rate of its recordings: 48000 with Opus, 8000 for a G.711-only phone."""
        return 48000 if any(c.lower().startswith("opus") for c in self.audio_codecs) else 8000

    def heard(self) -> "np.ndarray":
        """What the phone received in its (only) call so far, mono int16 at :attr:`sample_rate`."""
        [received] = self.recordings()["dec"]
        return read_wav(received)

    async def wait_digits(self, count: int, timeout: float = 10.0) -> str:
        """The RFC 4733 digits received, once there are ``count`` of them (or what came within ``timeout``:
        the caller compares, so a missing digit shows in the assertion)."""
        deadline = time.monotonic() + timeout
        while len(self.received_digits()) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if len(self.received_digits()) >= count:
            await asyncio.sleep(0.3)                    # a digit too many would show now
        return self.received_digits()


    async def wait_registered(self, timeout: float = 10.0) -> None:
        """Until the registrar's 200 OK (baresip logs ``[1 binding]``; it may come before ctrl_tcp is up)."""
        deadline = time.monotonic() + timeout
        while "binding]" not in self.stdout_log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise ToolError(f"agent not registered within {timeout}s\n{self.logs()}")
            await asyncio.sleep(0.05)


def read_wav(data: "bytes | Path") -> "np.ndarray":
    """A WAV file or its bytes as mono int16 samples (the left channel of a stereo file)."""
    import io
    import wave

    import numpy as np
    with wave.open(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm[::2] if w.getnchannels() == 2 else pcm


def user_sends_digits(wa, call_id: str, digits: str) -> None:
    """The WhatsApp user presses ``digits`` (wacall sends them as RFC 4733 events on the call's media)."""
    response = wa.ctl("POST", f"calls/{call_id}/dtmf", {"digits": digits})
    assert response.status_code == 200, response.text


def digits_heard_by_user(wa, call_id: str, count: int, timeout: float = 10.0) -> str:
    """The RFC 4733 digits wacall's user received from the business side, once there are ``count`` of them
    (or what came within ``timeout``). Blocking: call through ``asyncio.to_thread``."""
    def digits() -> str:
        return "".join(d["digit"] for d in wa.call(call_id)["media"]["digits_received"])
    deadline = time.monotonic() + timeout
    while len(digits()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    if len(digits()) >= count:
        time.sleep(0.3)
    return digits()


class BridgeProcess(_Process):
    """``python -m wacall bridge --config <file> --json``; :attr:`info` is its ready line."""

    name = "bridge"

    def __init__(self, config_text: str, workdir: str | Path | None = None, *, args: tuple[str, ...] = ()) -> None:
        super().__init__(workdir)
        self.config_path = self.workdir / "bridge.toml"
        self.config_path.write_text(config_text)
        self.info: dict = {}
        self.args = tuple(args)                   # more command-line options (e.g. "--log-json")

    def start(self, timeout: float = 20.0) -> "BridgeProcess":
        self._spawn([sys.executable, "-m", "wacall", "bridge", "--config", str(self.config_path), "--json",
                     "--log-level", "DEBUG", *self.args], env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout_log.read_text() if self.stdout_log.exists() else ""
            for line in text.splitlines():
                if line.startswith("{"):
                    self.info = json.loads(line)
                    return self
            if self.proc is not None and self.proc.poll() is not None:
                raise ToolError(f"bridge exited\n{self.logs()}")
            time.sleep(0.05)
        raise ToolError(f"bridge not ready within {timeout}s\n{self.logs()}")

    def log_text(self) -> str:
        return self.stderr_log.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (graceful: the bridge ends its live calls)."""
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.stop()


__all__ = ["AgentPhone", "BridgeProcess", "PCMU_ONLY", "PbxKamailio", "RtpEngineDaemon", "digits_heard_by_user",
           "free_port", "free_udp_port", "read_wav", "user_sends_digits"]


@contextlib.asynccontextmanager
async def bridge_chain(wa, workdir: Path, config, *, rtpengine: bool = True, agent: dict | None = None,
                       user: str = "447700900001", domain: str = "pbx.example.com"):
    """The bridge tests' chain: wacall's ``user`` plays 440 Hz; RtpEngine (when ``rtpengine``), Kamailio as the PBX,
    the agent's baresip (1000 Hz, ``agent``: more :class:`AgentPhone` keyword arguments) registered to it, and the
    bridge (``config(pbx, rtpengine_or_None)`` -> its bridge.toml) subscribed to wacall's ``calls`` webhooks.
    Yields ``(agent, bridge, rtpengine_or_None, pbx)``."""
    from support.sip_tools import make_test_pki
    wa.reset()
    assert wa.ctl("PATCH", f"users/{user}", {"audio": "tone:440"}).status_code == 200
    pki = make_test_pki(workdir / "pki")
    async with contextlib.AsyncExitStack() as stack:
        engine = (await stack.enter_async_context(RtpEngineDaemon(workdir=workdir / "rtpengine"))
                  if rtpengine else None)
        pbx = await stack.enter_async_context(PbxKamailio(domain=domain, workdir=workdir / "pbx"))
        phone = await stack.enter_async_context(AgentPhone(
            user="agent", domain=domain, registrar=("127.0.0.1", pbx.port), ca=pki.ca_cert, cert=pki.business.pem,
            tone_hz=1000, workdir=workdir / "agent", **(agent or {})))
        await phone.wait_registered()
        bridge = await stack.enter_async_context(BridgeProcess(config(pbx, engine), workdir=workdir / "bridge"))
        subscribed = await asyncio.to_thread(wa.subscribe, bridge.info["webhook_url"], "calls")
        assert subscribed.status_code == 200, subscribed.text
        yield phone, bridge, engine, pbx


# -- what the end-to-end tests check on a bridged call (wacall's user 447700900001, the agent's baresip) --------
USER = "447700900001"
PBX_DOMAIN = "pbx.example.com"


async def user_call_answered(wa, agent: AgentPhone) -> str:
    call_id = (await asyncio.to_thread(wa.user_calls, USER)).json()["call_id"]
    ringing = await agent.wait_event("CALL_INCOMING", 15)
    assert f"+{USER}" in ringing.param or f"+{USER}" in str(ringing.raw), ringing.raw
    await agent.accept()
    await agent.wait_event("CALL_ESTABLISHED", 10)
    call = await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 15)
    assert call["direction"] == "USER_INITIATED"
    return call_id


async def agent_calls_user(wa, agent: AgentPhone) -> str:
    assert wa.ctl("PATCH", f"users/{USER}", {"audio": "tone:440", "answer_after": 0.3}).status_code == 200
    assert wa.ctl("POST", f"users/{USER}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    await agent.dial(f"sip:+{USER}@{PBX_DOMAIN}")
    await agent.wait_event("CALL_ESTABLISHED", 20)
    [call_id] = [c["call_id"] for c in (await asyncio.to_thread(wa.ctl, "GET", "calls")).json()["data"]]
    call = await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 15)
    assert call["direction"] == "BUSINESS_INITIATED"
    return call_id


async def user_heard_the_agent(wa, call_id: str) -> dict:
    """Once wacall has 2 s of the agent's audio: the user's recording holds the agent's 1000 Hz."""
    from wacall.media.audio import dominant_frequency
    def two_seconds():
        call = wa.call(call_id)
        return call["media"]["received"]["packets"] >= 100 and call
    call = await asyncio.to_thread(wa.wait_for, two_seconds, 15, "2 s of the agent's audio at wacall")
    heard = read_wav(wa.http.get(call["media"]["recording_url"]).content)
    assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user hears the agent's 1000 Hz"
    assert "opus" in call["media"]["send_codec"].lower(), call["media"]
    return call


def agent_heard_the_user(agent: AgentPhone) -> None:
    """After the call: the agent's recording holds the user's 440 Hz (at the phone's own sample rate)."""
    from wacall.media.audio import dominant_frequency, tone_power
    rate = agent.sample_rate
    at_agent = agent.heard()[rate // 2:]
    assert len(at_agent) > rate, f"the agent's recording holds {len(at_agent) / rate:.2f} s after the first 0.5 s"
    assert abs(dominant_frequency(at_agent, rate) - 440) < 5, "the agent hears the user's 440 Hz"
    assert tone_power(at_agent, rate, 440) > 10 * tone_power(at_agent, rate, 1000)


async def wait_logged(bridge: "BridgeProcess", line: str, seconds: float = 5.0) -> None:
    """Wait until the bridge's log has ``line`` (it logs after the SIP exchange it reports)."""
    for _ in range(int(seconds * 10)):
        if line in bridge.log_text():
            return
        await asyncio.sleep(0.1)
    assert line in bridge.log_text(), bridge.log_text()[-3000:]
