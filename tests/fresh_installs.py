"""Fresh virtual environments holding one part each (`.[client]`, `.[index]`, `.[embedder]`), installed from
the project's wheel the way a user installs it, so a dependency the dev venv hides is found.

Installing takes a minute or two (torch is most of it), so conftest starts it in the background as soon as
the packaging tests are collected, and it overlaps the rest of the suite; the tests wait for it. pip reuses
its cache and the machine's local wheels, so nothing is downloaded twice.
"""

import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("client", "index", "embedder")


@dataclass
class Install:
    part: str
    venv: Path
    returncode: int | None = None
    log: str = ""
    seconds: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def wait(self, timeout: float = 900) -> "Install":
        if not self.done.wait(timeout):
            raise TimeoutError(f"installing .[{self.part}] took over {timeout} s")
        return self


def run(command: list, log: list) -> int:
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    log.append(f"$ {' '.join(map(str, command))}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.returncode


class FreshInstalls:
    def __init__(self, root: Path):
        self.root = root
        self.installs = {part: Install(part, root / f"venv-{part}") for part in PARTS}
        self.wheel_ready = threading.Event()
        self.wheel: Path | None = None
        self.wheel_log: list = []

    def start(self) -> "FreshInstalls":
        threading.Thread(target=self._build_wheel, daemon=True, name="wheel").start()
        for install in self.installs.values():
            threading.Thread(target=self._install, args=(install,), daemon=True, name=install.part).start()
        return self

    def _build_wheel(self) -> None:
        out, source = self.root / "wheel", self.root / "source"
        try:
            # From a copy: setuptools keeps a build/ folder beside the sources, and files deleted from the
            # sources would live on there and in the wheel.
            shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
                ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "data", "demo-out", ".pytest_cache"))
            # --no-build-isolation: setuptools from this venv, so building needs no download.
            if run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(source), "-w", str(out)], self.wheel_log) == 0:
                self.wheel = next(out.glob("imgsim-*.whl"))
        finally:
            self.wheel_ready.set()

    def _install(self, install: Install) -> None:
        started, log = time.monotonic(), []
        try:
            self.wheel_ready.wait()
            if self.wheel is None:
                install.returncode, log = 1, self.wheel_log
                return
            shutil.rmtree(install.venv, ignore_errors=True)
            base = getattr(sys, "_base_executable", sys.executable)
            install.returncode = run([base, "-m", "venv", str(install.venv)], log) or run(
                [str(install.bin("python")), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 f"imgsim[{install.part}] @ {self.wheel.as_uri()}"], log)
        except Exception as err:  # reported by the test that waits for it
            install.returncode, log = 1, log + [repr(err)]
        finally:
            install.log, install.seconds = "\n".join(log), time.monotonic() - started
            install.done.set()
