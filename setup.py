"""Declares the C extension; everything else is in pyproject.toml.

Two extensions: execnet._execnet (the core) and execnet._ssh (native ssh=
gateways, linked with libssh2, which is found with pkg-config).  Without
libssh2 the core is built all the same and _ssh is not: ssh= gateways then
run the ssh program; EXECNET_REQUIRE_LIBSSH2=1 makes its absence an error.
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
core_sources = sorted(set(glob.glob("csrc/*.c")) - {"csrc/ssh.c"})
headers = sorted(glob.glob("csrc/*.h"))
extensions = [
    Extension(
        "execnet._execnet",
        sources=core_sources,
        depends=headers,
        extra_compile_args=compile_args,
    )
]
# the ssh transport is a module of its own, so that only processes opening
# ssh= gateways load libssh2 (and its libcrypto)
found = pkg_config("libssh2")
if found:
    extensions.append(
        Extension(
            "execnet._ssh",
            sources=["csrc/ssh.c", "csrc/clock.c"],
            depends=headers,
            extra_compile_args=compile_args + found[0],
            extra_link_args=found[1],
        )
    )
elif os.environ.get("EXECNET_REQUIRE_LIBSSH2"):
    sys.exit("execnet: libssh2 not found by pkg-config (EXECNET_REQUIRE_LIBSSH2 is set)")
else:
    print(
        "execnet: libssh2 not found by pkg-config: native ssh= gateways are off "
        "(the ssh program is used)",
        file=sys.stderr,
    )

setup(ext_modules=extensions)
