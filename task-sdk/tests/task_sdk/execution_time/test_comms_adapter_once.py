"""task-sdk 0002: a CommsDecoder built with its default decoders builds no TypeAdapter once one was built.

Every task process builds ``CommsDecoder[ToTask, ToSupervisor](log=log)`` first thing. On task SDK 1.3.2 each such
decoder built two ``TypeAdapter(ToTask)``s (body and errors), ~5 ms and ~2 MiB each, in every task process.
Here the adapters a decoder builds are counted through the ``TypeAdapter`` name the comms module uses.
"""

from __future__ import annotations

import socket

import pytest
import structlog
from airflow.sdk.execution_time import comms
from airflow.sdk.execution_time.comms import CommsDecoder, ToSupervisor, ToTask


@pytest.fixture
def built(monkeypatch) -> list:
    """Every TypeAdapter the comms module builds from now on, in order."""
    seen: list = []
    real = comms.TypeAdapter

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            seen.append(args[0] if args else kwargs.get("type"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(comms, "TypeAdapter", Counting)
    return seen


@pytest.fixture
def sock():
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


def new_decoder(sock) -> CommsDecoder:
    return CommsDecoder[ToTask, ToSupervisor](log=structlog.get_logger(), socket=sock)


def test_decoders_built_after_the_first_build_no_adapter(built, sock):
    first = new_decoder(sock)
    built.clear()

    for _ in range(3):
        d = new_decoder(sock)
        assert d.body_decoder is first.body_decoder
        assert d.err_decoder is first.body_decoder

    assert built == [], f"each decoder built its own adapters: {len(built)} TypeAdapter(s) for 3 decoders"


def test_the_shared_adapter_decodes_what_a_task_process_receives(sock):
    d = new_decoder(sock)
    msg = d.body_decoder.validate_python({"type": "ErrorResponse", "error": "VARIABLE_NOT_FOUND", "detail": {"x": 1}})
    assert isinstance(msg, comms.ErrorResponse)
    assert msg.detail == {"x": 1}


def test_decoders_given_their_own_adapters_keep_them(sock):
    from pydantic import TypeAdapter

    own = TypeAdapter(ToTask)
    d = CommsDecoder[ToTask, ToSupervisor](log=structlog.get_logger(), socket=sock, body_decoder=own)
    assert d.body_decoder is own
