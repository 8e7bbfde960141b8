"""The client's only door to the generated steppe.v1 code: batches, requests, replies, errors.

Converts between steppe's plain values and protobuf messages; opens no connections.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping, Sequence

import grpc

from steppe import errors
from steppe.entities import Experiment, Run, RunData, RunInfo
from steppe.v1 import steppe_pb2 as pb
from steppe.v1 import steppe_pb2_grpc as pb_grpc

IngestStub = pb_grpc.IngestStub
MetricBatch = pb.MetricBatch
StreamAck = pb.StreamAck

_LITTLE = sys.byteorder == "little"

_STATUS_TO_PB: dict[str, pb.RunStatus] = {
    "RUNNING": pb.RUN_STATUS_RUNNING,
    "SCHEDULED": pb.RUN_STATUS_SCHEDULED,
    "FINISHED": pb.RUN_STATUS_FINISHED,
    "FAILED": pb.RUN_STATUS_FAILED,
    "KILLED": pb.RUN_STATUS_KILLED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def _le(column: array | bytes) -> bytes:  # type: ignore[type-arg]
    if isinstance(column, bytes):
        return column  # already little-endian
    if not _LITTLE:
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def encode_batch(
    stream_id: str,
    seq: int,
    run_ids: Sequence[str],
    keys: Sequence[str],
    run_index: array | bytes,  # type: ignore[type-arg]
    key_index: array | bytes,  # type: ignore[type-arg]
    step: array | bytes,  # type: ignore[type-arg]
    timestamp_ms: array | bytes,  # type: ignore[type-arg]
    value: array | bytes,  # type: ignore[type-arg]
) -> pb.MetricBatch:
    """Columns are array('I'/'I'/'q'/'q'/'d') of one length; sent as little-endian bytes."""
    return pb.MetricBatch(
        stream_id=stream_id,
        seq=seq,
        run_ids=run_ids,
        keys=keys,
        count=len(value) // 8 if isinstance(value, bytes) else len(value),
        run_index=_le(run_index),
        key_index=_le(key_index),
        step=_le(step),
        timestamp_ms=_le(timestamp_ms),
        value=_le(value),
    )


def _tags(tags: Mapping[str, str] | None) -> list[pb.Tag]:
    return [pb.Tag(key=k, value=v) for k, v in (tags or {}).items()]


def status_to_pb(status: str) -> pb.RunStatus:
    try:
        return _STATUS_TO_PB[status]
    except KeyError:
        raise errors.InvalidParameterValue(
            "status", status, f"must be one of {', '.join(_STATUS_TO_PB)}"
        ) from None


def experiment_from_pb(msg: pb.Experiment) -> Experiment:
    return Experiment(
        experiment_id=msg.experiment_id,
        name=msg.name,
        artifact_location=msg.artifact_location,
        lifecycle_stage=msg.lifecycle_stage,
        tags={t.key: t.value for t in msg.tags},
        creation_time=msg.creation_time,
        last_update_time=msg.last_update_time,
    )


def run_from_pb(msg: pb.Run) -> Run:
    info = msg.info
    return Run(
        RunInfo(
            run_id=info.run_id,
            experiment_id=info.experiment_id,
            run_name=info.run_name,
            status=_STATUS_FROM_PB.get(info.status, "RUNNING"),
            start_time=info.start_time,
            end_time=info.end_time or None,
            lifecycle_stage=info.lifecycle_stage,
            artifact_uri=info.artifact_uri,
            user_id=info.user_id,
        ),
        RunData(
            params={p.key: p.value for p in msg.params},
            tags={t.key: t.value for t in msg.tags},
        ),
    )


class MetricStream:
    """The metric stream of one channel, fed batches already serialized (the bytes the
    sender spooled go on the wire as they are: a batch is serialized once)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.StreamMetrics = channel.stream_stream(  # named as the gRPC method
            "/steppe.v1.Ingest/StreamMetrics",
            request_serializer=None,  # bytes pass through
            response_deserializer=pb.StreamAck.FromString,
        )


class Unary:
    """Run-lifecycle calls on one stub; each raises steppe.errors on failure."""

    def __init__(self, stub: pb_grpc.IngestStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._stub, method)(
                request, timeout=self._timeout_s, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def create_experiment(
        self, name: str, artifact_location: str, tags: Mapping[str, str] | None
    ) -> Experiment:
        msg = self._call(
            "CreateExperiment",
            pb.CreateExperimentRequest(
                name=name, artifact_location=artifact_location, tags=_tags(tags)
            ),
        )
        return experiment_from_pb(msg)  # type: ignore[arg-type]

    def set_experiment(self, name: str) -> Experiment:
        msg = self._call("SetExperiment", pb.SetExperimentRequest(name=name))
        return experiment_from_pb(msg)  # type: ignore[arg-type]

    def get_experiment(self, experiment_id: str) -> Experiment:
        msg = self._call("GetExperiment", pb.GetExperimentRequest(experiment_id=experiment_id))
        return experiment_from_pb(msg)  # type: ignore[arg-type]

    def create_run(
        self,
        run_id: str,
        experiment_id: str,
        run_name: str,
        start_time: int,
        tags: Mapping[str, str] | None,
        user_id: str,
    ) -> Run:
        msg = self._call(
            "CreateRun",
            pb.CreateRunRequest(
                run_id=run_id,
                experiment_id=experiment_id,
                run_name=run_name,
                start_time=start_time,
                tags=_tags(tags),
                user_id=user_id,
            ),
        )
        return run_from_pb(msg)  # type: ignore[arg-type]

    def get_run(self, run_id: str) -> Run:
        return run_from_pb(self._call("GetRun", pb.GetRunRequest(run_id=run_id)))  # type: ignore[arg-type]

    def update_run(
        self, run_id: str, status: str | None, end_time: int | None, run_name: str | None
    ) -> Run:
        msg = self._call(
            "UpdateRun",
            pb.UpdateRunRequest(
                run_id=run_id,
                status=status_to_pb(status) if status else pb.RUN_STATUS_UNSPECIFIED,
                end_time=end_time or 0,
                run_name=run_name or "",
            ),
        )
        return run_from_pb(msg)  # type: ignore[arg-type]

    def log_params(self, run_id: str, params: Sequence[tuple[str, str]]) -> None:
        self._call(
            "LogParams",
            pb.LogParamsRequest(
                run_id=run_id, params=[pb.Param(key=k, value=v) for k, v in params]
            ),
        )

    def set_tags(self, run_id: str, tags: Sequence[tuple[str, str]]) -> None:
        self._call(
            "SetTags",
            pb.SetTagsRequest(run_id=run_id, tags=[pb.Tag(key=k, value=v) for k, v in tags]),
        )

    def delete_tag(self, run_id: str, key: str) -> None:
        self._call("DeleteTag", pb.DeleteTagRequest(run_id=run_id, key=key))


def error_from_rpc(exc: grpc.RpcError) -> errors.SteppeError:
    """Map a failed call to steppe's exception tree (the server sends MLflow's code)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    error_code = None
    for key, value in (exc.trailing_metadata() or ()) if hasattr(exc, "trailing_metadata") else ():
        if key == "steppe-error-code":
            error_code = value if isinstance(value, str) else value.decode()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unauthenticated(details or "the server wants a token (STEPPE_TOKEN)")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.ServerUnavailable(f"steppe server unavailable ({code.name}): {details}")
    if error_code is None:
        name = code.name if isinstance(code, grpc.StatusCode) else ""
        error_code = errors.CODE_BY_GRPC_STATUS.get(name, "INTERNAL_ERROR")
    return errors.from_code(error_code, details or "")
