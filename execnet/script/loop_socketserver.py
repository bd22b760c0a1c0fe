#! /usr/bin/env python
"""Run socketserver.py again and again, with this script's arguments."""

import os
import subprocess
import sys


def main(args):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "socketserver.py")
    command = [sys.executable, script, *args]
    while True:
        print("starting subcommand:", " ".join(command))
        sys.stdout.flush()
        subprocess.call(command)


if __name__ == "__main__":
    main(sys.argv[1:])
