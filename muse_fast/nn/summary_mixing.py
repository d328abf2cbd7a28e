"""Modules for muse_fast.ops.summary_mixing — not written yet."""

__all__: list[str] = []
