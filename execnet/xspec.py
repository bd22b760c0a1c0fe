"""Gateway specification strings.

A specification is a sequence of parts joined by ``//``.  Each part is
either ``key=value`` (split at the first ``=``) or a bare ``key``, which
stands for the value ``True``.  Parts named ``env:NAME`` collect into the
``env`` dictionary instead of becoming attributes.

    >>> spec = XSpec("popen//python=python3//env:LANG=C")
    >>> spec.popen, spec.python, spec.env
    (True, 'python3', {'LANG': 'C'})
"""

from __future__ import annotations

_SEPARATOR = "//"
_ENV_PREFIX = "env:"


class XSpec:
    """Parsed form of a gateway specification string.

    Every key of the string becomes an instance attribute.  Attributes
    that were never set read as ``None``, except names beginning with an
    underscore, which behave like ordinary missing attributes.  The
    original string is kept in ``_spec`` and determines ``str()``,
    equality and hashing, so later attribute assignments do not change
    the identity of a spec.
    """

    # Keys with a meaning for gateway creation; ``None`` means "not given".
    # A bare key reads True, ``key=value`` the value (a string).
    chdir: str | None = None
    dont_write_bytecode: bool | None = None
    execmodel: str | None = None
    fork: bool | str | None = None
    grace: str | None = None
    id: str | None = None
    installvia: str | None = None
    nice: str | None = None
    output: str | None = None
    popen: bool | None = None
    preload: str | None = None
    python: str | None = None
    secret_file: str | None = None
    socket: str | None = None
    ssh: str | None = None
    ssh_config: str | None = None
    vagrant_ssh: str | None = None
    via: str | None = None
    env: dict[str, str | bool]

    def __init__(self, string: str) -> None:
        self._spec = string
        self.env = {}
        for part in string.split(_SEPARATOR):
            key, sep, text = part.partition("=")
            value = text if sep else True
            if not key:
                raise IndexError(
                    "empty key in XSpec string %r" % (string,)
                )
            if key.startswith("_"):
                raise AttributeError("%r not a valid XSpec key" % (key,))
            if key in self.__dict__:
                raise ValueError(
                    "duplicate key: %r in %r" % (key, string)
                )
            if key.startswith(_ENV_PREFIX):
                self.env[key[len(_ENV_PREFIX):]] = value
            else:
                setattr(self, key, value)

    def __getattr__(self, name: str) -> str | bool | None:
        # Only reached when ordinary lookup failed.  Private and special
        # names stay missing so that protocols probing for dunders (copy,
        # pickle, len(), ...) see a plain object.
        if name.startswith("_"):
            raise AttributeError(name)
        return None

    def __repr__(self) -> str:
        return "<XSpec %r>" % (self._spec,)

    def __str__(self) -> str:
        return self._spec

    def __hash__(self) -> int:
        return hash(self._spec)

    def __eq__(self, other: object) -> bool:
        try:
            other_spec: object = getattr(other, "_spec")
        except AttributeError:
            return False
        return self._spec == other_spec

    def __ne__(self, other: object) -> bool:
        return not self == other

    def _samefilesystem(self) -> bool:
        """True if the gateway would share this process's filesystem view.

        That is the case for a local subprocess which does not change its
        working directory.
        """
        return self.popen is not None and self.chdir is None
