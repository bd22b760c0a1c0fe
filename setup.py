"""Declares the C extension; everything else is in pyproject.toml.

Two extensions: execnet._execnet (the core) and execnet._ssh (native ssh=
gateways, linked with libssh2, which is found with pkg-config).  Without
libssh2 the core is built all the same and _ssh is not: ssh= gateways then
run the ssh program; EXECNET_REQUIRE_LIBSSH2=1 makes its absence an error.

An extension that fails to compile or link does not fail the install: the
package then runs on its portable core, says so on stderr, and records why
in execnet/_build_info, which execnet.backend_info() reports.
EXECNET_REQUIRE_EXTENSION=1 makes such a failure an error instead.
"""

import glob
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.errors import CCompilerError, ExecError, PlatformError
except ImportError:  # setuptools older than 59
    from distutils.errors import CCompilerError
    from distutils.errors import DistutilsExecError as ExecError
    from distutils.errors import DistutilsPlatformError as PlatformError

BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, OSError)
BUILD_INFO = "_build_info"  # in the package: why an extension is missing


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


class optional_build_ext(build_ext):
    """build_ext that leaves out an extension it cannot build (unless
    EXECNET_REQUIRE_EXTENSION is set) and records why."""

    def run(self):
        self.failures = []
        try:
            super().run()
        except BUILD_ERRORS as exc:  # no compiler at all, for instance
            self.failed("the C extensions", exc)
        self.write_build_info()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            self.failed(ext.name, exc)

    def failed(self, what, exc):
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if os.environ.get("EXECNET_REQUIRE_EXTENSION"):
            sys.exit(f"execnet: building {what} failed ({reason}); EXECNET_REQUIRE_EXTENSION is set")
        self.failures.append(f"{what}: {reason}")
        print(
            f"execnet: WARNING: building {what} failed ({reason}); execnet is installed "
            "with its portable pure-Python core (slower); execnet.backend_info() says why",
            file=sys.stderr,
        )

    def write_build_info(self):
        package_dir = os.path.dirname(self.get_ext_fullpath("execnet._execnet"))
        path = os.path.join(package_dir, BUILD_INFO)
        if self.failures:
            os.makedirs(package_dir, exist_ok=True)
            with open(path, "w") as f:
                f.write("".join(line + "\n" for line in self.failures))
        elif os.path.exists(path):
            os.remove(path)


setup(ext_modules=extensions, cmdclass={"build_ext": optional_build_ext})
