"""A module the documentation's examples run with remote_exec(module).

The worker executes this whole file with ``__name__`` set to
``"__channelexec__"`` and ``channel`` among its globals.
"""

if __name__ == "__channelexec__":
    # adds up the numbers it receives until a None, and sends the sum
    total = 0
    for number in iter(channel.receive, None):  # noqa: F821 (given by the worker)
        total += number
    channel.send(total)  # noqa: F821
