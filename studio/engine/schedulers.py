"""Sampler names as artists know them (A1111) <-> diffusers scheduler classes and options.

Importing this module does not import diffusers: the table is plain data, so requests can
validate a sampler name without loading torch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    """One entry of the sampler menu: which diffusers class, with which options."""

    name: str
    class_name: str
    options: dict = field(default_factory=dict)


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        Sampler("DPM++ SDE", "DPMSolverSDEScheduler"),
        Sampler("DPM++ 2S", "DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        Sampler("Euler", "EulerDiscreteScheduler"),
        Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
        Sampler("Heun", "HeunDiscreteScheduler"),
        Sampler("LMS", "LMSDiscreteScheduler"),
        Sampler("DPM2", "KDPM2DiscreteScheduler"),
        Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        Sampler("DDIM", "DDIMScheduler"),
        Sampler("PNDM", "PNDMScheduler", {"skip_prk_steps": True}),
        Sampler("UniPC", "UniPCMultistepScheduler"),
        Sampler("DEIS", "DEISMultistepScheduler"),
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# Older A1111 infotexts fold the schedule into the sampler name ("DPM++ 2M Karras").
ALIASES = {"PLMS": "PNDM", "k_euler": "Euler", "k_euler_a": "Euler a", "k_lms": "LMS"}

# The schedule keys a fresh scheduler inherits from the model's own: they describe how the
# model was trained (betas, prediction type), not how we sample.
_TRAINING_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
)


def scheduler_class(name: str):
    import diffusers

    return getattr(diffusers, SAMPLERS[name].class_name)


def supports_karras(name: str) -> bool:
    """Whether diffusers offers Karras sigmas for this sampler."""
    return "use_karras_sigmas" in inspect.signature(scheduler_class(name).__init__).parameters


def parse_sampler_name(text: str) -> tuple[str, bool]:
    """Split an infotext sampler ("DPM++ 2M Karras") into (sampler, karras)."""
    text = text.strip()
    karras = text.endswith(" Karras")
    if karras:
        text = text[: -len(" Karras")]
    text = ALIASES.get(text, text)
    return text, karras


def make_scheduler(name: str, karras: bool, base_config: dict):
    """A fresh scheduler for one job, keeping the model's training schedule from base_config."""
    cls = scheduler_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    config = {k: v for k, v in base_config.items() if k in _TRAINING_KEYS and k in accepted}
    config.update({k: v for k, v in SAMPLERS[name].options.items() if k in accepted})
    if karras and "use_karras_sigmas" in accepted:
        config["use_karras_sigmas"] = True
    if "final_sigmas_type" in accepted and "DPMSolverMultistep" in cls.__name__:
        # "zero" on the last step makes few-step DPM++ runs end on a clean image, as A1111 does
        config["final_sigmas_type"] = "zero"
    return cls(**config)


def describe_scheduler(scheduler) -> dict:
    """The scheduler's class and full config, as stored in a history row."""
    return {"class": type(scheduler).__name__, "config": {k: v for k, v in dict(scheduler.config).items()
                                                          if not k.startswith("_")}}
