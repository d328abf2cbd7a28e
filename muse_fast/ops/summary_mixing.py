"""muse_fast.ops.summary_mixing — not written yet (see the open issue)."""

__all__: list[str] = []
