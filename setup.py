"""Build muse_fast._C (C++17 + OpenMP, pybind11 only: no libtorch linkage).

Every ``csrc/*.cpp`` is one op's CPU kernels plus its ``init_<op>(module)`` binding;
``csrc/module.cpp`` calls them. Files compile in parallel (pybind11's ParallelCompile).

Environment switches:
  MUSE_FAST_NO_EXT=1     skip the extension (pure Python install; ops fall back to the reference)
  MUSE_FAST_PORTABLE=1   no -march=native (for wheels that move between machines)
  MUSE_FAST_DEBUG=1      -O0 -g
"""

import glob
import os
import sys

from setuptools import setup

ext_modules = []
cmdclass = {}
if os.environ.get("MUSE_FAST_NO_EXT", "0") != "1":
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext

    ParallelCompile("MUSE_FAST_MAX_JOBS", default=0).install()
    debug = os.environ.get("MUSE_FAST_DEBUG", "0") == "1"
    cflags = ["-O0", "-g"] if debug else ["-O3", "-ffp-contract=fast"]
    if sys.platform.startswith("linux"):
        cflags += ["-fopenmp"]
        if os.environ.get("MUSE_FAST_PORTABLE", "0") != "1":
            cflags += ["-march=native"]
    ext_modules.append(
        Pybind11Extension(
            "muse_fast._C",
            sorted(glob.glob("csrc/*.cpp")),
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=cflags,
            extra_link_args=["-fopenmp"] if sys.platform.startswith("linux") else [],
            depends=sorted(glob.glob("csrc/*.h")),
        )
    )
    cmdclass["build_ext"] = build_ext

setup(
    packages=[
        "muse_fast",
        "muse_fast.ops",
        "muse_fast.nn",
        "muse_fast.models",
        "muse_fast.train",
        "muse_fast.data",
        "muse_fast.eval",
        "muse_fast.integrations",
        "muse_fast.kernels",
    ],
    package_dir={"muse_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
