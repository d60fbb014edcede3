"""The offline config folders for single-file checkpoints: what is committed, and that each
architecture is the published one (built on the meta device, so no weights are allocated)."""

import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from studio.engine.model_configs import (
    CONFIGS,
    FAMILIES,
    TOKENIZER_FILES,
    complete_config,
    tokenizer_folders,
    write_configs,
)
from studio.settings import ASSETS_DIR

CONFIGS_DIR = ASSETS_DIR / "configs"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"

# Parameter counts of the public checkpoints, in millions (the inpaint UNets differ from their
# base by 5 x 320 x 3 x 3 conv_in weights, 0.002%, well inside the tolerance).
PUBLISHED_UNET = {"sd1": 859.52, "sd2": 865.91, "sdxl": 2567.46}
PUBLISHED_VAE = 83.65
PUBLISHED_TEXT = {"sd1": 123.06, "sd2": 340.39, "sdxl": 123.06}
PUBLISHED_TEXT_2 = {"sdxl": 694.66}
TOLERANCE = 1e-3


def millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def base(family: str) -> str:
    return family.removesuffix("-inpaint")


def test_the_committed_folders_are_what_the_writer_writes(tmp_path):
    written = write_configs(tmp_path)  # JSON only: the BPE files are added at load time
    expected = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in written}
    committed = {p.relative_to(CONFIGS_DIR).as_posix(): p.read_bytes()
                 for p in CONFIGS_DIR.rglob("*") if p.is_file()}
    assert sorted(committed) == sorted(expected)
    stale = [name for name in expected if committed[name] != expected[name]]
    assert not stale, f"assets/configs is out of date; rerun python -m studio.engine.model_configs: {stale}"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_folder_holds_its_module_data(family, tmp_path):
    folder = CONFIGS_DIR / family
    for relative, data in CONFIGS[family].items():
        assert json.loads((folder / relative).read_text()) == data, relative
    complete = complete_config(folder, TOKENIZER_DIR, tmp_path)
    assert complete != folder and complete.parent == tmp_path
    for sub in tokenizer_folders(family):
        assert not (folder / sub / "vocab.json").exists()  # the repo keeps one copy, in assets/tokenizer
        for name in TOKENIZER_FILES:
            assert (complete / sub / name).read_bytes() == (TOKENIZER_DIR / name).read_bytes()
    for relative in CONFIGS[family]:
        assert (complete / relative).read_bytes() == (folder / relative).read_bytes()


def test_a_completed_folder_is_reused_and_a_changed_config_gets_a_new_one(tmp_path):
    source = tmp_path / "sd1"
    shutil.copytree(CONFIGS_DIR / "sd1", source)
    first = complete_config(source, TOKENIZER_DIR, tmp_path / "cache")
    assert complete_config(source, TOKENIZER_DIR, tmp_path / "cache") == first
    (source / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler"}')
    second = complete_config(source, TOKENIZER_DIR, tmp_path / "cache")
    assert second != first and "DDIM" in (second / "scheduler" / "scheduler_config.json").read_text()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.name, second.name])  # no leftovers
    assert complete_config(CONFIGS_DIR / "controlnet-sd1", TOKENIZER_DIR, tmp_path / "cache") == \
        CONFIGS_DIR / "controlnet-sd1"  # nothing to add


@pytest.mark.parametrize("family, pipeline", [
    ("sd1", "StableDiffusionPipeline"), ("sd1-inpaint", "StableDiffusionInpaintPipeline"),
    ("sd2", "StableDiffusionPipeline"), ("sd2-inpaint", "StableDiffusionInpaintPipeline"),
    ("sdxl", "StableDiffusionXLPipeline"), ("sdxl-inpaint", "StableDiffusionXLInpaintPipeline"),
])
def test_model_index_names_the_pipeline_and_no_safety_checker(family, pipeline):
    index = CONFIGS[family]["model_index.json"]
    assert index["_class_name"] == pipeline
    assert index.get("safety_checker", [None, None]) == [None, None]
    assert index.get("feature_extractor", [None, None]) == [None, None]
    if "XL" not in pipeline:
        assert index["requires_safety_checker"] is False
    components = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    if family.startswith("sdxl"):
        components |= {"text_encoder_2", "tokenizer_2"}
    assert {name for name, value in index.items() if isinstance(value, list) and value[0]} == components


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_and_vae_configs_use_only_known_keys(family):
    for cls, relative in ((UNet2DConditionModel, "unet/config.json"), (AutoencoderKL, "vae/config.json")):
        _, unused, _ = cls.extract_init_dict(CONFIGS[family][relative])
        assert not {k for k in unused if not k.startswith("_")}, (family, relative, unused)


@pytest.mark.parametrize("family", FAMILIES)
def test_unet_and_vae_have_published_parameter_counts(family):
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(CONFIGS[family]["unet/config.json"])
        vae = AutoencoderKL.from_config(CONFIGS[family]["vae/config.json"])
    assert millions(unet) == pytest.approx(PUBLISHED_UNET[base(family)], rel=TOLERANCE)
    assert millions(vae) == pytest.approx(PUBLISHED_VAE, rel=TOLERANCE)
    assert unet.config.in_channels == (9 if family.endswith("-inpaint") else 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_have_published_parameter_counts(family):
    with torch.device("meta"):
        text = CLIPTextModel(CLIPTextConfig.from_dict(CONFIGS[family]["text_encoder/config.json"]))
        assert millions(text) == pytest.approx(PUBLISHED_TEXT[base(family)], rel=TOLERANCE)
        if base(family) in PUBLISHED_TEXT_2:
            config = CLIPTextConfig.from_dict(CONFIGS[family]["text_encoder_2/config.json"])
            text_2 = CLIPTextModelWithProjection(config)
            assert millions(text_2) == pytest.approx(PUBLISHED_TEXT_2[base(family)], rel=TOLERANCE)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_inpaint_variant_differs_only_in_input_channels(family):
    plain, inpaint = CONFIGS[family], CONFIGS[f"{family}-inpaint"]
    assert inpaint["unet/config.json"]["in_channels"] == 9
    for relative in ("text_encoder/config.json", "text_encoder_2/config.json"):
        assert plain.get(relative) == inpaint.get(relative)
    allowed = {"in_channels", "sample_size", "upcast_attention"}  # SD2-inpaint is 512 px, from SD2-base
    changed = {k for k in plain["unet/config.json"].keys() | inpaint["unet/config.json"].keys()
               if plain["unet/config.json"].get(k) != inpaint["unet/config.json"].get(k)}
    assert changed <= allowed


@pytest.mark.parametrize("family, prediction", [
    ("sd1", "epsilon"), ("sd1-inpaint", "epsilon"), ("sd2", "v_prediction"), ("sd2-inpaint", "epsilon"),
    ("sdxl", "epsilon"), ("sdxl-inpaint", "epsilon"),
])
def test_scheduler_loads_from_the_folder(family, prediction):
    import diffusers

    class_name = CONFIGS[family]["model_index.json"]["scheduler"][1]
    scheduler = getattr(diffusers, class_name).from_pretrained(CONFIGS_DIR / family, subfolder="scheduler",
                                                               local_files_only=True)
    assert isinstance(scheduler, SchedulerMixin)
    assert scheduler.config.prediction_type == prediction
    assert scheduler.config.steps_offset == 1
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)


@pytest.mark.parametrize("family, subfolder, pad_id", [
    ("sd1", "tokenizer", 49407), ("sd2", "tokenizer", 0), ("sdxl", "tokenizer", 49407), ("sdxl", "tokenizer_2", 0),
])
def test_tokenizer_loads_with_the_family_pad_token(family, subfolder, pad_id, tmp_path):
    folder = complete_config(CONFIGS_DIR / family, TOKENIZER_DIR, tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
    ids = tokenizer("a photo of an astronaut", padding="max_length", max_length=77).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 550, 18376, 49407]  # CLIP BPE ids, then EOT
    assert ids[7:] == [pad_id] * 70


@pytest.mark.parametrize(("folder", "millions"), [("controlnet-sd1", 361.28), ("controlnet-sd2", 364.23),
                                                  ("controlnet-sdxl", 1251.01)])
def test_controlnet_configs_build_the_published_architectures(folder, millions):
    import json

    import torch
    from diffusers import ControlNetModel

    from studio.settings import ASSETS_DIR

    config = json.loads((ASSETS_DIR / "configs" / folder / "config.json").read_text())
    with torch.device("meta"):
        net = ControlNetModel.from_config(config)
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - millions) < 0.01
