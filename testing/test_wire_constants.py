"""The C core's wire constants (csrc/wire.h) agree with the portable core's:
message numbers, opcode letters and the header's size."""

from __future__ import annotations

import pathlib
import re

import pytest

from execnet import gateway_base

WIRE_H = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "wire.h"
DEFINE = re.compile(r"^#define (XN_\w+) (.+?)\s*(?:/\*.*)?$")


def wire_h() -> dict:
    """The #defines of wire.h, name -> text."""
    if not WIRE_H.exists():
        pytest.fail(f"{WIRE_H} is missing: the tests run from a checkout")
    found = {}
    for line in WIRE_H.read_text().splitlines():
        match = DEFINE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def char_literal(text: str) -> bytes:
    match = re.fullmatch(r"'(.)'", text)
    assert match, f"not a character literal: {text}"
    return match.group(1).encode("ascii")


def python_opcodes() -> dict:
    return {
        name: value
        for name, value in vars(gateway_base.opcode).items()
        if not name.startswith("_")
    }


def test_opcodes_agree():
    defines = wire_h()
    c_opcodes = {
        name[len("XN_OP_") :]: char_literal(text)
        for name, text in defines.items()
        if name.startswith("XN_OP_")
    }
    assert c_opcodes == python_opcodes()


def test_message_numbers_agree():
    defines = wire_h()
    c_messages = {
        name[len("XN_MSG_") :]: int(text)
        for name, text in defines.items()
        if name.startswith("XN_MSG_") and name != "XN_MSG_MAX"
    }
    python_messages = {
        name: number for number, (name, _handler) in gateway_base.Message._types.items()
    }
    assert c_messages == python_messages
    assert defines["XN_MSG_MAX"] == "XN_MSG_CHANNEL_LAST_MESSAGE"
    assert max(python_messages.values()) == c_messages["CHANNEL_LAST_MESSAGE"]


def test_header_size_agrees():
    assert int(wire_h()["XN_HEADER_SIZE"]) == gateway_base.HEADER_SIZE


def test_lone_bytes_extra_agrees():
    # a payload that is one byte string: opcode, length, the bytes, stop
    extra = len(gateway_base.dumps_internal(b"abc")) - 3
    assert int(wire_h()["XN_LONE_BYTES_EXTRA"]) == extra
