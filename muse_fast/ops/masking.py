"""muse_fast.ops.masking — not written yet (see the open issue)."""

__all__: list[str] = []
