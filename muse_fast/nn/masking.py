"""Modules for muse_fast.ops.masking — not written yet."""

__all__: list[str] = []
