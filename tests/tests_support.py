"""Helpers the tests import (conftest fixtures cannot be imported by child processes)."""

from studio.requests import Txt2ImgRequest


def fast_request(**overrides) -> Txt2ImgRequest:
    """A txt2img request that runs in a fraction of a second on the tiny model."""
    values = dict(prompt="a red circle on the left", steps=2, width=64, height=64, seed=1234, sampler="Euler")
    values.update(overrides)
    return Txt2ImgRequest(**values)
