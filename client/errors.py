"""The exception tree of steppe, shared by the client and the server.

    SteppeError                      base; ``error_code`` is MLflow's string code
    ├── InvalidParameterValue        bad input: names the field, the value and the rule (HTTP 400)
    ├── ResourceDoesNotExist         unknown experiment, run, ... (HTTP 404)
    ├── ResourceAlreadyExists        e.g. an experiment name taken (HTTP 400)
    ├── Unauthenticated              the server wants a token we did not send (or not this one)
    ├── ServerUnavailable            the server cannot be reached or started
    └── FlushTimeout                 points not acked in time; says where they are

``MlflowException`` is an alias of ``SteppeError`` so ``except MlflowException`` keeps working.
"""

from __future__ import annotations

import reprlib

_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80


class SteppeError(Exception):
    """Base of every steppe error. ``error_code`` follows MLflow's names."""

    error_code = "INTERNAL_ERROR"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameterValue(SteppeError):
    error_code = "INVALID_PARAMETER_VALUE"
    http_status = 400

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
    http_status = 404


class ResourceAlreadyExists(SteppeError):
    error_code = "RESOURCE_ALREADY_EXISTS"
    http_status = 400


class Unauthenticated(SteppeError):
    error_code = "UNAUTHENTICATED"
    http_status = 401


class ServerUnavailable(SteppeError):
    error_code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503


class FlushTimeout(SteppeError):
    error_code = "DEADLINE_EXCEEDED"
    http_status = 504


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
