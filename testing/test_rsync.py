"""RSync (doc/rsync.md): the master, the receiver shipped as
source, their extensions, the C file helpers and interoperation with
reference execnet 2.1.2 in both directions."""

from __future__ import annotations

import faulthandler
import hashlib
import importlib.util
import json
import os
import resource
import shlex
import signal
import stat
import sys
import textwrap

import pytest
import reference
from runtime_util import TIMEOUT
from runtime_util import wait_for

import execnet
from execnet import rsync
from execnet import rsync_remote
from execnet.gateway_base import RemoteError

pytest_plugins = ["conftest_runtime"]

SYSTEM_PYTHON = "/usr/bin/python3"

# how the targets are reached:
#   local    popen worker on this machine: copies files from our source itself
#   pipe     popen worker, content through the channel (large files in pieces)
#   python3  a popen worker of the system's python, which lacks our package
#            (zero-install: it gets the portable core and the receiver source,
#            and copies with the receiver's pure-Python helpers)
TARGETS = ["local", "pipe", "python3"]


@pytest.fixture(autouse=True)
def hang_guard():
    """send() waits for its receivers without a timeout (as execnet's does):
    should one hang, the test process dumps every thread's stack and exits
    after 3 x TIMEOUT instead of hanging."""
    faulthandler.dump_traceback_later(3 * TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(params=TARGETS)
def target_kind(request, monkeypatch):
    if request.param == "python3" and not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"no {SYSTEM_PYTHON}")
    if request.param == "pipe":
        monkeypatch.setenv(rsync.LOCAL_ENV, "0")
        monkeypatch.setattr(rsync, "PIECE_SIZE", 4096)
    return request.param


@pytest.fixture
def makegw(group, target_kind):
    """Makes a gateway of the kind under test."""

    def makegw():
        if target_kind == "python3":
            return group.makegateway("popen//python=" + shlex.quote(SYSTEM_PYTHON))
        return group.makegateway("popen")

    return makegw


@pytest.fixture
def gw1(makegw):
    return makegw()


@pytest.fixture
def gw2(makegw):
    return makegw()


@pytest.fixture
def dirs(tmp_path):
    """source, dest1 and dest2 directories (only source exists)."""
    source = tmp_path / "source"
    source.mkdir()
    return source, tmp_path / "dest1", tmp_path / "dest2"


def write(path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def tree(root) -> dict:
    """relative path -> content (files), "-> target" (links), None (dirs)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = None
            else:
                with open(path, "rb") as f:
                    found[rel] = f.read()
    return found


def sync(source, *targets, raises=True, **kwargs):
    """Sync source to (gateway, destdir[, options]) targets; send()'s result."""
    rs = execnet.RSync(source, verbose=False, **kwargs)
    for gateway, dest, *options in targets:
        rs.add_target(gateway, dest, **(options[0] if options else {}))
    return rs.send(raises=raises)


def send_fails_closing_the_target(rs, gateway, dest, exc, match: str) -> None:
    """Add the target (gateway, dest) to rs: send() must raise exc (its text
    matching match) and close the target's channel."""
    rs.add_target(gateway, dest)
    channel = next(iter(rs._targets))
    with pytest.raises(exc, match=match):
        rs.send()
    assert channel.isclosed()


def use_receiver(monkeypatch, directory, name: str, source: str) -> None:
    """Make RSync ship source (a module's text, saved as name.py in
    directory) as its receiver from now on."""
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    monkeypatch.setattr(rsync, "rsync_remote", importlib.util.module_from_spec(spec))


# -- the sender's API and the behaviours of execnet 2.1.2's RSync ------------------


def test_send_without_targets_raises_or_returns_none(dirs):
    rs = execnet.RSync(dirs[0])
    with pytest.raises(IOError, match="no targets available"):
        rs.send()
    assert rs.send(raises=False) is None


def test_two_targets_get_files_and_updates(gw1, gw2, dirs):
    source, dest1, dest2 = dirs
    write(source / "subdir" / "file1", "hello")
    sync(source, (gw1, dest1), (gw2, dest2))
    assert (dest1 / "subdir" / "file1").read_text() == "hello"
    assert (dest2 / "subdir" / "file1").read_text() == "hello"
    for content in ("world", "a different size"):  # same size, then another
        write(source / "subdir" / "file1", content)
        os.utime(source / "subdir" / "file1", (1000, 1000 + len(content)))
        sync(source, (gw1, dest1), (gw2, dest2))
        assert (dest1 / "subdir" / "file1").read_text() == content
        assert (dest2 / "subdir" / "file1").read_text() == content


def test_resync_after_dest_mtimes_zeroed_keeps_content(gw1, dirs):
    source, dest, _ = dirs
    write(source / "a", "alpha")
    write(source / "d" / "b", "beta")
    sync(source, (gw1, dest))
    for rel in ("a", "d/b"):
        os.utime(dest / rel, (0, 0))
    sync(source, (gw1, dest))
    assert tree(dest) == tree(source)


def test_mtimes_are_reproduced_exactly_and_resync_requests_nothing(gw1, dirs):
    source, dest, _ = dirs
    for i in range(5):
        write(source / f"f{i}", os.urandom(100))
        os.utime(source / f"f{i}", ns=(0, 1_700_000_000_123_456_789 + i * 333_333_333))
    sync(source, (gw1, dest))
    for i in range(5):
        assert os.stat(dest / f"f{i}").st_mtime == os.stat(source / f"f{i}").st_mtime
    seen = []
    sync(source, (gw1, dest), callback=lambda kind, size, channel: seen.append((kind, size)))
    assert seen == [("list", 0)]


def test_touched_file_is_not_sent_again(gw1, dirs, capfd):
    source, dest, _ = dirs
    write(source / "same", "unchanged content")
    sync(source, (gw1, dest))
    os.utime(source / "same", (12345, 12345))
    rs = execnet.RSync(source)
    rs.add_target(gw1, dest)
    rs.send()
    assert "same" not in capfd.readouterr().out  # only its mtime was fixed
    assert os.stat(dest / "same").st_mtime == 12345
    assert (dest / "same").read_text() == "unchanged content"


def test_receiver_announces_its_mode(gw1, dirs, target_kind):
    source, dest, _ = dirs
    hellos = []

    class Spy(execnet.RSync):
        def _handle(self, channel, item):
            if isinstance(item, tuple) and item[0] == rsync.STREAM_OPTION:
                hellos.append(item[1])
            super()._handle(channel, item)

    rs = Spy(source, verbose=False)
    rs.add_target(gw1, dest)
    rs.send()
    pure = target_kind == "python3" or os.environ.get("EXECNET_PUREPYTHON")
    assert hellos == [
        {"version": 1, "local": target_kind != "pipe", "helpers": "python" if pure else "c"}
    ]


def test_delete_option_is_per_target(gw1, gw2, dirs):
    source, dest1, dest2 = dirs
    write(source / "keep", "k")
    write(source / "gone", "g")
    sync(source, (gw1, dest1), (gw2, dest2))
    (source / "gone").unlink()
    sync(source, (gw1, dest1), (gw2, dest2, {"delete": True}))
    assert (dest1 / "gone").exists()
    assert not (dest2 / "gone").exists()
    assert (dest2 / "keep").exists()


def test_second_send_needs_new_targets(gw1, dirs):
    source, dest, _ = dirs
    write(source / "f", "x")
    rs = execnet.RSync(source, verbose=False)
    rs.add_target(gw1, dest)
    rs.send()
    with pytest.raises(IOError):
        rs.send()
    assert rs.send(raises=False) is None
    rs.add_target(gw1, dest)
    rs.send()


def test_verbose_announces_files_on_stdout(gw1, dirs, capfd):
    source, dest, _ = dirs
    write(source / "subdir" / "file1", "x")
    rs = execnet.RSync(source)
    rs.add_target(gw1, dest)
    rs.send()
    out, err = capfd.readouterr()
    [line] = out.splitlines()
    assert line.startswith(f"<Gateway id={gw1.id!r} ") and line.endswith("> <= subdir/file1")
    write(source / "subdir" / "file1", "changed")
    rs = execnet.RSync(source, verbose=False)
    rs.add_target(gw1, dest)
    rs.send()
    assert capfd.readouterr() == ("", "")


def test_report_send_file_hook_is_called_per_file_sent(gw1, dirs):
    source, dest, _ = dirs
    write(source / "a", "1")
    write(source / "d" / "b", "2")
    reported = []

    class HostRSync(execnet.RSync):
        def _report_send_file(self, gateway, modified_rel_path):
            reported.append((gateway, modified_rel_path, self._sourcedir, self._verbose))

    rs = HostRSync(source, verbose=False)
    rs.add_target(gw1, dest)
    rs.send()
    assert sorted(reported) == [(gw1, "a", str(source), False), (gw1, "d/b", str(source), False)]


def test_pytest_xdist_hostrsync(group, dirs, capfd):
    workermanage = pytest.importorskip("xdist.workermanage")
    source, dest, _ = dirs
    write(source / "pkg" / "mod.py", "x = 1")
    write(source / "pkg" / "mod.pyc", "ignored")
    dest.mkdir()
    gw = group.makegateway(f"popen//chdir={dest}")
    finished = []
    rs = workermanage.HostRSync(source / "pkg", verbose=True, ignores=["*.pyc"])
    rs.add_target_host(gw, finished=lambda: finished.append(True))
    rs.send()
    assert tree(dest) == {"pkg": None, "pkg/mod.py": b"x = 1"}
    assert finished == [True]
    assert f"{gw.spec}:{dest} <= pkg/mod.py" in capfd.readouterr().out


def test_modes_are_reproduced(gw1, dirs):
    source, dest, _ = dirs
    write(source / "file", "x")
    (source / "dir").mkdir()
    os.chmod(source / "file", 0o770)
    os.chmod(source / "dir", 0o700)
    sync(source, (gw1, dest))
    assert os.stat(dest / "file").st_mode & 0o7777 == 0o770
    assert os.stat(dest / "dir").st_mode & 0o7777 == 0o700
    os.chmod(source / "file", 0o700)  # only the mode changes
    sync(source, (gw1, dest))
    assert os.stat(dest / "file").st_mode & 0o7777 == 0o700


def test_mode_only_change_is_exact(gw1, dirs):
    source, dest, _ = dirs
    write(source / "file", "x")
    os.chmod(source / "file", 0o644)
    sync(source, (gw1, dest))
    os.chmod(source / "file", 0o640)
    sync(source, (gw1, dest))
    assert os.stat(dest / "file").st_mode & 0o7777 == 0o640


def test_read_only_source_dir_gives_writable_dest_dir(gw1, dirs):
    source, dest, _ = dirs
    write(source / "ro" / "f", "x")
    os.chmod(source / "ro", 0o500)
    try:
        sync(source, (gw1, dest))
        assert os.stat(dest / "ro").st_mode & 0o700 == 0o700
        assert (dest / "ro" / "f").read_text() == "x"
    finally:
        os.chmod(source / "ro", 0o700)


def test_symlinks(gw1, dirs):
    source, dest, _ = dirs
    write(source / "subdir" / "existent", "x")
    os.symlink(str(source / "subdir" / "existent"), source / "abs")
    os.symlink("subdir/existent", source / "rel")
    os.symlink("rel", source / "link2")
    os.symlink(str(source.parent), source / "up")
    sync(source, (gw1, dest))
    assert os.readlink(dest / "abs") == os.path.join(str(dest), "subdir", "existent")
    assert os.readlink(dest / "rel") == "subdir/existent"
    assert os.readlink(dest / "link2") == "rel"
    assert os.readlink(dest / "up") == str(source.parent)
    assert (dest / "abs").read_text() == "x"


def test_callback_gets_list_and_acks(gw1, dirs):
    source, dest, _ = dirs
    write(source / "hundred", b"a" * 100)
    write(source / "ten", b"b" * 10)
    seen = []
    sync(source, (gw1, dest), callback=lambda kind, size, channel: seen.append((kind, size)))
    assert sorted(seen) == [("ack", 10), ("ack", 100), ("list", 110)]
    assert seen[0] == ("list", 110)


def test_callback_with_nothing_to_send(gw1, dirs):
    # execnet's defect D5: KeyError here
    source, dest, _ = dirs
    seen = []
    sync(source, (gw1, dest), callback=lambda kind, size, channel: seen.append((kind, size)))
    assert seen == [("list", 0)]


def test_callback_with_dest_ending_in_separator(gw1, dirs):
    # execnet's defect D5: the ack key loses its first character
    source, dest, _ = dirs
    write(source / "ab", b"x" * 7)
    seen = []
    sync(source, (gw1, str(dest) + os.sep),
         callback=lambda kind, size, channel: seen.append((kind, size)))
    assert sorted(seen) == [("ack", 7), ("list", 7)]


def test_finishedcallback_per_target(gw1, gw2, dirs):
    source, dest1, dest2 = dirs
    write(source / "f", "x")
    finished = []
    rs = execnet.RSync(source, verbose=False)
    rs.add_target(gw1, dest1, finishedcallback=lambda: finished.append(1))
    rs.add_target(gw2, dest2, finishedcallback=lambda: finished.append(2))
    rs.send()
    assert sorted(finished) == [1, 2]


def test_file_removed_in_filter_is_absent_rest_syncs(gw1, dirs):
    source, dest, _ = dirs
    write(source / "victim", "v")
    write(source / "other", "o")

    class Remover(execnet.RSync):
        def filter(self, path):
            if os.path.basename(path) == "victim":
                os.unlink(path)
            return True

    rs = Remover(source, verbose=False)
    rs.add_target(gw1, dest)
    rs.send()
    assert not (dest / "victim").exists()
    assert (dest / "other").read_text() == "o"


def test_filter_gets_full_paths_and_excludes_subtrees(gw1, dirs):
    source, dest, _ = dirs
    write(source / "skip" / "inner", "i")
    write(source / "take" / "inner", "t")
    seen = []

    class Filter(execnet.RSync):
        def filter(self, path):
            seen.append(path)
            return os.path.basename(path) != "skip"

    rs = Filter(source, verbose=False)
    rs.add_target(gw1, dest)
    rs.send()
    assert sorted(seen) == sorted(
        [str(source / "skip"), str(source / "take"), str(source / "take" / "inner")]
    )
    assert tree(dest) == {"take": None, "take/inner": b"t"}


def test_bogus_option_is_rejected(gw1, dirs):
    rs = execnet.RSync(dirs[0])
    with pytest.raises(AssertionError):
        rs.add_target(gw1, dirs[1], bogus=1)


def test_entries_change_kind(gw1, dirs):
    source, dest, _ = dirs
    write(source / "was_dir", "now a file")
    write(source / "was_file" / "inner", "now a dir")
    write(dest / "was_dir" / "old", "old")
    write(dest / "was_file", "old")
    sync(source, (gw1, dest))
    assert tree(dest) == tree(source)


def test_many_files_and_large_ones(gw1, dirs):
    source, dest, _ = dirs
    for i in range(200):
        write(source / f"d{i % 7}" / f"f{i}", os.urandom(i * 37))
    write(source / "big", os.urandom(3 * 1024 * 1024 + 5))
    write(source / "empty", b"")
    sync(source, (gw1, dest))
    assert tree(dest) == tree(source)


@pytest.mark.parametrize("execmodel", ["main_thread_only", "thread"])
def test_worker_execmodels(group, dirs, execmodel):
    source, dest, _ = dirs
    for i in range(30):
        write(source / f"d{i % 3}" / f"f{i}", os.urandom(i * 1000))
    gw = group.makegateway(f"popen//execmodel={execmodel}")
    sync(source, (gw, dest))
    assert tree(dest) == tree(source)


# -- progress display -------------------------------------------------------------


def test_progress_display_on_stderr(gw1, dirs, capfd):
    source, dest, _ = dirs
    write(source / "a", b"x" * 1000)
    write(source / "b", b"y" * 2000)
    rs = execnet.RSync(source, verbose=False, progress=True)
    rs.add_target(gw1, dest)
    rs.send()
    out, err = capfd.readouterr()
    assert out == ""
    assert err.rstrip().split("\r")[-1] == "rsync: 2/2 files, 0.0/0.0 MiB"


def test_progress_display_from_environment(gw1, dirs, capfd, monkeypatch):
    source, dest, _ = dirs
    write(source / "a", b"x" * (3 * 1024 * 1024))
    monkeypatch.setenv(rsync.PROGRESS_ENV, "1")
    sync(source, (gw1, dest))
    assert capfd.readouterr().err.rstrip().split("\r")[-1] == "rsync: 1/1 files, 3.0/3.0 MiB"


# -- bad input: reported per file, the rest synchronised ----------------------------


def test_file_vanishing_mid_sync_is_reported(gw1, dirs):
    source, dest, _ = dirs
    # the walk takes the listdir order: the victim is looked at (lstat) in
    # the first directory, and removed while the second one is listed
    for name in ("d1", "d2"):
        write(source / name / "file", name)
    first, second = os.listdir(source)
    victim = source / first / "file"

    class Vanish(execnet.RSync):
        def filter(self, path):
            if path == str(source / second / "file"):
                os.unlink(victim)
            return True

    rs = Vanish(source, verbose=False)
    rs.add_target(gw1, dest)
    with pytest.raises(rsync.RSyncError) as info:
        rs.send()
    assert isinstance(info.value, OSError)
    [(gateway, relpath, why)] = info.value.failures
    assert (gateway, relpath) == (gw1, f"{first}/file")
    assert "FileNotFoundError" in why
    assert not (dest / first / "file").exists()
    assert (dest / second / "file").read_text() == second


def test_unreadable_file_is_reported_rest_syncs(gw1, dirs, monkeypatch):
    source, dest, _ = dirs
    write(source / "secret", "s")
    write(source / "public", "p")
    # fault injection (root reads any file): the master reads every file
    # (no local copies) and cannot read this one
    read_file, md5_file = rsync._file_helpers()

    def failing_read(path):
        if str(path) == str(source / "secret"):
            raise PermissionError(13, "Permission denied", str(path))
        return read_file(path)

    monkeypatch.setattr(rsync, "_file_helpers", lambda: (failing_read, md5_file))
    monkeypatch.setattr(execnet.RSync, "_local_offer", lambda self: None)
    failures = sync(source, (gw1, dest), raises=False)
    assert [relpath for _, relpath, _ in failures] == ["secret"]
    assert (dest / "public").read_text() == "p"


def test_unlistable_directory_is_reported_rest_syncs(gw1, dirs, monkeypatch):
    source, dest, _ = dirs
    write(source / "locked" / "f", "l")
    write(source / "kept", "k")
    write(dest / "locked" / "old", "stays")  # left alone, even with delete
    listdir = os.listdir

    def failing_listdir(path):  # fault injection: root lists any directory
        if str(path) == str(source / "locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", failing_listdir)
    rs = execnet.RSync(source, verbose=False)
    rs.add_target(gw1, dest, delete=True)
    failures = rs.send(raises=False)
    assert [(relpath, why.split(":")[0]) for _, relpath, why in failures] == [
        ("locked", "PermissionError")
    ]
    assert (dest / "kept").read_text() == "k"
    assert tree(dest / "locked") == {"old": b"stays"}


def test_special_file_raises_and_ends_the_receivers(gw1, dirs):
    source, dest, _ = dirs
    os.mkfifo(source / "fifo")
    rs = execnet.RSync(source, verbose=False)
    send_fails_closing_the_target(rs, gw1, dest, ValueError, "cannot sync")
    # the receiver, waiting for the rest of the tree, ends
    wait_for(lambda: gw1.remote_status().numexecuting == 0)


def test_unwritable_destination_is_reported_per_file(gw1, gw2, dirs):
    source, _, dest2 = dirs
    write(source / "a", "a")
    write(source / "d" / "b", "b")
    bad = "/proc/execnet-rsync-test/dest"
    failures = sync(source, (gw1, bad), (gw2, dest2), raises=False)
    assert sorted(relpath for _, relpath, _ in failures) == [".", "a", "d/b"]
    assert {gateway for gateway, _, _ in failures} == {gw1}
    assert tree(dest2) == tree(source)  # the other target is complete


@pytest.mark.parametrize("threads", ["0", "2"])
def test_write_failures_are_per_file(group, target_kind, dirs, monkeypatch, threads):
    # a file size limit in the worker makes writes of larger files fail
    # (EFBIG), whoever the user is; files are written by the receiver's
    # main thread, or by a pool of threads
    monkeypatch.setenv("EXECNET_RSYNC_THREADS", threads)
    if target_kind == "python3":
        gw = group.makegateway("popen//python=" + shlex.quote(SYSTEM_PYTHON))
    else:
        gw = group.makegateway("popen")
    gw.remote_exec(
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit("
        "resource.RLIMIT_FSIZE)[1]))\n"
    ).waitclose(TIMEOUT)
    source, dest, _ = dirs
    write(source / "small", b"s" * 10)
    write(source / "large", b"l" * 5000)
    write(source / "sub" / "small2", b"t" * 20)
    seen = []
    with pytest.raises(rsync.RSyncError) as info:
        sync(source, (gw, dest), callback=lambda kind, size, channel: seen.append((kind, size)))
    [(gateway, relpath, why)] = info.value.failures
    assert (gateway, relpath) == (gw, "large")
    # a file is acknowledged once written: the one that failed is not
    assert sorted(seen) == [("ack", 10), ("ack", 20), ("list", 5030)]
    assert "large" in str(info.value)
    assert (dest / "small").read_bytes() == b"s" * 10
    assert (dest / "sub" / "small2").read_bytes() == b"t" * 20


@pytest.mark.parametrize(
    "body, error",
    [
        ("raise ValueError('receiver broke')", "receiver broke"),
        ("channel.receive()", "connection unexpectedly closed"),
        (
            "channel.receive(); channel.send(('send', (['f'], None))); "
            "raise ValueError('receiver broke late')",
            "receiver broke late",
        ),
    ],
)
def test_receiver_ending_early_raises(gw1, gw2, dirs, monkeypatch, body, error):
    source, dest1, dest2 = dirs
    write(source / "f", "x")
    rs = execnet.RSync(source, verbose=False)
    rs.add_target(gw2, dest2)  # a healthy target first
    broken = f"if __name__ == '__channelexec__':\n    {body}\n"
    use_receiver(monkeypatch, dest1.parent, "broken_receiver", broken)
    rs.add_target(gw1, dest1)
    with pytest.raises((OSError, RemoteError), match=error):
        rs.send()
    assert (dest2 / "f").read_text() == "x"  # the healthy target completed


def test_receiver_failing_before_add_target_sends(gw1, dirs, monkeypatch):
    # its channel is closed, with the error, before add_target() sends to it
    source, dest1, _ = dirs
    write(source / "f", "x")
    failing = "if __name__ == '__channelexec__':\n    raise ValueError('failed at once')\n"
    use_receiver(monkeypatch, dest1.parent, "failing_receiver", failing)
    remote_exec = gw1.remote_exec

    def remote_exec_until_closed(source):
        channel = remote_exec(source)
        wait_for(channel.isclosed)
        return channel

    monkeypatch.setattr(gw1, "remote_exec", remote_exec_until_closed)
    rs = execnet.RSync(source, verbose=False)
    rs.add_target(gw1, dest1)
    with pytest.raises((OSError, RemoteError), match="failed at once"):
        rs.send()


HOSTILE_RECEIVER = """
if __name__ == "__channelexec__":
    for _ in range(3):  # (destdir, options), the root's list, the file
        channel.receive()
    channel.send(("send", (["..", "secret"], None)))
    reply = channel.receive()
    if reply is not None:
        raise ValueError("the master sent a file outside its source: %r" % (reply,))
    channel.send(("list_done", None))
    channel.send(("links", None))
    assert channel.receive() == 42
    channel.send(("done", None))
"""


def test_master_refuses_requests_outside_its_source(gw1, dirs, monkeypatch):
    source, dest, _ = dirs
    write(source / "f", "x")
    write(source.parent / "secret", "do not send")
    use_receiver(monkeypatch, dest.parent, "hostile_receiver", HOSTILE_RECEIVER)
    with pytest.raises(rsync.RSyncError) as info:
        sync(source, (gw1, dest))
    [(_, relpath, why)] = info.value.failures
    assert (relpath, why) == ("../secret", "refused: the path leaves the source directory")


def test_master_drops_a_receiver_sending_a_malformed_failure(gw1, dirs, monkeypatch):
    source, dest, _ = dirs
    write(source / "f", "x")
    use_receiver(
        monkeypatch,
        dest.parent,
        "malformed_receiver",
        "if __name__ == '__channelexec__':\n"
        "    for _ in range(3):\n"
        "        channel.receive()\n"
        "    channel.send(('xn-failed', 5))\n"
        "    channel.receive()\n",
    )
    rs = execnet.RSync(source, verbose=False)
    send_fails_closing_the_target(rs, gw1, dest, OSError, "unexpected message")


def test_local_copies_are_acknowledged_while_others_still_copy(group, dirs, monkeypatch):
    # the worker's second copy waits until the master has seen the first
    # one's acknowledgement (through a FIFO): acks must not wait for the end
    monkeypatch.setenv("EXECNET_RSYNC_THREADS", "1")
    gw = group.makegateway("popen")
    source, dest, _ = dirs
    write(source / "a", "a")
    write(source / "b", "bb")
    fifo = dest.parent / "first-acked"
    os.mkfifo(fifo)
    gw.remote_exec(
        textwrap.dedent(
            f"""
            import os, select, shutil
            from execnet import backend
            calls = []
            def second_waits():
                calls.append(1)
                if len(calls) == 2:
                    fd = os.open({str(fifo)!r}, os.O_RDONLY | os.O_NONBLOCK)
                    if not select.select([fd], [], [], {TIMEOUT})[0]:
                        raise OSError("no acknowledgement of the first file arrived")
            def waiting(copy):
                def copy_after(*args):
                    second_waits()
                    return copy(*args)
                return copy_after
            core = backend.core  # the receiver copies with the C core's helper
            if core is not None:
                core.rsync_copy_file = waiting(core.rsync_copy_file)
            else:  # or with its own, which uses shutil's
                shutil.copyfileobj = waiting(shutil.copyfileobj)
            """
        )
    ).waitclose(TIMEOUT)

    def callback(kind, size, channel):
        if kind == "ack" and "ack" not in acks:
            with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb") as f:
                f.write(b"x")
        acks.append(kind)

    acks: list = []
    sync(source, (gw, dest), callback=callback)
    assert tree(dest) == tree(source)
    assert acks.count("ack") == 2


def test_master_drops_a_receiver_announcing_a_copy_outside_the_source(gw1, dirs, monkeypatch):
    source, dest, _ = dirs
    write(source / "f", "x")
    write(source.parent / "secret", "not to be announced")
    use_receiver(
        monkeypatch,
        dest.parent,
        "copying_receiver",
        "if __name__ == '__channelexec__':\n"
        "    channel.receive()\n"
        "    channel.send(('xn-stream', {'version': 1, 'local': True, 'helpers': 'c'}))\n"
        "    channel.send(('xn-copying', [('f', 1)]))\n"
        "    channel.send(('xn-copying', [('../secret', 19)]))\n"
        "    channel.receive()\n",
    )
    seen = []
    rs = execnet.RSync(source, callback=lambda *args: seen.append(args[:2]))
    rs._report_send_file = lambda gateway, relpath: seen.append(("announced", relpath))
    send_fails_closing_the_target(rs, gw1, dest, OSError, "unexpected message")
    assert seen == [("announced", "f")]


# -- a hostile sender ----------------------------------------------------------------


def hostile(gw, dest, items, links=(), options=None):
    """Run the receiver against hand-made items; its error text, or None."""
    channel = gw.remote_exec(rsync_remote)
    channel.send((str(dest), options or {}))
    for item in items:
        channel.send(item)
    try:
        replies = []
        while True:
            reply = channel.receive(TIMEOUT)
            replies.append(reply)
            if reply == ("links", None):
                try:
                    for link in links:
                        channel.send(link)
                    channel.send(42)
                except OSError:
                    pass  # it refused a link already: its error comes next
            if reply == ("done", None):
                break
        channel.waitclose(TIMEOUT)
    except (RemoteError, EOFError) as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(
    "name", ["..", ".", "", "/etc", "a/../../x", "sub/x", "nul\0byte"]
)
def test_receiver_refuses_unsafe_names(gw1, tmp_path, name):
    dest = tmp_path / "dest"
    error = hostile(gw1, dest, [[0o40755, name], (0o100644, 0.0, 3)])
    assert error is not None and "refusing" in error
    assert sorted(os.listdir(tmp_path)) in (["dest"], [])
    assert not dest.exists() or os.listdir(dest) == []


@pytest.mark.parametrize("last", [7, "text"])
def test_receiver_removes_the_partial_file_of_a_bad_piece(gw1, tmp_path, last):
    # a file sent in pieces, ended by an item that is no piece: the error
    # ends the receiver, and the partial file goes with it
    dest = tmp_path / "dest"
    items = [[0o40755, "big"], (0o100644, 0.0, 10), ("chunked", None), b"12345", last]
    error = hostile(gw1, dest, items, options={"xn-stream": 1})
    assert error is not None and "bad piece" in error
    assert os.listdir(dest) == []


@pytest.mark.parametrize(
    "link",
    [
        ("link", "../escape", "x"),
        ("link", "/abs/escape", "x"),
        ("linkbase", "ok", "../../etc"),
        ("linkbase", "ok", "/etc"),
        ("link", "a/../../escape", "x"),
    ],
)
def test_receiver_refuses_links_leaving_dest(gw1, tmp_path, link):
    dest = tmp_path / "dest"
    error = hostile(gw1, dest, [[0o40755]], links=[link])
    assert error is not None and "refusing" in error
    assert sorted(os.listdir(tmp_path)) in (["dest"], [])
    assert not dest.exists() or os.listdir(dest) == []


def test_receiver_refuses_link_through_a_link(gw1, tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    error = hostile(
        gw1, dest, [[0o40755]], links=[("link", "sub", str(outside)), ("link", "sub/evil", "x")]
    )
    assert error is not None and "refusing" in error
    assert os.listdir(outside) == []


def test_receiver_replaces_a_planted_link_instead_of_following_it(gw1, dirs):
    source, dest, _ = dirs
    outside = dest.parent / "outside"
    outside.mkdir()
    write(source / "sub" / "f", "inside")
    write(source / "g", "inside")
    dest.mkdir()
    os.symlink(outside, dest / "sub")
    os.symlink(outside / "g", dest / "g")
    sync(source, (gw1, dest))
    assert os.listdir(outside) == []
    assert tree(dest) == tree(source)


def test_receiver_does_not_follow_a_planted_link_at_a_partial_name(group, dirs, monkeypatch):
    # a file sent in pieces is written to ".<name>.xn-partial" first
    monkeypatch.setenv(rsync.LOCAL_ENV, "0")
    monkeypatch.setattr(rsync, "PIECE_SIZE", 4096)
    source, dest, _ = dirs
    write(source / "big", os.urandom(10_000))
    write(source / "small", "s")
    outside = dest.parent / "outside"
    outside.write_text("untouched")
    dest.mkdir()
    os.symlink(outside, dest / ".big.xn-partial")
    failures = sync(source, (group.makegateway("popen"), dest), raises=False)
    assert outside.read_text() == "untouched"
    assert [relpath for _, relpath, _ in failures] == ["big"]
    assert (dest / "small").read_text() == "s"


@pytest.mark.parametrize("later", ["directory", "file", "big file"])
def test_receiver_does_not_write_through_a_link_it_made(gw1, dirs, later):
    # a first sync makes the links the sender asks for, out of the tree too
    # (execnet copies symlinks as they are); a second sync that puts a
    # directory or a file at those names replaces the links, it never
    # writes through them
    source, dest, other = dirs
    outside = dest.parent / "outside"
    outside.mkdir()
    (outside / "f").write_text("untouched")
    (outside / "g").write_text("untouched")
    os.symlink(outside, source / "d")
    os.symlink(outside / "g", source / "g")
    sync(source, (gw1, dest))
    assert os.readlink(dest / "d") == str(outside)
    assert os.readlink(dest / "g") == str(outside / "g")
    other.mkdir()
    data = os.urandom(10_000) if later == "big file" else b"inside"
    if later == "directory":
        write(other / "d" / "f", data)
        write(other / "g" / "f", data)
    else:
        write(other / "d", data)
        write(other / "g", data)
    sync(other, (gw1, dest, {"delete": True}))
    assert tree(dest) == tree(other)
    assert sorted(os.listdir(outside)) == ["f", "g"]
    assert (outside / "f").read_text() == (outside / "g").read_text() == "untouched"


def test_receiver_delete_does_not_follow_a_planted_link(gw1, dirs):
    # delete=True removes what the source lacks: a planted link to a
    # directory outside is removed as a link, the directory keeps its files
    source, dest, _ = dirs
    outside = dest.parent / "outside"
    write(outside / "victim", "untouched")
    write(source / "keep", "k")
    dest.mkdir()
    os.symlink(outside, dest / "planted")
    sync(source, (gw1, dest, {"delete": True}))
    assert tree(dest) == tree(source)
    assert (outside / "victim").read_text() == "untouched"


# -- the C file helpers ----------------------------------------------------------------


@pytest.fixture
def core():
    from execnet import _execnet

    return _execnet


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 119, 120, 4096, 1024 * 1024 + 7])
def test_c_md5_matches_hashlib(core, tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert core.rsync_md5(data) == hashlib.md5(data).digest()
    assert core.rsync_md5(bytearray(data)) == hashlib.md5(data).digest()
    assert core.rsync_md5_file(tmp_path / "f") == hashlib.md5(data).digest()
    assert core.rsync_read_file(str(tmp_path / "f")) == data


def test_c_write_and_copy_file(core, tmp_path):
    data = os.urandom(300_000)
    core.rsync_write_file(tmp_path / "w", data, 0o100640, 1_600_000_000.25)
    st = os.stat(tmp_path / "w")
    assert (tmp_path / "w").read_bytes() == data
    assert (st.st_mode & 0o7777, st.st_mtime) == (0o640, 1_600_000_000.25)
    assert core.rsync_copy_file(tmp_path / "w", str(tmp_path / "c"), 0o600, None) == len(data)
    assert (tmp_path / "c").read_bytes() == data
    assert os.stat(tmp_path / "c").st_mode & 0o7777 == 0o600
    core.rsync_write_file(str(tmp_path / "w"), b"short", 0, None)  # truncates
    assert (tmp_path / "w").read_bytes() == b"short"


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_c_copy_file_between_filesystems(core, tmp_path):
    # tmpfs to the test directory's filesystem: copy_file_range may refuse
    # (EXDEV), then sendfile copies (or, refused too, a buffer)
    import tempfile

    data = os.urandom(3 * 1024 * 1024 + 11)
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
        f.write(data)
        f.flush()
        assert core.rsync_copy_file(f.name, str(tmp_path / "c"), 0, 7.0) == len(data)
    assert (tmp_path / "c").read_bytes() == data
    assert os.stat(tmp_path / "c").st_mtime == 7.0


@pytest.mark.parametrize("helper", ["c", "python"])
def test_copy_file_refuses_a_fifo_without_waiting_for_a_writer(core, tmp_path, helper):
    # the source may have been replaced by a FIFO since the master looked
    copy_file = core.rsync_copy_file if helper == "c" else rsync_remote._copy_file_python
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):
        copy_file(str(tmp_path / "fifo"), str(tmp_path / "c"), 0, None)
    assert not (tmp_path / "c").exists()


def test_c_helpers_raise_oserror_with_filename(core, tmp_path):
    missing, no_dir = str(tmp_path / "missing"), str(tmp_path / "no" / "dir")
    for call, filename in (
        (lambda: core.rsync_read_file(missing), missing),
        (lambda: core.rsync_md5_file(missing), missing),
        (lambda: core.rsync_write_file(no_dir, b"x", 0, None), no_dir),
        (lambda: core.rsync_copy_file(missing, str(tmp_path / "c"), 0, None), missing),
        (lambda: core.rsync_copy_file(str(tmp_path), str(tmp_path / "c"), 0, None), str(tmp_path)),
        (lambda: core.rsync_copy_file(__file__, no_dir, 0, None), no_dir),
    ):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.filename == filename
    with pytest.raises(OSError):
        core.rsync_read_file(str(tmp_path))  # a directory
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(OSError):
        core.rsync_write_file(str(tmp_path / "link"), b"x", 0, None)
    assert not (tmp_path / "target").exists()
    with pytest.raises(TypeError):
        core.rsync_write_file(str(tmp_path / "x"), "not bytes", 0, None)
    with pytest.raises(ValueError):
        core.rsync_write_file(str(tmp_path / "x"), b"", -1, None)
    with pytest.raises(ValueError):
        core.rsync_read_file("nul\0byte")


def test_c_write_reports_a_full_file_size_limit(core, tmp_path):
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
    try:
        with pytest.raises(OSError) as info:
            core.rsync_write_file(str(tmp_path / "big"), b"x" * 5000, 0, None)
        (tmp_path / "src").write_bytes(b"y" * 999)
        core.rsync_copy_file(str(tmp_path / "src"), str(tmp_path / "copy"), 0, None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.filename == str(tmp_path / "big")
    assert (tmp_path / "copy").read_bytes() == b"y" * 999


def test_c_helpers_do_not_leak(core, tmp_path):
    import tracemalloc

    data = os.urandom(20_000)
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    core.rsync_write_file(src, data, 0, None)

    def phase():
        for _ in range(200):
            assert core.rsync_read_file(src) == data
            core.rsync_md5(data)
            core.rsync_md5_file(src)
            core.rsync_write_file(dst, data, 0o600, 5.5)
            core.rsync_copy_file(src, dst, 0o600, 5.5)
            for call in (core.rsync_read_file, core.rsync_md5_file):
                with pytest.raises(OSError):
                    call(str(tmp_path / "missing"))
            with pytest.raises(OSError):
                core.rsync_copy_file(src, str(tmp_path / "no" / "dst"), 0, None)
            with pytest.raises(OSError):  # opened, then refused
                core.rsync_read_file(str(tmp_path))
            with pytest.raises(OSError):  # opened, then refused
                core.rsync_copy_file(str(tmp_path), dst, 0, None)

    fds = len(os.listdir("/proc/self/fd"))
    tracemalloc.start()
    try:
        phase()
        first = tracemalloc.get_traced_memory()[0]
        phase()
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert second - first < 50_000
    assert len(os.listdir("/proc/self/fd")) == fds  # no descriptor left open


# -- interoperation with reference execnet 2.1.2 --------------------------------------


@pytest.fixture(scope="module")
def reference_python():
    try:
        return reference.python()
    except Exception as exc:  # no network, no venv
        pytest.skip(f"reference execnet unavailable: {exc}")


def make_tree(source) -> None:
    write(source / "a.txt", "abc")
    write(source / "d" / "b.txt", "hello")
    write(source / "d" / "e" / "big", os.urandom(200_000))
    os.symlink("d/b.txt", source / "rel")
    os.symlink(str(source / "d" / "b.txt"), source / "abs")


def test_our_master_to_reference_receiver(reference_python, group, dirs, monkeypatch):
    receiver_path = reference.run(
        "import execnet.rsync_remote as m; print(m.__file__)"
    ).decode().strip()
    spec = importlib.util.spec_from_file_location("reference_rsync_remote", receiver_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(rsync, "rsync_remote", module)
    source, dest, _ = dirs
    make_tree(source)
    gw = group.makegateway("popen")
    seen = []
    callback = lambda kind, size, channel: seen.append((kind, size))  # noqa: E731
    sync(source, (gw, dest, {"delete": True}), callback=callback)
    assert tree(dest) == {**tree(source), "abs": "-> " + str(dest / "d" / "b.txt")}
    assert sorted(seen) == [("ack", 3), ("ack", 5), ("ack", 200_000), ("list", 200_008)]
    # a touched file: the reference receiver sends its MD5, we answer None
    os.utime(source / "a.txt", (5, 5))
    (dest / "gone").write_text("x")
    sync(source, (gw, dest, {"delete": True}))
    assert os.stat(dest / "a.txt").st_mtime == 5
    assert not (dest / "gone").exists()


REFERENCE_MASTER = """
import importlib.util, json, os, sys
import execnet
spec = importlib.util.spec_from_file_location("our_rsync_remote", {receiver!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
execnet.rsync_remote = module  # the reference's add_target ships this one
gw = execnet.makegateway("popen")
seen = []
for round in range(2):
    callback = lambda kind, size, ch: seen.append([kind, size])
    rs = execnet.RSync({source!r}, callback=callback if {callback} else None)
    rs.add_target(gw, {dest!r}, delete=True)
    rs.send()
    os.utime(os.path.join({source!r}, "a.txt"), (5, 5))
gw.exit()
gw.join()
print(json.dumps(seen))
"""


def test_reference_master_to_our_receiver(reference_python, dirs):
    source, dest, _ = dirs
    make_tree(source)
    write(dest / "gone", "x")
    code = REFERENCE_MASTER.format(
        receiver=rsync_remote.__file__, source=str(source), dest=str(dest), callback=True
    )
    out = reference.run(textwrap.dedent(code), timeout=120).decode()
    lines = out.strip().splitlines()
    seen = json.loads(lines[-1])
    assert "a.txt" in out  # the reference master's verbose output
    assert tree(dest) == {**tree(source), "abs": "-> " + str(dest / "d" / "b.txt")}
    assert os.stat(dest / "a.txt").st_mtime == 5
    assert sorted(map(tuple, seen)) == [
        ("ack", 3), ("ack", 3), ("ack", 5), ("ack", 200_000), ("list", 3), ("list", 200_008)
    ]


def test_reference_master_learns_of_our_receivers_write_failures(reference_python, dirs):
    source, _, _ = dirs
    write(source / "a", "a")
    code = REFERENCE_MASTER.format(
        receiver=rsync_remote.__file__,
        source=str(source),
        dest="/proc/execnet-rsync-test",
        callback=False,  # execnet's defect D5: KeyError when nothing is requested
    )
    with pytest.raises(RuntimeError, match="not synchronised"):
        reference.run(textwrap.dedent(code), timeout=120)


def test_receiver_source_needs_only_the_standard_library():
    with open(rsync_remote.__file__) as f:
        source = f.read()
    assert "import execnet" not in source and "from execnet" not in source
    assert sys.modules["execnet.rsync_remote"] is rsync_remote


@pytest.mark.parametrize("how", ["sent", "in pieces", "copied", "mode only"])
def test_receiver_does_not_write_through_a_hard_link(group, dirs, monkeypatch, how):
    # a destination file that is a hard link to a file elsewhere gets a new
    # inode of its own: the other name keeps its content and its mode
    if how != "copied":
        monkeypatch.setenv(rsync.LOCAL_ENV, "0")
    if how == "in pieces":
        monkeypatch.setattr(rsync, "PIECE_SIZE", 4096)
    source, dest, _ = dirs
    outside = dest.parent / "outside"
    data = os.urandom(10_000) if how == "in pieces" else b"new content"
    write(source / "f", data)
    dest.mkdir()
    if how == "mode only":
        outside.write_bytes(data)
        st = os.stat(source / "f")
        os.utime(outside, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(source / "f", 0o600)
        os.chmod(outside, 0o644)
    else:
        outside.write_bytes(b"untouched")
    os.link(outside, dest / "f")
    before = (outside.read_bytes(), stat.S_IMODE(os.stat(outside).st_mode))
    sync(source, (group.makegateway("popen"), dest))
    assert (outside.read_bytes(), stat.S_IMODE(os.stat(outside).st_mode)) == before
    assert (dest / "f").read_bytes() == data
    assert os.stat(dest / "f").st_nlink == 1
    if how == "mode only":
        assert stat.S_IMODE(os.stat(dest / "f").st_mode) == 0o600


@pytest.mark.parametrize(
    "item",
    [
        ("rw", 0.0, 3),
        (2**70, 0.0, 3),
        (-1, 0.0, 3),
        (0o100644, "yesterday", 3),
        (0o100644, 1e400, 3),
        (0o100644, 0.0, "3"),
        (0o100644, 0.0, -3),
        (True, 0.0, 3),
    ],
)
def test_receiver_refuses_a_file_item_of_bad_types(gw1, tmp_path, item):
    dest = tmp_path / "dest"
    error = hostile(gw1, dest, [[0o40755, "f"], item])
    assert error is not None and "bad file item" in error
    assert not dest.exists() or os.listdir(dest) == []


def test_receiver_keeps_a_hard_linked_file_whose_source_vanished(gw1, tmp_path):
    # the sender's item for a file that vanished: without delete=True the
    # destination's copy stays, hard link or not
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.write_bytes(b"kept")
    os.link(outside, dest / "f")
    assert hostile(gw1, dest, [[0o40755, "f"], (None, None, None)]) is None
    assert (dest / "f").read_bytes() == b"kept"
    assert os.stat(outside).st_nlink == 2
