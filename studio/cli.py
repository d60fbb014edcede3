"""Command line: serve / generate / history / models. Same runner as the UI underneath.

Errors print one line on stderr naming the field, and exit non-zero (2 bad input, 3 model,
4 not found, 5 the history is damaged, 1 anything else).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from studio.errors import InputError, StudioError
from studio.requests import (
    ControlRequest,
    InpaintRequest,
    OutpaintRequest,
    Txt2ImgRequest,
    control_unit,
    field_spec,
    number,
)
from studio.settings import Settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="database, outputs and blobs (default: data/ or STUDIO_DATA_DIR)")
    parser.add_argument("--database-url", metavar="URL", help="history in PostgreSQL: postgresql+psycopg://user:"
                        "password@host/db (default: data-dir/history.sqlite, or STUDIO_DATABASE_URL)")
    parser.add_argument("--models-dir", type=Path, help="A1111-style models folder (default: models/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def described(meta: dict) -> str:
    """A field's CLI help from its spec: label, range or choices, help."""
    bounds = f" ({number(meta['min'])}..{number(meta['max'])})" if meta.get("min") is not None else ""
    return f"{meta['label']}{bounds}" + (f": {meta['help']}." if meta.get("help") else ".")


def cli_word(choice: str) -> str:
    """A choice as a command-line word: 'latent noise' -> 'latent-noise'."""
    return choice.replace(" ", "-")


def option(parser: argparse.ArgumentParser, flag: str, cls: type, name: str, **overrides) -> None:
    """A command-line option for a request field: type, default, help and choices read from the request spec."""
    meta = field_spec(cls, name)
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    hint = typing.get_type_hints(cls)[name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    kwargs: dict = {"default": default, "help": described(meta), "dest": name}
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = base
    if meta.get("choices"):
        kwargs.update(choices=[cli_word(c) for c in meta["choices"]], default=cli_word(default))
    kwargs.update(overrides)
    parser.add_argument(flag, **kwargs)


class AppendName(argparse.Action):
    """A repeatable option collecting names into the request's tuple (argparse's append needs a list)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (*getattr(namespace, self.dest, ()), values))


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """The txt2img options every generating command shares (everything from the request spec)."""
    cls = Txt2ImgRequest
    parser.add_argument("--prompt", required=True, help="what to draw")
    parser.add_argument("--negative", default="", dest="negative_prompt", help="what to avoid (negative prompt)")
    option(parser, "--seed", cls, "seed")
    option(parser, "--steps", cls, "steps")
    option(parser, "--cfg", cls, "cfg_scale")
    option(parser, "--width", cls, "width", help=described(field_spec(cls, "width"))[:-1] + "; default: the "
           "model's native size.")
    option(parser, "--height", cls, "height", help=described(field_spec(cls, "height"))[:-1] + "; default: the "
           "model's native size.")
    # any text: an unknown sampler is refused by validation naming the field, like every other value
    option(parser, "--sampler", cls, "sampler", choices=None, default=cls.sampler)
    option(parser, "--karras", cls, "karras")
    option(parser, "--batch-size", cls, "batch_size")
    option(parser, "--batch-count", cls, "batch_count")
    parser.add_argument("--model", help="model name (see `studio models list`); default: the embedded model")
    parser.add_argument("--vae", help="VAE override from models/VAE")
    parser.add_argument("--style", action=AppendName, default=Txt2ImgRequest.styles, dest="styles", metavar="NAME",
                        help="a style from styles.csv in the data folder, applied to the prompts (repeat for several); "
                             "LoRAs go in the prompt as <lora:name:weight>")


# Hires. fix options of `generate` (txt2img only, as in A1111): flag -> request field
HIRES_OPTIONS = {"--hires": "enable_hr", "--hr-upscaler": "hr_upscaler", "--hr-scale": "hr_scale",
                 "--hr-resize-x": "hr_resize_x", "--hr-resize-y": "hr_resize_y", "--hr-steps": "hr_second_pass_steps",
                 "--hr-strength": "hr_denoise_strength"}


def add_hires_options(parser: argparse.ArgumentParser) -> None:
    for flag, name in HIRES_OPTIONS.items():
        option(parser, flag, Txt2ImgRequest, name)


GENERATION_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "sampler",
                     "karras", "batch_size", "batch_count", "model", "vae", "styles")


def generation_fields(args) -> dict:
    return {name: getattr(args, name) for name in GENERATION_FIELDS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studio", description="Local diffusion studio")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the web UI")
    _common(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 7860)")
    serve.add_argument("--listen", action="store_true", help="bind 0.0.0.0 so the network can reach it")
    serve.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    serve.add_argument("--no-api", action="store_true", help="do not serve the A1111-compatible API (/sdapi/v1)")
    serve.add_argument("--api-auth", metavar="USER:PASSWORD", help="HTTP Basic auth for the API (needed with --listen)")
    serve.add_argument("--farm", action="store_true", help="run jobs on Celery workers (needs --broker and "
                       "--database-url; see `studio worker`)")
    serve.add_argument("--broker", dest="broker_url", metavar="URL", help="farm mode's Redis: redis://host:6379/0 "
                       "(or STUDIO_BROKER_URL)")

    worker = sub.add_parser("worker", help="farm mode: run jobs from the broker on this machine's device, one at a "
                            "time (start one per GPU)")
    _common(worker)
    worker.add_argument("--broker", dest="broker_url", metavar="URL", help="the farm's Redis: redis://host:6379/0 "
                        "(or STUDIO_BROKER_URL)")
    worker.add_argument("--name", help="this worker's name in the Farm view (default studio@host)")
    worker.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    gen = sub.add_parser("generate", help="txt2img from the command line")
    _common(gen)
    add_generation_options(gen)
    add_hires_options(gen)

    inpaint = sub.add_parser("inpaint", help="repaint the masked part of an image")
    _common(inpaint)
    add_generation_options(inpaint)
    inpaint.add_argument("--image", type=Path, required=True, help="the picture to edit")
    inpaint.add_argument("--mask", type=Path, required=True, help="mask image: white = repaint")
    for flag, name in (("--mask-blur", "mask_blur"), ("--invert-mask", "invert_mask"),
                       ("--masked-content", "masked_content"), ("--area", "inpaint_area"), ("--padding", "padding"),
                       ("--strength", "denoise_strength")):
        option(inpaint, flag, InpaintRequest, name)

    outpaint = sub.add_parser("outpaint", help="extend an image's canvas and paint the new area")
    _common(outpaint)
    add_generation_options(outpaint)
    outpaint.add_argument("--image", type=Path, required=True)
    for name in ("left", "right", "top", "bottom", "infill", "overlap", "feather"):
        option(outpaint, f"--{name}", OutpaintRequest, name)
    option(outpaint, "--strength", OutpaintRequest, "denoise_strength")

    control = sub.add_parser("control", help="generate guided by ControlNet units (pose, depth)")
    _common(control)
    add_generation_options(control)
    control.add_argument("--unit", action="append", required=True, metavar="KEY=VALUE,...",
                         help="a control unit: type=pose|depth, then image=FILE (photo or map), or pose-json=FILE, "
                              "or preset=NAME; preprocess=true|false, weight=0..2, start=0..1, end=0..1, "
                              "guess=true|false, model=NAME, hands=true|false and face=true|false (pose "
                              "preprocessing with OpenPose). Repeat for more units.")
    control.add_argument("--init-image", type=Path, help="img2img with controls: start from this image")
    option(control, "--strength", ControlRequest, "denoise_strength",
           help=described(field_spec(ControlRequest, "denoise_strength"))[:-1] + " (with --init-image).")

    history = sub.add_parser("history", help="browse, show, re-run, star, delete past runs")
    hsub = history.add_subparsers(dest="action", required=True)
    listing = hsub.add_parser("list", help="newest first")
    _common(listing)
    listing.add_argument("--search", help="text in the prompt or negative prompt")
    listing.add_argument("--mode")
    listing.add_argument("--model")
    listing.add_argument("--starred", action="store_true")
    listing.add_argument("--limit", type=int, default=20)
    for name, help_text in (("show", "every parameter of a run"), ("rerun", "run it again (same seeds)"),
                            ("delete", "remove a run and the files only it uses"), ("star", "star a run"),
                            ("unstar", "remove the star")):
        action = hsub.add_parser(name, help=help_text)
        _common(action)
        action.add_argument("run_id", type=int)
    imported = hsub.add_parser("import", help="read the parameters of a PNG (studio or A1111)")
    _common(imported)
    imported.add_argument("png", type=Path)
    check = hsub.add_parser("check", help="verify the database (SQLite integrity check) and every file's hash")
    _common(check)
    recover = hsub.add_parser("recover", help="salvage the readable rows of a damaged history into a new file")
    _common(recover)
    recover.add_argument("--out", type=Path, help="the new database file (default: beside the damaged one)")
    recover.add_argument("--replace", action="store_true",
                         help="then move the damaged file aside (.damaged-<time>) and put the new one in its place")

    migrate = hsub.add_parser("migrate", help="copy this history (data-dir/history.sqlite) into an empty "
                              "PostgreSQL database, for farm mode")
    _common(migrate)
    migrate.add_argument("--to", required=True, metavar="URL", dest="to",
                         help="the target: postgresql+psycopg://user:password@host:5432/database (migrated to the "
                              "current schema first; refused if it already holds runs)")

    models = sub.add_parser("models", help="list and add checkpoints")
    msub = models.add_subparsers(dest="action", required=True)
    mlist = msub.add_parser("list")
    _common(mlist)
    madd = msub.add_parser("add", help="register a .safetensors file, a diffusers folder or a hub id")
    _common(madd)
    madd.add_argument("path")
    madd.add_argument("--name")
    madd.add_argument("--config", help="diffusers config folder for a single file (default: by detected family)")
    mexport = msub.add_parser("export", help="write a model as one A1111-style .safetensors file (SD1.x)")
    _common(mexport)
    mexport.add_argument("name")
    mexport.add_argument("dest", type=Path)

    samplers = sub.add_parser("samplers", help="list sampler names")
    samplers.add_argument("--json", action="store_true")
    return parser


def read_image(path: Path, field: str):
    """An image file the user named, or a one-line error naming the option."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, UnidentifiedImageError) as error:
        raise InputError(f"cannot read {path} as an image ({error.__class__.__name__}); give a PNG or JPEG",
                         field=field) from error


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_unit(text: str, index: int, size: tuple[int, int]) -> dict:
    """One --unit option (type=pose,image=P.png,weight=0.8,...) as a control unit."""
    field = f"units[{index}]"
    values: dict = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise InputError(f"{part!r} is not KEY=VALUE", field=field)
        if key in ("preprocess", "guess", "hands", "face"):
            if value.lower() not in _TRUE | _FALSE:
                raise InputError(f"{key}={value!r}: use true or false", field=f"{field}.{key}")
            values["guess_mode" if key == "guess" else key] = value.lower() in _TRUE
        elif key in ("weight", "start", "end"):
            try:
                values[key] = float(value)
            except ValueError as error:
                raise InputError(f"{key}={value!r} is not a number", field=f"{field}.{key}") from error
        elif key == "image":
            values["image"] = read_image(Path(value), f"{field}.image")
        elif key in ("pose-json", "preset"):
            from studio.engine import openpose
            from studio.engine.control import pose_map_from_keypoints, read_pose_json

            if key == "preset":
                if value not in openpose.POSE_PRESETS:
                    raise InputError(f"unknown preset {value!r}; choose one of {', '.join(openpose.POSE_PRESETS)}",
                                     field=f"{field}.preset")
                poses, width, height = [openpose.preset_pose(value, *size)], *size
            else:
                poses, width, height = read_pose_json(value)
            values.update(image=pose_map_from_keypoints(poses, width, height), preprocess=False)
            values.setdefault("type", "pose")
        elif key in ("type", "model"):
            values[key] = value
        else:
            raise InputError(f"unknown key {key!r}; use type, image, pose-json, preset, preprocess, weight, start, "
                             "end, guess, model, hands, face", field=field)
    return control_unit(**values)


def build_request(args):
    """The request a generating command describes."""
    fields = generation_fields(args)
    if args.command == "inpaint":
        return InpaintRequest(**fields, image=read_image(args.image, "image"), mask=read_image(args.mask, "mask"),
                              mask_blur=args.mask_blur, invert_mask=args.invert_mask,
                              masked_content=args.masked_content.replace("-", " "), inpaint_area=args.inpaint_area,
                              padding=args.padding, denoise_strength=args.denoise_strength)
    if args.command == "outpaint":
        return OutpaintRequest(**fields, image=read_image(args.image, "image"), left=args.left, right=args.right,
                               top=args.top, bottom=args.bottom, infill=args.infill, overlap=args.overlap,
                               feather=args.feather, denoise_strength=args.denoise_strength)
    if args.command == "control":
        size = (args.width or 512, args.height or 512)
        units = tuple(parse_unit(text, index, size) for index, text in enumerate(args.unit))
        init = read_image(args.init_image, "init_image") if args.init_image else None
        return ControlRequest(**fields, units=units, init_image=init, denoise_strength=args.denoise_strength)
    return Txt2ImgRequest(**fields, **{name: getattr(args, name) for name in HIRES_OPTIONS.values()})


def settings_from(args) -> Settings:
    overrides = {}
    for name in ("data_dir", "database_url", "models_dir", "host", "port", "broker_url"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "listen", False):
        overrides["listen"] = True
    if getattr(args, "farm", False):
        overrides["farm"] = True
    if getattr(args, "no_api", False):
        overrides["api"] = False
    if getattr(args, "api_auth", None):
        overrides["api_auth"] = args.api_auth
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as error:  # a bad STUDIO_* variable: name it, not pydantic's report
        problem = error.errors()[0]
        name = str(problem["loc"][0]) if problem.get("loc") else "setting"
        # a database URL may hold a password: its message says what is wrong without repeating it
        got = "" if name == "database_url" else f" (got {str(problem.get('input'))[:40]!r})"
        raise InputError(f"{problem['msg']}{got}; fix the STUDIO_{name.upper()} "
                         "environment variable or the option", field=name) from None


def _emit(args, payload, text: str) -> None:
    print(json.dumps(payload, indent=None if args.json else 2, default=str) if args.json else text)


def run_summary(result) -> dict:
    return {"run_id": result.run_id, "status": result.status, "seed": result.request.seed,
            "seeds": result.seeds, "outputs": [str(ref.path) for ref in result.outputs],
            "duration_s": round(result.duration_s, 3)}


def record_summary(record, full: bool = False) -> dict:
    data = {"run_id": record.id, "created_at": record.created_at.isoformat(), "status": record.status,
            "mode": record.mode, "model": record.model_name, "model_hash": record.short_hash,
            "prompt": record.prompt, "seed": record.seed, "sampler": record.sampler, "steps": record.steps,
            "cfg_scale": record.cfg_scale, "size": f"{record.width}x{record.height}",
            "starred": record.starred, "outputs": [str(ref.path) for ref in record.outputs]}
    if full:
        data.update(negative_prompt=record.negative_prompt, karras=record.karras, seeds=record.seeds,
                    batch_size=record.batch_size, batch_count=record.batch_count, vae=record.vae,
                    scheduler=record.scheduler, params=record.params, error=record.error,
                    duration_s=record.duration_s, timings=record.timings, device=record.device,
                    dtype=record.dtype, versions=record.versions, parent_id=record.parent_id,
                    rerun_of=record.rerun_of, model_hash_full=record.model_hash,
                    inputs={ref.name: str(ref.path) for ref in record.inputs},
                    output_seeds=[ref.seed for ref in record.outputs])
    return data


def _migrate(args, settings) -> int:
    """history migrate: the SQLite file's rows into PostgreSQL (the files stay in the shared data folder)."""
    from studio.history.transfer import copy_to_postgres
    from studio.settings import normalize_database_url

    try:
        url = normalize_database_url(args.to)
    except ValueError as error:
        raise InputError(f"{error}; fix --to", field="to") from None
    if url is None:
        raise InputError("name the PostgreSQL database to copy the history into", field="to")
    report = copy_to_postgres(settings.database_path, url)
    rows = ", ".join(f"{table} {count}" for table, count in report.rows.items())
    secret = " (with the password put back)" if "***" in report.target else ""
    _emit(args, report.as_dict(), f"copied {report.source} into {report.target}: {rows} rows (counts verified "
          f"in both). To use it: STUDIO_DATABASE_URL={report.target}{secret}, and the same "
          f"{settings.blobs_dir} on every machine; {report.source} is left as it was")
    return 0


def _history_maintenance(args, settings) -> int:
    """check / recover / migrate: they read the raw file, so they work when the history cannot be opened."""
    from studio.history.files import BlobStore
    from studio.history.maintenance import check_history, recover_history

    if args.action == "migrate":
        return _migrate(args, settings)
    if settings.database_url:
        raise InputError(f"`history {args.action}` works on the SQLite file {settings.database_path}, but "
                         "STUDIO_DATABASE_URL puts the history in PostgreSQL: check that with the server's tools "
                         "(pg_dump, pg_amcheck), or unset STUDIO_DATABASE_URL to work on the file",
                         field="database_url")
    blobs = BlobStore(settings.blobs_dir)
    if args.action == "check":
        report = check_history(settings.database_path, blobs)
        lines = [f"{settings.database_path}: " + ("integrity ok" if not report.integrity else
                                                  "DAMAGED: " + "; ".join(report.integrity[:5]))]
        lines.append(f"{report.files_checked} stored files checked: {len(report.damaged_files)} damaged, "
                     f"{len(report.missing_files)} missing, {len(report.orphan_files)} belong to no run")
        lines += [f"damaged: {path} ({problem}; runs {', '.join(map(str, runs)) or 'none'})"
                  for path, problem, runs in report.damaged_files]
        lines += [f"missing: {path} (runs {', '.join(map(str, runs))})" for path, runs in report.missing_files]
        if report.integrity:
            from studio.history.db import recovery_advice

            lines.append(f"to recover: {recovery_advice(settings.database_path)}")
        _emit(args, report.as_dict(), "\n".join(lines))
        return 0 if report.healthy else 5
    report = recover_history(settings.database_path, blobs, args.out, replace=args.replace)
    rows = ", ".join(f"{count} {table}" for table, count in report.rows.items())
    lost = sum(report.unreadable.values()) + sum(report.dropped.values())
    text = (f"recovered {rows} into {report.recovered} ({lost} unreadable or dangling rows left out, "
            f"{report.blobs_rebuilt} file records rebuilt from the files, {report.runs_interrupted} running runs "
            "marked interrupted)")
    text += (f"; the damaged file is now {report.replaced}" if report.replaced else
             f". To use it: move {settings.database_path} aside and rename {report.recovered} to "
             f"{settings.database_path.name} (or run this again with --replace)")
    _emit(args, report.as_dict(), text)
    return 0


def _history(args, services) -> None:
    history, runner = services.history, services.runner
    if args.action == "list":
        rows = history.search(args.search, mode=args.mode, model=args.model,
                              starred=True if args.starred else None, limit=args.limit)
        data = [record_summary(r) for r in rows]
        text = "\n".join(f"{r['run_id']:>5}  {r['status']:<11} {r['mode']:<8} {r['model']:<20} "
                         f"seed {r['seed']:<10} {r['prompt'][:60]}" for r in data) or "no runs"
        _emit(args, data, text)
    elif args.action == "show":
        record = history.get(args.run_id)
        data = record_summary(record, full=True)
        damaged = history.damaged_files(record)
        data["damaged_files"] = [{"role": d.role, "name": d.name, "position": d.position, "path": str(d.path),
                                  "problem": d.problem} for d in damaged]
        for damage in damaged:
            print(f"warning: {damage.describe()}", file=sys.stderr)
        _emit(args, data, json.dumps(data, indent=2, default=str))
    elif args.action == "rerun":
        result = runner.rerun(args.run_id, source="cli")
        data = run_summary(result)
        _emit(args, data, "\n".join(data["outputs"]))
    elif args.action == "delete":
        removed = history.delete(args.run_id)
        _emit(args, {"run_id": args.run_id, "deleted_files": removed}, f"deleted run {args.run_id}")
    elif args.action in ("star", "unstar"):
        history.star(args.run_id, args.action == "star")
        _emit(args, {"run_id": args.run_id, "starred": args.action == "star"}, f"{args.action}red {args.run_id}")
    elif args.action == "import":
        from studio.requests import to_record

        request = runner.request_from_png(read_image(args.png, "png"))

        params, _ = to_record(request)
        _emit(args, params, json.dumps(params, indent=2))


def _models(args, services) -> None:
    models = services.models
    if args.action == "list":
        services.registry.default_name()  # makes the placeholder on a machine without the embedded model
        data = [models.describe(entry) for entry in services.registry.entries().values()]
        text = "\n".join(f"{d['name']:<28} {d['source']:<12} {d['location']}"
                         + (f"\n{'':<28} cannot be loaded: {d['error']}" if d.get("error") else "") for d in data)
        _emit(args, data, text)
    elif args.action == "add":
        entry = services.registry.add(args.path, args.name, args.config)
        _emit(args, models.describe(entry), f"added {entry.name} ({entry.source}: {entry.location})")
    elif args.action == "export":
        from studio.engine.checkpoints import export_single_file

        model = models.load(args.name)
        if model.family != "sd1":
            raise StudioError(f"export supports SD1.x models; {args.name} is {model.family}", field="name")
        path = export_single_file(model.pipe, args.dest)
        _emit(args, {"path": str(path)}, str(path))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "samplers":
        from studio.engine.schedulers import SAMPLER_NAMES

        print(json.dumps(list(SAMPLER_NAMES)) if args.json else "\n".join(SAMPLER_NAMES))
        return 0
    try:
        settings = settings_from(args)
        if args.command == "serve":
            from studio.ui.server import serve

            serve(settings, open_browser=not args.no_browser)
            return 0
        if args.command == "worker":
            from studio.farm.worker import main as worker_main

            if args.name:
                os.environ["STUDIO_WORKER_NAME"] = args.name
            return worker_main(settings, loglevel=args.loglevel)
        if args.command == "history" and args.action in ("check", "recover", "migrate"):
            return _history_maintenance(args, settings)
        from studio.app import build

        services = build(settings)
        try:
            if args.command in ("generate", "inpaint", "outpaint", "control"):
                result = services.runner.run(build_request(args), source="cli")
                for notice in result.notices:
                    print(f"notice: {notice}", file=sys.stderr)
                data = run_summary(result)
                _emit(args, data, "\n".join(data["outputs"]))
            elif args.command == "history":
                _history(args, services)
            elif args.command == "models":
                _models(args, services)
        finally:
            services.close()
        return 0
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the CLI's last line of defence: one line, not a traceback
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: the command failed unexpectedly ({first_line}); please report it with the command you ran",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
