"""HTTP APIs on the studio's own port: the AUTOMATIC1111-compatible one (a1111.py)."""
