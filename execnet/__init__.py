"""execnet: distributed Python execution over pipes, ssh and sockets.

A drop-in for the pure-Python execnet with its hot paths in C.
"""

from .gateway_base import BACKEND
from .gateway_base import DataFormatError
from .gateway_base import DumpError
from .gateway_base import LoadError
from .gateway_base import dump
from .gateway_base import dumps
from .gateway_base import load
from .gateway_base import loads

__version__ = "2.2.0"

__all__ = [
    "DataFormatError",
    "DumpError",
    "LoadError",
    "__version__",
    "dump",
    "dumps",
    "load",
    "loads",
]
