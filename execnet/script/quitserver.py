#! /usr/bin/env python
"""Ask a running socket server to stop: ``python quitserver.py HOST:PORT``.

The server executes the line it receives; the one sent here raises
KeyboardInterrupt, which ends the server's accept loop.
"""

import socket
import sys


def quit_server(hostport):
    host, _, port = hostport.rpartition(":")
    with socket.create_connection((host or "localhost", int(port)), timeout=10) as sock:
        sock.sendall(b'"raise KeyboardInterrupt"\n')


if __name__ == "__main__":
    quit_server(sys.argv[1])
