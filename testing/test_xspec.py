"""XSpec parsing and worker command lines.

Line 80 (``makegateway`` handing ``-F`` to the process constructor) needs
gateway creation and is covered with the gateway tests.
"""

import copy
import os
import pickle
import subprocess
import sys

import pytest

from execnet import gateway_io
from execnet.gateway_io import popen_args
from execnet.gateway_io import popen_bootstrapline
from execnet.gateway_io import shell_split_path
from execnet.gateway_io import ssh_args
from execnet.gateway_io import vagrant_ssh_args
from execnet.xspec import XSpec

BOOTLINE = "import sys;exec(eval(sys.stdin.readline()))"
REMOTE_BOOT = '-c "import sys;exec(eval(sys.stdin.readline()))"'


# --- XSpec ---------------------------------------------------------------


class TestParsing:
    def test_59_values_verbatim(self):
        spec = XSpec(
            r"socket=192.168.102.2:8888//python=c:/this/python3.8//chdir=d:\hello"
        )
        assert spec.socket == "192.168.102.2:8888"
        assert spec.python == "c:/this/python3.8"
        assert spec.chdir == "d:\\hello"
        assert spec.nice is None
        assert spec.popen is None
        assert spec.env == {}

    def test_60_bare_key_is_true(self):
        spec = XSpec("popen")
        assert spec.popen is True

    def test_61_ssh_value_keeps_spaces(self):
        spec = XSpec("ssh=-p 22100 user@host//python=python3")
        assert spec.ssh == "-p 22100 user@host"
        assert spec.python == "python3"

    def test_62_execmodel(self):
        assert XSpec("execmodel=eventlet").execmodel == "eventlet"
        assert XSpec("execmodel=main_thread_only//popen").execmodel == (
            "main_thread_only"
        )

    def test_63_env(self):
        spec = XSpec("popen//env:NAME=value1")
        assert spec.env == {"NAME": "value1"}
        # env entries do not become attributes of their own
        assert "env:NAME" not in vars(spec)
        assert spec.NAME is None

    def test_63_env_several_and_bare(self):
        spec = XSpec("env:A=1//popen//env:B//env:C=x=y")
        assert spec.env == {"A": "1", "B": True, "C": "x=y"}

    def test_env_repeated_last_wins(self):
        assert XSpec("popen//env:A=1//env:A=2").env == {"A": "2"}

    def test_env_is_per_instance(self):
        first = XSpec("popen//env:A=1")
        second = XSpec("popen")
        assert second.env == {}
        assert first.env is not second.env

    def test_64_unknown_keys_stored(self):
        spec = XSpec("hello=3")
        assert spec.hello == "3"
        assert vars(spec)["hello"] == "3"

    def test_64_unknown_attribute_reads_none(self):
        spec = XSpec("popen")
        assert spec.foo is None
        assert spec.hello is None
        assert getattr(spec, "not-a-name") is None

    def test_unknown_key_with_odd_name(self):
        spec = XSpec("a-b=1")
        assert getattr(spec, "a-b") == "1"

    def test_all_known_keys_default_none(self):
        spec = XSpec("hello")
        for name in (
            "chdir",
            "dont_write_bytecode",
            "execmodel",
            "id",
            "installvia",
            "nice",
            "popen",
            "python",
            "socket",
            "ssh",
            "ssh_config",
            "vagrant_ssh",
            "via",
        ):
            assert getattr(spec, name) is None, name
            assert name not in vars(spec), name

    def test_split_at_first_equals(self):
        spec = XSpec("c=d=e")
        assert spec.c == "d=e"

    def test_empty_value_is_empty_string(self):
        spec = XSpec("popen//python=")
        assert spec.python == ""

    def test_split_on_every_double_slash(self):
        spec = XSpec("python=//usr/bin/x")
        assert spec.python == ""
        assert getattr(spec, "usr/bin/x") is True

    def test_no_trimming_no_case_folding(self):
        spec = XSpec(" popen//POPEN")
        assert spec.popen is None
        assert getattr(spec, " popen") is True
        assert spec.POPEN is True

    def test_key_order_irrelevant(self):
        a = XSpec("execmodel=main_thread_only//popen")
        b = XSpec("popen//execmodel=main_thread_only")
        assert (a.popen, a.execmodel) == (b.popen, b.execmodel)


class TestPrivateNames:
    def test_65_underscore_attributes_missing(self):
        spec = XSpec("popen")
        assert not hasattr(spec, "_xyz")
        with pytest.raises(AttributeError):
            spec._hello()

    def test_dunder_lookups_absent(self):
        spec = XSpec("popen")
        assert not hasattr(spec, "__len__")
        with pytest.raises(TypeError):
            len(spec)
        with pytest.raises(TypeError):
            iter(spec)

    def test_copy_and_pickle_roundtrip(self):
        # Protocols probe for dunder hooks; they must see them missing.
        spec = XSpec("popen//id=a//env:X=1")
        for clone in (copy.copy(spec), pickle.loads(pickle.dumps(spec))):
            assert clone == spec
            assert clone.id == "a"
            assert clone.env == {"X": "1"}


class TestErrors:
    @pytest.mark.parametrize("string", ["popen//popen", "popen//popen=123"])
    def test_66_duplicate_key(self, string):
        with pytest.raises(ValueError):
            XSpec(string)

    def test_duplicate_key_message(self):
        with pytest.raises(ValueError) as excinfo:
            XSpec("popen//id=1//id=2")
        assert str(excinfo.value) == "duplicate key: 'id' in 'popen//id=1//id=2'"

    @pytest.mark.parametrize("string", ["env", "env=1", "popen//env=x"])
    def test_literal_env_key_is_duplicate(self, string):
        with pytest.raises(ValueError):
            XSpec(string)

    @pytest.mark.parametrize("string", ["_x=1", "popen//_x", "__class__=1"])
    def test_67_underscore_key(self, string):
        with pytest.raises(AttributeError):
            XSpec(string)

    def test_67_underscore_key_message(self):
        with pytest.raises(AttributeError) as excinfo:
            XSpec("_x=1")
        assert str(excinfo.value) == "'_x' not a valid XSpec key"

    def test_underscore_key_cannot_replace_spec_string(self):
        with pytest.raises(AttributeError):
            XSpec("popen//_spec=other")

    @pytest.mark.parametrize("string", ["", "popen//", "=x", "popen////id=1"])
    def test_72_empty_key(self, string):
        with pytest.raises(IndexError):
            XSpec(string)


class TestIdentity:
    @pytest.mark.parametrize(
        "string", ["popen", "popen//id=a", "ssh=-p 22 h//python=python3"]
    )
    def test_68_str_and_spec(self, string):
        spec = XSpec(string)
        assert str(spec) == string
        assert spec._spec == string

    def test_68_repr(self):
        spec = XSpec("popen//id=a")
        assert "popen//id=a" in repr(spec)
        assert repr(spec) == "<XSpec 'popen//id=a'>"

    def test_69_equality_and_hash(self):
        assert XSpec("popen") == XSpec("popen")
        assert not (XSpec("popen") != XSpec("popen"))
        assert hash(XSpec("popen")) == hash(XSpec("popen"))
        assert hash(XSpec("popen")) == hash("popen")
        assert XSpec("popen//python=123") != XSpec("popen")
        assert not (XSpec("popen//python=123") == XSpec("popen"))

    def test_69_unequal_to_plain_string(self):
        assert XSpec("popen") != "popen"
        assert not (XSpec("popen") == "popen")
        assert "popen" != XSpec("popen")
        assert XSpec("popen") != None  # noqa: E711

    def test_equality_is_by_string_not_content(self):
        # Same meaning, different text: not equal.
        assert XSpec("popen//id=a") != XSpec("id=a//popen")

    def test_usable_as_dict_key(self):
        table = {XSpec("popen//id=a"): 1}
        assert table[XSpec("popen//id=a")] == 1

    def test_70_assignment_keeps_string(self):
        spec = XSpec("ssh=host")
        spec.id = "gw7"
        spec.chdir = "somewhere"
        spec.ssh_config = "/home/user/ssh_config"
        assert spec.id == "gw7"
        assert spec.chdir == "somewhere"
        assert spec.ssh_config == "/home/user/ssh_config"
        assert str(spec) == "ssh=host"
        assert spec == XSpec("ssh=host")
        assert hash(spec) == hash("ssh=host")

    def test_vars(self):
        spec = XSpec("popen//id=a//env:N=v")
        spec.chdir = "x"
        assert vars(spec) == {
            "_spec": "popen//id=a//env:N=v",
            "env": {"N": "v"},
            "popen": True,
            "id": "a",
            "chdir": "x",
        }

    def test_71_samefilesystem(self):
        assert XSpec("popen")._samefilesystem() is True
        assert XSpec("popen//python=123")._samefilesystem() is True
        assert XSpec("popen//chdir=hello")._samefilesystem() is False
        assert XSpec("ssh=host")._samefilesystem() is False
        assert XSpec("socket=h:1")._samefilesystem() is False

    def test_71_samefilesystem_follows_assignment(self):
        spec = XSpec("popen")
        spec.chdir = "elsewhere"
        assert spec._samefilesystem() is False


# --- Command lines -------------------------------------------------------


def test_bootstrapline():
    assert popen_bootstrapline == BOOTLINE
    assert gateway_io.popen_bootstrapline == BOOTLINE


class TestPopenArgs:
    def test_73_plain_python(self):
        args = popen_args(XSpec("popen//python=python"))
        assert args == ["python", "-u", "-c", BOOTLINE]

    def test_default_interpreter(self):
        args = popen_args(XSpec("popen"))
        assert args == [sys.executable, "-u", "-c", BOOTLINE]

    def test_empty_python_uses_default(self):
        args = popen_args(XSpec("popen//python="))
        assert args == [sys.executable, "-u", "-c", BOOTLINE]

    def test_74_sudo(self):
        args = popen_args(XSpec("popen//python=sudo -u test python"))
        assert args == ["sudo", "-u", "test", "python", "-u", "-c", BOOTLINE]

    def test_sudo_python3(self):
        args = popen_args(XSpec("popen//python=sudo python3"))
        assert args == ["sudo", "python3", "-u", "-c", BOOTLINE]

    @pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX escapes")
    def test_75_backslash_escaped_space(self):
        args = popen_args(XSpec(r"popen//python=/hans\ alt/bin/python"))
        assert args[0] == "/hans alt/bin/python"
        assert args == ["/hans alt/bin/python", "-u", "-c", BOOTLINE]

    def test_76_quoted_path_and_option(self):
        args = popen_args(XSpec('popen//python="/u/test me/python" -e'))
        assert args == ["/u/test me/python", "-e", "-u", "-c", BOOTLINE]

    def test_77_dont_write_bytecode(self):
        args = popen_args(XSpec("popen//dont_write_bytecode"))
        assert args == [sys.executable, "-u", "-B", "-c", BOOTLINE]

    def test_77_dont_write_bytecode_with_python(self):
        args = popen_args(XSpec("popen//python=python3//dont_write_bytecode"))
        assert args == ["python3", "-u", "-B", "-c", BOOTLINE]

    def test_no_b_without_flag(self):
        assert "-B" not in popen_args(XSpec("popen//python=python3"))

    def test_returns_fresh_list(self):
        spec = XSpec("popen")
        first = popen_args(spec)
        first.append("junk")
        assert popen_args(spec) == [sys.executable, "-u", "-c", BOOTLINE]

    def test_bare_python_key_rejected(self):
        with pytest.raises(ValueError):
            popen_args(XSpec("popen//python"))

    @pytest.mark.parametrize("flag", [False, True])
    def test_77_command_line_runs(self, flag):
        # Run the argv itself (no gateway): the boot line must execute the
        # source line we feed, and -B must reach the interpreter.
        spec = XSpec("popen//dont_write_bytecode" if flag else "popen")
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        source = "import sys;sys.stdout.write(repr(sys.dont_write_bytecode))"
        proc = subprocess.run(
            popen_args(spec),
            input=repr(source) + "\n",
            stdout=subprocess.PIPE,
            env=env,
            universal_newlines=True,
            timeout=60,
        )
        assert proc.returncode == 0
        assert proc.stdout == repr(flag)


class TestShellSplitPath:
    def test_posix_rules(self, monkeypatch):
        monkeypatch.setattr(sys, "platform", "linux")
        assert shell_split_path(r"/a\ b/python -E") == ["/a b/python", "-E"]
        assert shell_split_path("'x y' \"z w\"") == ["x y", "z w"]

    def test_windows_backslashes_become_slashes(self, monkeypatch):
        monkeypatch.setattr(sys, "platform", "win32")
        assert shell_split_path(r"c:\Python311\python.exe -E") == [
            "c:/Python311/python.exe",
            "-E",
        ]
        assert shell_split_path(r'"c:\Program Files\py\python.exe"') == [
            "c:/Program Files/py/python.exe"
        ]


class TestSshArgs:
    def test_78_full_argv(self):
        spec = XSpec("ssh=-p 22100 user@host//python=python3")
        spec.ssh_config = "/home/user/ssh_config"
        args = ssh_args(spec)
        assert args[:6] == ["ssh", "-C", "-F", "/home/user/ssh_config", "-p", "22100"]
        assert args[-1] == 'python3 -c "import sys;exec(eval(sys.stdin.readline()))"'
        assert args == [
            "ssh",
            "-C",
            "-F",
            "/home/user/ssh_config",
            "-p",
            "22100",
            "user@host",
            "python3 " + REMOTE_BOOT,
        ]

    def test_ssh_config_from_string(self):
        args = ssh_args(XSpec("ssh=xyz//ssh_config=qwe"))
        assert args == ["ssh", "-C", "-F", "qwe", "xyz", "python " + REMOTE_BOOT]

    def test_empty_ssh_config_still_passed(self):
        # The option is added whenever ssh_config is not None.
        args = ssh_args(XSpec("ssh=host//ssh_config="))
        assert args == ["ssh", "-C", "-F", "", "host", "python " + REMOTE_BOOT]

    def test_ssh_config_is_stringified(self):
        spec = XSpec("ssh=host")
        spec.ssh_config = 42
        assert ssh_args(spec)[2:4] == ["-F", "42"]

    def test_79_default_remote_python(self):
        args = ssh_args(XSpec("ssh=-p 22100 user@host"))
        assert args == [
            "ssh",
            "-C",
            "-p",
            "22100",
            "user@host",
            'python -c "import sys;exec(eval(sys.stdin.readline()))"',
        ]

    def test_ssh_whitespace_split_not_shell(self):
        args = ssh_args(XSpec("ssh=-o 'A B'  host"))
        assert args[2:-1] == ["-o", "'A", "B'", "host"]

    def test_python_value_passed_verbatim_to_remote_shell(self):
        args = ssh_args(XSpec("ssh=h//python=sudo -u x python3//dont_write_bytecode"))
        assert args == ["ssh", "-C", "h", "sudo -u x python3 " + REMOTE_BOOT]


class TestVagrantSshArgs:
    def test_81_prefix(self):
        args = vagrant_ssh_args(XSpec("vagrant_ssh=default//python=python3"))
        assert args[:-1] == ["vagrant", "ssh", "default", "--", "-C"]
        assert args[-1] == "python3 " + REMOTE_BOOT

    def test_default_python(self):
        args = vagrant_ssh_args(XSpec("vagrant_ssh=box"))
        assert args == ["vagrant", "ssh", "box", "--", "-C", "python " + REMOTE_BOOT]

    def test_ssh_config(self):
        args = vagrant_ssh_args(XSpec("vagrant_ssh=box//ssh_config=/cfg"))
        assert args == [
            "vagrant",
            "ssh",
            "box",
            "--",
            "-C",
            "-F",
            "/cfg",
            "python " + REMOTE_BOOT,
        ]
