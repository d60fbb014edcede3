"""Starts the Gradio server on localhost (or the network with --listen); never a share link."""

from __future__ import annotations

from studio.api import build_routes
from studio.app import Services, build
from studio.errors import InputError
from studio.settings import Settings
from studio.ui.app import CSS, SHORTCUTS_JS, build_ui

# Uploads past this are refused by Gradio before they reach the disk; a 8192x8192 PNG stays under it.
MAX_UPLOAD = "200mb"
# FastAPI's interactive page of the HTTP APIs (A1111's and the studio's own)
DOCS_URL, OPENAPI_URL = "/studio/docs", "/studio/openapi.json"


def check_api_exposure(settings: Settings) -> None:
    """The API has no UI session in front of it: on the network it must have a password."""
    if settings.api and settings.listen and not settings.api_auth:
        raise InputError("--listen would open the A1111 API to the network without a password; give --api-auth "
                         "user:password, or --no-api", field="api_auth")
    if settings.api_auth and ":" not in settings.api_auth:
        raise InputError("give it as user:password", field="api_auth")


def launch(services: Services, *, open_browser: bool = False, block: bool = True):
    """Launch the UI (and the A1111 API, unless turned off) for these services; returns (demo, local URL)."""
    settings = services.settings
    check_api_exposure(settings)
    demo = build_ui(services)
    demo.queue(default_concurrency_limit=1)
    # the API's routes go into the app's constructor, so they are matched before Gradio's own
    app_kwargs = ({"routes": build_routes(services), "docs_url": DOCS_URL, "openapi_url": OPENAPI_URL}
                  if settings.api else {})
    _app, url, _share = demo.launch(app_kwargs=app_kwargs,
        server_name=settings.bind_host, server_port=settings.port, inbrowser=open_browser, share=False,
        prevent_thread_lock=not block, allowed_paths=[str(settings.blobs_dir)], css=CSS, js=SHORTCUTS_JS,
        quiet=True, footer_links=["api", "settings"], max_file_size=MAX_UPLOAD,
    )
    return demo, url


def serve(settings: Settings, open_browser: bool = True) -> None:
    services = build(settings)
    where = services.placement
    print(f"studio: models run on {where.description} ({where.dtype_name}); history in {services.database.shown}")
    print(f"studio: open http://{settings.host if not settings.listen else '0.0.0.0'}:{settings.port}", flush=True)
    try:
        launch(services, open_browser=open_browser, block=True)
    finally:
        services.close()
