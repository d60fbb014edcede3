"""One Settings object: every field has a default and a description (env prefix STUDIO_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"


class Settings(BaseSettings):
    """Studio configuration; read from STUDIO_* environment variables or passed in code."""

    model_config = SettingsConfigDict(env_prefix="STUDIO_", extra="ignore")

    data_dir: Path = Field(
        REPO_ROOT / "data",
        description="Holds the history database, the blob store (inputs and outputs) and generated placeholder models.",
    )
    database_url: str | None = Field(
        None,
        description="History in PostgreSQL instead of data_dir/history.sqlite: postgresql+psycopg://user:password@"
        "host:5432/database (files stay in data_dir/blobs, which every machine must share).",
    )
    models_dir: Path = Field(
        REPO_ROOT / "models",
        description="A1111-style models folder: checkpoints in Stable-diffusion/, ControlNets in ControlNet/, VAEs in VAE/.",
    )
    host: str = Field("127.0.0.1", description="Address the web UI binds to; localhost unless --listen is given.")
    port: int = Field(7860, description="Port of the web UI.")
    listen: bool = Field(False, description="Bind to 0.0.0.0 so other machines on the network can reach the UI.")
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="Where models run; auto picks CUDA, then Apple MPS, then the CPU."
    )
    precision: Literal["auto", "fp16", "bf16", "fp32"] = Field(
        "auto", description="Weight dtype; auto means fp16 on CUDA and MPS, fp32 on the CPU."
    )
    model_cache_size: int = Field(
        2, ge=1, le=16, description="How many models stay loaded at once (least recently used is unloaded first)."
    )
    model_cache_memory_fraction: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Share of free device memory (RAM on the CPU) the model cache may fill before evicting.",
    )
    default_model: str | None = Field(
        None, description="Name of the model selected at start-up; empty means the embedded model."
    )
    max_pixels: int = Field(
        2048 * 2048,
        ge=64 * 64,
        description="Largest canvas (width x height) a run may ask for; larger requests are refused, not crashed.",
    )
    vae_tiling_pixels: int = Field(
        1536 * 1536, description="Canvases larger than this decode with VAE tiling to bound memory."
    )
    offline: bool = Field(
        True, description="Never contact a model hub; hub ids are refused with a message instead of downloaded."
    )
    annotators_dir: Path = Field(
        REPO_ROOT / "models" / "annotators",
        description="Local folder with preprocessor weights (OpenPose, depth) for the ControlNet tab.",
    )
    pose_detector: Literal["auto", "openpose", "mediapipe"] = Field(
        "auto",
        description="Pose preprocessor: auto uses OpenPose when its weights are in the annotators folder, "
        "else the offline MediaPipe detector (one person per photo).",
    )
    api: bool = Field(
        True, description="Serve the AUTOMATIC1111-compatible HTTP API under /sdapi/v1 on the studio's port."
    )
    api_auth: str | None = Field(
        None, description="user:password for HTTP Basic auth of the API; required when --listen serves the API."
    )
    api_max_body_mb: int = Field(64, ge=1, description="Largest API request body, in MB (images come base64).")
    plot_max_cells: int = Field(
        100, ge=1, le=10_000, description="Most cells an X/Y/Z plot may have; a larger plot is refused naming its axes."
    )
    farm: bool = Field(
        False, description="Farm mode: Generate sends jobs to Celery workers over broker_url instead of running them in "
        "this process (needs broker_url and database_url; see `studio worker`)."
    )
    broker_url: str | None = Field(
        None, description="Farm mode's Redis broker (and result backend), redis://host:6379/0, shared by the UI and "
        "every worker."
    )
    farm_visibility_timeout_s: int = Field(
        3600, ge=5, description="Seconds a job taken by a worker that died (killed, lost) waits before the broker "
        "hands it to another worker; keep it above the longest job."
    )
    farm_routing: bool = Field(
        True, description="Farm mode: send a job to a worker that has its model loaded (its own queue) rather than "
        "to whichever worker is free first; an idle worker still takes waiting jobs from busy ones."
    )
    preview_every: int = Field(
        2, ge=0, description="Show a live preview every N sampling steps (0 turns previews off)."
    )

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value):
        return normalize_database_url(value)

    @property
    def database_path(self) -> Path:
        """The SQLite history file (the history unless database_url names a server; `history migrate` reads it)."""
        return self.data_dir / "history.sqlite"

    @property
    def database(self) -> Path | str:
        """Where the history lives: the PostgreSQL URL if one is set, else the SQLite file."""
        return self.database_url or self.database_path

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def bind_host(self) -> str:
        return "0.0.0.0" if self.listen else self.host


POSTGRES_SCHEMES = ("postgresql+psycopg", "postgresql", "postgres")


def normalize_database_url(value):
    """None for empty; a PostgreSQL URL with the psycopg 3 driver named; anything else is refused."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    value = str(value).strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in POSTGRES_SCHEMES or not rest:
        # the value itself is never repeated: it may hold a password
        got = f"a {scheme!r} URL" if sep and len(scheme) < 30 else "no scheme://"
        raise ValueError(f"a database URL must look like postgresql+psycopg://user:password@host:5432/database "
                         f"({got}); leave it empty for the SQLite file in data_dir")
    # SQLAlchemy's default driver for postgresql:// is psycopg2, which is not installed: name psycopg 3
    return f"postgresql+psycopg://{rest}"


def describe_settings() -> list[tuple[str, object, str]]:
    """(name, default, help) of every setting: drives --help text and the README table."""
    return [
        (name, field.default, field.description or "")
        for name, field in Settings.model_fields.items()
    ]
