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
