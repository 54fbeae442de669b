"""Benchmark: concurrent bridged calls with media through ``wacall bridge``, its media modes side by side.

The whole chain of issue 12 on this machine, on loopback: wacall as Meta (Graph, webhooks, its media workers and
its virtual users, who call the business and play Opus), the bridge (``wacall bridge`` as a subprocess), Kamailio
as the PBX (tests/data/bridge/kamailio-pbx.cfg: the bridging extension rings the registered agent), RtpEngine for
the ``rtpengine`` mode, and a load agent (bench/pbx_agent.py) registered with Kamailio as the agent: it answers
every call with a plain RTP SDP and sends and receives RTP at 20 ms.

For each media mode (``--modes``, default ``rtpengine,builtin``; a mode this checkout's bridge does not have is
reported and skipped) a fresh stack ramps user-initiated calls in cumulative steps (default 50 to 400): the
step's new calls are placed at ``--rate`` per second, then, once their media flows (or ``--setup-timeout``), after
``--settle`` seconds it measures for ``--hold-seconds``:

* loss user -> PBX: what the agent received, every call (RTP sequence gaps; delivery against the nominal 50/s);
* loss PBX -> user: what wacall's relay received from the bridge for a sample of calls (``media.received`` of
  ``GET /_wacall/calls/{id}``, as bench/media_calls.py reads it);
* CPU of each process (wacall with its media workers, the bridge, RtpEngine, Kamailio with its children, the
  agent) and of the whole machine (``other_cores``: processes outside the benchmark);
* set-up time per call: from the user placing the call (the control API) to the INVITE at the agent, and to the
  first RTP packet from the user at the agent (p50/p95).

A step passes when every call's media came up and both directions have loss < 1 % and >= 99 % delivery. The ramp
of a mode stops at its first failing step; ``--budget`` bounds the whole run (split between the modes). Prints a
table and writes bench/results/bridge<timestamp>.json; the processes' logs stay in the printed work directory.

    .venv/bin/python bench/bridge_calls.py                                  # rtpengine and builtin, 50 to 400 calls
    .venv/bin/python bench/bridge_calls.py --steps 2 --hold-seconds 3 --modes rtpengine   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))               # tests/support: the bridge tests' real programs
from media_calls import (LOSS_LIMIT, _pct, cpu_block, cpu_seconds, create_users,  # noqa: E402
                         machine_block, machine_times, rss_mb, sample_media, set_limits, summarize_business,
                         summarize_relay)
from pbx_agent import AgentHandle  # noqa: E402
from wacall_process import WacallProcess, git_state, start_run  # noqa: E402

DOMAIN = "pbx.example.com"
GRAPH_VERSION = "v23.0"


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Kamailio's forked children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_now(pids: dict[str, list[int]]) -> dict[int, float]:
    """utime + stime of every process in ``pids`` (0 for one that has gone)."""
    out = {}
    for group in pids.values():
        for p in group:
            try:
                out[p] = cpu_seconds(p)
            except OSError:
                out[p] = 0.0
    return out


def bridge_modes() -> tuple[str, ...]:
    """The media modes this checkout's bridge accepts."""
    from wacall.bridge.config import MEDIA_MODES
    return tuple(MEDIA_MODES)


def bridge_toml(info: dict, pbx, media: str) -> str:
    from support.bridge_tools import bridge_toml as tools_bridge_toml, pbx_sip
    return tools_bridge_toml(info, sip=pbx_sip(pbx), media=media)


def subscribe(info: dict, callback_url: str) -> None:
    """The bridge's webhook URL subscribed to the calls field, the way Meta's is (docs/bridge.md)."""
    r = httpx.post(f"{info['graph_url']}/{GRAPH_VERSION}/{info['app_id']}/subscriptions", timeout=30, params={
        "object": "whatsapp_business_account", "callback_url": callback_url, "fields": "calls",
        "verify_token": info["verify_token"], "access_token": f"{info['app_id']}|{info['app_secret']}"})
    if r.status_code != 200:
        raise RuntimeError(f"subscribing the bridge: {r.status_code} {r.text}")


def quiet_bridge(log_level: str):
    """``BridgeProcess`` (which runs the bridge at DEBUG for the tests' diagnostics) at ``log_level``: a log line per
    STUN message or SDP costs the bridge CPU the benchmark would count."""
    from support.bridge_tools import BridgeProcess

    class Bridge(BridgeProcess):
        def _spawn(self, argv, *rest, **options):
            argv = list(argv)
            argv[argv.index("--log-level") + 1] = log_level
            return super()._spawn(argv, *rest, **options)
    return Bridge


class Stack:
    """wacall, RtpEngine (rtpengine mode), Kamailio, the load agent and the bridge for one media mode."""

    def __init__(self, mode: str, args, users: int, workdir: Path, log) -> None:
        self.mode, self.args, self.users, self.workdir, self.log = mode, args, users, workdir, log
        self.wacall = self.rtpengine = self.pbx = self.agent = self.bridge = None

    def start(self) -> "Stack":
        from support.bridge_tools import PbxKamailio, RtpEngineDaemon
        args, work = self.args, self.workdir / self.mode
        work.mkdir(parents=True, exist_ok=True)
        self.wacall = WacallProcess(extra=["--media-workers", str(args.media_workers)],
                                    stderr_path=work / "wacall-stderr.log").start()
        info = self.wacall.info
        set_limits(info, self.users)
        self.wa_ids = create_users(info, self.users)
        if args.direction == "business":
            t0 = time.monotonic()
            grant_permissions(info, self.wa_ids)
            self.log(f"{self.mode}: {len(self.wa_ids)} users gave call permission in {time.monotonic() - t0:.1f} s")
        if self.mode == "rtpengine":
            os.environ.setdefault("WACALL_RTPENGINE_LOG", "5")
            self.rtpengine = RtpEngineDaemon(span=min(20000, 4 * self.users + 200), workdir=work / "rtpengine").start()
            media = f'mode = "rtpengine"\nrtpengine = "{self.rtpengine.address}"'
        else:
            media = f'mode = "{self.mode}"'
        media += "".join(f"\n{line}" for line in args.media_config)
        self.pbx = PbxKamailio(domain=DOMAIN, debug=1, workdir=work / "pbx").start()
        self.agent = AgentHandle(self.pbx.port, domain=DOMAIN, codec=args.codec)
        self.agent.call("start")
        self.bridge = quiet_bridge(args.bridge_log_level)(bridge_toml(info, self.pbx, media),
                                                          workdir=work / "bridge").start()
        subscribe(info, self.bridge.info["webhook_url"])
        self.collect_pids()
        return self

    def collect_pids(self) -> dict[str, list[int]]:
        """The processes whose CPU is measured, by part (children included: wacall's media workers, Kamailio's
        forks, and any the bridge starts)."""
        self.pids = {"wacall": process_tree(self.wacall.pid), "bridge": process_tree(self.bridge.pid),
                     "rtpengine": process_tree(self.rtpengine.pid) if self.rtpengine else [],
                     "kamailio": process_tree(self.pbx.pid), "agent": [self.agent.pid]}
        return self.pids

    def stop(self) -> None:
        if self.agent is not None:
            try:
                self.log(f"{self.mode}: agent hung up {self.agent.call('hangup_all', 60)['calls']} calls")
                time.sleep(1.0)
            except Exception as exc:
                self.log(f"{self.mode}: hang-up: {exc}")
        for part in (self.bridge, self.agent, self.pbx, self.rtpengine, self.wacall):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:
                    self.log(f"{self.mode}: stopping {type(part).__name__}: {exc}")


def place_calls(http: httpx.Client, info: dict, wa_ids: list[str], rate: float) -> tuple[dict[str, float], list]:
    """Each user calls the business, ``rate`` calls per second: {call_id: monotonic time placed}, failures."""
    placed, failed = {}, []
    start = time.monotonic()
    for i, wa_id in enumerate(wa_ids):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.monotonic()
        r = http.post(f"{info['graph_url']}/_wacall/users/{wa_id}/calls",
                      json={"to": info["phone_number_id"], "entry_point": "call_button"})
        if r.status_code in (200, 201):
            placed[r.json()["call_id"]] = t
        else:
            failed.append((wa_id, r.status_code, r.text[:200]))
    return placed, failed


def setup_block(calls: list[tuple[float, float, float]]) -> dict:
    """Set-up times (ms) of a step's calls from (placed, signalled, first RTP at the agent), monotonic seconds (0:
    never): placed is the user's call (control API) or the agent's INVITE; signalled the INVITE reaching the agent
    or the 200 OK reaching it; first RTP the user's first packet at the agent."""
    signal = [1000 * (s - t) for t, s, _ in calls if s]
    media = [1000 * (m - t) for t, _, m in calls if m]

    def r(v):
        return round(v) if v is not None else None
    return {"signal_ms_p50": r(_pct(signal, 0.5)), "signal_ms_p95": r(_pct(signal, 0.95)),
            "media_ms_p50": r(_pct(media, 0.5)), "media_ms_p95": r(_pct(media, 0.95)),
            "media_ms_max": r(max(media) if media else None), "calls_with_media": len(media)}


def grant_permissions(info: dict, wa_ids: list[str]) -> None:
    """For business-initiated calls: each user answers at once and has given the business permanent call
    permission the way Meta's docs tell it (the user writes, the business asks, the user accepts)."""
    ctl, pnid = f"{info['graph_url']}/_wacall", info["phone_number_id"]
    with httpx.Client(timeout=30) as http:
        for wa_id in wa_ids:
            steps = [
                http.patch(f"{ctl}/users/{wa_id}", json={"incoming": "answer", "answer_after": 0}),
                http.post(f"{ctl}/users/{wa_id}/messages", json={"to": pnid, "text": "hi"}),
                http.post(f"{info['graph_url']}/{GRAPH_VERSION}/{pnid}/messages",
                          headers={"Authorization": f"Bearer {info['access_token']}"},
                          json={"messaging_product": "whatsapp", "to": wa_id, "type": "interactive",
                                "interactive": {"type": "call_permission_request",
                                                "action": {"name": "call_permission_request"},
                                                "body": {"text": "May we call you?"}}}),
                http.post(f"{ctl}/users/{wa_id}/permission_replies",
                          json={"phone_number_id": pnid, "response": "accept", "permanent": True})]
            for r in steps:
                if r.status_code >= 300:
                    raise RuntimeError(f"permission for {wa_id}: {r.request.method} {r.request.url.path}: "
                                       f"{r.status_code} {r.text[:200]}")


def user_calls(stack: "Stack", http: httpx.Client, wa_ids: list[str], args) -> tuple[dict, list, dict]:
    """A step of user-initiated calls: placed at ``args.rate``, then waited for until every call's media
    reaches the agent. Returns {wacid: (placed, INVITE at the agent, first RTP)}, failures, counts."""
    info = stack.wacall.info
    placed, failed = place_calls(http, info, wa_ids, args.rate)
    wait_until = time.monotonic() + args.setup_timeout
    ended: dict[str, str] = {}
    while True:
        times = stack.agent.call("times", wacids=list(placed))["times"]
        up = {c for c in placed if c in times and times[c][2]}
        if len(up) == len(placed) or time.monotonic() > wait_until:
            break
        ended = ended_at_wacall(http, info, set(placed) - up)
        if len(up) + len(ended) >= len(placed):
            break                                     # the rest ended without media: no point waiting
        time.sleep(0.5)
    failed += [(c, f"ended at wacall ({state}) without media at the agent") for c, state in ended.items()]
    calls = {c: (t, times[c][0], times[c][2]) if c in times else (t, 0.0, 0.0) for c, t in placed.items()}
    return calls, failed, {"agent_refused": stack.agent.call("times", wacids=[])["refused"]}


def ended_at_wacall(http: httpx.Client, info: dict, call_ids: set[str]) -> dict[str, str]:
    """Which of these calls have ended at wacall (rejected, terminated, failed), with their end status."""
    r = http.get(f"{info['graph_url']}/_wacall/calls", params={"state": "ENDED", "limit": 10000})
    if r.status_code != 200:
        return {}
    return {c["call_id"]: str(c.get("end_status") or c.get("ended_by") or c.get("state"))
            for c in r.json().get("data", []) if c.get("call_id") in call_ids}


def agent_calls(stack: "Stack", http: httpx.Client, wa_ids: list[str], args) -> tuple[dict, list, dict]:
    """A step of business-initiated calls: the agent dials each user through Kamailio and the bridge at
    ``args.rate``; waited for until every call's media reaches the agent. Returns {wacid: (INVITE sent, 200 OK
    received, first RTP)}, failures, counts."""
    stack.agent.call("dial", wa_ids=wa_ids, rate=args.rate)
    wait_until = time.monotonic() + len(wa_ids) / args.rate + args.setup_timeout
    while True:
        report = stack.agent.call("dialed", wa_ids=wa_ids)["calls"]
        done = sum(1 for c in report.values() if c["times"][2] or c["error"])
        if done == len(wa_ids) or time.monotonic() > wait_until:
            break
        time.sleep(0.25)
    calls = {c["wacid"]: tuple(c["times"]) for c in report.values() if c["wacid"]}
    failed = [(w, c["error"]) for w, c in report.items() if c["error"]]
    return calls, failed, {"not_dialled": len(wa_ids) - len(report)}


def ramp(mode: str, args, steps: list[int], deadline: float, workdir: Path, log) -> dict:
    if args.rate is None:
        args.rate = 4.0 if args.direction == "business" else 20.0
    result: dict = {"mode": mode, "steps": []}
    stack = Stack(mode, args, max(steps), workdir, log)
    try:
        stack.start()
        info = stack.wacall.info
        result["pids"] = stack.pids
        log(f"{mode}: wacall, {'RtpEngine, ' if stack.rtpengine else ''}Kamailio, agent and bridge up "
            f"(bridge pid {stack.bridge.pid}, media {stack.bridge.info.get('media')})")
        http = httpx.Client(timeout=60)
        rng = random.Random(1)
        placed_all: dict[str, tuple] = {}
        prev = 0
        running: dict[str, float] = {}            # cores per part in the last window (the running calls' media)
        sample: list[str] = []
        per_call = 1.0 / args.rate
        for step in steps:
            need = step - prev
            estimate = need * per_call + args.settle + args.hold_seconds + 10
            if time.monotonic() + estimate > deadline:
                log(f"{mode}: skipping {step} calls and above (time budget; ~{estimate:.0f} s needed)")
                result["stopped"] = "time budget"
                break
            t_step = time.monotonic()
            cs0 = cpu_now(stack.collect_pids())
            batch, prev = stack.wa_ids[prev:step], step
            placed, failed, extra = (user_calls if args.direction == "user" else agent_calls)(stack, http, batch, args)
            cs1 = cpu_now(stack.pids)
            placed_all.update(placed)
            up = sum(1 for t in placed.values() if t[2])
            setup = setup_block(list(placed.values()))
            setup["step_seconds"] = round(time.monotonic() - t_step, 1)
            setup_s = time.monotonic() - t_step
            # the set-up's CPU per new call: what each part used while the step's calls came up, less what the
            # calls already running used in the previous window for as long
            setup["cpu_ms_per_call"] = {
                name: round(1000 * max(0.0, sum(cs1[p] - cs0[p] for p in group) - running.get(name, 0.0) * setup_s)
                            / max(1, len(batch)), 2)
                for name, group in stack.pids.items() if group}
            setup.update(extra)
            log(f"{mode}: +{len(batch)} calls, {len(failed)} failed, media up at the agent for {up} in "
                f"{setup['step_seconds']} s; set-up to first RTP p50 {setup['media_ms_p50']} ms, p95 "
                f"{setup['media_ms_p95']} ms; set-up CPU ms/call: {setup['cpu_ms_per_call']}"
                + (f"; e.g. {failed[0]}" if failed else "") + (f"; {extra}" if any(extra.values()) else ""))
            if not any(t[2] for t in placed_all.values()):
                result["steps"].append({"calls": step, "active": 0, "failed": len(failed), "failures": failed[:5],
                                        "why_failed": ["no call's media came up"], "setup": setup, "passed": False})
                log(f"{mode} {step:4d} calls: no call's media came up: FAIL")
                result["stopped"] = f"first failing step ({step} calls)"
                break
            fresh = [c for c in placed_all if c not in set(sample)]
            want = min(args.sample, len(placed_all))
            if len(sample) < want:
                sample += rng.sample(fresh, min(len(fresh), want - len(sample)))
            sample_media(http, info, sample)          # decode the sample's backlog now, not inside the window
            time.sleep(args.settle)
            m0 = sample_media(http, info, sample)
            s0 = stack.agent.call("snapshot")
            c0 = cpu_now(stack.collect_pids())
            b0 = machine_times()
            t_window = time.monotonic()
            time.sleep(args.hold_seconds)
            s1 = stack.agent.call("snapshot")
            c1 = cpu_now(stack.pids)
            b1 = machine_times()
            window = time.monotonic() - t_window
            m1 = sample_media(http, info, sample)
            to_pbx = summarize_business([s0], [s1])
            to_user = summarize_relay(m0, m1)
            cpu = cpu_block(stack.pids, c0, c1, window, to_pbx["calls"])
            machine = machine_block(b0, b1, sum(v["cores"] for v in cpu.values()), window)
            running = {name: v["cores"] for name, v in cpu.items()}
            media_up = sum(1 for v in s1["calls"].values() if v[1] > 0)
            why = []
            if failed or media_up < step or len(placed_all) < step:
                why.append(f"{step - media_up} calls not up")
            notes = []                                # the agent fell behind: says why delivery may be short
            if to_pbx["calls"] and (to_pbx["sent_rate"] < 1 - LOSS_LIMIT or to_pbx["skipped_frames"]):
                notes.append(f"agent sent {to_pbx['sent_rate']:.1%}, skipped {to_pbx['skipped_frames']} frames "
                             f"(agent-limited)")
            if to_pbx["loss"] >= LOSS_LIMIT:
                why.append(f"user->PBX loss {to_pbx['loss']:.2%}")
            if to_pbx["delivery"] < 1 - LOSS_LIMIT:
                why.append(f"the agent received {to_pbx['delivery']:.1%} of the users' packets")
            if to_user["loss"] >= LOSS_LIMIT:
                why.append(f"PBX->user loss {to_user['loss']:.2%}")
            if (to_user["delivery"] or 0) < 1 - LOSS_LIMIT:
                why.append(f"wacall received {(to_user['delivery'] or 0):.1%} of the agent's packets")
            passed = not why
            entry = {"calls": step, "active": media_up, "failed": len(failed), "failures": failed[:5],
                     "why_failed": why, "notes": notes, "setup": setup, "window_seconds": round(window, 2),
                     "user_to_pbx": to_pbx, "pbx_to_user": to_user, "cpu": cpu, "machine": machine,
                     "loadavg": os.getloadavg(), "bridge_rss_mb": round(sum(rss_mb(p) for p in stack.pids["bridge"])),
                     "passed": passed}
            result["steps"].append(entry)
            log(f"{mode} {step:4d} calls: loss user->PBX {to_pbx['loss']:.2%} (delivery {to_pbx['delivery']:.1%}), "
                f"PBX->user {to_user['loss']:.2%} (delivery {(to_user['delivery'] or 0):.1%}, "
                f"{to_user['sampled_calls']} sampled); cores: " + ", ".join(f"{k} {v['cores']:.2f}" for k, v in cpu.items())
                + f"; machine {machine['busy']:.0%} busy (others {machine['other_cores']:.2f} cores); "
                f"{'PASS' if passed else 'FAIL: ' + '; '.join(why)}" + "".join(f" ({n})" for n in notes))
            if not passed and not args.keep_going:
                result["stopped"] = f"first failing step ({step} calls)"
                break
        http.close()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{mode}: {result['error']}")
    finally:
        stack.stop()
    return result


def report(results: dict, log) -> None:
    names = ("wacall", "bridge", "rtpengine", "kamailio", "agent")
    log("")
    log(f"{'mode':>10} {'calls':>5} {'up':>4} {'loss u->pbx':>11} {'deliv':>6} {'loss pbx->u':>11} {'deliv':>6} "
        + " ".join(f"{n:>9}" for n in names) + f" {'others':>6} {'machine':>7} {'setup p50':>9} {'p95':>6}  result")
    summary = {}
    for mode, r in results["modes"].items():
        for s in r.get("steps", []):
            if "cpu" not in s:
                log(f"{mode:>10} {s['calls']:>5} {s['active']:>4}  no call up: {s['why_failed']}; e.g. {s['failures'][:1]}")
                continue
            u, p, c = s["user_to_pbx"], s["pbx_to_user"], s["cpu"]
            log(f"{mode:>10} {s['calls']:>5} {s['active']:>4} {u['loss']:>11.2%} {u['delivery']:>6.1%} "
                f"{p['loss']:>11.2%} {(p['delivery'] or 0):>6.1%} "
                + " ".join(f"{c[n]['cores']:>9.2f}" if r.get("pids", {}).get(n) else f"{'-':>9}" for n in names)
                + f" {s['machine']['other_cores']:>6.2f} {s['machine']['busy']:>7.0%} "
                f"{s['setup']['media_ms_p50'] or 0:>9} {s['setup']['media_ms_p95'] or 0:>6}  "
                f"{'pass' if s['passed'] else 'FAIL'}")
        passed = [s for s in r.get("steps", []) if s["passed"]]
        summary[mode] = {"max_calls_passed": max((s["calls"] for s in passed), default=0),
                         "stopped": r.get("stopped") or r.get("error") or r.get("skipped")}
    results["summary"] = summary
    log("")
    for mode, s in summary.items():
        log(f"{mode}: {s['max_calls_passed']} concurrent bridged calls with < 1 % loss each way"
            + (f" ({s['stopped']})" if s["stopped"] else ""))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="rtpengine,builtin", help="media modes, one ramp each, in this order")
    ap.add_argument("--steps", default="50,100,200,300,400", help="concurrent calls per step (cumulative)")
    ap.add_argument("--direction", choices=("user", "business"), default="user",
                    help="user: virtual users call the business (connect webhook -> INVITE to the agent); "
                         "business: the agent dials the users through the PBX (INVITE -> Graph connect)")
    ap.add_argument("--rate", type=float, default=None,
                    help="new calls per second within a step (default 20; business direction 4: the bridge asks "
                         "Graph call_permissions per call, which Meta limits to 5 per second and number, code 613)")
    ap.add_argument("--hold-seconds", type=float, default=10.0, help="measurement window per step")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between a step's set-up and its window")
    ap.add_argument("--setup-timeout", type=float, default=30.0,
                    help="seconds after the last call of a step is placed to wait for every call's media")
    ap.add_argument("--sample", type=int, default=20, help="calls whose counters are read from wacall (PBX->user)")
    ap.add_argument("--media-workers", type=int, default=2, help="wacall's media worker processes")
    ap.add_argument("--codec", choices=("opus", "pcmu"), default="opus",
                    help="what the agent answers (or dials) with; pcmu needs a bridge that offers G.711 to the PBX "
                         "(rtpengine mode: --media-config 'transcode = [\"PCMU\"]')")
    ap.add_argument("--media-config", action="append", default=[], metavar="LINE",
                    help="a line added to the bridge's [media] table (repeatable), e.g. 'pbx_protocol = \"RTP/AVP\"'")
    ap.add_argument("--bridge-log-level", default="INFO", help="the bridge's --log-level (DEBUG logs every SDP and, "
                    "in builtin mode, every STUN message)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the modes' ramps this many times, alternating (a shared machine's load changes: "
                         "compare modes within a round)")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run (split between modes)")
    ap.add_argument("--keep-going", action="store_true", help="do not stop a ramp at its first failing step")
    ap.add_argument("--keep-logs", action="store_true", help="keep the work directory with the processes' logs")
    ap.add_argument("--out", help="JSON path (default bench/results/bridge<timestamp>.json)")
    return ap


def markdown(results: dict) -> str:
    """The run as bench/README.md's table (one row per step and mode)."""
    names = ("wacall", "bridge", "rtpengine", "kamailio", "agent")
    rows = ["| mode | calls | up | loss user->PBX | delivery | loss PBX->user | delivery | "
            + " | ".join(names) + " | others | machine | setup p50 / p95 | signal p50 / p95 | result |",
            "|---" * (12 + len(names)) + "|"]
    for mode, r in results["modes"].items():
        for s in r.get("steps", []):
            if "cpu" not in s:
                rows.append(f"| {mode} | {s['calls']} | 0 | no call up |" + " |" * (7 + len(names)) + " FAIL |")
                continue
            u, p, c, st = s["user_to_pbx"], s["pbx_to_user"], s["cpu"], s["setup"]
            cores = [f"{c[n]['cores']:.2f}" if r.get("pids", {}).get(n) else "-" for n in names]
            rows.append(f"| {mode} | {s['calls']} | {s['active']} | {u['loss']:.2%} | {u['delivery']:.1%} | "
                        f"{p['loss']:.2%} | {(p['delivery'] or 0):.1%} | " + " | ".join(cores)
                        + f" | {s['machine']['other_cores']:.2f} | {s['machine']['busy']:.0%} | "
                        f"{st['media_ms_p50']} / {st['media_ms_p95']} ms | {st['signal_ms_p50']} / "
                        f"{st['signal_ms_p95']} ms | {'pass' if s['passed'] else 'FAIL'} |")
    return "\n".join(rows)


def main() -> None:
    args = parser().parse_args()

    steps = sorted({int(x) for x in args.steps.split(",") if int(x) > 0})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    stamp, out, log = start_run("bridge", args.out)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="wacall-bridgebench-"))
    log(f"work directory (logs): {workdir}")
    git = git_state("src/wacall/media", "src/wacall/bridge", "bench")
    results: dict = {"started": stamp, "args": vars(args), "steps": steps, "git": git, "modes": {},
                     "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                 "loadavg_at_start": os.getloadavg()}}
    available = bridge_modes()
    runnable = [m for m in modes if m in available]
    for m in modes:
        if m not in available:
            log(f"{m}: not a media mode of this checkout's bridge ({', '.join(available)}): skipped")
            results["modes"][m] = {"mode": m, "steps": [], "skipped": "mode not in this checkout"}
    failed = False
    try:
        runs = [(k, mode) for k in range(args.repeat) for mode in runnable]    # rtpengine, builtin, rtpengine, ...
        for i, (k, mode) in enumerate(runs):
            share = (started + args.budget - time.monotonic()) / (len(runs) - i)
            key = mode if args.repeat == 1 else f"{mode}.{k + 1}"
            results["modes"][key] = r = ramp(mode, args, steps, time.monotonic() + share,
                                             workdir if args.repeat == 1 else workdir / f"run{k + 1}", log)
            failed = failed or "error" in r
    finally:
        results["elapsed_seconds"] = round(time.monotonic() - started, 1)
        report(results, log)
        log("")
        print(markdown(results), flush=True)
        out.write_text(json.dumps(results, indent=1, default=str))
        log(f"results: {out}")
        if args.keep_logs or failed:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
