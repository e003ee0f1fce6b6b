"""ml.preprocess.metastore_probe against a stand-in metastore on 127.0.0.1 (tests/unit/ml/preprocess/fake_metastore):
the call's bytes, a list of databases, a MetaException, an application error, silence and a closed port."""

from __future__ import annotations

import struct

import pytest

from ml.preprocess.metastore_probe import MetastoreError, _request, get_all_databases
from tests.unit.ml.preprocess.fake_metastore import (
    application_exception_answer,
    databases_answer,
    fake_metastore,
    meta_exception_answer,
)


def test_the_request_is_a_strict_binary_protocol_call_without_arguments() -> None:
    request = _request(7)
    assert request[:4] == struct.pack(">I", 0x80010001)
    assert request[4:8] == struct.pack(">i", len("get_all_databases")) and request[8:25] == b"get_all_databases"
    assert request[25:] == struct.pack(">i", 7) + b"\x00"


def test_the_databases_are_returned() -> None:
    with fake_metastore(databases_answer(["default", "mlops"])) as port:
        assert get_all_databases("127.0.0.1", port, timeout_s=5) == ["default", "mlops"]


@pytest.mark.parametrize("answer", [meta_exception_answer, application_exception_answer])
def test_an_error_answer_raises_its_message(answer: object) -> None:
    text = "Unable to open a test connection to the given database. JDBC url = jdbc:postgresql://127.0.0.1:5432/x"
    with fake_metastore(answer(text)) as port:  # type: ignore[operator]
        with pytest.raises(MetastoreError, match=r"jdbc:postgresql://127\.0\.0\.1:5432"):
            get_all_databases("127.0.0.1", port, timeout_s=5)


def test_silence_is_a_timeout() -> None:
    with fake_metastore(None) as port:
        with pytest.raises(TimeoutError):
            get_all_databases("127.0.0.1", port, timeout_s=0.2)


def test_a_connection_closed_without_an_answer_is_an_error() -> None:
    with fake_metastore(b"") as port:
        with pytest.raises(ConnectionError, match="closed the connection"):
            get_all_databases("127.0.0.1", port, timeout_s=5)
