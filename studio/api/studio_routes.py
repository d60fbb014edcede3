"""The studio's own named HTTP endpoints, /studio/v1/*: the job queue and the history, by the studio's words.

What A1111's API has no place for: see, cancel and reorder the queue; list, show and re-run past runs.
Field names are the studio's own (studio/requests.py), errors the same JSON as the A1111 API.
"""

from __future__ import annotations

import dataclasses
import typing

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from studio.api.a1111_requests import decode_image, png_base64
from studio.api.http import ApiContext, bind, route_table
from studio.errors import InputError
from studio.requests import REQUEST_TYPES, from_record, parse_id, parse_run_id, shown, to_record, validate

PREFIX = "/studio/v1"
ROUTES: list = []
route = route_table(ROUTES)


def job_id(request: Request) -> int:
    return parse_id(request.path_params.get("job_id"), "job", "job", "the queue")


def run_summary(record) -> dict:
    return {"run_id": record.id, "status": record.status, "mode": record.mode, "source": record.source,
            "model": record.model_name, "model_hash": record.short_hash, "prompt": record.prompt,
            "negative_prompt": record.negative_prompt, "seeds": record.seeds, "steps": record.steps,
            "cfg_scale": record.cfg_scale, "sampler": record.sampler, "size": [record.width, record.height],
            "created_at": record.created_at.isoformat(), "parent_id": record.parent_id, "rerun_of": record.rerun_of,
            "starred": record.starred, "error": record.error,
            "outputs": [{"seed": ref.seed, "sha256": ref.sha256} for ref in record.outputs]}


def request_from_body(body: dict):
    """A request in the studio's own words: {"mode": ..., fields..., images as base64, units with images}."""
    mode = body.get("mode", "txt2img")
    if mode not in REQUEST_TYPES:
        raise InputError(f"{shown(mode)} is not one of {', '.join(REQUEST_TYPES)}", field="mode")
    cls = REQUEST_TYPES[mode]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(body) - names - {"mode"})
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(unknown)}; the {mode} fields are {', '.join(sorted(names))}",
                         field=unknown[0])
    params, images = {"mode": mode}, {}
    for name, value in body.items():
        if name == "mode":
            continue
        hint = typing.get_type_hints(cls)[name]
        if "Image" in str(hint):
            if value is not None:
                images[name] = decode_image(value, name)
        elif name == "units":
            if not isinstance(value, list):
                raise InputError(f"{shown(value)} is not a list of control units", field="units")
            units = []
            for index, unit in enumerate(value):
                if not isinstance(unit, dict):
                    raise InputError(f"{shown(unit)} is not a control unit", field=f"units[{index}]")
                plain = dict(unit)
                for key in ("image", "map"):
                    if plain.get(key) is not None:
                        images[f"units.{index}.{key}"] = decode_image(plain.pop(key), f"units[{index}].{key}")
                    else:
                        plain.pop(key, None)
                units.append(plain)
            params["units"] = units
        else:
            params[name] = value
    try:
        return validate(from_record(params, images))
    except TypeError as error:  # a unit with a setting no unit has
        raise InputError(f"a control unit setting is unknown ({error})", field="units") from error


@route("/generate", ("POST",))
async def generate(api: ApiContext, request: Request):
    """Any mode in the studio's own field names (studio/requests.py); images base64; queued; answers when done."""
    body = await api.body(request)
    studio_request = request_from_body(body)
    result = await run_in_threadpool(api.services.queue.run, studio_request, lambda progress: None, "api")
    record = api.services.history.get(result.run_id)
    return {**run_summary(record), "images": [png_base64(ref.path) for ref in record.outputs],
            "infotexts": result.infotexts, "notices": list(result.notices)}


@route("/queue")
async def queue_jobs(api: ApiContext, request: Request):
    """The running job, the waiting ones in order (position 0 runs next), then the recently finished."""
    return {"jobs": api.services.queue.jobs()}


@route("/queue/{job_id}/cancel", ("POST",))
async def cancel_job(api: ApiContext, request: Request):
    """Cancel a waiting job (it is not recorded), or interrupt the running one (it keeps what it finished)."""
    number = job_id(request)
    return {"job": number, "result": api.services.queue.cancel(number)}


@route("/queue/{job_id}/move", ("POST",))
async def move_job(api: ApiContext, request: Request):
    """Move a waiting job to {"position": n} among the waiting ones (0 = next to run)."""
    number, body = job_id(request), await api.body(request)
    position = body.get("position")
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise InputError(f"{position!r} is not a position; give a whole number from 0", field="position")
    api.services.queue.move(number, position)
    return {"jobs": api.services.queue.jobs()}


@route("/queue/clear", ("POST",))
async def clear_queue(api: ApiContext, request: Request):
    """Cancel every waiting job; the running one goes on."""
    return {"cancelled": api.services.queue.clear()}


@route("/history")
async def history_list(api: ApiContext, request: Request):
    """Runs newest first; ?search=text&mode=...&model=...&limit=50."""
    query = request.query_params
    limit = parse_id(query.get("limit", "50"), "limit", "limit", "a number from 1") if query.get("limit") else 50
    records = api.services.history.search(query.get("search") or None, mode=query.get("mode") or None,
                                          model=query.get("model") or None, limit=min(limit, 500))
    return {"runs": [run_summary(record) for record in records]}


@route("/history/{run_id}")
async def history_show(api: ApiContext, request: Request):
    """One run: its parameters, its outputs and whether any of its files is damaged."""
    history = api.services.history
    record = history.get(parse_run_id(request.path_params.get("run_id")))
    return {**run_summary(record), "params": record.params,
            "damaged_files": [damage.describe() for damage in history.damaged_files(record)]}


@route("/history/{run_id}/request")
async def history_request(api: ApiContext, request: Request):
    """The exact request of a run (what Restore puts back in its tab), images left out."""
    restored = api.services.runner.restore(parse_run_id(request.path_params.get("run_id")))
    params, images = to_record(restored)
    return {"request": params, "images": sorted(images)}


@route("/history/{run_id}/rerun", ("POST",))
async def history_rerun(api: ApiContext, request: Request):
    """Run it again (same seeds, same settings), queued like any job; answers when it is done."""
    run_id = parse_run_id(request.path_params.get("run_id"))
    restored = api.services.runner.restore(run_id)
    result = await run_in_threadpool(api.services.queue.run, restored, None, "api", run_id)
    return run_summary(api.services.history.get(result.run_id))


def build_routes(services) -> list:
    """The studio's own routes bound to one studio."""
    return bind(ROUTES, ApiContext(services), PREFIX)
