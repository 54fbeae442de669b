"""Benchmark: what wacall keeps in memory per live media call and per ended call, and a soak.

``percall``: one wacall on a database file (so the store is on disk, as in real use), media in the
server process unless ``--media-workers``. RSS (``Rss`` of the server and its media workers, from
``/proc/<pid>/smaps_rollup``; around the live media calls ``Pss`` too, which divides the pages the processes
share between them) is read

* while ``--ended`` short calls are placed and ended one after the other, signalling only (the user
  calls, the business accepts and terminates): KB per ended call, during the first ``keep_ended``
  calls (the ended calls kept in memory fill up) and after (the steady state: what stays per call);
* before and while ``--calls`` calls carry real media both ways (bench/business_peer.py: ICE, DTLS-SRTP,
  Opus every 20 ms), at ``--hold`` seconds of media: KB per live media call, and how it grows with
  the length of the calls; then after the business terminated them all.

With ``--baseline-ref REF`` (or ``--baseline-src DIR``) the same run measures that version of wacall
(``git archive REF src``) first, side by side, and prints the ratios.

``soak``: ``--total`` short calls with media (``--hold`` seconds each) at a steady rate over
``--seconds``, through a pool of users; RSS, the working set, the database and the recordings on disk
are sampled every 5 s, and control API reads (``GET /_wacall/calls/{id}`` of a live call and of an
ended call long gone from memory, ``GET /_wacall/calls?limit=100``) every 0.5 s with their latency.
Recordings are kept ``--retention`` seconds, so the sweeper runs during the soak. With ``--webhooks``
the app subscribes a local receiver (answers 200) and every webhook is delivered. Stops by itself.

    .venv/bin/python bench/memory.py percall --baseline-ref 127aa83
    .venv/bin/python bench/memory.py soak                   # 10 000 calls in 10 minutes
    .venv/bin/python bench/memory.py soak --total 300 --seconds 30   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))
from media_calls import create_users, memory_footprint  # noqa: E402
from wacall_process import WacallProcess, baseline_src, git_state, start_run  # noqa: E402

GRAPH_VERSION = "v23.0"


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def answer_sdp() -> str:
    """A business answer with a real certificate fingerprint (no media stack behind it)."""
    from business_peer import build_answer
    from wacall.media.certificate import DtlsCertificate
    return build_answer(port=9, ufrag="memB", pwd="memoryBenchPassword0123456",
                        fingerprint=DtlsCertificate.generate().fingerprint, ssrc=1234)


class Target:
    """A running wacall under measurement and plain HTTP helpers for it."""

    def __init__(self, name: str, directory: Path, *, src: str | None, media_workers: int,
                 config: str | None = None) -> None:
        extra = ["--sip-port", "-1", "--media-workers", str(media_workers)]
        if config:
            extra += ["--config", config]
        self.name = name
        self.db = directory / f"{name}.db"
        self.process = WacallProcess(extra=extra, db=str(self.db), src=src,
                                     stderr_path=HERE / "results" / f"memory-{name}-stderr.log").start()
        self.info = self.process.info
        self.base = self.info["graph_url"]
        self.http = httpx.Client(timeout=60)
        self.headers = {"Authorization": f"Bearer {self.info['access_token']}"}

    @property
    def pids(self) -> list[int]:
        return self.process.pids

    def rss(self) -> int:
        return rss_kb(self.pids)

    def memory(self) -> dict:
        """Rss and Pss (KB) of the server and its media workers, summed: ``{"rss_kb", "pss_kb"}``."""
        m = memory_footprint(self.pids)
        return {"rss_kb": m["rss_kb"], "pss_kb": m["pss_kb"]}

    def ctl(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return self.http.request(method, f"{self.base}/_wacall/{path}", json=body)

    def calls_action(self, body: dict) -> httpx.Response:
        return self.http.post(f"{self.base}/{GRAPH_VERSION}/{self.info['phone_number_id']}/calls",
                              json={"messaging_product": "whatsapp", **body}, headers=self.headers)

    def working_set(self) -> dict | None:
        return self.ctl("GET", "health").json().get("working_set")

    def stop(self) -> None:
        self.http.close()
        self.process.stop()


# -- percall ------------------------------------------------------------------------------------------------

def short_signalling_call(target: Target, wa_id: str, sdp: str) -> None:
    placed = target.ctl("POST", f"users/{wa_id}/calls", {"to": target.info["phone_number_id"]})
    placed.raise_for_status()
    call_id = placed.json()["call_id"]
    for action in ("accept", "terminate"):
        body = {"call_id": call_id, "action": action}
        if action == "accept":
            body["session"] = {"sdp_type": "answer", "sdp": sdp}
        response = target.calls_action(body)
        if response.status_code != 200:
            raise RuntimeError(f"{action}: {response.status_code} {response.text[:200]}")


def measure(name: str, directory: Path, args, src: str | None, log) -> dict:
    from business_peer import WorkerHandle
    target = Target(name, directory, src=src, media_workers=args.media_workers)
    result: dict = {"name": name, "src": src or "this checkout", "ended": [], "media": []}
    generator = None
    try:
        target.ctl("PATCH", "limits", {"concurrent_calls": max(1000, args.calls),
                                       "media_start_timeout_seconds": 0, "media_silence_timeout_seconds": 0})
        pool = create_users(target.info, 50, prefix="4478")
        media_users = create_users(target.info, args.calls, prefix="4479")
        sdp = answer_sdp()
        generator = WorkerHandle(target.info, cert_per_call=False)

        # warm-up: a few calls of each kind, so that caches and pools exist before the first reading
        generator.send({"op": "add", "wa_ids": media_users[:10]})
        warm = generator.recv()
        time.sleep(3)
        generator.send({"op": "end", "call_ids": warm["call_ids"]})
        generator.recv()
        for i in range(200):
            short_signalling_call(target, pool[i % len(pool)], sdp)
        time.sleep(2)

        # ended calls, signalling only
        rss0 = target.rss()
        t0 = time.monotonic()
        result["ended"].append({"calls": 0, "rss_kb": rss0})
        for i in range(1, args.ended + 1):
            short_signalling_call(target, pool[i % len(pool)], sdp)
            if i % 250 == 0:
                result["ended"].append({"calls": i, "rss_kb": target.rss(), "working_set": target.working_set()})
        log(f"{name}: {args.ended} ended calls in {time.monotonic() - t0:.0f} s, RSS {rss0 // 1024} -> "
            f"{target.rss() // 1024} MB")

        # live media calls
        time.sleep(2)
        before_memory = target.memory()
        before = before_memory["rss_kb"]
        t_add = time.monotonic()
        generator.send({"op": "add", "wa_ids": media_users})
        added = generator.recv()
        up = time.monotonic()
        log(f"{name}: {added['ok']} media calls up in {up - t_add:.0f} s ({added['n_failed']} failed)")
        result["media_calls_up"] = added["ok"]
        result["media"].append({"hold_s": 0, **target.memory()})
        for mark in args.marks:
            time.sleep(max(0.0, up + mark - time.monotonic()))
            result["media"].append({"hold_s": mark, **target.memory()})
        generator.send({"op": "snapshot"})
        snap = generator.recv()
        received = sum(c[1] for c in snap["calls"].values())
        expected = sum(c[2] for c in snap["calls"].values())
        result["media_loss_user_to_business"] = round(1 - received / expected, 5) if expected else None
        generator.send({"op": "end", "call_ids": added["call_ids"]})
        generator.recv()
        time.sleep(5)
        after = target.rss()
        result["media_before_kb"] = before
        result["media_before_pss_kb"] = before_memory["pss_kb"]
        result["media_after_end_kb"] = after
        log(f"{name}: RSS before media {before // 1024} MB, " + ", ".join(
            f"{m['hold_s']} s: {m['rss_kb'] // 1024} MB" for m in result["media"]) + f", after end {after // 1024} MB")
    finally:
        if generator is not None:
            generator.stop()
        target.stop()
    summarize_percall(result, args)
    return result


def summarize_percall(result: dict, args) -> None:
    ended = result["ended"]
    keep = 1000
    filling = [(e["calls"], e["rss_kb"]) for e in ended if e["calls"] <= keep]
    steady = [(e["calls"], e["rss_kb"]) for e in ended if e["calls"] >= keep + 250]
    n = max(1, result.get("media_calls_up") or 0)
    before = result["media_before_kb"]
    result["summary"] = {
        "kb_per_ended_call_first_1000": round(slope(filling), 2) if slope(filling) is not None else None,
        "kb_per_ended_call_steady": round(slope(steady), 2) if slope(steady) is not None else None,
        "kb_per_live_media_call": {m["hold_s"]: round((m["rss_kb"] - before) / n, 1) for m in result["media"]},
        "pss_kb_per_live_media_call": {m["hold_s"]: round((m["pss_kb"] - result["media_before_pss_kb"]) / n, 1)
                                       for m in result["media"]},
        # the whole footprint of wacall's processes divided by its live calls (what 1000 calls would average)
        "footprint_kb_per_live_call": {m["hold_s"]: {"rss": round(m["rss_kb"] / n, 1), "pss": round(m["pss_kb"] / n, 1)}
                                       for m in result["media"]},
        "kb_per_media_call_after_end": round((result["media_after_end_kb"] - before) / n, 1),
    }


def percall(args, log) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="wacall-memory-bench-"))
    results: dict = {"targets": []}
    try:
        src = args.baseline_src or (baseline_src(args.baseline_ref) if args.baseline_ref else None)
        if src:
            results["targets"].append(measure("baseline", directory, args, src, log))
        results["targets"].append(measure("wacall", directory, args, None, log))
    finally:
        subprocess.run(["rm", "-rf", str(directory)])
    log("")
    marks = [m["hold_s"] for m in results["targets"][-1]["media"]]
    log(f"{'target':<10} {'KB/ended call (first 1000)':>27} {'KB/ended call (steady)':>23} "
        + " ".join(f"{'KB/live call @' + str(m) + 's':>17}" for m in marks) + f" {'KB/call after end':>18}")
    for t in results["targets"]:
        s = t["summary"]
        log(f"{t['name']:<10} {s['kb_per_ended_call_first_1000']!s:>27} {s['kb_per_ended_call_steady']!s:>23} "
            + " ".join(f"{s['kb_per_live_media_call'].get(m)!s:>17}" for m in marks)
            + f" {s['kb_per_media_call_after_end']!s:>18}")
    for t in results["targets"]:
        s = t["summary"]
        log(f"{t['name']}: per live call, Pss " + ", ".join(
            f"{m} s: {s['pss_kb_per_live_media_call'].get(m)} KB" for m in marks) + "; whole footprint / live calls "
            + ", ".join(f"{m} s: Rss {v['rss']} KB, Pss {v['pss']} KB" for m, v in s["footprint_kb_per_live_call"].items()))
    if len(results["targets"]) == 2:
        base, new = (t["summary"] for t in results["targets"])
        last = marks[-1]
        results["ratios"] = {
            "ended_steady": _ratio(base["kb_per_ended_call_steady"], new["kb_per_ended_call_steady"]),
            f"live_at_{last}s": _ratio(base["kb_per_live_media_call"][last], new["kb_per_live_media_call"][last])}
        log(f"baseline / wacall: {results['ratios']}")
    return results


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return round(a / b, 1) if b > 0.05 else None


# -- soak ---------------------------------------------------------------------------------------------------

class Reader(threading.Thread):
    """Control API reads every 0.5 s, timed: a live call, an ended call long gone from memory, the list."""

    def __init__(self, target: Target, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target, self.stop_event = target, stop
        self.samples: list[tuple[float, str, float, int]] = []     # (t, kind, ms, status)
        self.old_call: str | None = None

    def timed(self, kind: str, path: str) -> httpx.Response | None:
        t0 = time.monotonic()
        try:
            response = self.target.http.get(f"{self.target.base}/_wacall/{path}")
        except httpx.HTTPError:
            self.samples.append((t0, kind, (time.monotonic() - t0) * 1000, 0))
            return None
        self.samples.append((t0, kind, (time.monotonic() - t0) * 1000, response.status_code))
        return response

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            listed = self.timed("list_100", "calls?limit=100")
            data = listed.json().get("data", []) if listed is not None and listed.status_code == 200 else []
            live = next((c["call_id"] for c in reversed(data) if c["state"] != "ENDED"), None)
            if live:
                self.timed("live_call", f"calls/{live}")
            if self.old_call is None:
                self.old_call = next((c["call_id"] for c in data if c["state"] == "ENDED"), None)
            elif self.old_call:
                self.timed("old_ended_call", f"calls/{self.old_call}")


class WebhookSink:
    """A business's webhook endpoint on loopback that verifies and answers 200 to everything."""

    def __init__(self, verify_token: str) -> None:
        sink = self
        self.received = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                ok = query.get("hub.verify_token") == [verify_token]
                body = query["hub.challenge"][0].encode() if ok else b"forbidden"
                self.send_response(200 if ok else 403)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.received += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def subscribe(self, target: Target) -> None:
        info = target.info
        response = target.http.post(f"{target.base}/{GRAPH_VERSION}/{info['app_id']}/subscriptions", params={
            "object": "whatsapp_business_account", "callback_url": self.url, "verify_token": info["verify_token"],
            "fields": "calls,messages", "access_token": f"{info['app_id']}|{info['app_secret']}"})
        response.raise_for_status()

    def close(self) -> None:
        self.server.shutdown()


def dir_usage(path: Path) -> tuple[int, int]:
    count = size = 0
    try:
        for entry in os.scandir(path):
            count += 1
            size += entry.stat().st_size
    except OSError:
        pass
    return count, size


def soak(args, log) -> dict:
    results: dict = {"targets": []}
    src = args.baseline_src or (baseline_src(args.baseline_ref) if args.baseline_ref else None)
    if src:
        results["targets"].append(soak_one("baseline", src, args, log))
    results["targets"].append(soak_one("wacall", None, args, log))
    return results


def soak_one(name: str, src: str | None, args, log) -> dict:
    from business_peer import WorkerHandle
    from wacall.config import DEFAULT_TOML
    directory = Path(tempfile.mkdtemp(prefix="wacall-soak-"))
    config = directory / "wacall.toml"
    config.write_text(DEFAULT_TOML + f"\n[recordings]\nretention_seconds = {args.retention}\n")
    target = Target(name, directory, src=src, media_workers=args.media_workers, config=str(config))
    recordings = Path(str(target.db) + ".recordings")
    result: dict = {"name": name, "src": src or "this checkout", "samples": []}
    generator = None
    stop = threading.Event()
    reader = Reader(target, stop)
    started = time.monotonic()
    sink = WebhookSink(target.info["verify_token"]) if args.webhooks else None
    try:
        if sink is not None:
            sink.subscribe(target)
        users = create_users(target.info, args.users, prefix="4477")
        generator = WorkerHandle(target.info, cert_per_call=False)
        rate = args.total / args.seconds
        generator.send({"op": "soak", "wa_ids": users, "total": args.total, "rate": rate, "hold": args.hold})
        generator.recv()
        reader.start()
        t0 = time.monotonic()
        deadline = t0 + args.seconds + args.hold + 120
        last_log = 0.0
        progress: dict = {}
        while time.monotonic() < deadline:
            generator.send({"op": "soak_progress"})
            progress = generator.recv()
            ws = target.working_set()
            files, rec_bytes = dir_usage(recordings)
            db_bytes = sum(p.stat().st_size for p in directory.glob(f"{name}.db*") if p.is_file())
            sample = {"t": round(time.monotonic() - t0, 1), "rss_kb": target.rss(), "started": progress["started"],
                      "ended": progress["ended"], "failed": progress["failed"], "working_set": ws,
                      "webhooks_received": sink.received if sink else None,
                      "recording_files": files, "recording_mb": round(rec_bytes / 2**20, 1),
                      "db_mb": round(db_bytes / 2**20, 1)}
            result["samples"].append(sample)
            if sample["t"] - last_log >= 30 or progress["done"]:
                last_log = sample["t"]
                log(f"{name} t={sample['t']:5.0f}s started {progress['started']:6d} ended {progress['ended']:6d} "
                    f"failed {progress['failed']:3d} RSS {sample['rss_kb'] / 1024:6.1f} MB working set {ws} "
                    f"recordings {files} files {sample['recording_mb']} MB db {sample['db_mb']} MB")
            if progress["done"]:
                break
            time.sleep(5)
        result["generator"] = progress
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        time.sleep(3)
        result["final_rss_kb"] = target.rss()
    finally:
        stop.set()
        reader.join(5)
        if generator is not None:
            generator.stop()
        target.stop()
        if sink is not None:
            sink.close()
        subprocess.run(["rm", "-rf", str(directory)])
    result["reads"] = summarize_reads(reader.samples, t0)
    result["summary"] = summarize_soak(result)
    summary = result["summary"]
    log(f"{name}: {summary['calls_up']} calls up, {summary['calls_failed']} failed; RSS by minute (MB) "
        f"{summary['rss_mb_by_minute']}; second half {summary['rss_kb_per_1000_calls_second_half']} KB per 1000 calls; "
        + "; ".join(f"{k} p50 {v['p50_ms']} ms p95 {v['p95_ms']} ms max {v['max_ms']} ms"
                    for k, v in summary["reads"].items()))
    log(f"{name}: wall time {time.monotonic() - started:.0f} s")
    return result


def summarize_reads(samples: list, t0: float) -> dict:
    out: dict = {}
    for kind in ("live_call", "old_ended_call", "list_100"):
        mine = [(t - t0, ms, status) for t, k, ms, status in samples if k == kind]
        per_minute = []
        for minute in range(int(max((t for t, _, _ in mine), default=0) // 60) + 1):
            values = [ms for t, ms, _ in mine if minute * 60 <= t < (minute + 1) * 60]
            if values:
                per_minute.append({"minute": minute + 1, "n": len(values), "p50_ms": round(pct(values, 0.5), 1),
                                   "p95_ms": round(pct(values, 0.95), 1), "max_ms": round(max(values), 1)})
        all_ms = [ms for _, ms, _ in mine]
        out[kind] = {"n": len(mine), "errors": sum(1 for _, _, s in mine if s != 200),
                     "p50_ms": round(pct(all_ms, 0.5), 1) if all_ms else None,
                     "p95_ms": round(pct(all_ms, 0.95), 1) if all_ms else None,
                     "max_ms": round(max(all_ms), 1) if all_ms else None, "per_minute": per_minute}
    return out


def summarize_soak(result: dict) -> dict:
    samples = result["samples"]
    gen = result.get("generator", {})
    ended = [s for s in samples if s["ended"] > 0]
    half = [s for s in ended if s["ended"] >= (ended[-1]["ended"] / 2 if ended else 0)]
    per_1000 = slope([(s["ended"], s["rss_kb"]) for s in half])
    by_minute = {}
    for s in samples:
        by_minute[int(s["t"] // 60) + 1] = s
    return {
        "calls_started": gen.get("started"), "calls_up": gen.get("up"), "calls_failed": gen.get("failed"),
        "calls_ended": gen.get("ended"), "terminate_failed": gen.get("terminate_failed"),
        "failures_sample": gen.get("failures", [])[:5],
        "media_loss_user_to_business": round(1 - gen["rx_packets"] / gen["rx_expected"], 5)
        if gen.get("rx_expected") else None,
        "elapsed_s": result.get("elapsed_s"),
        "rss_mb_by_minute": {m: round(s["rss_kb"] / 1024, 1) for m, s in sorted(by_minute.items())},
        "rss_mb_min_max_second_half": [round(min(s["rss_kb"] for s in half) / 1024, 1),
                                       round(max(s["rss_kb"] for s in half) / 1024, 1)] if half else None,
        "rss_kb_per_1000_calls_second_half": round(per_1000 * 1000, 1) if per_1000 is not None else None,
        "working_set_last": samples[-1]["working_set"] if samples else None,
        "recording_files_max": max((s["recording_files"] for s in samples), default=0),
        "db_mb_last": samples[-1]["db_mb"] if samples else None,
        "webhooks_received": samples[-1].get("webhooks_received") if samples else None,
        "reads": {k: {x: v[x] for x in ("n", "errors", "p50_ms", "p95_ms", "max_ms")}
                  for k, v in result["reads"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("percall", help="RSS per live media call and per ended call")
    p.add_argument("--calls", type=int, default=200, help="concurrent calls with media")
    p.add_argument("--marks", default="10,30,60", help="seconds of media at which RSS is read")
    p.add_argument("--ended", type=int, default=3000, help="short signalling-only calls placed and ended")
    p.add_argument("--baseline-ref", help="measure this git ref's wacall first (git archive REF src)")
    p.add_argument("--baseline-src", help="measure the wacall package in this directory first")
    p.add_argument("--media-workers", type=int, default=0)
    s = sub.add_parser("soak", help="many short calls with media; RSS and control API read latency over time")
    s.add_argument("--total", type=int, default=10000)
    s.add_argument("--seconds", type=float, default=600.0, help="spread the calls over this long")
    s.add_argument("--hold", type=float, default=5.0, help="seconds of media per call")
    s.add_argument("--users", type=int, default=400, help="the pool of users placing the calls")
    s.add_argument("--retention", type=float, default=120.0, help="recordings.retention_seconds")
    s.add_argument("--media-workers", type=int, default=0)
    s.add_argument("--webhooks", action="store_true", help="subscribe a local receiver to calls and messages")
    s.add_argument("--baseline-ref", help="soak this git ref's wacall first, with the same arguments")
    s.add_argument("--baseline-src", help="soak the wacall package in this directory first")
    ap.add_argument("--out", help="JSON path (default bench/results/memory-<mode>-<timestamp>.json)")
    args = ap.parse_args()
    if args.mode == "percall":
        args.marks = [int(x) for x in args.marks.split(",")]
    stamp, out, log = start_run(f"memory-{args.mode}-", args.out)

    git = git_state()
    results = {"run": stamp, "commit": git["commit"], "git": git, "args": vars(args),
               "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}}
    results.update(percall(args, log) if args.mode == "percall" else soak(args, log))
    out.write_text(json.dumps(results, indent=1, default=str))
    log(f"run {stamp}: results in {out}")


if __name__ == "__main__":
    main()
