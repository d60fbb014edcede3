"""A plain HTTP client for the studio's Gradio endpoints, as a script or a hostile user would call them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

FILE_META = {"_type": "gradio.FileData"}


class GradioHTTP:
    def __init__(self, url: str, timeout: float = 120):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def upload(self, path: Path) -> str:
        """POST a file to /gradio_api/upload; returns the server-side path to put in a FileData."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{Path(path).name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + Path(path).read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.url}/gradio_api/upload", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.load(response)[0]

    def file(self, path: Path) -> dict:
        return {"path": self.upload(path), "meta": FILE_META}

    def call(self, api_name: str, data: list) -> tuple[str, object]:
        """("complete", outputs) or ("error", the error payload's message) or ("http", status and body)."""
        body = json.dumps({"data": data}, allow_nan=True).encode()
        request = urllib.request.Request(f"{self.url}/gradio_api/call/{api_name}", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                event = json.load(response)["event_id"]
        except urllib.error.HTTPError as error:
            return "http", f"{error.code} {error.read()[:300]!r}"
        with urllib.request.urlopen(f"{self.url}/gradio_api/call/{api_name}/{event}", timeout=self.timeout) as reply:
            text = reply.read().decode()
        kind, payload = "", None
        for block in text.strip().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            kind = lines.get("event", kind)
            payload = lines.get("data", payload)
        parsed = json.loads(payload) if payload not in (None, "null") else None
        if kind == "error":
            return "error", parsed.get("error") if isinstance(parsed, dict) else parsed
        return kind, parsed
