"""Benchmark: the Graph calling API under a steady request rate, and how fast state changes reach the
business's webhook endpoint.

``wacall serve --port 0 --sip-port -1 --json`` runs as a subprocess on loopback (pinned to CPU 0 unless
``--no-pin``); this process (pinned to the other CPUs) is the business's API client (aiohttp, a pool of
keep-alive connections), and the business's webhook endpoint is a process of its own on the same CPUs
(bench/webhook_receiver.py: asyncio + httptools on 127.0.0.1, port 0, subscribed to the ``calls`` field
through Graph's ``/{app_id}/subscriptions``, answering 200 at once and stamping each POST when its body is
complete), so that the generator's work never delays a stamp.

The load is open-loop: requests start on a fixed schedule at ``--rate`` Graph requests/s whatever the
answers do (a slow server gets a queue, not a gentler client), in this mix (``--mix``):

* ``settings``  ``GET /{pnid}/settings``                                       (40 %)
* ``connect``   ``POST /{pnid}/calls`` action ``connect`` with an SDP offer     (15 %; a user answers at once)
* ``accept``    ``POST /{pnid}/calls`` action ``accept`` with an SDP answer     (15 %; after the user called
  through the control API, not counted as a Graph request, and the ``connect`` webhook brought the offer)
* ``terminate`` ``POST /{pnid}/calls`` action ``terminate``                     (30 %; each call ends
  ``--hold`` seconds after it was connected/accepted)

Every call has its media legs (a relay socket pair, ICE credentials, a DTLS certificate fingerprint); no
media flows. Each user has at most one call at a time (Meta's rule), so there are enough users for the
calls that overlap.

Reported per request kind and over all: requests/s achieved, latency p50/p95/p99/max, errors. Webhook
latency from the state change: for every webhook wacall made in the measured interval (read afterwards
from its database: the outbox row's ``created_at``, the clock reading of the commit that changed the
state, wall clock as the receiver's stamp), the time until the receiver had its body; per event or
status too. Webhook latency after the response: for a Graph request that changes a call, the time from
the moment its response arrived to the moment the webhook it caused arrived (``connect`` → the
``connect`` webhook, ``accept`` → nothing of its own in Meta's API for a user-initiated call, so not
measured, ``terminate`` → the ``terminate`` webhook), and also from the request's start (a webhook may arrive before the response: then the after-response figure
is negative). The control API's user call → the ``connect`` webhook is reported apart. The whole run is
bounded (``--seconds``, then at most ``--drain`` seconds for outstanding calls and webhooks) and stops by
itself; results go to bench/results/graph-<UTC timestamp>.json.

    .venv/bin/python bench/graph_load.py                              # 500 requests/s for 20 s
    .venv/bin/python bench/graph_load.py --rate 100 --seconds 5       # smoke test
    .venv/bin/python bench/graph_load.py --rates 250,500,750          # steps, one wacall each

CPU: the wacall process tree's CPU time over the measured interval (``/proc``), as cores and as µs per
Graph request; the load generator's own CPU is reported too (it shares the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from wacall_process import WacallProcess, baseline_src, git_state, start_run  # noqa: E402
from support.sdp_samples import business_answer, business_offer  # noqa: E402
from support.sip_tools import process_tree_cpu_seconds  # noqa: E402

GRAPH_VERSION = "v23.0"
USER_PREFIX = "4479666"
MIX = {"settings": 0.40, "connect": 0.15, "accept": 0.15, "terminate": 0.30}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    s = sorted(values)

    def at(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 2)
    return {"n": len(s), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(s[-1], 2),
            "mean": round(sum(s) / len(s), 2)}


class Receiver:
    """The business's webhook endpoint (bench/webhook_receiver.py, a process of its own, stamping each POST
    with the wall clock when its body is complete), seen from here through its feed: ``arrivals`` on this
    process's monotonic clock, and futures for the flows that wait for a webhook."""

    def __init__(self, verify_token: str, cpus: set[int] | None = None) -> None:
        self.verify_token = verify_token
        self.cpus = cpus
        self.arrivals: dict[tuple[str, str], float] = {}      # (call_id, event or status) -> first arrival (monotonic)
        self.arrivals_wall: dict[tuple[str, str], float] = {}  # the same, as the receiver stamped it (time.time())
        self.waiters: dict[tuple[str, str], asyncio.Future] = {}
        self.received = 0
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._feed: asyncio.Server | None = None
        self._feed_writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future | None = None
        self._wall_minus_mono = time.time() - time.monotonic()

    async def start(self) -> None:
        self._ready = asyncio.get_running_loop().create_future()
        self._feed = await asyncio.start_server(self._read_feed, "127.0.0.1", 0)
        port = self._feed.sockets[0].getsockname()[1]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "webhook_receiver.py"), "--feed", str(port), "--verify-token", self.verify_token)
        if self.cpus:
            _pin(self.proc.pid, self.cpus)
        self.url = await asyncio.wait_for(self._ready, 30)

    async def _read_feed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._feed_writer = writer
        async for raw in reader:
            first, _, rest = raw.decode().strip().partition(" ")
            if first == "url":
                self._ready.set_result(rest)
            elif first == "n":
                self.received += int(rest)
            else:
                kind, _, stamp = rest.partition(" ")
                self._arrived(first, kind, float(stamp))

    def _arrived(self, call_id: str, kind: str, wall: float) -> None:
        key = (call_id, kind)
        if key in self.arrivals:
            return
        self.arrivals_wall[key] = wall
        self.arrivals[key] = wall - self._wall_minus_mono
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wait(self, call_id: str, kind: str) -> asyncio.Future:
        """A future for this webhook (already resolved if it came first)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if (call_id, kind) in self.arrivals:
            future.set_result(None)
        else:
            self.waiters[(call_id, kind)] = future
        return future

    async def stop(self) -> None:
        if self._feed_writer is not None:
            self._feed_writer.close()
        if self._feed is not None:
            self._feed.close()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def state_changes(db: str) -> dict[tuple[str, str], float]:
    """(call id, event or status) -> when wacall made the webhook for it (the outbox row's ``created_at``: the
    clock reading of the commit that changed the state, just before the transaction; wall clock)."""
    import sqlite3
    made: dict[tuple[str, str], float] = {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for body, created_at in conn.execute("SELECT body, created_at FROM outbox ORDER BY id"):
            for entry in json.loads(body).get("entry", []):
                for change in entry.get("changes", []):
                    value = change.get("value", {})
                    for item, kind in [(c, c.get("event")) for c in value.get("calls", [])] + \
                                      [(st, st.get("status")) for st in value.get("statuses", [])]:
                        made.setdefault((str(item.get("id")), str(kind)), created_at)
    finally:
        conn.close()
    return made


@dataclass
class Sample:
    kind: str
    started: float
    answered: float
    status: int
    call_id: str | None = None
    error: str | None = None

    @property
    def ms(self) -> float:
        return 1000 * (self.answered - self.started)


@dataclass
class Load:
    graph: str
    ctl: str
    pnid: str
    headers: dict
    receiver: Receiver
    users: asyncio.Queue
    hold: float
    session: aiohttp.ClientSession
    samples: list[Sample] = field(default_factory=list)
    webhook_ms: dict[str, list[float]] = field(default_factory=lambda: {"connect": [], "terminate": [],
                                                                         "user_call": []})
    webhook_from_request_ms: dict[str, list[float]] = field(default_factory=lambda: {"connect": [],
                                                                                      "terminate": []})
    missing_webhooks: dict[str, int] = field(default_factory=lambda: {"connect": 0, "terminate": 0, "user_call": 0})
    flow_errors: list[str] = field(default_factory=list)
    series: list[tuple[float, float]] = field(default_factory=list)    # (response time, webhook ms)
    measuring: bool = True

    async def request(self, kind: str, method: str, url: str, body: dict | None = None,
                      params: dict | None = None) -> tuple[Sample, dict]:
        started = time.monotonic()
        status, data, error = 0, {}, None
        try:
            async with self.session.request(method, url, json=body, params=params, headers=self.headers) as r:
                status = r.status
                data = await r.json(content_type=None)
                if status >= 300:
                    error = json.dumps(data)[:300]
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        sample = Sample(kind, started, time.monotonic(), status, error=error)
        if self.measuring:
            self.samples.append(sample)
        return sample, data if isinstance(data, dict) else {}

    def calls_url(self) -> str:
        return f"{self.graph}/{self.pnid}/calls"

    async def settings(self) -> None:
        await self.request("settings", "GET", f"{self.graph}/{self.pnid}/settings")

    async def _webhook(self, name: str, call_id: str, kind: str, sample: Sample, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.receiver.wait(call_id, kind), timeout)
        except asyncio.TimeoutError:
            self.missing_webhooks[name] += 1
            return False
        arrived = self.receiver.arrivals[(call_id, kind)]
        if self.measuring:
            self.webhook_ms[name].append(1000 * (arrived - sample.answered))
            self.series.append((round(sample.answered, 4), round(1000 * (arrived - sample.answered), 2)))
            if name in self.webhook_from_request_ms:
                self.webhook_from_request_ms[name].append(1000 * (arrived - sample.started))
        return True

    async def terminate(self, call_id: str) -> None:
        sample, _ = await self.request("terminate", "POST", self.calls_url(), {
            "messaging_product": "whatsapp", "call_id": call_id, "action": "terminate"})
        if sample.error is None:
            await self._webhook("terminate", call_id, "terminate", sample, 10)

    async def business_call(self, terminate_slot: asyncio.Queue) -> None:
        """connect → (the user answers at once) → hold → terminate (its slot on the schedule)."""
        wa_id = await self.users.get()
        try:
            sample, data = await self.request("connect", "POST", self.calls_url(), {
                "messaging_product": "whatsapp", "to": wa_id, "action": "connect",
                "session": {"sdp_type": "offer", "sdp": business_offer()}})
            if sample.error is not None:
                self.flow_errors.append(f"connect: {sample.status} {sample.error}")
                return
            call_id = data["calls"][0]["id"]
            await self._webhook("connect", call_id, "connect", sample, 10)
            await asyncio.sleep(self.hold)
            await (await terminate_slot.get())
            await self.terminate(call_id)
        finally:
            self.users.put_nowait(wa_id)

    async def user_call(self, terminate_slot: asyncio.Queue) -> None:
        """The user calls (control API) → the connect webhook → accept → hold → terminate."""
        wa_id = await self.users.get()
        try:
            started = time.monotonic()
            async with self.session.post(f"{self.ctl}/users/{wa_id}/calls",
                                         json={"to": self.pnid, "entry_point": "call_button"}) as r:
                placed = await r.json(content_type=None)
                if r.status >= 300:
                    self.flow_errors.append(f"user call: {r.status} {json.dumps(placed)[:200]}")
                    return
            answered = time.monotonic()
            call_id = placed["call_id"]
            ctl_sample = Sample("user_call", started, answered, r.status)
            # the answer does not depend on the offer's content (a fixed SDP): go on even if the webhook is late,
            # so the call still ends and the user is free again
            await self._webhook("user_call", call_id, "connect", ctl_sample, 10)
            sample, _ = await self.request("accept", "POST", self.calls_url(), {
                "messaging_product": "whatsapp", "call_id": call_id, "action": "accept",
                "session": {"sdp_type": "answer", "sdp": business_answer()}})
            if sample.error is not None:
                self.flow_errors.append(f"accept: {sample.status} {sample.error}")
                return
            await asyncio.sleep(self.hold)
            await (await terminate_slot.get())
            await self.terminate(call_id)
        finally:
            self.users.put_nowait(wa_id)


async def prepare(info: dict, users: int, receiver: Receiver) -> None:
    """The number answers calls through Graph (SIP off), users with an approved permission who answer at
    once, no limit in the way, and the receiver subscribed to the calls field."""
    graph = f"{info['graph_url']}/{GRAPH_VERSION}"
    ctl = f"{info['graph_url']}/_wacall"
    auth = {"Authorization": f"Bearer {info['access_token']}"}
    pnid = info["phone_number_id"]
    async with aiohttp.ClientSession() as http:
        async def ok(response) -> dict:
            async with response as r:
                data = await r.json(content_type=None)
                if r.status >= 300:
                    raise SystemExit(f"set-up: {r.method} {r.url}: {r.status} {data}")
                return data
        await ok(http.patch(f"{ctl}/limits", json={
            "bic_connected_per_24h": 10**9, "bic_initiations_per_24h": 10**9, "concurrent_calls": 10**6,
            "media_start_timeout_seconds": 0, "media_silence_timeout_seconds": 0}))
        await ok(http.post(f"{graph}/{info['app_id']}/subscriptions", params={
            "object": "whatsapp_business_account", "callback_url": receiver.url,
            "verify_token": info["verify_token"], "fields": "calls",
            "access_token": f"{info['app_id']}|{info['app_secret']}"}))
        await ok(http.post(f"{graph}/{pnid}/settings", headers=auth, json={"calling": {"status": "ENABLED"}}))
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            wa_id = f"{USER_PREFIX}{i:05d}"
            async with sem:
                async with http.post(f"{ctl}/users", json={"wa_id": wa_id, "name": f"Load {i}"}) as r:
                    if r.status not in (201, 409):
                        raise SystemExit(f"set-up: user {wa_id}: {r.status} {await r.text()}")
                await ok(http.post(f"{ctl}/users/{wa_id}/permission_replies", json={
                    "phone_number_id": pnid, "response": "accept", "via": "business_profile"}))
                await ok(http.patch(f"{ctl}/users/{wa_id}", json={"answer_after": 0}))
        await asyncio.gather(*(one(i) for i in range(users)))


async def run_step(info: dict, pid: int, rate: float, seconds: float, users: int, hold: float, warmup: float,
                   drain: float, log, db: str, cpus: set[int] | None) -> dict:
    receiver = Receiver(info["verify_token"], cpus)
    await receiver.start()
    try:
        await prepare(info, users, receiver)
        connector = aiohttp.TCPConnector(limit=256, force_close=False)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            user_queue: asyncio.Queue = asyncio.Queue()
            for i in range(users):
                user_queue.put_nowait(f"{USER_PREFIX}{i:05d}")
            load = Load(graph=f"{info['graph_url']}/{GRAPH_VERSION}", ctl=f"{info['graph_url']}/_wacall",
                        pnid=info["phone_number_id"], headers={"Authorization": f"Bearer {info['access_token']}"},
                        receiver=receiver, users=user_queue, hold=hold, session=session)
            # the schedule: each tick is one Graph request slot; calls take a connect/accept slot now and
            # their terminate slot later (terminate_slot: futures the schedule resolves at terminate slots)
            terminate_slots: asyncio.Queue = asyncio.Queue()
            tasks: set[asyncio.Task] = set()
            rng = random.Random(9)
            kinds, weights = zip(*MIX.items())
            interval = 1.0 / rate
            t0 = time.monotonic()
            total = warmup + seconds
            load.measuring = False
            cpu0 = cpu_t0 = None
            n = 0
            pending_terminates = 0
            loop = asyncio.get_running_loop()
            while True:
                now = time.monotonic()
                if now - t0 >= total:
                    break
                if cpu0 is None and now - t0 >= warmup:
                    load.measuring = True
                    cpu0, cpu_t0 = process_tree_cpu_seconds(pid), now
                    wall0 = time.time()
                    receiver_cpu0 = process_tree_cpu_seconds(receiver.proc.pid)
                    self_cpu0 = time.process_time()
                    first_measured = n
                kind = rng.choices(kinds, weights)[0]
                if kind == "terminate":
                    slot = loop.create_future()
                    slot.set_result(None)
                    if terminate_slots.qsize() < 4 * rate:
                        terminate_slots.put_nowait(slot)
                    pending_terminates += 1
                    coro = None
                elif kind == "settings":
                    coro = load.settings()
                elif kind == "connect":
                    coro = load.business_call(terminate_slots)
                else:
                    coro = load.user_call(terminate_slots)
                if coro is not None:
                    task = asyncio.create_task(coro)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * interval - time.monotonic()))
            measured_s = time.monotonic() - cpu_t0
            wall1 = time.time()
            receiver_cpu = process_tree_cpu_seconds(receiver.proc.pid) - receiver_cpu0
            cpu = process_tree_cpu_seconds(pid) - cpu0
            self_cpu = time.process_time() - self_cpu0
            load.measuring = False
            # let the calls still holding end (free terminate slots), bounded by --drain
            deadline = time.monotonic() + drain
            while tasks and time.monotonic() < deadline:
                while terminate_slots.qsize() < len(tasks):
                    done = loop.create_future()
                    done.set_result(None)
                    terminate_slots.put_nowait(done)
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                async with session.get(f"{info['graph_url']}/_wacall/health") as r:
                    health = (await r.json(content_type=None)).get("webhooks")
                async with session.get(f"{info['graph_url']}/_wacall/clock") as r:
                    offset = float((await r.json(content_type=None)).get("offset") or 0.0)
            except (aiohttp.ClientError, ValueError, TypeError):
                health, offset = None, 0.0
    finally:
        await receiver.stop()
    # from the state change (the commit that made the webhook) to the receiver having the body, for every
    # webhook made in the measured interval
    by_event: dict[str, list[float]] = {}
    # (wacall's clock is the wall clock plus an offset that only an advance of its virtual clock sets)
    made = {key: created - offset for key, created in (state_changes(db) if db != ":memory:" else {}).items()}
    for key, created in made.items():
        arrived = receiver.arrivals_wall.get(key)
        if arrived is not None and wall0 <= created < wall1:
            by_event.setdefault(key[1], []).append(1000 * (arrived - created))
    after_change = [ms for values in by_event.values() for ms in values]
    missed = sum(1 for key, created in made.items() if wall0 <= created < wall1 and key not in receiver.arrivals_wall)
    samples = load.samples
    by_kind = {k: [s for s in samples if s.kind == k] for k in MIX if k != "terminate"} | {
        "terminate": [s for s in samples if s.kind == "terminate"]}
    errors = [s for s in samples if s.error is not None]
    result = {
        "rate_requested": rate, "seconds": round(measured_s, 2), "scheduled_slots": n - first_measured,
        "requests": len(samples), "requests_per_s": round(len(samples) / measured_s, 1),
        "errors": len(errors), "error_examples": [f"{s.kind} {s.status} {s.error}" for s in errors[:5]],
        "latency_ms": percentiles([s.ms for s in samples]),
        "latency_ms_by_kind": {k: percentiles([s.ms for s in v]) for k, v in by_kind.items()},
        "webhook_after_response_ms": {k: percentiles(v) for k, v in load.webhook_ms.items()},
        "webhook_after_request_ms": {k: percentiles(v) for k, v in load.webhook_from_request_ms.items()},
        "webhooks_all_ms": percentiles(load.webhook_ms["connect"] + load.webhook_ms["terminate"]),
        "webhook_after_state_change_ms": percentiles(after_change),
        "webhook_after_state_change_ms_by_event": {k: percentiles(v) for k, v in sorted(by_event.items())},
        "webhooks_made_not_received": missed,
        "wacall_webhook_stats": health,
        "missing_webhooks": load.missing_webhooks, "webhooks_received": receiver.received,
        "flow_errors": len(load.flow_errors), "flow_error_examples": load.flow_errors[:5],
        "wacall_cores": round(cpu / measured_s, 3), "wacall_cpu_us_per_request": round(1e6 * cpu / max(1, len(samples)), 1),
        "generator_cores": round(self_cpu / measured_s, 3),
        "receiver_cores": round(receiver_cpu / measured_s, 3),
        # webhook latency over the run: the worst per 100 ms window (seconds from the start of measuring)
        "webhook_worst_per_100ms": _worst_per_window([(t - cpu_t0, ms) for t, ms in load.series], 0.1),
    }
    lat, wh, sc = result["latency_ms"], result["webhooks_all_ms"], result["webhook_after_state_change_ms"]
    log(f"rate {rate:g}/s: {result['requests_per_s']} requests/s, {result['errors']} errors, latency p50 "
        f"{lat.get('p50')} p95 {lat.get('p95')} p99 {lat.get('p99')} ms; webhook after response p50 {wh.get('p50')} "
        f"p95 {wh.get('p95')} p99 {wh.get('p99')} ms (n={wh.get('n')}, missing {load.missing_webhooks}); "
        f"webhook after the state change p50 {sc.get('p50')} p95 {sc.get('p95')} p99 {sc.get('p99')} ms "
        f"(n={sc.get('n')}, not received {missed}); "
        f"wacall {result['wacall_cores']} cores ({result['wacall_cpu_us_per_request']} µs/request), "
        f"generator {result['generator_cores']} cores, receiver {result['receiver_cores']} cores")
    return result


def _worst_per_window(series: list[tuple[float, float]], width: float) -> list[tuple[float, float]]:
    worst: dict[int, float] = {}
    for t, ms in series:
        k = int(t / width)
        worst[k] = max(worst.get(k, ms), ms)
    return [(round(k * width, 2), ms) for k, ms in sorted(worst.items())]


def _pin(pid: int, cpus: set[int]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="Graph requests/s (default 500)")
    parser.add_argument("--rates", help="comma-separated rates: one step each, a fresh wacall per step")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds at the rate before measuring")
    parser.add_argument("--drain", type=float, default=15.0, help="at most this long for calls still open")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds a call stays up before terminate")
    parser.add_argument("--users", type=int, default=0, help="WhatsApp users (default: enough for the overlap)")
    parser.add_argument("--db", default=None, help="database file (default: a file in a temporary directory)")
    parser.add_argument("--wacall-arg", action="append", default=[], help="extra argument for wacall serve")
    parser.add_argument("--profile-wacall", metavar="PATH", help="run wacall under cProfile (inflates its CPU)")
    parser.add_argument("--baseline-ref", metavar="REF", help="also run wacall at this git ref (git archive REF src) "
                        "before this checkout's, at each rate, in the same run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin wacall to CPU 0 and this to the rest")
    parser.add_argument("--out", help="results file (default bench/results/graph-<stamp>.json)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    stamp, out, log = start_run("graph-", args.out)
    import tempfile
    results = []
    runs: list[tuple[str, str | None]] = [("wacall", None)]
    if args.baseline_ref:
        runs.insert(0, (f"wacall@{args.baseline_ref}", baseline_src(args.baseline_ref)))
    for rate in rates:
        for name, src in runs:
            users = args.users or max(50, int(rate * (MIX["connect"] + MIX["accept"]) * (args.hold + 2) * 2))
            workdir = Path(tempfile.mkdtemp(prefix="graph-load-"))
            db = args.db or str(workdir / "wacall.db")
            wacall = WacallProcess(extra=["--sip-port", "-1", *args.wacall_arg], db=db, src=src,
                                   stderr_path=workdir / "wacall-stderr.log", profile=args.profile_wacall).start()
            try:
                if not args.no_pin and (os.cpu_count() or 1) > 1:
                    _pin(wacall.pid, {0})
                    os.sched_setaffinity(0, set(range(1, os.cpu_count() or 1)))
                log(f"{name} pid {wacall.pid}, db {db}, {users} users, rate {rate:g}/s for {args.seconds:g} s "
                    f"(+{args.warmup:g} s warm-up), hold {args.hold:g} s, mix {MIX}")
                others = set(range(1, os.cpu_count() or 1)) if not args.no_pin and (os.cpu_count() or 1) > 1 else None
                result = asyncio.run(run_step(wacall.info, wacall.pid, rate, args.seconds, users, args.hold,
                                              args.warmup, args.drain, log, db, others))
                result.update(target=name, users=users)
                results.append(result)
            finally:
                wacall.stop()
                if not args.no_pin:
                    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    out.write_text(json.dumps({"bench": "graph_load", "when": stamp, "git": git_state(), "baseline_ref": args.baseline_ref,
                               "cpus": os.cpu_count(), "mix": MIX,
                               "hold_s": args.hold, "pinned": not args.no_pin, "steps": results}, indent=2))
    log(f"results: {out}")


if __name__ == "__main__":
    main()
