"""execnet: distributed Python execution over pipes, ssh and sockets.

A drop-in for the pure-Python execnet with its hot paths in C.
"""

from .backend import BACKEND
from .backend import dump
from .backend import dumps
from .backend import load
from .backend import loads
from .gateway import Gateway
from .gateway_base import Channel
from .gateway_base import DataFormatError
from .gateway_base import DumpError
from .gateway_base import LoadError
from .gateway_base import RemoteError
from .gateway_base import TimeoutError
from .gateway_bootstrap import HostNotFound
from .multi import Group
from .multi import MultiChannel
from .multi import backend_info
from .multi import default_group
from .multi import makegateway
from .multi import set_execmodel
from .rsync import RSync
from .xspec import XSpec

__version__ = "2.2.0"

__all__ = [
    "Channel",
    "DataFormatError",
    "DumpError",
    "Gateway",
    "Group",
    "HostNotFound",
    "LoadError",
    "MultiChannel",
    "RSync",
    "RemoteError",
    "TimeoutError",
    "XSpec",
    "__version__",
    "backend_info",
    "default_group",
    "dump",
    "dumps",
    "load",
    "loads",
    "makegateway",
    "set_execmodel",
]
