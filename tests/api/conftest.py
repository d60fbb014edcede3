"""A live studio server (UI and APIs on one port) per test, on the tiny model."""

import pytest
from tests_support import free_port


@pytest.fixture
def server(services):
    """The server's base URL, without a trailing slash."""
    from studio.ui.server import launch

    services.settings.port = free_port()
    demo, url = launch(services, block=False)
    yield url.rstrip("/")
    demo.close()
