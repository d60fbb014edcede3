"""The ControlNet tab: up to three control units (pose, depth) guiding txt2img or img2img."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image

from studio.engine import openpose
from studio.engine.control import pose_map_from_keypoints, read_pose_json
from studio.requests import CONTROL_UNIT_SPEC, MAX_CONTROL_UNITS, ControlRequest, control_unit
from studio.ui import prompt_tools
from studio.ui.context import DEVICE_QUEUE, ImageSender, TabRestore, UIContext
from studio.ui.guard import guarded, name_input
from studio.ui.widgets import (
    field_widget,
    generation_panel,
    result_widgets,
    selected_image,
    tab_header,
    unit_widget,
    wire_results,
)

AUTOMATIC = "Automatic"
DEPTH_BRUSH_GREYS = ["#ffffff", "#c0c0c0", "#808080", "#404040", "#000000"]


class UnitWidgets:
    """The widgets of one control unit."""

    def __init__(self, index: int, services):
        self.index = index
        prefix = f"control-unit{index}"
        with gr.Accordion(f"Control unit {index + 1}", open=index == 0, elem_id=prefix):
            with gr.Row():
                self.enabled = gr.Checkbox(value=index == 0, label="Enabled", elem_id=f"{prefix}-enabled")
                self.type = unit_widget("type", "pose" if index != 1 else "depth", elem_id=f"{prefix}-type")
                self.preprocess = unit_widget("preprocess", elem_id=f"{prefix}-preprocess")
            with gr.Row():
                # OpenPose's hand and face models (A1111's openpose_hand / _face / _full)
                self.hands = unit_widget("hands", elem_id=f"{prefix}-hands")
                self.face = unit_widget("face", elem_id=f"{prefix}-face")
            with gr.Row():
                self.image = gr.Image(type="pil", format="png", label=CONTROL_UNIT_SPEC["image"]["label"],
                                      sources=["upload", "clipboard"], elem_id=f"{prefix}-image", height=220)
                self.map = gr.Image(type="pil", format="png", label=CONTROL_UNIT_SPEC["map"]["label"],
                                    interactive=False, elem_id=f"{prefix}-map", height=220)
            with gr.Row():
                self.weight = unit_widget("weight", elem_id=f"{prefix}-weight")
                self.start = unit_widget("start", elem_id=f"{prefix}-start")
                self.end = unit_widget("end", elem_id=f"{prefix}-end")
            with gr.Row():
                self.guess_mode = unit_widget("guess_mode", elem_id=f"{prefix}-guess")
                self.model = gr.Dropdown([AUTOMATIC, *services.registry.controlnet_entries()], value=AUTOMATIC,
                                         label=CONTROL_UNIT_SPEC["model"]["label"], allow_custom_value=True,
                                         elem_id=f"{prefix}-model")
                self.detect = gr.Button("Show the control map", size="sm", elem_id=f"{prefix}-detect")
            with gr.Accordion("Pose without a photo: presets and OpenPose JSON", open=False):
                with gr.Row():
                    self.preset = gr.Dropdown(list(openpose.POSE_PRESETS), label="Pose preset",
                                              elem_id=f"{prefix}-preset")
                    self.use_preset = gr.Button("Use preset", size="sm", elem_id=f"{prefix}-use-preset")
                with gr.Row():
                    self.pose_json = gr.File(label="Import OpenPose JSON", file_types=[".json"],
                                             elem_id=f"{prefix}-pose-json")
                    self.export = gr.Button("Export pose as OpenPose JSON", size="sm", elem_id=f"{prefix}-export")
                    self.exported = gr.File(label="Exported JSON", interactive=False, elem_id=f"{prefix}-exported")
            with gr.Accordion("Paint a depth map (brighter = nearer)", open=False):
                self.depth_canvas = gr.ImageEditor(
                    type="pil", image_mode="RGB", format="png", layers=False, label="Depth painting",
                    value={"background": Image.new("RGB", (512, 512), (0, 0, 0)), "layers": [], "composite": None},
                    brush=gr.Brush(default_size=48, colors=DEPTH_BRUSH_GREYS, color_mode="defaults"),
                    elem_id=f"{prefix}-depth-canvas", height=300)
                self.use_painting = gr.Button("Use the painting as the depth map", size="sm",
                                              elem_id=f"{prefix}-use-painting")
            # the map a restored run used, and the keypoints of a preset/imported pose
            self.recorded_map = gr.State(None)
            self.keypoints = gr.State(None)
        where = f"units[{index}]"
        for key, component in dict(enabled=self.enabled, type=self.type, preprocess=self.preprocess, image=self.image,
                                   weight=self.weight, start=self.start, end=self.end, guess_mode=self.guess_mode,
                                   model=self.model, hands=self.hands, face=self.face, pose_json=self.pose_json,
                                   depth_painting=self.depth_canvas).items():
            name_input(component, f"{where}.{key}")
        name_input(self.preset, f"{where}.preset", empty_ok=True)  # Use preset without a choice says so itself

    @property
    def inputs(self) -> list:
        return [self.enabled, self.type, self.preprocess, self.image, self.weight, self.start, self.end,
                self.guess_mode, self.model, self.recorded_map, self.hands, self.face]

    def unit(self, data: dict) -> dict | None:
        if not data[self.enabled]:
            return None
        return control_unit(type=data[self.type], image=data[self.image], preprocess=bool(data[self.preprocess]),
                            map=data[self.recorded_map], weight=float(data[self.weight]),
                            start=float(data[self.start]), end=float(data[self.end]),
                            guess_mode=bool(data[self.guess_mode]), hands=bool(data[self.hands]),
                            face=bool(data[self.face]),
                            model=None if data[self.model] in (AUTOMATIC, "", None) else data[self.model])

    def restore(self, unit: dict | None) -> dict:
        if unit is None:
            return {self.enabled: False, self.recorded_map: None}
        return {self.enabled: True, self.type: unit["type"], self.preprocess: unit["preprocess"],
                self.image: unit["image"] if unit["image"] is not None else unit["map"], self.map: unit["map"],
                self.recorded_map: unit["map"], self.weight: unit["weight"], self.start: unit["start"],
                self.end: unit["end"], self.guess_mode: unit["guess_mode"], self.model: unit["model"] or AUTOMATIC,
                self.hands: unit["hands"], self.face: unit["face"]}

    @property
    def restore_outputs(self) -> list:
        return [self.enabled, self.type, self.preprocess, self.image, self.map, self.recorded_map, self.weight,
                self.start, self.end, self.guess_mode, self.model, self.hands, self.face]


def build(ctx: UIContext, native_size: int) -> None:
    services = ctx.services
    with gr.Tab("ControlNet", id="control"):
        prompt, negative, generate, interrupt = tab_header("control")
        tools = prompt_tools.build(ctx, "control", prompt, negative)
        with gr.Row():
            with gr.Column(scale=1):
                units = [UnitWidgets(i, services) for i in range(MAX_CONTROL_UNITS)]
                with gr.Accordion("img2img with controls: start from an image", open=False):
                    init_image = gr.Image(type="pil", format="png", label="Init image (optional)",
                                          sources=["upload", "clipboard"], elem_id="control-init", height=200)
                    strength = field_widget(ControlRequest, "denoise_strength", elem_id="control-strength")
                panel = generation_panel("control", ctx.model, ctx.vae, native_size, prompt, negative, tools.styles)
            with gr.Column(scale=1):
                progress, preview, gallery, info = result_widgets("control")
                to_extras = gr.Button("Upscale (Extras)", size="sm", elem_id="control-send-extras")
        last = gr.State(None)
    ctx.senders.append(ImageSender(to_extras, "extras", [last], selected_image))

    name_input(init_image, "init_image")
    name_input(strength, "denoise_strength")
    extra = {"init_image": init_image, "strength": strength}
    for unit in units:
        extra.update({f"unit{unit.index}-{i}": component for i, component in enumerate(unit.inputs)})
    panel.extra.update(extra)

    def make_request(data: dict) -> ControlRequest:
        chosen = tuple(u for u in (widgets.unit(data) for widgets in units) if u is not None)
        return ControlRequest(**panel.values(data), units=chosen, init_image=data[init_image],
                              denoise_strength=float(data[strength]))

    wire_results(services, make_request, generate, interrupt, panel,
                 dict(progress=progress, preview=preview, gallery=gallery, info=info, last=last), api_name="control")

    for widgets in units:
        # a new photo means the recorded map of a restored run no longer applies
        widgets.image.upload(lambda: None, outputs=widgets.recorded_map, api_name=False)
        widgets.image.clear(lambda: None, outputs=widgets.recorded_map, api_name=False)

        @guarded
        def detect(data: dict, widgets=widgets):
            notices = []
            # a missing annotator is a ModelError: shown, with what to do
            request = services.runner.prepare(make_request({**data, widgets.enabled: True}), notices)
            for notice in notices:  # e.g. which pose detector made the map, a map that was resized
                gr.Info(notice)
            position = [w for w in units if data[w.enabled] or w is widgets].index(widgets)
            return request.units[position]["map"]

        # detection runs on the device: it queues with the runs, never beside one
        widgets.detect.click(detect, inputs=panel.inputs | set(extra.values()), outputs=widgets.map, api_name=False,
                             concurrency_id=DEVICE_QUEUE, concurrency_limit=1)

        @guarded
        def use_preset(name, width, height, widgets=widgets):
            if not name:
                raise gr.Error("choose a pose preset first")
            pose = openpose.preset_pose(name, int(width), int(height))
            image = pose_map_from_keypoints([pose], int(width), int(height))
            return {widgets.image: image, widgets.map: image, widgets.preprocess: False, widgets.type: "pose",
                    widgets.keypoints: {"poses": [pose], "width": int(width), "height": int(height)},
                    widgets.recorded_map: None}

        preset_outputs = [widgets.image, widgets.map, widgets.preprocess, widgets.type, widgets.keypoints,
                          widgets.recorded_map]
        widgets.use_preset.click(use_preset, inputs=[widgets.preset, panel.fields["width"], panel.fields["height"]],
                                 outputs=preset_outputs, api_name=False)

        @guarded
        def import_json(file, widgets=widgets):
            if file is None:
                return {}
            poses, width, height = read_pose_json(file if isinstance(file, str) else file.name)
            image = pose_map_from_keypoints(poses, width, height)
            return {widgets.image: image, widgets.map: image, widgets.preprocess: False, widgets.type: "pose",
                    widgets.keypoints: {"poses": poses, "width": width, "height": height}, widgets.recorded_map: None}

        widgets.pose_json.upload(import_json, inputs=widgets.pose_json, outputs=preset_outputs, api_name=False)

        @guarded
        def export_json(keypoints, widgets=widgets):
            if not keypoints:
                raise gr.Error("use a preset or import a pose first: detected poses have no keypoints to export")
            data = openpose.pose_to_openpose_json(keypoints["poses"], keypoints["width"], keypoints["height"])
            path = Path(tempfile.mkdtemp(prefix="studio-pose-")) / "pose.json"
            path.write_text(json.dumps(data, indent=1))
            return str(path)

        widgets.export.click(export_json, inputs=widgets.keypoints, outputs=widgets.exported, api_name=False)

        @guarded
        def use_painting(value, width, height, widgets=widgets):
            painted = (value or {}).get("composite")
            if painted is None:
                raise gr.Error("paint on the depth canvas first")
            depth = painted.convert("L").convert("RGB").resize((int(width), int(height)), Image.BILINEAR)
            return {widgets.image: depth, widgets.map: depth, widgets.preprocess: False, widgets.type: "depth",
                    widgets.recorded_map: None}

        widgets.use_painting.click(use_painting, inputs=[widgets.depth_canvas, panel.fields["width"],
                                                         panel.fields["height"]],
                                   outputs=[widgets.image, widgets.map, widgets.preprocess, widgets.type,
                                            widgets.recorded_map], api_name=False)

    def restore(request: ControlRequest) -> dict:
        updates = panel.updates(request)
        updates.update({init_image: request.init_image, strength: request.denoise_strength})
        for index, widgets in enumerate(units):
            updates.update(widgets.restore(request.units[index] if index < len(request.units) else None))
        return updates

    outputs = [*panel.fields.values(), init_image, strength]
    for widgets in units:
        outputs += widgets.restore_outputs
    ctx.restorers["control"] = TabRestore("control", outputs, restore)
    ctx.size_sliders.append((panel.fields["width"], panel.fields["height"]))
