"""What every tab module gets: the services, the shared header widgets, and the restore registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from studio.app import Services

# Every run that touches the device shares one Gradio queue slot, so two tabs never race.
DEVICE_QUEUE = "device"


@dataclass
class TabRestore:
    """How a mode's run is put back into its tab: the tab id, its widgets, the update function."""

    tab_id: str
    outputs: list
    updates: Callable  # request -> {component: value}


@dataclass
class ImageReceiver:
    """A tab that can take an image from elsewhere ("Send to inpaint"): its widgets and how to fill them."""

    tab_id: str
    outputs: list
    receive: Callable  # PIL image -> {component: value}


@dataclass
class ImageSender:
    """A "Send to ..." button: which receiver, and how to pick the image from its inputs."""

    button: object
    target: str
    inputs: list
    pick: Callable  # input values -> PIL image or None


@dataclass
class UIContext:
    services: Services
    model: gr.Dropdown
    vae: gr.Dropdown
    tabs: gr.Tabs
    restorers: dict[str, TabRestore] = field(default_factory=dict)
    size_sliders: list = field(default_factory=list)  # (width, height) pairs that follow the model
    receivers: dict[str, ImageReceiver] = field(default_factory=dict)
    senders: list[ImageSender] = field(default_factory=list)
