"""Process-level IO for gateways.

This module is also shipped as source text to remote workers (for "via"
gateways), so it may only import from the standard library.
"""

# ---------------------------------------------------------------------------
# Command lines for spawning a worker interpreter (popen, ssh, vagrant_ssh).
# Self-contained: uses nothing but the standard library and duck-typed spec
# objects (anything with the XSpec attributes).
# ---------------------------------------------------------------------------

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
    import shlex  # here, not at import: every worker imports this module

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


# ---------------------------------------------------------------------------
# Spawning and talking to worker processes, and the "via" proxy
# (doc/protocol.md).  When this module runs remotely as the proxy forwarder,
# the worker's core is either importable or is the __main__ module.
# ---------------------------------------------------------------------------

try:
    from execnet.gateway_base import Message
    from execnet.gateway_base import Popen2IO
except ImportError:
    from __main__ import Message  # type: ignore[no-redef]
    from __main__ import Popen2IO  # type: ignore[no-redef]

import struct

# requests on a proxy's control channel
RIO_KILL = 1
RIO_WAIT = 2
RIO_REMOTEADDRESS = 3
RIO_CLOSE_WRITE = 4


# seconds wait() gives the forwarded output of an ended child to arrive
OUTPUT_DRAIN_TIMEOUT = 2.0


class Popen2IOMaster(Popen2IO):
    """The pipes to a child process running the worker."""

    remoteaddress: str  # set for ssh= and vagrant_ssh= children

    # the child's descriptor for the forwarded fd 1 (init_popen_io's
    # output_fd), or None: its fd 1 goes to the null device
    output_fd = None
    _output_done = None  # set when the forwarded output has all been copied

    def __init__(self, args, execmodel, output=None, prefix=""):
        PIPE = execmodel.subprocess.PIPE
        if output is None:
            self.popen = execmodel.subprocess.Popen(args, stdout=PIPE, stdin=PIPE)
        else:
            self._start_forwarding(args, execmodel, prefix)
        super().__init__(self.popen.stdin, self.popen.stdout, execmodel=execmodel)

    def _start_forwarding(self, args, execmodel, prefix):
        # The child's fd 2 is one pipe, and another one is passed on for
        # its fd 1 (the worker moves it there once it has taken fd 1 for
        # the channel); one thread of the master copies both.
        import os

        from execnet import gateway_output

        PIPE = execmodel.subprocess.PIPE
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.popen = execmodel.subprocess.Popen(
                args, stdout=PIPE, stdin=PIPE, stderr=err_w, pass_fds=(out_w,)
            )
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        os.close(err_w)
        os.close(out_w)  # the child's copy has the same number
        self.output_fd = out_w
        self._output_done = gateway_output.forward(out_r, err_r, prefix)

    def wait_output(self, timeout):
        """Wait (at most timeout seconds) until the child's forwarded output
        has been copied, i.e. every process holding its pipes ended."""
        if self._output_done is not None:
            self._output_done.wait(timeout)

    def wait(self):
        """Wait for the child process to end; its exit status, or None."""
        try:
            status = self.popen.wait()
        except OSError:
            return None
        # a grandchild may hold the output pipes: it is not waited for
        self.wait_output(OUTPUT_DRAIN_TIMEOUT)
        return status

    def kill(self):
        """Kill the child process (an error is only reported on stderr)."""
        try:
            self.popen.kill()
        except OSError as e:
            sys.stderr.write("ERROR killing: %s\n" % e)
            sys.stderr.flush()


def _native_ssh():
    """execnet.gateway_ssh, or None where it is not importable (this module
    runs as a via proxy in an interpreter without our package)."""
    try:
        from execnet import gateway_ssh
    except ImportError:
        return None
    return gateway_ssh


def output_prefix(spec, output):
    """What each forwarded line of spec's worker begins with."""
    return "[%s] " % (spec.id,) if output == "prefix" else ""


def create_io(spec, execmodel, output=None):
    """Start the process for a popen, ssh or vagrant_ssh spec; output:
    None, or for popen how its output is forwarded ("forward", "prefix")."""
    if spec.popen:
        prefix = output_prefix(spec, output)
        return Popen2IOMaster(popen_args(spec), execmodel, output=output, prefix=prefix)
    if spec.ssh:
        native = _native_ssh()
        if native is not None:
            # it picks the transport: libssh2 or the ssh program
            return native.create_io(spec, execmodel)
        if spec.ssh_transport == "native":
            raise ValueError("ssh_transport=native needs execnet's C extension")
        io = Popen2IOMaster(ssh_args(spec), execmodel)
        io.remoteaddress = spec.ssh
        return io
    if spec.vagrant_ssh:
        io = Popen2IOMaster(vagrant_ssh_args(spec), execmodel)
        io.remoteaddress = spec.vagrant_ssh
        return io
    raise ValueError("no process type in %r" % (spec,))


class ProxyIO:
    """The master's IO of a gateway whose bytes travel through another one."""

    def __init__(self, proxy_channel, execmodel):
        self._proxy_channel = proxy_channel
        self._buffer = bytearray()
        self.execmodel = execmodel
        self._controlchan = proxy_channel.gateway.newchannel()
        proxy_channel.send(self._controlchan)

    def read(self, numbytes):
        """Exactly numbytes bytes from the proxied connection; ``EOFError`` if
        it ends first."""
        while len(self._buffer) < numbytes:
            try:
                self._buffer += self._proxy_channel.receive()
            except EOFError:
                raise EOFError(
                    "expected %d bytes, got %d" % (numbytes, len(self._buffer))
                ) from None
        data = bytes(self._buffer[:numbytes])
        del self._buffer[:numbytes]
        return data

    def write(self, data):
        """Send data to the proxied connection."""
        self._proxy_channel.send(data)

    def _controlcall(self, request):
        self._controlchan.send(request)
        return self._controlchan.receive()

    def close_write(self):
        """Ask the gateway in the middle to close its write side to the target."""
        self._controlcall(RIO_CLOSE_WRITE)

    def close_read(self):
        """Not possible for a proxied connection (``NotImplementedError``)."""
        raise NotImplementedError("a proxied connection can't close its read side")

    def kill(self):
        """Ask the gateway in the middle to kill the target's process."""
        self._controlcall(RIO_KILL)

    def wait(self):
        """Ask the gateway in the middle to wait for the target's process."""
        return self._controlcall(RIO_WAIT)

    @property
    def remoteaddress(self):
        """The target's address, as the gateway in the middle sees it."""
        return self._controlcall(RIO_REMOTEADDRESS)

    def __repr__(self):
        return "<RemoteIO via %s>" % (self._proxy_channel.gateway.id,)


class _ReceivedSpec(dict):  # type: ignore[type-arg]  # (dict[...] fails at run time on 3.8)
    """A spec received as a dict: missing keys read as None."""

    def __getattr__(self, name):
        return self.get(name)


def serve_proxy_io(proxy_channel):
    """Forward a subprocess's bytes over proxy_channel (runs remotely)."""
    gateway = proxy_channel.gateway

    def log(text, *more):
        gateway._trace("serve_proxy_io:%s %s" % (proxy_channel.id, text), *more)

    spec = _ReceivedSpec(proxy_channel.receive())
    sub = create_io(spec, gateway.execmodel)
    control = proxy_channel.receive()
    log("got control chan", control)

    def forward_to_sub(data):
        log("forward data to sub, size %s" % len(data))
        sub.write(data)

    def answer_control(request):
        if request == RIO_KILL:
            control.send(sub.kill())
        elif request == RIO_WAIT:
            control.send(sub.wait())
        elif request == RIO_REMOTEADDRESS:
            control.send(sub.remoteaddress)
        elif request == RIO_CLOSE_WRITE:
            control.send(sub.close_write())

    proxy_channel.setcallback(forward_to_sub)
    control.setcallback(answer_control)

    log("reading bootstrap byte from sub", spec.id)
    ack = sub.read(1)
    if ack != b"1":
        raise EOFError("bad bootstrap acknowledgement %r" % (ack,))
    log("forwarding bootstrap byte from sub", spec.id)
    proxy_channel.send(ack)

    def forward_from_sub():
        header = struct.Struct("!bii")
        while True:
            try:
                message = Message.from_io(sub)
            except EOFError:
                log("EOF from sub, terminating proxying loop", spec.id)
                break
            frame = header.pack(message.msgcode, message.channelid, len(message.data))
            proxy_channel.send(frame + message.data)

    if not getattr(type(proxy_channel), "_detachable", False):
        forward_from_sub()  # an execnet worker: this task forwards till the end
        return

    # Our worker lets the channel outlive this task: forward from a thread
    # of our own, so that the proxy's task thread (a main_thread_only
    # proxy has one) is free for the next gateway through it.
    def forward_then_close():
        try:
            forward_from_sub()
        except Exception as exc:
            proxy_channel.close(f"forwarding from {spec.id} failed: {exc!r}")
        else:
            proxy_channel.close()

    proxy_channel._detached = True
    proxy_channel._executing = False  # the forwarder closes it, not the task
    gateway.execmodel.start(forward_then_close)


if __name__ == "__channelexec__":
    serve_proxy_io(channel)  # type: ignore[name-defined]  # noqa: F821
