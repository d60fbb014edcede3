"""HTTP APIs on the studio's own port: the AUTOMATIC1111-compatible one and the studio's own named endpoints."""

from __future__ import annotations


def build_routes(services) -> list:
    """Every API route bound to one studio: /sdapi/v1 (A1111's) and /studio/v1 (queue and history)."""
    from studio.api import a1111, studio_routes

    return [*a1111.build_routes(services), *studio_routes.build_routes(services)]
