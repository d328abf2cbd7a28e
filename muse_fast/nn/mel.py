"""Modules for muse_fast.ops.mel — not written yet."""

__all__: list[str] = []
