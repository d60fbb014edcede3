"""A request as a JSON message for the broker, and back: the history's own record format (to_record),
with the input images as PNG in base64 (lossless: a job runs on the same pixels on every worker)."""

from __future__ import annotations

import base64
import io

from PIL import Image

from studio.requests import from_record, to_record


def encode_request(request) -> dict:
    params, images = to_record(request)
    encoded = {}
    for name, image in images.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"params": params, "images": encoded}


def decode_request(message: dict):
    images = {name: Image.open(io.BytesIO(base64.b64decode(data))) for name, data in message["images"].items()}
    for image in images.values():
        image.load()
    return from_record(message["params"], images)
