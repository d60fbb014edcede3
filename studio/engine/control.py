"""ControlNet runs: preprocessors (pose, depth), per-unit guess mode, and the control mode of the shared loop.

Preprocessor weights come from a local folder (STUDIO_ANNOTATORS_DIR) or, on a machine that
is online, from the hub; they load lazily on first use. A missing file is an error that says
which file to put where.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import torch
from diffusers import MultiControlNetModel
from PIL import Image

from studio.engine import imaging, mediapipe_pose, openpose
from studio.engine.generate import CallPlan, Mode, register_mode
from studio.errors import InputError, ModelError

# Where each preprocessor's weights live under the annotators folder, and the hub repo they
# come from (the same files A1111's ControlNet extension downloads).
OPENPOSE_DIR = "openpose"
OPENPOSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
OPENPOSE_HUB = "lllyasviel/Annotators"
DEPTH_ANYTHING_DIR = "depth-anything"
DEPTH_ANYTHING_HUB = "depth-anything/Depth-Anything-V2-Small-hf"
MIDAS_DIR = "midas"
MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"
# auto: OpenPose when its weights are in the annotators folder, else the offline MediaPipe one
POSE_DETECTORS = ("auto", "openpose", "mediapipe")
# Pose maps are drawn at this size at least: controlnet-aux draws limbs a fixed number of
# pixels wide, so drawing small would make a blob of a small figure.
POSE_DRAW_SIZE = 512
# Aspect ratios closer than this count as equal (a map 1 px off is still the same framing).
ASPECT_TOLERANCE = 0.02


def pose_map_from_keypoints(poses, width: int, height: int) -> Image.Image:
    """A pose map of width x height, drawn at POSE_DRAW_SIZE or more and scaled down."""
    scale = max(1.0, POSE_DRAW_SIZE / max(width, height))
    big = (round(width * scale), round(height * scale))
    scaled = [[None if p is None else (p[0] * scale, p[1] * scale) for p in pose] for pose in poses]
    return openpose.draw_body_poses(scaled, *big).resize((width, height), Image.BILINEAR)


def read_pose_json(path) -> tuple[list, int, int]:
    """(poses, width, height) from an OpenPose JSON file, or an InputError naming what is wrong."""
    from studio.fileio import read_json

    try:
        data = read_json(path)
    except OSError as error:
        raise InputError(f"cannot read the OpenPose JSON file ({error.strerror})", field="pose_json") from error
    except ValueError as error:
        raise InputError(f"cannot read OpenPose JSON ({error})", field="pose_json") from error
    try:
        return openpose.poses_from_openpose_json(data)
    except ValueError as error:
        raise InputError(str(error), field="pose_json") from error


class Preprocessors:
    """Turns a photo into a control map: OpenPose skeletons, depth (near = bright)."""

    def __init__(self, annotators_dir: Path, offline: bool = True, device: torch.device | None = None,
                 pose_detector: str = "auto"):
        if pose_detector not in POSE_DETECTORS:
            raise ValueError(f"pose detector must be one of {', '.join(POSE_DETECTORS)}, not {pose_detector!r}")
        self.root = Path(annotators_dir)
        self.offline = offline
        self.device = device or torch.device("cpu")
        self.pose_choice = pose_detector
        self._pose = None  # (kind, detector) once loaded
        self._pose_lock = threading.Lock()  # MediaPipe's graph serves one image at a time
        self._depth = None

    def _missing(self, what: str, folder: Path, files: str, hub: str) -> ModelError:
        online = "" if self.offline else f" (online, {hub} would be fetched)"
        return ModelError(f"the {what} preprocessor needs {files} in {folder}; download them from the hub repo "
                          f"{hub}{online}, or untick 'preprocess' and upload a ready control map", field="preprocess")

    def _openpose_ready(self) -> bool:
        folder = self.root / OPENPOSE_DIR
        return folder.is_dir() and (folder / OPENPOSE_FILES[0]).is_file()

    def _pose_kind_to_load(self) -> str:
        """auto: OpenPose when its weights are in the annotators folder (it finds every person),
        else MediaPipe, which ships its model in the wheel and so works on a fresh machine,
        else OpenPose (from the hub when online)."""
        if self.pose_choice != "auto":
            return self.pose_choice
        return "mediapipe" if not self._openpose_ready() and mediapipe_pose.available() else "openpose"

    def pose_detector(self) -> tuple[str, object]:
        """("openpose" | "mediapipe", detector), loaded on first use."""
        if self._pose is None:
            if self._pose_kind_to_load() == "mediapipe":
                if not mediapipe_pose.available():
                    raise ModelError("the MediaPipe pose detector is not installed: run python launch.py, which "
                                     "installs mediapipe", field="preprocess")
                self._pose = ("mediapipe", mediapipe_pose.MediaPipePoseDetector())
            else:
                from controlnet_aux import OpenposeDetector

                folder = self.root / OPENPOSE_DIR
                if self._openpose_ready():
                    self._pose = ("openpose", OpenposeDetector.from_pretrained(str(folder)))
                elif not self.offline:
                    self._pose = ("openpose", OpenposeDetector.from_pretrained(OPENPOSE_HUB))
                else:
                    error = self._missing("pose", folder, ", ".join(OPENPOSE_FILES), OPENPOSE_HUB)
                    if self.pose_choice == "auto":  # auto fell back to OpenPose: say why MediaPipe was not used
                        raise ModelError(f"{error.message} (the offline MediaPipe detector is not installed: run "
                                         "python launch.py, which installs mediapipe)", field="preprocess")
                    raise error
        return self._pose

    @property
    def pose_kind(self) -> str:
        """Which detector makes pose maps: "openpose" or "mediapipe" (loads it)."""
        return self.pose_detector()[0]

    @property
    def pose_detector_label(self) -> str:
        return "OpenPose" if self.pose_kind == "openpose" else "MediaPipe (one person)"

    def pose(self, image: Image.Image, size: tuple[int, int], hands: bool = False, face: bool = False) -> Image.Image:
        kind, detector = self.pose_detector()
        if kind == "mediapipe":
            with self._pose_lock:
                poses = detector.keypoints(image)
            if not poses:
                raise InputError("MediaPipe found no person in the photo; use a photo where one person is "
                                 "clearly visible, a pose preset, or a ready pose map (untick 'preprocess')",
                                 field="image")
            # drawn at the photo's own size (the keypoints are in its pixels), then fitted to the output
            return pose_map_from_keypoints(poses, *image.size).resize(size, Image.BILINEAR)
        resolution = max(64, min(image.size))
        result = detector(image.convert("RGB"), detect_resolution=resolution, image_resolution=resolution,
                          include_body=True, include_hand=hands, include_face=face)
        return result.convert("RGB").resize(size, Image.BILINEAR)

    def depth_estimator(self):
        if self._depth is None:
            from transformers import pipeline

            folder = self.root / DEPTH_ANYTHING_DIR
            midas = self.root / MIDAS_DIR / MIDAS_FILE
            if (folder / "config.json").is_file():
                self._depth = ("transformers", pipeline("depth-estimation", model=str(folder), local_files_only=True,
                                                        device=self.device))
            elif midas.is_file():
                from controlnet_aux import MidasDetector

                self._depth = ("midas", MidasDetector.from_pretrained(str(midas.parent)))
            elif not self.offline:
                self._depth = ("transformers", pipeline("depth-estimation", model=DEPTH_ANYTHING_HUB))
            else:
                raise self._missing("depth", folder, "config.json, model.safetensors and preprocessor_config.json",
                                    DEPTH_ANYTHING_HUB)
        return self._depth

    def depth(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        kind, estimator = self.depth_estimator()
        if kind == "transformers":
            predicted = estimator(image.convert("RGB"))["predicted_depth"]
            values = predicted.squeeze().float().cpu().numpy()
        else:
            values = np.array(estimator(image.convert("RGB"), detect_resolution=max(64, min(image.size)),
                                        image_resolution=max(64, min(image.size))).convert("L"), dtype=np.float32)
        # Depth Anything and MiDaS both give relative inverse depth: larger = nearer, the
        # ControlNet convention (near = bright); stretch it to the full 0..255 range.
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.astype(np.uint8), "L").resize(size, Image.BILINEAR).convert("RGB")

    def run(self, control_type: str, image: Image.Image, size: tuple[int, int], hands: bool = False,
            face: bool = False) -> Image.Image:
        """The control map of a photo; hands and face apply to pose (OpenPose draws them, MediaPipe does not)."""
        return self.pose(image, size, hands, face) if control_type == "pose" else self.depth(image, size)


class UnitsControlNet(MultiControlNetModel):
    """Several ControlNets, each with its own guess mode (A1111: "ControlNet is more important").

    diffusers applies guess mode to every net of a run; here a unit in guess mode sees only
    the conditional half of the guided batch, gets zeros for the unconditional half, and has
    its residuals scaled from 0.1 (shallow) to 1.0 (deep), as diffusers' guess mode does.
    """

    def __init__(self, nets, guess_modes: list[bool], guided: bool):
        super().__init__(nets)
        self.guess_modes = list(guess_modes)
        self.guided = guided

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                class_labels=None, timestep_cond=None, attention_mask=None, added_cond_kwargs=None,
                cross_attention_kwargs=None, guess_mode=False, return_dict=True):
        total_down, total_mid = None, None
        half = sample.shape[0] // 2
        for image, scale, net, guess in zip(controlnet_cond, conditioning_scale, self.nets, self.guess_modes):
            kwargs = dict(timestep=timestep, class_labels=class_labels, timestep_cond=timestep_cond,
                          attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs,
                          conditioning_scale=scale, return_dict=False)
            if guess and self.guided:
                cond_kwargs = None
                if added_cond_kwargs:
                    cond_kwargs = {k: v[half:] for k, v in added_cond_kwargs.items()}
                down, mid = net(sample=sample[half:], encoder_hidden_states=encoder_hidden_states[half:],
                                controlnet_cond=image[half:], added_cond_kwargs=cond_kwargs, guess_mode=True,
                                **kwargs)
                down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            else:
                down, mid = net(sample=sample, encoder_hidden_states=encoder_hidden_states, controlnet_cond=image,
                                added_cond_kwargs=added_cond_kwargs, guess_mode=guess, **kwargs)
            if total_down is None:
                total_down, total_mid = list(down), mid
            else:
                total_down = [a + b for a, b in zip(total_down, down)]
                total_mid = total_mid + mid
        return total_down, total_mid


def _aspect(size: tuple[int, int]) -> float:
    return size[0] / size[1]


@dataclasses.dataclass(frozen=True)
class ResolveEnv:
    """What a mode may use while making a request concrete."""

    native_size: int
    notices: list
    preprocessors: Preprocessors | None = None
    models: object = None


def preprocessor_name(unit: dict) -> str:
    """The unit's preprocessing in infotext, named the way A1111 names its variants (openpose_hand, _face, _full)."""
    if not unit["preprocess"]:
        return "none"
    if unit["type"] != "pose":
        return unit["type"]
    return {(False, False): "pose", (True, False): "pose_hand", (False, True): "pose_face",
            (True, True): "pose_full"}[(bool(unit["hands"]), bool(unit["face"]))]


class Control(Mode):
    name = "control"

    def pipeline_mode(self, request) -> str:
        return "controlnet-img2img" if request.init_image is not None else "controlnet"

    def resolve(self, request, env: ResolveEnv):
        """Pick the output size, run the preprocessors, and check every map fits the output."""
        first = request.units[0]
        first_picture = first["map"] if first["map"] is not None else first["image"]
        width, height = request.width, request.height
        if width is None or height is None:
            # the model's native area, in the first map's aspect ratio
            area = env.native_size * env.native_size
            ratio = _aspect(first_picture.size)
            width, height = imaging.snap_size(int((area * ratio) ** 0.5), int((area / ratio) ** 0.5))
        units = []
        for index, unit in enumerate(request.units):
            unit = dict(unit)
            if unit["model"] is None:
                unit["model"] = env.models.registry.default_controlnet(unit["type"], request.model)
            if unit["map"] is None:
                if unit["preprocess"]:
                    try:
                        unit["map"] = env.preprocessors.run(unit["type"], unit["image"], (width, height),
                                                            hands=unit["hands"], face=unit["face"])
                    except InputError as error:
                        if error.field != "image":
                            raise
                        raise InputError(error.message, field=f"units[{index}].image") from error
                    if unit["type"] == "pose":
                        env.notices.append(f"unit {index + 1}: pose found by {env.preprocessors.pose_detector_label}")
                        if (unit["hands"] or unit["face"]) and env.preprocessors.pose_kind == "mediapipe":
                            env.notices.append(f"unit {index + 1}: MediaPipe draws the body only; hands and face "
                                               "need the OpenPose weights in the annotators folder")
                else:
                    unit["map"] = unit["image"].convert("RGB")
            control_map = unit["map"].convert("RGB")
            if abs(_aspect(control_map.size) - _aspect((width, height))) > ASPECT_TOLERANCE * _aspect((width, height)):
                raise InputError(f"the control map is {control_map.width}x{control_map.height} but the output is "
                                 f"{width}x{height} (another aspect ratio); crop the map or set width and height "
                                 "to match", field=f"units[{index}].image")
            if control_map.size != (width, height):
                env.notices.append(f"unit {index + 1}: control map resized from {control_map.width}x"
                                   f"{control_map.height} to {width}x{height}")
                control_map = control_map.resize((width, height), Image.BILINEAR)
            unit["map"] = control_map
            units.append(unit)
        init = request.init_image.convert("RGB") if request.init_image is not None else None
        return dataclasses.replace(request, units=tuple(units), init_image=init, width=width, height=height)

    def components(self, request, models) -> dict:
        nets = [models.load_controlnet(unit["model"]) for unit in request.units]
        return {"controlnet": UnitsControlNet(nets, [u["guess_mode"] for u in request.units],
                                              guided=request.cfg_scale > 1)}

    def plan(self, request, pipe) -> CallPlan:
        maps = [unit["map"] for unit in request.units]
        kwargs = {"controlnet_conditioning_scale": [float(u["weight"]) for u in request.units],
                  "control_guidance_start": [float(u["start"]) for u in request.units],
                  "control_guidance_end": [float(u["end"]) for u in request.units],
                  "width": request.width, "height": request.height}
        if request.init_image is not None:
            kwargs.update(image=request.init_image.resize((request.width, request.height), Image.LANCZOS),
                          control_image=maps, strength=request.denoise_strength)
        else:
            kwargs["image"] = maps
        return CallPlan(kwargs)

    def infotext_pairs(self, request) -> dict:
        pairs = {}
        for index, unit in enumerate(request.units):
            pairs[f"ControlNet {index}"] = (f"Module: {preprocessor_name(unit)}, "
                                            f"Model: {unit['model']}, Weight: {unit['weight']:g}, Guidance Start: "
                                            f"{unit['start']:g}, Guidance End: {unit['end']:g}, "
                                            f"Guess Mode: {unit['guess_mode']}")
        if request.init_image is not None:
            pairs["Denoising strength"] = request.denoise_strength
        return pairs


register_mode(Control())
