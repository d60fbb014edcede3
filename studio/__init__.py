"""studio: a local browser studio for diffusion image generation."""

__version__ = "0.1.0"
