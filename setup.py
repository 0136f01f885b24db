"""Declares the one C extension, ``media._resample``; all other metadata is in pyproject.toml.

A setup.py rather than pyproject's ``[tool.setuptools] ext-modules`` table because that table
needs setuptools >= 74 and this works with the setuptools a fresh Python 3.11 venv brings.
``-O3`` lets gcc vectorise the portable path; there is deliberately no ``-march=native``: the
AVX2 code is compiled per function (``target("avx2")``) and chosen at run time, so one build
runs on any x86-64 (and the portable path on anything else).

``optional=True``: on a machine without a C compiler (or Python headers) the build step warns
and skips the extension instead of failing ``pip install``; ``media._scale`` then shrinks with
the OpenCV chain in ``media._scale_cv`` and logs one warning saying so. The test suite still
notices a missing build (``test_the_resampler_is_built``), so CI cannot fall back silently.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "media._resample",
            sources=["media/_resample.c"],
            optional=True,
            extra_compile_args=[] if sys.platform == "win32" else ["-O3", "-Wall", "-Wextra"],
        )
    ]
)
