"""``wacall serve --json`` as a benchmark target: a subprocess on loopback, its stderr in a log file,
optionally under cProfile, optionally another checkout's code (``src``: a baseline side by side). Used by
media_calls.py, sip_flows.py and memory.py."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def baseline_src(ref: str) -> str:
    """``git archive REF src setup.py pyproject.toml`` into a temporary directory, with its compiled parts (cffi
    modules and extensions) built from that commit's C by its setup.py; returns the directory holding ``wacall``
    (for ``WacallProcess(src=...)``: another commit's code side by side in the same run, the C fast paths
    included as pip would build them)."""
    target = Path(tempfile.mkdtemp(prefix="wacall-baseline-"))
    archive = subprocess.run(["git", "archive", ref, "src", "setup.py", "pyproject.toml"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=target, capture_output=True,
                   check=True)
    return str(target / "src")


def git_state(*paths: str) -> dict:
    """What a result measured: this checkout's commit, and the files under ``paths`` (default ``src``) that
    differ from it (a run of uncommitted code says so)."""
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except Exception:
            return ""
    return {"commit": run("rev-parse", "--short", "HEAD"),
            "dirty": run("status", "--short", "--", *(paths or ("src",))).splitlines()}


def start_run(name: str, out: str | None) -> tuple[str, Path, Callable[[str], None]]:
    """A benchmark run's UTC stamp, its results file (``bench/results/<name><stamp>.json`` unless ``out``)
    and a log that prefixes each line with the seconds since now."""
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}" if msg else "", flush=True)
    return stamp, Path(out) if out else RESULTS / f"{name}{stamp}.json", log


class WacallProcess:
    """``serve --json --port 0 --db :memory:`` plus ``extra`` arguments; ``info`` is its JSON line. ``db``: a
    database file instead of ``:memory:``; ``src``: run the ``wacall`` package found in that directory."""

    def __init__(self, *, extra: Sequence[str] = (), stderr_path: Path | None = None,
                 profile: str | None = None, db: str = ":memory:", src: str | None = None) -> None:
        self.extra = list(extra)
        self.db = db
        self.src = src
        self.stderr_path = stderr_path or ROOT / "bench" / "results" / "wacall-stderr.log"
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> "WacallProcess":
        py = ROOT / ".venv" / "bin" / "python"
        # WACALL_BENCH_PREFIX: a command put in front of wacall's, e.g. "valgrind --tool=callgrind
        # --callgrind-out-file=/tmp/w.%p" to count its instructions per flow (steady where CPU time drifts)
        args = [*shlex.split(os.environ.get("WACALL_BENCH_PREFIX", "")), str(py if py.exists() else sys.executable)]
        if self.profile:        # inflates wacall's CPU: for hot spots, not for figures
            args += ["-m", "cProfile", "-o", self.profile]
        args += ["-m", "wacall", "serve", "--json", "--port", "0", "--db", self.db, *self.extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.src:
            env["PYTHONPATH"] = os.pathsep.join([self.src, *filter(None, [env.get("PYTHONPATH")])])
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=ROOT,
                                     env=env)
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"wacall did not start (see {self.stderr_path})")
        self.info = json.loads(line)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        """The server and its media worker processes."""
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
            return [self.pid, *(int(p) for p in f.read().split())]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
