"""Declares the C extension; everything else is in pyproject.toml."""

import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "execnet._execnet",
            sources=sorted(glob.glob("csrc/*.c")),
            depends=sorted(glob.glob("csrc/*.h")),
            extra_compile_args=["-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
