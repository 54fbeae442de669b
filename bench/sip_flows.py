"""Benchmark: business-initiated SIP calls per second through Meta's digest flow, over TLS.

SIPp (Debian's, no TLS) runs ``tests/data/sipp/bic_digest.xml`` at increasing rates through a local
stunnel client (TLS; CA and the ``wa.meta.vc`` host name checked) to the target:

* ``kamailio``: ``bench/kamailio/wa-meta-vc.cfg`` (407 digest challenge, then a stateless 200 OK
  with Meta's Record-Routes and a canned SDES answer; ACK absorbed; BYE 200), 2 TLS workers: the
  baseline. Signalling only: it keeps no call state, applies no business rule, relays no media;
* ``wacall``: ``wacall serve --port 0 --sip-port 0 --json`` with the business number switched to SIP
  (SDES), ``--users`` virtual users with an approved permission who answer at once, and limits
  raised so no business rule refuses a call. Each call also gets its media relay legs.

Each call is INVITE → 407 → ACK → INVITE with Proxy-Authorization → [180] → 200 → ACK → BYE → 200.
SIPp's ``-auth_uri`` (the digest ``uri``, which Meta checks against the Request-URI) is one value
per process, and Meta allows one call at a time per business-user pair, so the load is ``--users``
SIPp processes, one WhatsApp user each, each with at most ``--limit`` calls open (1 when the
target is wacall) and ``rate / users`` calls/s, all through one stunnel (one TLS connection each).

A step runs ``--seconds``. Per step: calls/s achieved (successful calls / the slowest process's
elapsed time), failed calls, CPU of the target's processes (``/proc``, as µs per call and cores)
and the cores SIPp + stunnel used (the load generator). A target's ramp stops at the first step
with a failed call or below 90 % of the requested rate; its figure is the best rate with no failed
call. With both targets the report puts them side by side with ratios.

    .venv/bin/python bench/sip_flows.py --target kamailio
    .venv/bin/python bench/sip_flows.py --target kamailio --target wacall --users 20
    .venv/bin/python bench/sip_flows.py --target kamailio --target wacall --rates 600 --seconds 6
    .venv/bin/python bench/sip_flows.py --target kamailio --rates 50 --seconds 2        # smoke test

The third is issue 9's goal, at its own load: <= 1.5 ms of wacall CPU per flow at 600 flows/s (one core
carries >= 600 flows/s); add ``--baseline-ref REF --repeat 5`` for the code at REF beside it, five times each.

The target is pinned to CPU 0 and SIPp + stunnel to the other CPUs (``--no-pin`` turns it off).
Results go to bench/results/sip-<UTC timestamp>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from wacall_process import WacallProcess, baseline_src, git_state  # noqa: E402
from support.sip_tools import (  # noqa: E402
    Kamailio, Sipp, Stunnel, TestPki, bic_auth_uri, bic_keys, make_test_pki, process_tree_cpu_seconds,
)

BUSINESS = "442071838750"
FROM_DOMAIN = "pbx.business.example"
PASSWORD = "bench-sip-password"
USER_PREFIX = "4479555"


def user_ids(n: int) -> list[str]:
    return [f"{USER_PREFIX}{i:05d}" for i in range(n)]


class Target(Protocol):
    """A SIP-over-TLS server playing wa.meta.vc for business-initiated calls."""

    name: str
    address: tuple[str, int]
    pid: int
    ca: Path             # what the stunnel client trusts
    users: list[str]     # E.164 digits of the WhatsApp users called (one SIPp process each)
    business: str        # E.164 digits of the calling business number
    from_domain: str     # the business's configured SIP host name
    password: str        # sip_user_password

    def stop(self) -> None: ...


@dataclass
class KamailioTarget:
    kam: Kamailio
    users: list[str]
    name: str = "kamailio"
    business: str = BUSINESS
    from_domain: str = FROM_DOMAIN
    password: str = PASSWORD

    @property
    def address(self) -> tuple[str, int]:
        return self.kam.address

    @property
    def ca(self) -> Path:
        return self.kam.ca

    @property
    def pid(self) -> int:
        assert self.kam.pid is not None
        return self.kam.pid

    def stop(self) -> None:
        self.kam.stop()


def start_kamailio(workdir: Path, pki: TestPki, tcp_children: int, users: int) -> KamailioTarget:
    kam = Kamailio(cert=pki.meta.cert, key=pki.meta.key, ca=pki.ca_cert, password=PASSWORD,
                   tcp_children=tcp_children, workdir=workdir / "kamailio", shm_mb=256).start()
    return KamailioTarget(kam, user_ids(users))


@dataclass
class WacallTarget:
    wacall: WacallProcess
    address: tuple[str, int]
    ca: Path
    users: list[str]
    business: str
    from_domain: str
    password: str
    name: str = "wacall"

    @property
    def pid(self) -> int:
        return self.wacall.pid

    def stop(self) -> None:
        self.wacall.stop()


def start_wacall(workdir: Path, users: int, extra: list[str], profile: str | None = None, src: str | None = None,
                 name: str = "wacall") -> WacallTarget:
    """``wacall serve --port 0 --sip-port 0 --json`` (its own CA in ``workdir``), the default business
    number switched to SIP with SDES and the business server FROM_DOMAIN (resolved to 127.0.0.1),
    ``users`` users with an approved permission who answer at once, and no limit in the way."""
    wacall = WacallProcess(extra=["--sip-port", "0", "--pki-dir", str(workdir / "wacall-pki"),
                                  f"--sip-host={FROM_DOMAIN}=127.0.0.1", *extra],
                           stderr_path=workdir / f"{name}-stderr.log", profile=profile, src=src).start()
    info = wacall.info
    sip = info.get("sip") or {}
    if not sip.get("port"):
        wacall.stop()
        raise SystemExit(f"wacall serve printed no SIP port: {sorted(info)}")
    graph = f"{info['graph_url']}/v23.0"
    auth = {"Authorization": f"Bearer {info['access_token']}"}
    pnid = info["phone_number_id"]
    wa_ids = user_ids(users)
    with httpx.Client(timeout=30) as http:
        def ok(response: httpx.Response) -> httpx.Response:
            if response.status_code >= 300:
                wacall.stop()
                raise SystemExit(f"wacall set-up: {response.request.method} {response.request.url}: "
                                 f"{response.status_code} {response.text}")
            return response

        ok(http.post(f"{graph}/{pnid}/settings", headers=auth, json={"calling": {
            "status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
            "sip": {"status": "ENABLED", "servers": [{"hostname": FROM_DOMAIN, "port": 5061}]}}}))
        settings = ok(http.get(f"{graph}/{pnid}/settings", headers=auth,
                               params={"include_sip_credentials": "true"})).json()
        password = settings["calling"]["sip"]["servers"][0]["sip_user_password"]
        ctl = f"{info['graph_url']}/_wacall"
        ok(http.patch(f"{ctl}/limits", json={
            "bic_connected_per_24h": 10**9, "bic_initiations_per_24h": 10**9, "concurrent_calls": 10**6,
            "media_start_timeout_seconds": 0, "media_silence_timeout_seconds": 0}))
        for wa_id in wa_ids:
            r = http.post(f"{ctl}/users", json={"wa_id": wa_id, "name": f"Bench {wa_id[-5:]}"})
            if r.status_code not in (201, 409):
                ok(r)
            ok(http.post(f"{ctl}/users/{wa_id}/permission_replies", json={
                "phone_number_id": pnid, "response": "accept", "via": "business_profile"}))
            ok(http.patch(f"{ctl}/users/{wa_id}", json={"answer_after": 0}))
    business = "".join(ch for ch in info["display_phone_number"] if ch.isdigit())
    return WacallTarget(wacall, (sip.get("host", "127.0.0.1"), int(sip["port"])), Path(sip["ca_file"]),
                        wa_ids, business, FROM_DOMAIN, password, name=name)


# ----------------------------------------------------------------------------------------------------

@dataclass
class Step:
    rate: float
    calls: int
    successful: int
    failed: int
    elapsed: float
    cps: float
    target_cpu: float
    sipp_cpu: float
    stunnel_cpu: float
    returncodes: list[int | None]
    errors: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.successful == self.calls

    @property
    def generator_cores(self) -> float:
        return (self.sipp_cpu + self.stunnel_cpu) / self.elapsed if self.elapsed else 0.0

    @property
    def target_cores(self) -> float:
        return self.target_cpu / self.elapsed if self.elapsed else 0.0

    @property
    def us_per_call(self) -> float | None:
        return 1e6 * self.target_cpu / self.successful if self.successful else None

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "errors"}
        d.update(ok=self.ok, target_cores=round(self.target_cores, 3),
                 generator_cores=round(self.generator_cores, 3),
                 target_cpu_us_per_call=round(self.us_per_call, 1) if self.us_per_call else None,
                 errors_tail=self.errors[-1500:])
        return d


@dataclass
class Ramp:
    target: str
    users: int
    limit: int
    steps: list[Step] = field(default_factory=list)

    def best(self) -> Step | None:
        good = [s for s in self.steps if s.ok]
        return max(good, key=lambda s: s.cps) if good else None


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _pin(pid: int, cpus: set[int]) -> None:
    """Pin a process, its threads and its (already forked) children to ``cpus``."""
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(tid), cpus)
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split())
        except (OSError, ValueError):
            continue


def _sipp(target: Target, user: str, stunnel: Stunnel, workdir: Path, **kwargs: object) -> Sipp:
    return Sipp("bic_digest", stunnel.address, keys=bic_keys(user, target.business, target.from_domain),
                auth=(target.business, target.password), auth_uri=bic_auth_uri(user), workdir=workdir,
                **kwargs)  # type: ignore[arg-type]


def ramp(target: Target, workdir: Path, rates: list[float], seconds: float, limit: int, hold_ms: int,
         pin: bool, log: Callable[[str], None]) -> Ramp:
    users = target.users
    result = Ramp(target.name, len(users), limit)
    target_cpus, load_cpus = {0}, (set(range(1, os.cpu_count() or 1)) or {0})
    if pin:
        _pin(target.pid, target_cpus)
        os.sched_setaffinity(0, load_cpus)   # this process; stunnel and SIPp inherit it
    stunnel = Stunnel.client(target.address, ca=target.ca, workdir=workdir / f"{target.name}-stunnel").start()
    try:
        # warm-up: one call per user, so TLS set-up and first-call costs stay out of the figures
        warm = [_sipp(target, u, stunnel, workdir / f"{target.name}-warmup-{i}", timeout=30).start()
                for i, u in enumerate(users)]
        for sipp in warm:
            res = sipp.wait(60)
            if not res.ok:
                raise SystemExit(f"{target.name}: warm-up call failed\n{res.describe()}")
        for rate in rates:
            per_user = max(1, int(rate * seconds / len(users)))
            t0 = process_tree_cpu_seconds(target.pid)
            s0 = process_tree_cpu_seconds(stunnel.pid or 0)
            c0 = _children_cpu()
            runs = [_sipp(target, u, stunnel, workdir / f"{target.name}-r{rate:g}-{i}", calls=per_user,
                          rate=rate / len(users), limit=limit, pause_ms=hold_ms, trace_msg=False,
                          timeout=seconds * 4 + 30).start()
                    for i, u in enumerate(users)]
            results = [sipp.wait() for sipp in runs]
            successful = sum(r.successful for r in results)
            elapsed = max(r.elapsed for r in results)
            step = Step(rate=rate, calls=per_user * len(users), successful=successful,
                        failed=sum(r.failed for r in results), elapsed=round(elapsed, 3),
                        cps=round(successful / elapsed, 1) if elapsed else 0.0,
                        target_cpu=round(process_tree_cpu_seconds(target.pid) - t0, 3),
                        sipp_cpu=round(_children_cpu() - c0, 3),
                        stunnel_cpu=round(process_tree_cpu_seconds(stunnel.pid or 0) - s0, 3),
                        returncodes=[r.returncode for r in results],
                        errors="".join(r.errors[-600:] for r in results if r.errors))
            result.steps.append(step)
            log(f"  {target.name:9} rate {rate:7g}/s  calls {step.successful:6}/{step.calls:<6} failed {step.failed:4}  "
                f"{step.cps:8.1f} calls/s  target CPU {step.target_cpu:6.2f}s ({step.us_per_call or 0:7.1f} µs/call, "
                f"{step.target_cores:4.2f} cores)  generator {step.generator_cores:4.2f} cores")
            if not step.ok:
                log(f"  {target.name}: failed calls at {rate:g}/s: stopping (logs in {workdir})")
                break
            if step.cps < 0.9 * rate:
                generator = step.generator_cores > 0.9 * len(load_cpus)
                who = "the load generator (SIPp + stunnel)" if generator else "the target (or the per-user call latency)"
                log(f"  {target.name}: {step.cps:.0f}/s is under 90 % of {rate:g}/s: {who} is the limit, stopping")
                break
    finally:
        stunnel.stop()
        if pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return result


def report(ramps: list[Ramp], log: Callable[[str], None]) -> dict:
    summary: dict = {}
    log("")
    log(f"{'target':18} {'users x limit':>13} {'best calls/s (0 failed)':>24} {'at rate':>8} "
        f"{'target CPU µs/call':>19} {'target cores':>13}")
    for r in ramps:
        b = r.best()
        if b is None:
            log(f"{r.target:18} {f'{r.users} x {r.limit}':>13} {'no step without failures':>24}")
            summary[r.target] = None
            continue
        per_call = sorted(s.us_per_call for s in r.steps if s.ok and s.us_per_call)
        summary[r.target] = {"cps": b.cps, "rate": b.rate, "cpu_us_per_call": round(b.us_per_call or 0, 1),
                             "target_cores": round(b.target_cores, 2), "users": r.users, "limit": r.limit,
                             "steps": len(r.steps),
                             "median_cpu_us_per_call": round(per_call[len(per_call) // 2], 1) if per_call else None}
        log(f"{r.target:18} {f'{r.users} x {r.limit}':>13} {b.cps:24.1f} {b.rate:8g} {b.us_per_call or 0:19.1f} "
            f"{b.target_cores:13.2f}")
    for name, w in list(summary.items()):
        k = summary.get("kamailio")
        if name.startswith("wacall@") and w and summary.get("wacall"):
            now = summary["wacall"]
            summary["ratios_vs_baseline"] = {"cpu_per_call_baseline_over_now": round(
                w["cpu_us_per_call"] / now["cpu_us_per_call"], 2), "cps_now_over_baseline": round(now["cps"] / w["cps"], 2)}
            log(f"this checkout vs {name}: CPU per call {w['cpu_us_per_call']:.0f} -> {now['cpu_us_per_call']:.0f} µs "
                f"({summary['ratios_vs_baseline']['cpu_per_call_baseline_over_now']}x less)")
            if w["median_cpu_us_per_call"] and now["median_cpu_us_per_call"]:
                log(f"median CPU per call over every passing step: {w['median_cpu_us_per_call']:.0f} ({w['steps']} steps) "
                    f"-> {now['median_cpu_us_per_call']:.0f} µs ({now['steps']} steps)")
        if name.startswith("wacall@") and w and k:
            log(f"{name} vs kamailio: CPU per call {w['cpu_us_per_call'] / k['cpu_us_per_call']:.1f}x")
    if summary.get("kamailio") and summary.get("wacall"):
        k, w = summary["kamailio"], summary["wacall"]
        ratios = {"cps_wacall_over_kamailio": round(w["cps"] / k["cps"], 3),
                  "cpu_per_call_wacall_over_kamailio": round(w["cpu_us_per_call"] / k["cpu_us_per_call"], 3)}
        summary["ratios"] = ratios
        log(f"ratios: calls/s wacall/kamailio = {ratios['cps_wacall_over_kamailio']:.2f}, "
            f"CPU per call wacall/kamailio = {ratios['cpu_per_call_wacall_over_kamailio']:.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", choices=["kamailio", "wacall"],
                        help="repeatable; default kamailio")
    parser.add_argument("--rates", default="100,250,500,1000,2000,3000,4000,6000,8000,10000,12000",
                        help="comma-separated total call rates (calls/s) to step through")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each step")
    parser.add_argument("--users", type=int, default=1,
                        help="SIPp processes, one WhatsApp user each (default 1; 20 when wacall is a target)")
    parser.add_argument("--limit", type=int, default=None,
                        help="SIPp -l per process: calls open at once (default 2000; 1 when wacall is a "
                             "target: one call per business-user pair)")
    parser.add_argument("--hold-ms", type=int, default=0, help="pause between ACK and BYE (SIPp -d)")
    parser.add_argument("--kamailio-tcp-children", type=int, default=2, help="kamailio TLS workers")
    parser.add_argument("--wacall-arg", action="append", default=[], help="extra argument for wacall serve")
    parser.add_argument("--profile-wacall", metavar="PATH", help="run wacall under cProfile, write stats to PATH "
                        "(inflates wacall's CPU: use for hot spots, not for the figures)")
    parser.add_argument("--baseline-ref", metavar="REF", help="also run wacall at this git ref (git archive REF "
                        "src), before this checkout's, in the same run: a before/after side by side")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="with --baseline-ref: run the baseline and this checkout N times each, alternately "
                             "(a fresh server each time), and report the median CPU per call over their steps: "
                             "on a shared machine, neighbours come and go during a run")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the target to CPU 0")
    parser.add_argument("--workdir", help="keep logs here (default: a temporary directory)")
    args = parser.parse_args()
    targets = args.target or ["kamailio"]
    with_wacall = "wacall" in targets
    users = args.users if args.users != 1 or not with_wacall else 20
    limit = args.limit if args.limit is not None else (1 if with_wacall else 2000)
    if with_wacall and limit != 1:
        parser.error("wacall refuses a second call between a business and a user (403 duplicate): --limit 1")
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sip-flows-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"bench/sip_flows.py: targets {targets}, rates {rates}, {args.seconds:g}s per step, {users} users "
        f"x -l {limit}, hold {args.hold_ms} ms, {os.cpu_count()} CPUs, logs in {workdir}")
    ramps: list[Ramp] = []
    runs = [(name, None) for name in targets]
    if args.baseline_ref and with_wacall:
        at = runs.index(("wacall", None))
        pair = [(f"wacall@{args.baseline_ref}", baseline_src(args.baseline_ref)), ("wacall", None)]
        runs[at:at + 1] = pair * max(1, args.repeat)
    by_name: dict[str, Ramp] = {}
    for n, (name, src) in enumerate(runs):
        if name == "kamailio":
            pki = make_test_pki(workdir / "pki", [FROM_DOMAIN])
            target: Target = start_kamailio(workdir, pki, args.kamailio_tcp_children, users)
        else:
            target = start_wacall(workdir / f"{name}-{n}", users, args.wacall_arg, args.profile_wacall, src=src,
                                  name=name)
        try:
            result = ramp(target, workdir / f"run{n}", rates, args.seconds, limit, args.hold_ms, not args.no_pin, log)
        finally:
            target.stop()
        if name in by_name:                 # --repeat: one ramp per target, its steps from every repetition
            by_name[name].steps.extend(result.steps)
        else:
            by_name[name] = result
            ramps.append(result)
    summary = report(ramps, log)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir / f"sip-{stamp}.json"
    out.write_text(json.dumps({
        "bench": "sip_flows", "when": stamp, "git": git_state(), "baseline_ref": args.baseline_ref,
        "cpus": os.cpu_count(), "seconds_per_step": args.seconds,
        "users": users, "limit": limit, "hold_ms": args.hold_ms, "pinned": not args.no_pin,
        "ramps": {r.target: [s.as_dict() for s in r.steps] for r in ramps}, "summary": summary,
    }, indent=2))
    log(f"results: {out}")


if __name__ == "__main__":
    main()
