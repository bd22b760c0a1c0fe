"""Functions the documentation's examples send with remote_exec().

remote_exec(function) sends the function's source, so a function must
be self-contained: its imports inside it, no globals of this module.
"""


def multiply(channel, factor):
    """Sends back each number received, times factor, until the channel ends."""
    for number in channel:
        channel.send(number * factor)


def interpreter_info(channel):
    """Sends the worker's Python version and process id."""
    import os
    import sys

    channel.send((sys.version_info[:2], os.getpid()))
