"""Helpers the tests import (conftest fixtures cannot be imported by child processes)."""

import socket
import time

from studio.requests import Txt2ImgRequest


def fast_request(**overrides) -> Txt2ImgRequest:
    """A txt2img request that runs in a fraction of a second on the tiny model."""
    values = dict(prompt="a red circle on the left", steps=2, width=64, height=64, seed=1234, sampler="Euler")
    values.update(overrides)
    return Txt2ImgRequest(**values)


def wait_for(condition, timeout: float = 90.0) -> bool:
    """Poll until condition() is true (browser tests wait on the server's work this way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    raise AssertionError("condition not met in time")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def history_row(**overrides) -> dict:
    """The columns of a history row, for store tests that need no pipeline."""
    values = dict(mode="txt2img", model_name="m", model_hash="ab" * 32, vae=None, sampler="Euler", karras=False,
                  scheduler={"class": "EulerDiscreteScheduler"}, prompt="a red circle", negative_prompt="",
                  seed=1, seeds=[1], steps=2, cfg_scale=7.0, width=8, height=8, batch_size=1, batch_count=1,
                  params={"mode": "txt2img"}, device="cpu", dtype="float32", versions={"studio": "test"})
    values.update(overrides)
    return values


def dead_owner() -> str:
    """The owner tag of a process of this host that has exited (what a crash leaves in a running row)."""
    import socket
    import subprocess
    import sys

    from studio.history.owner import process_start

    short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    tag = f"{socket.gethostname()}:{short.pid}:{process_start(short.pid)}"
    short.kill()
    short.wait()
    return tag


# A run in a child process that stops at its first step and waits (until killed, or 120 s).
HANGING_RUN = """
import sys, time
from pathlib import Path
from studio.app import build
from studio.settings import Settings
from tests_support import fast_request
services = build(Settings(data_dir=Path(sys.argv[1]), default_model="tiny", device="cpu"))
services.registry.add(sys.argv[2], name="tiny")
def hang(progress):
    print("STEP", flush=True)
    time.sleep(120)
services.runner.run(fast_request(steps=5), on_progress=hang)
"""


def start_hanging_run(data_dir, model_dir):
    """A child process whose run is at its first step (read from its stdout) when this returns."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    child = subprocess.Popen([sys.executable, "-c", HANGING_RUN, str(data_dir), str(model_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert child.stdout.readline().strip() == "STEP"
    return child
