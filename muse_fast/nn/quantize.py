"""Modules for muse_fast.ops.quantize — not written yet."""

__all__: list[str] = []
