"""What the studio's HTTP APIs share: HTTP Basic auth, capped JSON bodies, JSON errors, route tables."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from studio.errors import HistoryError, InputError, ModelError, NotFound, StudioError
from studio.queue import JobCancelled

log = logging.getLogger(__name__)


# (HTTP status, the "error" word) of each kind of studio error
STATUS = {InputError: (422, "InvalidInput"), NotFound: (404, "NotFound"), ModelError: (422, "ModelProblem"),
          HistoryError: (503, "HistoryUnavailable"), JobCancelled: (409, "Cancelled")}


class ApiFailure(Exception):
    """An HTTP answer other than 200, with the A1111-style JSON error body."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None, headers: dict | None = None):
        self.status, self.error, self.detail, self.field, self.headers = status, error, detail, field, headers


def _error_response(status: int, error: str, detail: str, field: str | None, headers: dict | None = None):
    return JSONResponse({"error": error, "detail": detail, "field": field}, status_code=status, headers=headers)


def endpoint(api, function):
    """Auth, then the handler; every failure becomes the JSON error body."""

    # not functools.wraps: FastAPI would read the handler's (api, request) signature through __wrapped__
    async def wrapper(request: Request):
        try:
            api.check_auth(request)
            return await function(api, request)
        except ApiFailure as failure:
            return _error_response(failure.status, failure.error, failure.detail, failure.field, failure.headers)
        except StudioError as error:
            field = api_field(api, error.field)
            status, word = next((v for kind, v in STATUS.items() if isinstance(error, kind)), (422, "Refused"))
            detail = f"{field}: {error.message}" if field else error.message
            return _error_response(status, word, detail, field)
        except Exception:  # never a traceback to the caller; the log has it
            log.exception("the A1111 API failed on %s", request.url.path)
            return _error_response(500, "ServerError", "the server could not finish this call (an unexpected error, "
                                                       "written to the server's log)", None)

    wrapper.__name__, wrapper.__doc__ = function.__name__, function.__doc__
    return wrapper


class ApiContext:
    """What every route of one studio shares: its services, the auth check and the body reader."""

    def __init__(self, services):
        self.services = services

    @property
    def max_body(self) -> int:
        return self.services.settings.api_max_body_mb * 2**20

    def check_auth(self, request: Request) -> None:
        expected = self.services.settings.api_auth
        if not expected:
            return
        header = request.headers.get("authorization", "")
        given = ""
        if header.lower().startswith("basic "):
            try:
                given = base64.b64decode(header[6:]).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                given = ""
        if not secrets.compare_digest(given.encode(), expected.encode()):
            raise ApiFailure(401, "Unauthorized", "this API needs the user and password given with --api-auth",
                             headers={"WWW-Authenticate": 'Basic realm="studio"'})

    async def body(self, request: Request) -> dict:
        """The JSON object a call sent, refusing bodies over the cap before reading them whole."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                # read on without keeping it (up to a bound), so the client gets the 413, not a broken pipe
                async for rest in request.stream():
                    size += len(rest)
                    if size > 16 * self.max_body:
                        break
                raise self._too_big()
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise ApiFailure(422, "BadRequest", f"the body is not valid JSON ({str(error)[:80]})", "body") from error
        if not isinstance(value, dict):
            raise ApiFailure(422, "BadRequest", "the body must be a JSON object", "body")
        return value

    def _too_big(self) -> ApiFailure:
        return ApiFailure(413, "TooLarge", f"the body is over {self.max_body // 2**20} MB "
                          "(STUDIO_API_MAX_BODY_MB); send smaller images", "body")



def api_field(api, field: str | None) -> str | None:
    """The field name as this API calls it (the A1111 API renames some; the studio's own does not)."""
    rename = getattr(api, "field_name", None)
    return rename(field) if rename else field


def route_table(table: list):
    """A decorator that records (path, methods, handler) in `table`, bound to a studio later by bind()."""

    def route(path: str, methods: tuple[str, ...] = ("GET",)):
        def register(function):
            table.append((path, methods, function))
            return function
        return register

    return route


def bind(table: list, api, prefix: str) -> list:
    """The routes of a table bound to one studio's API context, for the web app's constructor."""
    router = APIRouter(prefix=prefix)
    for path, methods, function in table:
        router.add_api_route(path, endpoint(api, function), methods=list(methods), response_model=None,
                             summary=(function.__doc__ or "").strip().split("\n")[0])
    return list(router.routes)
