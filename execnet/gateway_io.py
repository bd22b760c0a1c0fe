"""Process-level IO for gateways.

This module is also shipped as source text to remote workers (for "via"
gateways), so it may only import from the standard library.
"""

# ---------------------------------------------------------------------------
# Command lines for spawning a worker interpreter (popen, ssh, vagrant_ssh).
# Self-contained: uses nothing but the standard library and duck-typed spec
# objects (anything with the XSpec attributes).
# ---------------------------------------------------------------------------

import shlex
import sys

# Run by the fresh interpreter: read one line from stdin, evaluate it to a
# source string and execute that as the main program.
popen_bootstrapline = "import sys;exec(eval(sys.stdin.readline()))"


def shell_split_path(path):
    """Split a command line into argv words with POSIX shell rules.

    Quoting and backslash escapes are honoured.  On Windows backslashes
    are path separators, so they are turned into forward slashes before
    splitting instead of being consumed as escapes.
    """
    if sys.platform.startswith("win"):
        path = path.replace("\\", "/")
    return shlex.split(path)


def _text_value(spec, key):
    # Keys such as python= and ssh= need text; a bare key parses as True.
    value = getattr(spec, key)
    if not isinstance(value, str):
        raise ValueError(
            "XSpec key %r needs a value (%s=...), got %r" % (key, key, value)
        )
    return value


def _remote_command(spec):
    # One string, interpreted by the remote login shell.
    python = _text_value(spec, "python") if spec.python else "python"
    return '%s -c "%s"' % (python, popen_bootstrapline)


def _ssh_config_args(spec):
    if spec.ssh_config is None:
        return []
    return ["-F", str(spec.ssh_config)]


def popen_args(spec):
    """argv for a local worker subprocess described by ``spec``."""
    if spec.python:
        argv = shell_split_path(_text_value(spec, "python"))
    else:
        argv = [sys.executable]
    argv.append("-u")
    if spec.dont_write_bytecode:
        argv.append("-B")
    argv += ["-c", popen_bootstrapline]
    return argv


def ssh_args(spec):
    """argv for reaching a worker through the ``ssh`` client."""
    argv = ["ssh", "-C"]
    argv += _ssh_config_args(spec)
    argv += _text_value(spec, "ssh").split()
    argv.append(_remote_command(spec))
    return argv


def vagrant_ssh_args(spec):
    """argv for reaching a worker inside a Vagrant machine."""
    argv = ["vagrant", "ssh", _text_value(spec, "vagrant_ssh"), "--", "-C"]
    argv += _ssh_config_args(spec)
    argv.append(_remote_command(spec))
    return argv


# ---------------------------------------------------------------------------
# End of the command-line part.
# ---------------------------------------------------------------------------
