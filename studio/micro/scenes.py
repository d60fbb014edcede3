"""Render the training scenes of each phase from `studio.micro.world`, in worker processes.

A phase's scenes come from its own block of seeds below EVAL_SEED_OFFSET (the evaluation
uses seeds above it); each is rendered to an image, the phase's control map and tokenised
captions, in chunks that `studio.micro.pools` moves onto the device.

Imports only numpy, transformers (the tokenizer) and studio.micro.architecture.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from pathlib import Path

# The fast tokenizer's thread pool does not survive fork; the render workers fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from studio.micro.architecture import CLIP_MAX_LENGTH, IMAGE_SIZE

PHASES = ("vae", "unet", "controlnet-pose", "controlnet-depth")  # in training order; every part keys on these
CONTROL_KINDS = {"controlnet-pose": "pose", "controlnet-depth": "depth"}
EVAL_SEED_OFFSET = 10_000_000  # scene seeds >= this are held out for studio.micro.eval
# Each phase draws its scenes from its own block of seeds below the offset.
SEED_BLOCKS = {"vae": 0, "unet": 2_000_000, "controlnet-pose": 4_000_000, "controlnet-depth": 7_000_000}
SEED_BLOCK_SIZE = 2_000_000
CAPTIONS_PER_SCENE = 4
TRAINING_SEED_LIMIT = EVAL_SEED_OFFSET


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer, texts: list[str]) -> np.ndarray:
    """CLIP ids padded to 77 like SD's pipelines do (no attention mask is used)."""
    ids = tokenizer(
        texts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="np"
    ).input_ids
    return ids.astype(np.int32)


# The world draws 1, 2 or 3 objects with equal odds.
WORLD_SINGLE_OBJECT_SHARE = 1 / 3


def multi_object_keep(single_object_share: float | None) -> float:
    """The share of multi-object scenes to keep so that single-object scenes make up the given share."""
    if single_object_share is None:
        return 1.0
    if not WORLD_SINGLE_OBJECT_SHARE <= single_object_share < 1:
        raise ValueError(
            f"--single-object-share must be in [{WORLD_SINGLE_OBJECT_SHARE:.3f}, 1), got {single_object_share}"
        )
    s0, s = WORLD_SINGLE_OBJECT_SHARE, single_object_share
    return s0 * (1 - s) / (s * (1 - s0))


class SceneRenderer:
    """Renders chunks of training scenes: images, control maps and tokenised captions.

    single_object_share (UNet phase only): thin out multi-object scenes so one-object scenes
    are this share of the pool. One object per caption is where a model first learns which
    colour word belongs to the object and which to the background.
    """

    def __init__(self, world, tokenizer, single_object_share: float | None = None):
        self.world, self.tokenizer = world, tokenizer
        self.single_object_share = single_object_share  # render workers build their renderer from it
        self.keep_multi = multi_object_keep(single_object_share)

    def wanted(self, phase: str, scene, seed: int) -> bool:
        # Pose maps are black without a figure: a pose ControlNet learns nothing from those.
        if phase == "controlnet-pose":
            return any(o.shape == "figure" for o in scene.objects)
        if phase == "unet" and len(scene.objects) > 1 and self.keep_multi < 1:
            return np.random.default_rng([seed, 7]).random() < self.keep_multi  # by seed: reproducible
        return True

    def kept_share(self, phase: str) -> float:
        """The share of a phase's seeds this renderer keeps (for sizing the seed range)."""
        if phase != "unet":
            return 1.0
        return WORLD_SINGLE_OBJECT_SHARE + (1 - WORLD_SINGLE_OBJECT_SHARE) * self.keep_multi

    def render_scene(self, phase: str, seed: int) -> tuple | None:
        """(image, control map or None, captions) of one seed's scene, or None if the phase skips it."""
        world = self.world
        scene = world.scene_from_seed(seed)
        if not self.wanted(phase, scene, seed):
            return None
        image = np.asarray(world.render_image(scene).convert("RGB"), dtype=np.uint8)
        control = None
        if phase == "controlnet-pose":
            control = np.asarray(world.render_pose(scene).convert("RGB"), dtype=np.uint8)
        elif phase == "controlnet-depth":
            control = np.asarray(world.render_depth(scene).convert("L"), dtype=np.uint8)[..., None]
        captions = []
        if phase != "vae":
            rng = np.random.default_rng([seed, 1])
            captions = [world.caption(scene, rng) for _ in range(CAPTIONS_PER_SCENE)]
        return image, control, captions

    def render(self, phase: str, seeds: range) -> dict:
        images, controls, captions, kept = [], [], [], []
        errors, first_error = 0, None
        for seed in seeds:
            try:
                rendered = self.render_scene(phase, seed)
            except Exception as error:  # one bad scene must not end a long run; counted and reported
                errors, first_error = errors + 1, first_error or f"seed {seed}: {error!r}"
                continue
            if rendered is None:
                continue
            image, control, texts = rendered
            images.append(image)
            if control is not None:
                controls.append(control)
            captions.extend(texts)
            kept.append(seed)
        size = IMAGE_SIZE
        chunk = {
            "errors": errors,
            "error": first_error,
            "seeds": np.array(kept, dtype=np.int64),
            "images": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        }
        if phase in CONTROL_KINDS:
            channels = 3 if phase == "controlnet-pose" else 1
            chunk["controls"] = np.stack(controls) if controls else np.zeros((0, size, size, channels), np.uint8)
        if phase != "vae":
            ids = tokenize(self.tokenizer, captions) if captions else np.zeros((0, CLIP_MAX_LENGTH), np.int32)
            chunk["tokens"] = ids.reshape(len(kept), CAPTIONS_PER_SCENE, CLIP_MAX_LENGTH)
        return chunk


# Each render worker process holds one renderer, built by the pool's initializer (the
# multiprocessing idiom: the world module and tokenizer are not sent with every task).
_worker_renderer: SceneRenderer | None = None


def _init_worker(world_module: str, tokenizer_dir: str, single_object_share: float | None) -> None:
    global _worker_renderer
    import importlib

    world = importlib.import_module(world_module)
    _worker_renderer = SceneRenderer(world, load_tokenizer(Path(tokenizer_dir)), single_object_share)


def _render_in_worker(phase: str, start: int, stop: int) -> dict:
    return _worker_renderer.render(phase, range(start, stop))


class RenderQueue:
    """Chunks of scenes rendered in worker processes (or lazily in-process with no workers)."""

    def __init__(self, renderer: SceneRenderer, workers: int, world_module: str, tokenizer_dir: Path):
        self.renderer = renderer
        self.pool = None
        if workers > 0:
            # fork: the workers need no CUDA and start in milliseconds; the queue is made
            # before the parent touches CUDA or runs a torch op (OpenMP does not survive fork).
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            share = renderer.single_object_share
            self.pool = context.Pool(workers, _init_worker, (world_module, str(tokenizer_dir), share))
        self.pending: dict[str, list] = {}

    def submit(self, phase: str, seeds: range, chunk: int) -> None:
        parts = []
        for start in range(seeds.start, seeds.stop, chunk):
            stop = min(start + chunk, seeds.stop)
            if self.pool is None:
                parts.append((phase, start, stop))
            else:
                parts.append(self.pool.apply_async(_render_in_worker, (phase, start, stop)))
        self.pending[phase] = parts

    def finished(self, phase: str, wait_for_one: bool):
        """Yield a phase's finished chunks in submission order; wait for the first if asked."""
        parts = self.pending.get(phase, [])
        waited = not wait_for_one
        while parts:
            head = parts[0]
            if isinstance(head, tuple):  # no workers: render now, in order
                chunk = self.renderer.render(head[0], range(head[1], head[2]))
            elif head.ready() or not waited:
                waited = True
                try:
                    chunk = head.get()
                except Exception as error:  # a worker died on this chunk: lose the chunk, not the run
                    chunk = {"seeds": np.zeros(0, np.int64), "errors": 1, "error": f"render worker: {error!r}"}
            else:
                return
            parts.pop(0)
            yield chunk

    def remaining(self, phase: str) -> int:
        return len(self.pending.get(phase, []))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def scene_seeds(phase: str, seed: int, count: int, figure_share: float = 1.0) -> range:
    """The training seeds of a phase: its own block below the evaluation offset."""
    needed = int(math.ceil(count / max(figure_share, 1e-3)))
    if needed > SEED_BLOCK_SIZE // 2:
        raise ValueError(
            f"--pool {count} for {phase} needs {needed} seeds; at most {SEED_BLOCK_SIZE // 2} fit its block"
        )
    start = SEED_BLOCKS[phase] + (seed % 1000) * 1000
    if start + needed >= TRAINING_SEED_LIMIT:
        raise ValueError("training seeds would reach the held-out evaluation seeds")
    return range(start, start + needed)


def measure_figure_share(world, seed: int, samples: int = 400) -> float:
    """How many training scenes hold a figure, to size the pose phase's seed range."""
    seeds = scene_seeds("controlnet-pose", seed, samples)
    has_figure = [any(o.shape == "figure" for o in world.scene_from_seed(s).objects) for s in seeds]
    return max(0.05, float(np.mean(has_figure)) * 0.9)  # 0.9: a margin so the pool fills
