"""What the harnesses share: the two decoders, findings, value comparison."""

import math
import re

from execnet import _execnet, gateway_base

_execnet._install(gateway_base.__dict__)

C = {
    "loads": _execnet.loads,
    "loads_internal": _execnet.loads_internal,
    "dumps_internal": _execnet.dumps_internal,
}
PURE = gateway_base.PURE_PYTHON_SERIALIZER

# exceptions that mean a bug whatever the input: the C code broke an
# invariant (SystemError), or a length field was believed (MemoryError)
NEVER = (SystemError, MemoryError)


class Finding(Exception):
    """The input showed a bug (the message says which)."""


def canonical(value):
    """A form of value in which equal means the same types and values all
    the way down: floats by their hex form (so -0.0 differs from 0.0 and a
    NaN equals a NaN), dicts and sequences in their order, sets sorted."""
    kind = type(value)
    if kind is float:
        return ("float", "nan" if math.isnan(value) else value.hex())
    if kind is complex:
        return ("complex", canonical(value.real), canonical(value.imag))
    if kind in (list, tuple):
        return (kind.__name__, [canonical(item) for item in value])
    if kind is dict:
        return ("dict", [(canonical(k), canonical(v)) for k, v in value.items()])
    if kind in (set, frozenset):
        return (kind.__name__, sorted(repr(canonical(item)) for item in value))
    return (kind.__name__, value)


def outcome(function, *args):
    """("ok", canonical value) or ("raise", exception class) of a call;
    an exception in NEVER is a finding."""
    try:
        value = function(*args)
    except NEVER as exc:
        raise Finding(f"{function.__module__}.{function.__name__}: {exc!r}") from exc
    except Exception as exc:
        return ("raise", type(exc), exc)
    return ("ok", canonical(value), value)


def shape(exc) -> str:
    """An exception's message with its numbers and quoted parts blanked:
    the kind of error, not the particular input."""
    text = re.sub(r"\d+", "N", str(exc))
    return re.sub(r"'[^']*'|b'[^']*'", "'.'", text)[:60]
