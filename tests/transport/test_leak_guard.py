"""The suite's guard against sockets dropped unclosed (``tests/conftest.py``)."""

from __future__ import annotations

import gc
import socket

import pytest

from tests.conftest import no_socket_left_unclosed


def _drop_in_a_cycle() -> None:
    sock = socket.socket()
    cycle: list[object] = [sock]
    cycle.append(cycle)


def _guarded(body: object) -> None:
    with no_socket_left_unclosed():
        if callable(body):
            body()


def test_a_socket_dropped_in_a_reference_cycle_fails_the_test_that_dropped_it() -> None:
    # Without the guard such a socket is closed by some later collection,
    # and its ResourceWarning fails whatever test runs then.
    gc.disable()  # no automatic collection before the guard looks
    try:
        with pytest.raises(pytest.fail.Exception, match="left unclosed by this test"):
            _guarded(_drop_in_a_cycle)
    finally:
        gc.enable()


def test_sockets_closed_or_still_held_pass() -> None:
    held = socket.socket()
    kept: list[socket.socket] = []
    try:
        with no_socket_left_unclosed():
            socket.socket().close()
            kept.append(socket.socket())  # open, but not garbage: not a leak
    finally:
        held.close()
        for sock in kept:
            sock.close()
