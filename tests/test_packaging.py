"""``pip install .`` from a fresh copy of the tree gives a working ``wacall serve``: scripts/check-wheel builds
the wheel, installs it into a new virtual environment and starts ``wacall serve --port 0 --json`` from it,
checking that the console's static files and the compiled media path are in the installed package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_a_working_wacall_with_its_console_assets_and_fast_path():
    done = subprocess.run([str(ROOT / "scripts" / "check-wheel")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "console static file(s)" in done.stdout and "compiled media path" in done.stdout, done.stdout
    assert "wacall serve from the wheel answers" in done.stdout, done.stdout
