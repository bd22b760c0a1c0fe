"""Declares the C extension; everything else is in pyproject.toml.

libssh2 (for native ssh= gateways) is found with pkg-config.  Without it
the extension is built all the same, with the native SSH transport off;
EXECNET_REQUIRE_LIBSSH2=1 makes its absence an error instead.
"""

import glob
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup


def pkg_config(package):
    """(cflags, libs) for package, or None if pkg-config does not know it."""
    try:
        cflags = subprocess.run(
            ["pkg-config", "--cflags", package], capture_output=True, text=True, check=True
        ).stdout
        libs = subprocess.run(
            ["pkg-config", "--libs", package], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(cflags), shlex.split(libs)


compile_args = ["-std=c11", "-Wall", "-Wextra"]
link_args = []
found = pkg_config("libssh2")
if found:
    compile_args += ["-DXN_HAVE_LIBSSH2", *found[0]]
    link_args += found[1]
elif os.environ.get("EXECNET_REQUIRE_LIBSSH2"):
    sys.exit("execnet: libssh2 not found by pkg-config (EXECNET_REQUIRE_LIBSSH2 is set)")
else:
    print(
        "execnet: libssh2 not found by pkg-config: native ssh= gateways are off "
        "(the ssh program is used)",
        file=sys.stderr,
    )

setup(
    ext_modules=[
        Extension(
            "execnet._execnet",
            sources=sorted(glob.glob("csrc/*.c")),
            depends=sorted(glob.glob("csrc/*.h")),
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]
)
