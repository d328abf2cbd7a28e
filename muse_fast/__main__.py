"""``python -m muse_fast`` (and ``torchrun -m muse_fast``) runs the ``muse-fast`` command."""

import sys

from muse_fast.cli import main

sys.exit(main())
