"""Content-addressed blob store for input and output images, written atomically."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from studio.errors import HistoryError
from studio.fileio import atomic_write
from studio.infotext import PARAMETERS_KEY, STUDIO_KEY


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    pixels_sha256: str
    size_bytes: int
    width: int
    height: int
    path: Path


def pixels_hash(image: Image.Image) -> str:
    """Hash of mode, size and raw pixels: equal for equal pictures whatever the file around them."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def encode_png(image: Image.Image, parameters: str | None = None, request_json: dict | None = None) -> bytes:
    """Lossless PNG bytes, with the A1111 parameters text (and our request JSON) when given."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text(PARAMETERS_KEY, parameters)
    if request_json is not None:
        info.add_text(STUDIO_KEY, json.dumps(request_json, sort_keys=True))
    if image.mode not in ("RGB", "RGBA", "L", "LA", "I", "I;16", "1", "P"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


class BlobStore:
    """PNG files under root/ab/abcdef....png, named by the sha256 of their bytes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.png"

    def put_image(self, image: Image.Image, parameters: str | None = None,
                  request_json: dict | None = None) -> StoredBlob:
        """Store an image (once per distinct content); the file is complete before this returns."""
        data = encode_png(image, parameters, request_json)
        sha = hashlib.sha256(data).hexdigest()
        path = self.path(sha)
        if not path.exists() or path.stat().st_size != len(data):
            atomic_write(path, data)
        return StoredBlob(sha, pixels_hash(image), len(data), image.width, image.height, path)

    def open(self, sha256: str) -> Image.Image:
        path = self.path(sha256)
        try:
            with Image.open(path) as image:
                image.load()
                return image
        except FileNotFoundError as error:
            raise HistoryError(f"the image file {path} is missing from the history") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise HistoryError(f"the image file {path} is damaged (it cannot be decoded: truncated or "
                               "overwritten)") from error

    def problem(self, sha256: str, size_bytes: int | None = None, full: bool = True) -> str | None:
        """Why a stored file is not what was written (missing, another size, another hash), or None.

        full=False compares sizes only (a stat per file, cheap enough for every start-up);
        full=True also re-hashes the content, which catches a file changed in place.
        """
        path = self.path(sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "the file is missing"
        if size_bytes is not None and size != size_bytes:
            return f"the file has {size:,} bytes where {size_bytes:,} were written (truncated or changed)"
        if full and file_sha256(path) != sha256:
            return "its content no longer matches its hash (truncated or changed)"
        return None

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def all_hashes(self) -> set[str]:
        return {p.stem for p in self.root.glob("??/*.png") if not p.name.startswith(".")}

    def stray_temp_files(self) -> list[Path]:
        """Temp files a crash left half-written; never referenced by any row."""
        return sorted(self.root.glob("??/.tmp-*"))
