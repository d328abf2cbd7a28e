"""Drop-in functional ops. Each has an eager ``*_reference`` (the ground truth) and dispatches
to Triton (CUDA), C++ (CPU) or the reference; see :mod:`muse_fast._backend`."""

from .._backend import available_backends, registered_ops
from .mel import *  # noqa: F403
from .mel import __all__ as _mel_all
from .nt_xent import *  # noqa: F403
from .nt_xent import __all__ as _nt_xent_all
from .patch_embed import *  # noqa: F403
from .patch_embed import __all__ as _patch_embed_all
from .quantize import *  # noqa: F403
from .quantize import __all__ as _quantize_all
from .span_mask import *  # noqa: F403
from .span_mask import __all__ as _span_mask_all
from .summary_mixing import *  # noqa: F403
from .summary_mixing import __all__ as _summary_mixing_all
from .token_mask import *  # noqa: F403
from .token_mask import __all__ as _token_mask_all

__all__ = [
    "available_backends",
    "registered_ops",
    *_mel_all,
    *_nt_xent_all,
    *_patch_embed_all,
    *_quantize_all,
    *_span_mask_all,
    *_summary_mixing_all,
    *_token_mask_all,
]
