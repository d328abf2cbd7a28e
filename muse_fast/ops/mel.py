"""muse_fast.ops.mel — not written yet (see the open issue)."""

__all__: list[str] = []
