"""Benchmark: concurrent wacall calls with real media on this machine, and plain aiortc as the baseline.

Ramps concurrent user-initiated calls in steps (default 50, 100, 200, 400, 700, 1000). Every call
takes the full WebRTC path (ICE with Meta's ICE-lite relay, DTLS-SRTP, Opus every 20 ms each way;
see bench/business_peer.py). At each step, after a settle period, it measures over
``--hold-seconds``:

* loss both ways: what the business side received from the user (every call, RTP sequence gaps and
  packets per second against the nominal 50), and what wacall's relay received from the business
  (``media.received`` and ``media.sent`` of a sample of calls from ``GET /_wacall/calls/{id}``);
* CPU seconds of the wacall process and of the generator processes (``/proc/<pid>/stat``), the
  whole machine's busy fraction (``/proc/stat``) and wacall's RSS.

A step passes when every call came up, and in both directions loss < 1 % and at least 99 % of the
nominal packet rate arrived. The ramp stops after the first failing step. Then the same ramp with
plain aiortc peer pairs (bench/aiortc_pairs.py) in the same run. Prints a table and writes
bench/results/<timestamp>.json.

    .venv/bin/python bench/media_calls.py --max 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from wacall_process import WacallProcess, git_state, start_run  # noqa: E402
NOMINAL_PPS = 50.0
LOSS_LIMIT = 0.01
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc ------------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def smaps_kb(pid: int) -> dict[str, int]:
    """A process's ``/proc/<pid>/smaps_rollup`` in KB: ``Rss`` counts every page it maps (libraries shared
    with the other processes too), ``Pss`` divides each shared page between the processes sharing it (the
    processes' Pss add up to the memory they take together)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if len(fields) == 2 and fields[1] == "kB":
                    out[key] = int(fields[0])
    except OSError:
        pass
    return out


def rss_mb(pid: int) -> float:
    """A process's Rss in MB (bench/bridge_calls.py reads the bridge's)."""
    return smaps_kb(pid).get("Rss", 0) / 1024


def memory_footprint(pids: list[int]) -> dict:
    """The whole footprint of a set of processes (wacall's server and its media workers): Rss and Pss summed,
    and each process's Rss, Pss and private (dirty + clean) memory, in KB."""
    processes = []
    for pid in pids:
        m = smaps_kb(pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                role = "media worker" if b"wacall.media.workers" in f.read() else "server"
        except OSError:
            role = "?"
        processes.append({"pid": pid, "role": role, "rss_kb": m.get("Rss", 0), "pss_kb": m.get("Pss", 0),
                          "private_kb": m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)})
    return {"rss_kb": sum(p["rss_kb"] for p in processes), "pss_kb": sum(p["pss_kb"] for p in processes),
            "processes": processes}


def memory_per_call(first: dict, last: dict, idle: dict | None = None) -> dict:
    """KB per live call at the last point (``{"calls", "memory"}``): the whole footprint divided by the calls,
    and per call added since the first point; for Rss and Pss."""
    calls, added = last["calls"], last["calls"] - first["calls"]
    out: dict = {"calls": calls, "rss_mb": round(last["memory"]["rss_kb"] / 1024, 1),
                 "pss_mb": round(last["memory"]["pss_kb"] / 1024, 1)}
    if idle is not None:
        out.update(idle_rss_mb=round(idle["rss_kb"] / 1024, 1), idle_pss_mb=round(idle["pss_kb"] / 1024, 1))
    for kind in ("rss", "pss"):
        out[f"{kind}_kb_per_call"] = round(last["memory"][f"{kind}_kb"] / calls, 1) if calls else None
        out[f"{kind}_kb_per_added_call"] = (round((last["memory"][f"{kind}_kb"] - first["memory"][f"{kind}_kb"])
                                                  / added, 1) if added > 0 else None)
    return out


def memory_line(m: dict) -> str:
    idle = f", {m['idle_rss_mb']} / {m['idle_pss_mb']} MB with no call" if "idle_rss_mb" in m else ""
    return (f"{m['calls']} calls: Rss {m['rss_mb']} MB, Pss {m['pss_mb']} MB{idle}; per live call (whole "
            f"footprint / calls) Rss {m['rss_kb_per_call']} KB, Pss {m['pss_kb_per_call']} KB; per added call "
            f"Rss {m['rss_kb_per_added_call']} KB, Pss {m['pss_kb_per_added_call']} KB")


def machine_times() -> tuple[float, float, float]:
    """(busy, total, steal) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total, values[7]


def machine_block(b0: tuple, b1: tuple, measured_cores: float, seconds: float) -> dict:
    """Busy fraction of the whole machine, and the cores used by processes outside the benchmark."""
    total = max(1, b1[1] - b0[1])
    busy = (b1[0] - b0[0]) / total
    cpus = os.cpu_count() or 1
    return {"busy": round(busy, 3), "steal": round((b1[2] - b0[2]) / total, 3),
            "other_cores": round(max(0.0, busy * cpus - measured_cores), 2)}


# -- wacall -----------------------------------------------------------------------------------------------

def create_users(info: dict, n: int, prefix: str = "4479") -> list[str]:
    """n users able to call the business (one call per business-user pair at a time)."""
    ctl = f"{info['graph_url']}/_wacall"
    wa_ids = [f"{prefix}{i:08d}" for i in range(n)]
    with httpx.Client(timeout=30) as http:
        for wa_id in wa_ids:
            r = http.post(f"{ctl}/users", json={"wa_id": wa_id, "name": f"Bench {wa_id[-5:]}"})
            if r.status_code not in (201, 409):
                raise RuntimeError(f"creating user {wa_id}: {r.status_code} {r.text}")
    return wa_ids


def set_limits(info: dict, concurrent: int) -> dict:
    r = httpx.patch(f"{info['graph_url']}/_wacall/limits", timeout=30, json={
        "concurrent_calls": concurrent, "media_start_timeout_seconds": 0, "media_silence_timeout_seconds": 0})
    r.raise_for_status()
    return r.json()


def sample_media(http: httpx.Client, info: dict, call_ids: list[str]) -> dict:
    """The relay's counters for some calls, each stamped with the time it was read:
    (t, received packets, lost, sent packets, jitter ms, SRTP auth failures)."""
    out = {}
    for call_id in call_ids:
        t0 = time.monotonic()
        r = http.get(f"{info['graph_url']}/_wacall/calls/{call_id}")
        t = (t0 + time.monotonic()) / 2
        media = (r.json() or {}).get("media") if r.status_code == 200 else None
        if media:
            rec = media["received"]
            out[call_id] = (t, rec["packets"], rec["lost"], media["sent"]["packets"], rec["jitter_ms"],
                            rec.get("srtp_auth_failures", 0))
    return {"calls": out}


# -- arithmetic -------------------------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize_business(s0: list[dict], s1: list[dict]) -> dict:
    """What the business side received from the users (all calls), and what it sent."""
    sent = rx = expected = nominal = 0.0
    per_call_loss, per_call_delivery = [], []
    calls = 0
    stats = {"late_ticks": 0, "skipped_frames": 0, "send_errors": 0}
    for a, b in zip(s0, s1):
        dt = b["t"] - a["t"]
        for key in stats:
            stats[key] += b[key] - a[key]
        for call_id, c1 in b["calls"].items():
            c0 = a["calls"].get(call_id)
            if c0 is None:
                continue
            calls += 1
            d_sent, d_rx, d_exp = c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]
            sent += d_sent
            rx += d_rx
            expected += d_exp
            nominal += dt * NOMINAL_PPS
            per_call_loss.append(1 - d_rx / d_exp if d_exp > 0 else 1.0)
            per_call_delivery.append(d_rx / (dt * NOMINAL_PPS))
    return {
        "calls": calls,
        "rx_packets": int(rx),
        "loss": round(1 - rx / expected, 5) if expected else 1.0,
        "delivery": round(rx / nominal, 5) if nominal else 0.0,
        "sent_rate": round(sent / nominal, 5) if nominal else 0.0,
        "calls_over_1pct_loss": sum(1 for x in per_call_loss if x >= LOSS_LIMIT),
        "calls_under_99pct_delivery": sum(1 for x in per_call_delivery if x < 1 - LOSS_LIMIT),
        "worst_call_loss": round(max(per_call_loss), 4) if per_call_loss else None,
        "p1_call_delivery": round(_pct(per_call_delivery, 0.01), 4) if per_call_delivery else None,
        **stats,
    }


def summarize_relay(m0: dict, m1: dict) -> dict:
    """What wacall's relay received from the business, and sent, for the sampled calls."""
    rx = lost = sent = n = auth = 0
    nominal = 0.0
    jitter = []
    for call_id, c1 in m1["calls"].items():
        c0 = m0["calls"].get(call_id)
        if c0 is None:
            continue
        n += 1
        nominal += (c1[0] - c0[0]) * NOMINAL_PPS
        rx += c1[1] - c0[1]
        lost += c1[2] - c0[2]
        sent += c1[3] - c0[3]
        auth += c1[5] - c0[5]
        jitter.append(c1[4])
    return {"sampled_calls": n, "rx_packets": rx,
            "loss": round(lost / (rx + lost), 5) if rx + lost > 0 else (0.0 if n == 0 else 1.0),
            "delivery": round(rx / nominal, 5) if nominal else None,
            "sent_rate": round(sent / nominal, 5) if nominal else None,
            "jitter_ms_max": max(jitter) if jitter else None,
            "jitter_ms_median": _pct(jitter, 0.5), "srtp_auth_failures": auth}


def summarize_aiortc(s0: list[dict], s1: list[dict]) -> dict:
    rx = expected = nominal = sent = 0.0
    streams = 0
    bad = 0
    for a, b in zip(s0, s1):
        dt = b["t"] - a["t"]
        for key, c1 in b["streams"].items():
            c0 = a["streams"].get(key)
            if c0 is None:
                continue
            streams += 1
            d_rx, d_exp = c1[1] - c0[1], c1[2] - c0[2]
            rx += d_rx
            expected += d_exp
            sent += c1[0] - c0[0]
            nominal += dt * NOMINAL_PPS
            if d_rx < (1 - LOSS_LIMIT) * dt * NOMINAL_PPS or (d_exp and 1 - d_rx / d_exp >= LOSS_LIMIT):
                bad += 1
    return {"streams": streams, "rx_packets": int(rx),
            "loss": round(1 - rx / expected, 5) if expected else 1.0,
            "delivery": round(rx / nominal, 5) if nominal else 0.0,
            "sent_rate": round(sent / nominal, 5) if nominal else 0.0,
            "streams_failing": bad}


def cpu_block(pids: dict[str, list[int]], c0: dict, c1: dict, seconds: float, units: int) -> dict:
    out = {}
    for name, group in pids.items():
        used = sum(c1[p] - c0[p] for p in group)
        out[name] = {"cpu_seconds": round(used, 3), "cores": round(used / seconds, 3),
                     "ms_per_call_second": round(1000 * used / (units * seconds), 4) if units else None}
    return out


def _deadline_ok(deadline: float, needed: float) -> bool:
    return time.monotonic() + needed <= deadline


# -- the wacall ramp ----------------------------------------------------------------------------------------

def ramp_wacall(args, steps: list[int], deadline: float, log, media_path: str = "c") -> dict:
    """The ramp against one wacall; ``media_path`` "python" starts it with WACALL_FASTPATH=0 (every packet in
    Python, the reference the compiled path is tested against)."""
    from business_peer import WorkerHandle
    saved = os.environ.get("WACALL_FASTPATH")
    os.environ["WACALL_FASTPATH"] = "0" if media_path == "python" else "1"
    try:
        wacall = WacallProcess(extra=["--media-workers", str(args.media_workers)], profile=args.profile_wacall).start()
    finally:
        if saved is None:
            os.environ.pop("WACALL_FASTPATH", None)
        else:
            os.environ["WACALL_FASTPATH"] = saved
    info = wacall.info
    tag = "wacall" if media_path == "c" else "wacall[python]"
    result: dict = {"steps": [], "wacall_pid": wacall.pid, "media_path": media_path}
    workers: list = []
    try:
        set_limits(info, max(steps))
        t0 = time.monotonic()
        wa_ids = create_users(info, max(steps))
        log(f"wacall up (pid {wacall.pid}), {len(wa_ids)} users created in {time.monotonic() - t0:.1f} s")
        result["memory_idle"] = memory_footprint(wacall.pids)      # the base footprint: users, no call
        log(f"{tag}: no call: Rss {result['memory_idle']['rss_kb'] / 1024:.1f} MB, "
            f"Pss {result['memory_idle']['pss_kb'] / 1024:.1f} MB")
        cpus = os.cpu_count() or 1
        gen_cpus = None
        if args.pin and cpus >= 2 and not args.media_workers:
            os.sched_setaffinity(wacall.pid, {0})          # the system under test gets a core of its own
            gen_cpus = set(range(1, cpus))
        workers = [WorkerHandle(info, pre_accept=not args.no_pre_accept, cert_per_call=not args.shared_cert,
                                cpu=gen_cpus, engine=args.engine) for _ in range(args.workers)]
        pids = {"wacall": wacall.pids, "generator": [w.pid for w in workers]}
        http = httpx.Client(timeout=120)
        all_calls: list[str] = []
        rng = random.Random(1)
        sample: list[str] = []
        active = 0
        per_call_setup = 0.05
        for step in steps:
            need = step - active
            estimate = need * per_call_setup + args.settle + args.hold_seconds + 5
            if not _deadline_ok(deadline, estimate):
                log(f"wacall: skipping {step} calls and above (time budget; ~{estimate:.0f} s needed)")
                result["stopped"] = "time budget"
                break
            t_setup = time.monotonic()
            batch = wa_ids[active:step]
            for i, w in enumerate(workers):
                w.send({"op": "add", "wa_ids": batch[i::len(workers)]})
            added = [w.recv() for w in workers]
            setup_s = time.monotonic() - t_setup
            ok = sum(a["ok"] for a in added)
            n_failed = sum(a["n_failed"] for a in added)
            for a in added:
                all_calls += a["call_ids"]
            active += ok
            per_call_setup = max(0.005, setup_s / max(1, need))
            failures = [f for a in added for f in a["failed"]][:5]
            log(f"wacall: +{ok} calls in {setup_s:.1f} s ({n_failed} failed) -> {active} active"
                + (f"; e.g. {failures[0]}" if failures else ""))
            # the sample: keep the old sampled calls, top it up from the new ones
            fresh = [c for c in all_calls if c not in set(sample)]
            want = min(args.sample, len(all_calls))
            sample = sample + rng.sample(fresh, min(len(fresh), want - len(sample))) if len(sample) < want else sample
            sample_media(http, info, sample)          # decode backlog now, not inside the window
            time.sleep(args.settle)
            m0 = sample_media(http, info, sample)
            for w in workers:
                w.send({"op": "snapshot"})
            s0 = [w.recv() for w in workers]
            result["generator_engine"] = s0[0].get("engine")
            c0 = {p: cpu_seconds(p) for g in pids.values() for p in g}
            b0 = machine_times()
            t_window = time.monotonic()
            time.sleep(args.hold_seconds)
            for w in workers:
                w.send({"op": "snapshot"})
            s1 = [w.recv() for w in workers]
            c1 = {p: cpu_seconds(p) for g in pids.values() for p in g}
            b1 = machine_times()
            window = time.monotonic() - t_window
            m1 = sample_media(http, info, sample)
            business = summarize_business(s0, s1)
            relay = summarize_relay(m0, m1)
            cpu = cpu_block(pids, c0, c1, window, business["calls"])
            machine = machine_block(b0, b1, sum(v["cores"] for v in cpu.values()), window)
            busy = machine["busy"]
            passed = (n_failed == 0 and business["calls"] == step
                      and business["loss"] < LOSS_LIMIT and business["delivery"] >= 1 - LOSS_LIMIT
                      and relay["loss"] < LOSS_LIMIT and (relay["delivery"] or 0) >= 1 - LOSS_LIMIT)
            why = []
            if n_failed or business["calls"] < step:
                why.append(f"{step - business['calls']} calls not up")
            if business["sent_rate"] < 1 - LOSS_LIMIT or business["skipped_frames"]:
                why.append(f"generator sent only {business['sent_rate']:.1%} (generator-limited)")
            if business["loss"] >= LOSS_LIMIT:
                why.append(f"user->business loss {business['loss']:.2%}")
            if business["delivery"] < 1 - LOSS_LIMIT:
                why.append(f"relay delivered {business['delivery']:.1%} of the user's packets (relay sent "
                           f"{(relay['sent_rate'] or 0):.1%} in the sample)")
            if relay["loss"] >= LOSS_LIMIT:
                why.append(f"business->user loss {relay['loss']:.2%}")
            if (relay["delivery"] or 0) < 1 - LOSS_LIMIT:
                why.append(f"relay received {(relay['delivery'] or 0):.1%} of the business's packets")
            entry = {"calls": step, "active": business["calls"], "setup_failed": n_failed, "why_failed": why,
                     "setup_seconds": round(setup_s, 1), "setup_failures": failures,
                     "setup_ms_median": _pct([a["setup_ms_median"] for a in added if a["setup_ms_median"]], 0.5),
                     "ice_dtls_ms_median": _pct([a["ice_dtls_ms_median"] for a in added
                                                 if a.get("ice_dtls_ms_median")], 0.5),
                     "window_seconds": round(window, 2),
                     "user_to_business": business, "business_to_user": relay, "cpu": cpu,
                     "machine_busy": round(busy, 3), "machine": machine, "memory": memory_footprint(wacall.pids),
                     "passed": passed}
            entry["wacall_rss_mb"] = round(entry["memory"]["rss_kb"] / 1024)
            entry["wacall_pss_mb"] = round(entry["memory"]["pss_kb"] / 1024)
            result["steps"].append(entry)
            log(f"{tag} {step:5d} calls: loss user->biz {business['loss']:.2%} (delivery "
                f"{business['delivery']:.1%}), biz->user {relay['loss']:.2%} (delivery "
                f"{(relay['delivery'] or 0):.1%}, {relay['sampled_calls']} sampled); CPU wacall "
                f"{cpu['wacall']['cores']:.2f} cores = {cpu['wacall']['ms_per_call_second']:.3f} ms/call-s, "
                f"generator {cpu['generator']['cores']:.2f} cores; machine {busy:.0%} busy "
                f"(other processes {machine['other_cores']:.2f} cores); Rss {entry['wacall_rss_mb']} MB, "
                f"Pss {entry['wacall_pss_mb']} MB; "
                f"{'PASS' if passed else 'FAIL: ' + '; '.join(why)}")
            if not passed and not args.keep_going:
                result["stopped"] = f"first failing step ({step} calls)"
                break
        http.close()
    finally:
        for w in workers:
            w.stop()
        wacall.stop()
    if args.profile_wacall and Path(args.profile_wacall).exists():
        import pstats
        import io
        buf = io.StringIO()
        pstats.Stats(args.profile_wacall, stream=buf).sort_stats("tottime").print_stats(30)
        result["profile_top"] = buf.getvalue()
        log(buf.getvalue())
    done = [s for s in result["steps"] if s["active"]]
    if done:
        result["memory"] = memory_per_call(done[0], done[-1], result.get("memory_idle"))
        log(f"{tag} memory: {memory_line(result['memory'])}")
    return result


# -- the aiortc baseline ------------------------------------------------------------------------------------

def ramp_aiortc(args, steps: list[int], deadline: float, log) -> dict:
    from aiortc_pairs import AiortcWorker
    cpus = os.cpu_count() or 1
    workers = [AiortcWorker(cpu={i % cpus} if args.pin else None) for i in range(args.aiortc_workers)]
    pids = {"aiortc": [w.pid for w in workers]}
    result: dict = {"steps": []}
    active = 0
    per_pair_setup = 0.05
    try:
        for step in steps:
            need = step - active
            estimate = need * per_pair_setup + args.settle + args.hold_seconds + 5
            if not _deadline_ok(deadline, estimate):
                log(f"aiortc: skipping {step} pairs and above (time budget; ~{estimate:.0f} s needed)")
                result["stopped"] = "time budget"
                break
            t_setup = time.monotonic()
            shares = [need // len(workers) + (1 if i < need % len(workers) else 0) for i in range(len(workers))]
            for w, n in zip(workers, shares):
                w.send({"op": "add", "n": n})
            added = [w.recv() for w in workers]
            setup_s = time.monotonic() - t_setup
            ok = sum(a["ok"] for a in added)
            n_failed = sum(a["n_failed"] for a in added)
            active += ok
            per_pair_setup = max(0.005, setup_s / max(1, need))
            log(f"aiortc: +{ok} pairs in {setup_s:.1f} s ({n_failed} failed) -> {active} pairs")
            time.sleep(args.settle)
            for w in workers:
                w.send({"op": "snapshot"})
            s0 = [w.recv() for w in workers]
            c0 = {p: cpu_seconds(p) for p in pids["aiortc"]}
            b0 = machine_times()
            t_window = time.monotonic()
            time.sleep(args.hold_seconds)
            c1 = {p: cpu_seconds(p) for p in pids["aiortc"]}
            b1 = machine_times()
            window = time.monotonic() - t_window
            for w in workers:
                w.send({"op": "snapshot"})
            s1 = [w.recv() for w in workers]
            media = summarize_aiortc(s0, s1)
            cpu = cpu_block(pids, c0, c1, window, active)
            machine = machine_block(b0, b1, cpu["aiortc"]["cores"], window)
            busy = machine["busy"]
            passed = (n_failed == 0 and media["streams"] == 2 * step and media["loss"] < LOSS_LIMIT
                      and media["delivery"] >= 1 - LOSS_LIMIT)
            result["steps"].append({"pairs": step, "active": active, "setup_failed": n_failed,
                                    "setup_seconds": round(setup_s, 1), "window_seconds": round(window, 2),
                                    "media": media, "cpu": cpu, "machine_busy": round(busy, 3), "machine": machine,
                                    "passed": passed})
            log(f"aiortc {step:5d} pairs: loss {media['loss']:.2%} (delivery {media['delivery']:.1%}, "
                f"{media['streams_failing']} streams failing); CPU {cpu['aiortc']['cores']:.2f} cores = "
                f"{cpu['aiortc']['ms_per_call_second']:.3f} ms/pair-s; machine {busy:.0%} busy; "
                f"{'PASS' if passed else 'FAIL'}")
            if not passed and not args.keep_going:
                result["stopped"] = f"first failing step ({step} pairs)"
                break
    finally:
        for w in workers:
            w.stop()
    return result


# -- report -------------------------------------------------------------------------------------------------

def best(steps: list[dict], key: str) -> dict | None:
    passed = [s for s in steps if s["passed"]]
    return max(passed, key=lambda s: s[key]) if passed else None


def _wacall_table(title: str, w: list[dict], log) -> None:
    log("")
    log(title)
    log(f"{'calls':>6} {'up':>5} {'loss u->b':>10} {'deliv':>7} {'loss b->u':>10} {'deliv':>7} "
        f"{'wacall cores':>12} {'ms/call-s':>10} {'gen cores':>10} {'gen ms/call-s':>13} {'machine':>8} "
        f"{'setup ms':>8} {'ICE+DTLS':>8} {'RSS MB':>7} {'PSS MB':>7}  result")
    for s in w:
        u, r, c = s["user_to_business"], s["business_to_user"], s["cpu"]
        log(f"{s['calls']:>6} {s['active']:>5} {u['loss']:>10.2%} {u['delivery']:>7.1%} {r['loss']:>10.2%} "
            f"{(r['delivery'] or 0):>7.1%} {c['wacall']['cores']:>12.2f} {c['wacall']['ms_per_call_second'] or 0:>10.3f} "
            f"{c['generator']['cores']:>10.2f} {c['generator']['ms_per_call_second'] or 0:>13.3f} "
            f"{s['machine_busy']:>8.0%} {s['setup_ms_median'] or 0:>8.0f} {s.get('ice_dtls_ms_median') or 0:>8.0f} "
            f"{s['wacall_rss_mb']:>7} {s.get('wacall_pss_mb', ''):>7}  "
            f"{'pass' if s['passed'] else 'FAIL'}")


def report(results: dict, log) -> None:
    w = results.get("wacall", {}).get("steps", [])
    a = results.get("aiortc", {}).get("steps", [])
    if w:
        _wacall_table("wacall (relay, compiled media path) + lean business generator, full WebRTC path per call", w, log)
    wp = results.get("wacall_python", {}).get("steps", [])
    if wp:
        _wacall_table("wacall with WACALL_FASTPATH=0 (every packet in Python: the fallback)", wp, log)
        bp = best(wp, "calls")
        if bp:
            results.setdefault("summary_python", {})["wacall"] = {
                "max_calls_under_1pct_loss": bp["calls"],
                "wacall_ms_per_call_second": bp["cpu"]["wacall"]["ms_per_call_second"]}
    if a:
        log("")
        log("plain aiortc peer pairs (both ends aiortc, pre-encoded Opus out, aiortc decoding in)")
        log(f"{'pairs':>6} {'up':>5} {'loss':>10} {'deliv':>7} {'cores':>8} {'ms/pair-s':>10} "
            f"{'ms/end-s':>9} {'machine':>8}  result")
        for s in a:
            m, c = s["media"], s["cpu"]["aiortc"]
            log(f"{s['pairs']:>6} {s['active']:>5} {m['loss']:>10.2%} {m['delivery']:>7.1%} {c['cores']:>8.2f} "
                f"{c['ms_per_call_second'] or 0:>10.3f} {(c['ms_per_call_second'] or 0) / 2:>9.3f} "
                f"{s['machine_busy']:>8.0%}  {'pass' if s['passed'] else 'FAIL'}")
    bw, ba = best(w, "calls"), best(a, "pairs")
    summary = {}
    if bw:
        ms_w = bw["cpu"]["wacall"]["ms_per_call_second"]
        ms_g = bw["cpu"]["generator"]["ms_per_call_second"]
        summary["wacall"] = {"max_calls_under_1pct_loss": bw["calls"], "wacall_ms_per_call_second": ms_w,
                             "generator_ms_per_call_second": ms_g,
                             "calls_per_core_wacall": round(1000 / ms_w) if ms_w else None,
                             "calls_per_core_both_ends": round(1000 / (ms_w + ms_g)) if ms_w and ms_g else None}
    if ba:
        ms_a = ba["cpu"]["aiortc"]["ms_per_call_second"]
        summary["aiortc"] = {"max_pairs_under_1pct_loss": ba["pairs"], "ms_per_pair_second": ms_a,
                             "ms_per_end_second": round(ms_a / 2, 4),
                             "pairs_per_core": round(1000 / ms_a) if ms_a else None}
    if bw and ba:
        summary["ratio"] = {
            "max_calls": round(bw["calls"] / ba["pairs"], 2),
            "cpu_one_end": round((ba["cpu"]["aiortc"]["ms_per_call_second"] / 2) / bw["cpu"]["wacall"]["ms_per_call_second"], 2),
            "cpu_both_ends": round(ba["cpu"]["aiortc"]["ms_per_call_second"]
                                   / (bw["cpu"]["wacall"]["ms_per_call_second"]
                                      + bw["cpu"]["generator"]["ms_per_call_second"]), 2)}
    results["summary"] = summary
    log("")
    if bw:
        s = summary["wacall"]
        log(f"wacall: {s['max_calls_under_1pct_loss']} concurrent calls with < 1 % loss; wacall CPU "
            f"{s['wacall_ms_per_call_second']:.3f} ms per call-second (~{s['calls_per_core_wacall']} calls/core), "
            f"generator {s['generator_ms_per_call_second']:.3f} ms per call-second")
    else:
        log("wacall: no step passed")
    for key, label in (("wacall", "wacall memory"), ("wacall_python", "wacall memory, every packet in Python")):
        memory = results.get(key, {}).get("memory")
        if memory:
            summary.setdefault(key, {})["memory"] = memory
            log(f"{label}: {memory_line(memory)}")
    if results.get("summary_python"):
        s = results["summary_python"]["wacall"]
        log(f"wacall, every packet in Python: {s['max_calls_under_1pct_loss']} concurrent calls with < 1 % loss; "
            f"wacall CPU {s['wacall_ms_per_call_second']:.3f} ms per call-second")
    if ba:
        s = summary["aiortc"]
        log(f"aiortc: {s['max_pairs_under_1pct_loss']} pairs with < 1 % loss; {s['ms_per_pair_second']:.3f} ms "
            f"per pair-second ({s['ms_per_end_second']:.3f} per end; ~{s['pairs_per_core']} pairs/core)")
    elif a:
        log("aiortc: no step passed")
    if "ratio" in summary:
        r = summary["ratio"]
        log(f"ratio wacall/aiortc: {r['max_calls']}x the calls; CPU per call-second: aiortc end / wacall relay "
            f"= {r['cpu_one_end']}x, aiortc pair / (wacall + generator) = {r['cpu_both_ends']}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="25,50,100,200,300,400,500,600,700,850,1000",
                    help="concurrent calls per step (cumulative: each step adds calls to the running ones)")
    ap.add_argument("--max", type=int, default=1000, help="drop steps above this (and end on it)")
    ap.add_argument("--hold-seconds", type=float, default=10.0, help="measurement window per step")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds between a step's set-up and its window")
    ap.add_argument("--workers", type=int, default=2, help="generator processes (one alone falls behind at 1000 calls)")
    ap.add_argument("--media-workers", type=int, default=2,
                    help="wacall's media worker processes (0: media in the server process, pinned to CPU 0)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin wacall to CPU 0 and the generators to the other CPUs")
    ap.add_argument("--aiortc-workers", type=int, default=2, help="processes for the aiortc pairs")
    ap.add_argument("--aiortc-steps", default="10,20,30,40,50,70,100,150,200,300,400,500,700,1000",
                    help="steps for the aiortc baseline (finer at the bottom: aiortc tops out far lower)")
    ap.add_argument("--sample", type=int, default=20, help="calls whose relay counters are read from wacall")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run")
    ap.add_argument("--baseline-reserve", type=float, default=200.0, help="seconds of the budget kept for aiortc")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first failing step")
    ap.add_argument("--no-baseline", action="store_true", help="skip the aiortc baseline")
    ap.add_argument("--only-baseline", action="store_true", help="only the aiortc baseline")
    ap.add_argument("--no-pre-accept", action="store_true", help="accept without pre_accept first")
    ap.add_argument("--shared-cert", action="store_true", help="one DTLS certificate per generator process")
    ap.add_argument("--engine", choices=("c", "python"), default="c",
                    help="generator hot path: C (bench/fastpath.c, built with cc) or pure Python")
    ap.add_argument("--media-path", choices=("c", "python", "both"), default="both",
                    help="wacall's per-packet path: the compiled one, the pure-Python fallback (WACALL_FASTPATH=0), "
                         "or both, one ramp after the other (the budget is split between them)")
    ap.add_argument("--profile-wacall", metavar="PATH", help="run wacall under cProfile, write stats to PATH "
                    "(inflates wacall's CPU: use for hot spots, not for the figures)")
    ap.add_argument("--out", help="JSON path (default bench/results/<timestamp>.json)")
    args = ap.parse_args()

    steps = sorted({s for s in (int(x) for x in args.steps.split(",")) if 0 < s <= args.max} | {args.max})
    a_steps = sorted({s for s in (int(x) for x in args.aiortc_steps.split(",")) if 0 < s <= args.max})
    stamp, out, log = start_run("", args.out)
    started = time.monotonic()

    results: dict = {"started": stamp, "args": vars(args), "steps": steps, "aiortc_steps": a_steps,
                     "git": git_state("src/wacall/media"),      # (its commit, and uncommitted media files)
                     "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                 "loadavg_at_start": os.getloadavg()}}
    try:
        if not args.only_baseline:
            reserve = 0 if args.no_baseline else args.baseline_reserve
            end = started + args.budget - reserve
            if args.media_path in ("c", "both"):
                half = started + (args.budget - reserve) / 2 if args.media_path == "both" else end
                results["wacall"] = ramp_wacall(args, steps, half, log, "c")
            if args.media_path in ("python", "both"):
                results["wacall_python"] = ramp_wacall(args, steps, end, log, "python")
        if not args.no_baseline:
            results["aiortc"] = ramp_aiortc(args, a_steps, started + args.budget, log)
    finally:
        results["elapsed_seconds"] = round(time.monotonic() - started, 1)
        report(results, log)
        out.write_text(json.dumps(results, indent=1, default=str))
        log(f"results: {out}")


if __name__ == "__main__":
    main()
