"""muse_fast.ops.quantize — not written yet (see the open issue)."""

__all__: list[str] = []
