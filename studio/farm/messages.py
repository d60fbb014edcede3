"""What travels over the broker as JSON, and back: a request in the history's own record format (to_record),
with the input images as PNG in base64 (lossless: a job runs on the same pixels on every worker), and a
live preview as JPEG in base64 (only looked at: small matters more than exact)."""

from __future__ import annotations

import base64
import io

from PIL import Image

from studio.requests import from_record, to_record

PREVIEW_QUALITY = 85  # a 512 px preview is some 30 KB in the result backend


def _image_text(image: Image.Image, **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, **save)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _text_image(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def encode_request(request) -> dict:
    params, images = to_record(request)
    return {"params": params, "images": {name: _image_text(image, format="PNG") for name, image in images.items()}}


def decode_request(message: dict):
    return from_record(message["params"], {name: _text_image(data) for name, data in message["images"].items()})


def encode_preview(image: Image.Image) -> str:
    return _image_text(image.convert("RGB"), format="JPEG", quality=PREVIEW_QUALITY)


def decode_preview(text: str | None) -> Image.Image | None:
    return _text_image(text) if text else None
