"""The one error table (steppe.errors.ERROR_CODES): every exception class, the REST door and
the gRPC door agree on it, and a code survives a round trip through either door."""

from __future__ import annotations

import grpc
import pytest

from steppe import errors
from steppe.ingest.wire import grpc_error
from steppe.query.mlflow_api import HTTP_STATUS, ApiError

CLASSES = [
    errors.SteppeError,
    errors.InvalidParameterValue,
    errors.ResourceDoesNotExist,
    errors.ResourceAlreadyExists,
    errors.Unauthenticated,
    errors.ServerUnavailable,
    errors.FlushTimeout,
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_class_answers_its_codes_statuses(cls: type[errors.SteppeError]) -> None:
    assert cls.error_code in errors.ERROR_CODES
    assert cls.http_status == errors.ERROR_CODES[cls.error_code].http == HTTP_STATUS[cls.error_code]


def test_every_grpc_status_name_is_a_real_status() -> None:
    for status in errors.ERROR_CODES.values():
        assert isinstance(getattr(grpc.StatusCode, status.grpc), grpc.StatusCode)
    for name, code in errors.CODE_BY_GRPC_STATUS.items():
        assert errors.ERROR_CODES[code].grpc == name
    # A bare HTTP status names the nearest code; 413 (body too large) has none of its own.
    for status, code in errors.CODE_BY_HTTP_STATUS.items():
        assert errors.ERROR_CODES[code].http == status or (status, code) == (
            413,
            "REQUEST_LIMIT_EXCEEDED",
        )


@pytest.mark.parametrize("code", sorted(errors.ERROR_CODES))
def test_the_grpc_door_sends_the_tables_status_and_the_code(code: str) -> None:
    status, details, metadata = grpc_error(ApiError(code, "boom"))
    assert status.name == errors.ERROR_CODES[code].grpc
    assert details == "boom"
    assert dict(metadata)["steppe-error-code"] == code
    assert ApiError(code, "boom").http_status == errors.ERROR_CODES[code].http


def test_an_unknown_code_is_an_internal_error_on_both_doors() -> None:
    assert ApiError("NO_SUCH_CODE", "x").http_status == 500
    status, _, _ = grpc_error(ApiError("NO_SUCH_CODE", "x"))
    assert status is grpc.StatusCode.INTERNAL
    status, _, _ = grpc_error(RuntimeError("bug"))
    assert status is grpc.StatusCode.INTERNAL
