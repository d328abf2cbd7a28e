"""Modules for muse_fast.ops.nt_xent — not written yet."""

__all__: list[str] = []
