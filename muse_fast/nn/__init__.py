"""``nn.Module`` wrappers of the ops, and the encoder blocks built on them."""

from .blocks import *  # noqa: F403
from .blocks import __all__ as _blocks_all
from .masking import *  # noqa: F403
from .masking import __all__ as _masking_all
from .mel import *  # noqa: F403
from .mel import __all__ as _mel_all
from .nt_xent import *  # noqa: F403
from .nt_xent import __all__ as _nt_xent_all
from .quantize import *  # noqa: F403
from .quantize import __all__ as _quantize_all
from .summary_mixing import *  # noqa: F403
from .summary_mixing import __all__ as _summary_mixing_all
from .vit import *  # noqa: F403
from .vit import __all__ as _vit_all

__all__ = [
    *_blocks_all,
    *_masking_all,
    *_mel_all,
    *_nt_xent_all,
    *_quantize_all,
    *_summary_mixing_all,
    *_vit_all,
]
