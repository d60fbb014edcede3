#!/usr/bin/env python3
"""Bootstrap the studio on a fresh machine, then run it (or its tests).

    python launch.py [serve options]   create .venv, install the pinned dependencies once, start the UI
    python launch.py test [pytest args] same set-up (plus test tools, Debian's chromium, postgresql and
                                        redis-server), run the tests

Re-running skips what is already installed: a stamp in .venv records the hash of
pyproject.toml the environment was installed from.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "DO_NOT_TRACK": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
CHROMIUM = "/usr/bin/chromium"
POSTGRES_INITDB = "/usr/lib/postgresql/*/bin/initdb"  # Debian's layout, as tests/servers.py looks for it


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def say(message: str) -> None:
    print(f"[launch] {message}", flush=True)


def run(command: list, **kwargs) -> None:
    say(" ".join(str(c) for c in command))
    subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def pinned(package: str) -> str:
    """The exact pin of a package in pyproject.toml (one source of truth for versions)."""
    match = re.search(rf'"({re.escape(package)}==[^"]+)"', (ROOT / "pyproject.toml").read_text())
    if not match:
        raise SystemExit(f"pyproject.toml has no exact pin for {package}")
    return match.group(1)


def without_dependencies() -> list[str]:
    """Packages pyproject's [tool.studio] says to install with --no-deps (see the comment there)."""
    # a regex, not tomllib: launch.py runs on the system Python, which may be 3.10
    match = re.search(r"^install-without-dependencies\s*=\s*\[(.*?)\]", (ROOT / "pyproject.toml").read_text(),
                      re.MULTILINE | re.DOTALL)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


def ensure_environment(extras: str | None) -> Path:
    """Create .venv and install the project (with extras) unless the stamp says it is current."""
    python = venv_python()
    if not python.exists():
        if sys.version_info < (3, 10) or sys.version_info >= (3, 13):
            raise SystemExit(f"studio needs Python 3.10 to 3.12; this is {sys.version.split()[0]}")
        run([sys.executable, "-m", "venv", str(VENV)])
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (extras or "").encode()).hexdigest()
    stamp = VENV / f".studio-installed-{extras or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return python
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    run(pip + ["--upgrade", "pip"])
    # torch and torchvision go in together first: a torchvision built for another torch breaks
    # even `import diffusers`.
    run(pip + [pinned("torch"), pinned("torchvision")])
    run(pip + ["-e", f".[{extras}]" if extras else "."])
    extra_packages = without_dependencies()
    if extra_packages:
        run(pip + ["--no-deps", *extra_packages])
    stamp.write_text(digest)
    return python


def can_apt_install() -> bool:
    return bool(shutil.which("apt-get")) and hasattr(os, "geteuid") and os.geteuid() == 0


def apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env)


def ensure_chromium() -> None:
    """The browser tests drive Debian's chromium; install it when we may (root with apt-get)."""
    if Path(CHROMIUM).exists():
        return
    if not can_apt_install():
        say(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get); "
            "browser tests will fail in CI and skip elsewhere")
        return
    apt_install(["chromium"])


def ensure_servers() -> None:
    """The history tests start their own PostgreSQL (and, later, Redis) from Debian's binaries.

    Only the binaries are needed: tests/servers.py runs a throwaway cluster in a temp folder on a
    free port, so a cluster the postgresql package may start as a service (port 5432) is not used.
    """
    missing = [package for package, found in (
        ("postgresql", glob.glob(POSTGRES_INITDB)), ("redis-server", shutil.which("redis-server"))) if not found]
    if not missing:
        return
    if not can_apt_install():
        say(f"{', '.join(missing)}: not installed, and cannot be installed here (needs root and apt-get); "
            "the tests that need them will fail in CI and skip elsewhere")
        return
    apt_install(missing)


def main(argv: list[str]) -> int:
    env = dict(os.environ, **OFFLINE_ENV)
    if argv[:1] == ["test"]:
        python = ensure_environment("test")
        ensure_chromium()
        ensure_servers()
        result = subprocess.run([str(python), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env)
        if result.returncode == 5:
            say("pytest collected no tests: that is a failure, not a pass")
            return 1
        return result.returncode
    python = ensure_environment(None)
    args = argv[1:] if argv[:1] == ["serve"] else argv
    return subprocess.run([str(python), "-m", "studio", "serve", *args], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
