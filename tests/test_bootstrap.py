"""scripts/bootstrap, the one installer behind scripts/serve and scripts/test: it installs nothing when
nothing changed (a stamp over its inputs and extras), installs again when an input changes, and the test
extras' run covers a later serve run. Run on a copy of the inputs with a stand-in for .venv's Python that
records what it is asked to do (no pip, no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ["pyproject.toml", "setup.py", "scripts/bootstrap", "scripts/apt-packages", "scripts/apt-packages-test",
          "src/wacall/media/fastpath.c", "src/wacall/media/fastpath.h", "src/wacall/media/fastpath_build.py"]


def tree(tmp_path: Path) -> tuple[Path, Path]:
    for name in INPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    log = tmp_path / "python-calls.log"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 0\n')
    python.chmod(0o755)
    return tmp_path, log


def bootstrap(root: Path, log: Path, extras: str = "") -> list[str]:
    """Run it; the calls it made to .venv's Python."""
    log.write_text("")
    done = subprocess.run([str(root / "scripts" / "bootstrap")], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "WACALL_EXTRAS": extras})
    assert done.returncode == 0, done.stdout + done.stderr
    return log.read_text().splitlines()


def installs(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("-m pip install")]


def test_bootstrap_installs_nothing_when_nothing_changed(tmp_path):
    root, log = tree(tmp_path)
    assert installs(bootstrap(root, log)) == ["-m pip install -q --disable-pip-version-check -e ."]
    assert bootstrap(root, log) == ["-c import wacall"]                 # serve again: nothing installed
    assert installs(bootstrap(root, log, "test")) == ["-m pip install -q --disable-pip-version-check -e .[test]"]
    assert installs(bootstrap(root, log, "test")) == []                 # the test extras are there now
    assert installs(bootstrap(root, log)) == []                         # and cover serving
    with (root / "pyproject.toml").open("a") as pyproject:              # an input changed: install again
        pyproject.write("\n# changed\n")
    assert installs(bootstrap(root, log)) == ["-m pip install -q --disable-pip-version-check -e ."]
    assert installs(bootstrap(root, log)) == []


def test_bootstrap_makes_the_venv_again_when_another_interpreter_made_it(tmp_path):
    """A .venv whose pyvenv.cfg names another interpreter's folder (PYTHON changed, or an older bootstrap chose
    pyenv's python3 where the distribution's is now preferred) is made again by the chosen one; a .venv the
    chosen one made is kept. The chosen interpreter is a stand-in here too: it records its calls and makes a
    stand-in .venv."""
    root, log = tree(tmp_path)
    base = tmp_path / "base" / "bin"
    base.mkdir(parents=True)
    stand_in = (root / ".venv" / "bin" / "python").read_text()
    (base / "python3").write_text(
        "#!/bin/sh\n"
        f'echo "base $*" >> {log}\n'
        'case "$1" in\n'
        f'  -c) echo "{base}" ;;\n'
        f"  -m) mkdir -p .venv/bin && printf '%s' '{stand_in}' > .venv/bin/python && chmod +x .venv/bin/python\n"
        f"      echo 'home = {base}' > .venv/pyvenv.cfg ;;\n"
        "esac\n")
    (base / "python3").chmod(0o755)
    (root / ".venv" / "pyvenv.cfg").write_text("home = /some/other/python/bin\n")

    def run() -> list[str]:
        log.write_text("")
        done = subprocess.run([str(root / "scripts" / "bootstrap")], cwd=root, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "WACALL_EXTRAS": "", "PYTHON": str(base / "python3")})
        assert done.returncode == 0, done.stdout + done.stderr
        return log.read_text().splitlines()

    assert "base -m venv .venv" in run()                                # made again, by the chosen interpreter
    assert (root / ".venv" / "pyvenv.cfg").read_text().strip() == f"home = {base}"
    with (root / "pyproject.toml").open("a") as pyproject:              # install again, the same interpreter:
        pyproject.write("\n# changed\n")
    calls = run()
    assert "base -m venv .venv" not in calls                            # the .venv is kept
    assert installs(calls) == ["-m pip install -q --disable-pip-version-check -e ."]
