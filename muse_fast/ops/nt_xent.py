"""muse_fast.ops.nt_xent — not written yet (see the open issue)."""

__all__: list[str] = []
