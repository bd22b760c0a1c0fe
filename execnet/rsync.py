"""Directory synchronisation to gateways (RSYNC.md): not implemented yet."""

from __future__ import annotations


class RSync:
    """Send a directory tree to one or more gateways (not implemented yet)."""

    def __init__(self, sourcedir, callback=None, verbose=True) -> None:
        raise NotImplementedError("execnet.RSync is not implemented yet")
