"""The exception tree of steppe, shared by the client and the server.

    SteppeError                      base; ``error_code`` is MLflow's string code
    ├── InvalidParameterValue        bad input: names the field, the value and the rule (HTTP 400)
    ├── ResourceDoesNotExist         unknown experiment, run, ... (HTTP 404)
    ├── ResourceAlreadyExists        e.g. an experiment name taken (HTTP 400)
    ├── Unauthenticated              the server wants a token we did not send (or not this one)
    ├── ServerUnavailable            the server cannot be reached or started
    └── FlushTimeout                 points not acked in time; says where they are

``MlflowException`` is an alias of ``SteppeError`` so ``except MlflowException`` keeps working.

``ERROR_CODES`` is the one table from MLflow's error codes to the HTTP status and the gRPC
status each door answers with; the server's REST and gRPC sides and the client read it, so
a code means the same on both doors. Errors that never cross the wire stay out of this tree:
``steppe.ingest.store.StoreClosed`` and ``steppe.ingest.wal.WalFailed`` (the server stops:
see README, Guarantees), ``steppe.spool.SpoolFailed`` (an OSError: the local disk refused the
spool) and ``steppe.lock.DataDirLocked`` (another process owns the data dir).
"""

from __future__ import annotations

import reprlib
from typing import NamedTuple

_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80


class Status(NamedTuple):
    """How one error code is answered: an HTTP status and a ``grpc.StatusCode`` name."""

    http: int
    grpc: str


#: MLflow's error codes (mlflow.protos.databricks_pb2, the HTTP statuses of
#: mlflow.exceptions) -> how steppe answers them on each door.
ERROR_CODES: dict[str, Status] = {
    "BAD_REQUEST": Status(400, "INVALID_ARGUMENT"),
    "INVALID_PARAMETER_VALUE": Status(400, "INVALID_ARGUMENT"),
    "RESOURCE_ALREADY_EXISTS": Status(400, "ALREADY_EXISTS"),
    "UNAUTHENTICATED": Status(401, "UNAUTHENTICATED"),
    "PERMISSION_DENIED": Status(403, "PERMISSION_DENIED"),
    "ENDPOINT_NOT_FOUND": Status(404, "UNIMPLEMENTED"),
    "NOT_FOUND": Status(404, "NOT_FOUND"),
    "RESOURCE_DOES_NOT_EXIST": Status(404, "NOT_FOUND"),
    "METHOD_NOT_ALLOWED": Status(405, "UNIMPLEMENTED"),
    "ABORTED": Status(409, "ABORTED"),
    "ALREADY_EXISTS": Status(409, "ALREADY_EXISTS"),
    "RESOURCE_CONFLICT": Status(409, "ABORTED"),
    "REQUEST_LIMIT_EXCEEDED": Status(429, "RESOURCE_EXHAUSTED"),
    "RESOURCE_EXHAUSTED": Status(429, "RESOURCE_EXHAUSTED"),
    "INTERNAL_ERROR": Status(500, "INTERNAL"),
    "INVALID_STATE": Status(500, "FAILED_PRECONDITION"),
    "NOT_IMPLEMENTED": Status(501, "UNIMPLEMENTED"),
    "TEMPORARILY_UNAVAILABLE": Status(503, "UNAVAILABLE"),
    "DEADLINE_EXCEEDED": Status(504, "DEADLINE_EXCEEDED"),
}

#: The code a bare status stands for, when no code came with it (a gRPC status from a
#: proxy, an HTTP error of the web framework itself).
CODE_BY_GRPC_STATUS: dict[str, str] = {
    "INVALID_ARGUMENT": "INVALID_PARAMETER_VALUE",
    "NOT_FOUND": "RESOURCE_DOES_NOT_EXIST",
    "ALREADY_EXISTS": "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED",
    "UNIMPLEMENTED": "NOT_IMPLEMENTED",
}
CODE_BY_HTTP_STATUS: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "REQUEST_LIMIT_EXCEEDED",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def http_status(error_code: str) -> int:
    """The HTTP status of an MLflow error code (500 for a code MLflow does not define)."""
    status = ERROR_CODES.get(error_code)
    return 500 if status is None else status.http


def grpc_status_name(error_code: str) -> str:
    """The ``grpc.StatusCode`` member name of an MLflow error code (INTERNAL if unknown)."""
    status = ERROR_CODES.get(error_code)
    return "INTERNAL" if status is None else status.grpc


class SteppeError(Exception):
    """Base of every steppe error. ``error_code`` follows MLflow's names; ``http_status``
    comes from ``ERROR_CODES`` unless a class names its own."""

    error_code = "INTERNAL_ERROR"
    http_status = 500

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "http_status" not in cls.__dict__:
            cls.http_status = http_status(cls.error_code)

    def __init__(self, message: str, error_code: str | None = None) -> None:
        """``error_code`` overrides the class's, as ``MlflowException(msg, error_code=...)``."""
        super().__init__(message)
        self.message = message
        if error_code is not None:
            self.error_code = error_code
            self.http_status = http_status(error_code)


class InvalidParameterValue(SteppeError):
    error_code = "INVALID_PARAMETER_VALUE"

    def __init__(self, field: str, value: object, rule: str) -> None:
        super().__init__(f"Invalid value {_short.repr(value)} for '{field}': {rule}")
        self.field = field
        self.value = value
        self.rule = rule

    @classmethod
    def received(cls, message: str) -> InvalidParameterValue:
        """Rebuild from a message that crossed the wire (field and rule are in the text)."""
        err = cls.__new__(cls)
        SteppeError.__init__(err, message)
        err.field, err.value, err.rule = "", None, ""
        return err


class ResourceDoesNotExist(SteppeError):
    error_code = "RESOURCE_DOES_NOT_EXIST"


class ResourceAlreadyExists(SteppeError):
    error_code = "RESOURCE_ALREADY_EXISTS"


class Unauthenticated(SteppeError):
    error_code = "UNAUTHENTICATED"


class ServerUnavailable(SteppeError):
    error_code = "TEMPORARILY_UNAVAILABLE"


class FlushTimeout(SteppeError):
    error_code = "DEADLINE_EXCEEDED"


MlflowException = SteppeError

#: error_code -> exception class, for errors that cross the wire.
BY_CODE: dict[str, type[SteppeError]] = {
    cls.error_code: cls
    for cls in (
        SteppeError,
        ResourceDoesNotExist,
        ResourceAlreadyExists,
        ServerUnavailable,
        Unauthenticated,
    )
}


def from_code(error_code: str, message: str) -> SteppeError:
    """Rebuild an error received over gRPC or HTTP (InvalidParameterValue keeps only its text)."""
    if error_code == InvalidParameterValue.error_code:
        return InvalidParameterValue.received(message)
    cls = BY_CODE.get(error_code, SteppeError)
    return cls(message)
