"""Converters between the steppe.v1 wire messages and ingest's domain values.

The only ingest module that imports generated protobuf code. Stateless: no I/O, no catalog
lookups (run existence and name rules are the servicer's job).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc

from steppe.errors import (
    InvalidParameterValue,
    SteppeError,
    grpc_status_name,
)
from steppe.ingest.catalog import RUN_STATUSES, ExperimentRecord, RunRecord
from steppe.ingest.layout import METRICS_SCHEMA
from steppe.v1 import steppe_pb2 as pb
from steppe.v1 import steppe_pb2_grpc as pb_grpc

__all__ = [
    "DICT_METRICS_SCHEMA",
    "ERROR_CODE_KEY",
    "MAX_POINTS_PER_BATCH",
    "MAX_STREAM_ID_LENGTH",
    "BatchRejection",
    "CreateExperimentRequest",
    "CreateRunRequest",
    "DecodedBatch",
    "DeleteTagRequest",
    "DeleteTagResponse",
    "Experiment",
    "GetExperimentRequest",
    "GetRunRequest",
    "IngestServicerBase",
    "LogParamsRequest",
    "LogParamsResponse",
    "MetricBatch",
    "ReceivedBatch",
    "Run",
    "SetExperimentRequest",
    "SetTagsRequest",
    "SetTagsResponse",
    "StreamAck",
    "UpdateRunRequest",
    "add_servicer",
    "batch_position",
    "decode_metric_batch",
    "encode_metric_batch",
    "experiment_to_pb",
    "grpc_error",
    "parse_metric_batch",
    "rejection",
    "run_to_pb",
    "status_from_pb",
    "status_to_pb",
    "stream_ack",
]

#: Trailing-metadata key carrying MLflow's ``error_code`` string on a failed unary call.
ERROR_CODE_KEY = "steppe-error-code"
#: Bounds one batch so one message can never hold the memtable hostage (DESIGN 8).
MAX_POINTS_PER_BATCH = 1_000_000
MAX_STREAM_ID_LENGTH = 128
#: METRICS_SCHEMA with run_id and key dictionary-encoded: how a decoded batch carries its
#: per-batch dictionaries without expanding a string per point.
DICT_METRICS_SCHEMA = pa.schema(
    [
        pa.field(f.name, pa.dictionary(pa.int32(), pa.string()), nullable=False)
        if f.name in ("run_id", "key")
        else f
        for f in METRICS_SCHEMA
    ]
)

IngestServicerBase = pb_grpc.IngestServicer

# Message types the servicer names in annotations (it must not import steppe.v1 itself).
MetricBatch = pb.MetricBatch
StreamAck = pb.StreamAck
BatchRejection = pb.BatchRejection
Experiment = pb.Experiment
Run = pb.Run
CreateExperimentRequest = pb.CreateExperimentRequest
SetExperimentRequest = pb.SetExperimentRequest
GetExperimentRequest = pb.GetExperimentRequest
CreateRunRequest = pb.CreateRunRequest
GetRunRequest = pb.GetRunRequest
UpdateRunRequest = pb.UpdateRunRequest
LogParamsRequest = pb.LogParamsRequest
LogParamsResponse = pb.LogParamsResponse
SetTagsRequest = pb.SetTagsRequest
SetTagsResponse = pb.SetTagsResponse
DeleteTagRequest = pb.DeleteTagRequest
DeleteTagResponse = pb.DeleteTagResponse

_LITTLE_ENDIAN = sys.byteorder == "little"
_STATUS_TO_PB: dict[str, pb.RunStatus] = {
    name: pb.RunStatus.Value(f"RUN_STATUS_{name}") for name in RUN_STATUSES
}
_STATUS_FROM_PB: dict[int, str] = {int(number): name for name, number in _STATUS_TO_PB.items()}


@dataclass(frozen=True)
class DecodedBatch:
    """One MetricBatch as a DICT_METRICS_SCHEMA table (its own dictionaries, no string per
    point; ``table.cast(METRICS_SCHEMA)`` expands them) plus the dictionaries (for name
    checks)."""

    stream_id: str
    seq: int
    run_ids: tuple[str, ...]
    keys: tuple[str, ...]
    table: pa.Table


@dataclass(frozen=True)
class ReceivedBatch:
    """A MetricBatch as it came off the wire: the parsed message, and the bytes it was parsed
    from, which become the WAL record as they are (the server never serializes a batch)."""

    message: pb.MetricBatch
    raw: bytes


def _receive_batch(raw: bytes) -> ReceivedBatch:
    return ReceivedBatch(pb.MetricBatch.FromString(raw), raw)


class _Registration:
    """Stands in for the grpc.aio server while the generated code registers the service, to
    swap StreamMetrics' request deserializer for ``_receive_batch`` (keep the bytes)."""

    def __init__(self, server: Any, servicer: pb_grpc.IngestServicer) -> None:
        self._server = server
        self._servicer = servicer

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the registered handlers below are the ones that answer

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        stream = handlers["StreamMetrics"]
        handlers = {
            **handlers,
            "StreamMetrics": grpc.stream_stream_rpc_method_handler(
                self._servicer.StreamMetrics,
                request_deserializer=_receive_batch,
                response_serializer=stream.response_serializer,
            ),
        }
        generic = grpc.method_handlers_generic_handler(service, handlers)
        self._server.add_generic_rpc_handlers((generic,))
        self._server.add_registered_method_handlers(service, handlers)


def add_servicer(servicer: pb_grpc.IngestServicer, server: Any) -> None:
    """Register ``servicer`` on a grpc.aio server; StreamMetrics receives ReceivedBatch."""
    pb_grpc.add_IngestServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, _Registration(server, servicer)
    )


def parse_metric_batch(payload: bytes) -> pb.MetricBatch:
    """Parse a serialized MetricBatch (a WAL record payload)."""
    batch = pb.MetricBatch()
    batch.ParseFromString(payload)
    return batch


def _le_buffer(data: bytes, typecode: str) -> pa.Buffer:
    # Zero-copy on little-endian hosts: Arrow wraps the bytes object itself.
    if _LITTLE_ENDIAN:
        return pa.py_buffer(data)
    column = array(typecode)
    column.frombytes(data)
    column.byteswap()
    return pa.py_buffer(column.tobytes())


def _column(data: bytes, arrow_type: pa.DataType, typecode: str, count: int) -> pa.Array:
    return pa.Array.from_buffers(arrow_type, count, [None, _le_buffer(data, typecode)])


def _first_position(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _check_indices(field: str, indices: pa.Array, size: int, dictionary: str) -> None:
    if len(indices) == 0:
        return
    out_of_range = pc.greater_equal(indices, pa.scalar(size, pa.uint32()))
    if pc.any(out_of_range).as_py():
        i = _first_position(out_of_range)
        raise InvalidParameterValue(
            f"{field}[{i}]",
            indices[i].as_py(),
            f"index out of range: {dictionary} has {size} entries",
        )


def _dictionary_column(indices: pa.Array, names: tuple[str, ...]) -> pa.DictionaryArray:
    codes = pa.Array.from_buffers(pa.int32(), len(indices), indices.buffers())
    if len(set(names)) != len(names):
        # A repeated name would make two codes for one series: point both at its first entry.
        first: dict[str, int] = {}
        remap = pa.array([first.setdefault(name, i) for i, name in enumerate(names)], pa.int32())
        codes = pc.take(remap, codes)
    return pa.DictionaryArray.from_arrays(codes, pa.array(names, pa.string()))


def decode_metric_batch(
    batch: pb.MetricBatch, *, max_points: int = MAX_POINTS_PER_BATCH
) -> DecodedBatch:
    """Check the batch's shape and build its METRICS_SCHEMA table.

    Raises InvalidParameterValue naming the first bad field: header (stream_id, seq), count
    vs. column byte lengths, dictionary indices. Names, runs and timestamps are checked by
    steppe.ingest.metrics, the rules of both doors.
    """
    if not batch.stream_id:
        raise InvalidParameterValue("stream_id", batch.stream_id, "stream_id must be set")
    if len(batch.stream_id) > MAX_STREAM_ID_LENGTH:
        raise InvalidParameterValue(
            "stream_id", batch.stream_id, f"at most {MAX_STREAM_ID_LENGTH} characters"
        )
    if batch.seq < 1:
        raise InvalidParameterValue("seq", batch.seq, "seq starts at 1 within a stream")
    count = batch.count
    if count > max_points:
        raise InvalidParameterValue(
            "count", count, f"at most {max_points} points per batch; split the batch"
        )
    columns = {
        "run_index": (batch.run_index, 4, "uint32"),
        "key_index": (batch.key_index, 4, "uint32"),
        "step": (batch.step, 8, "int64"),
        "timestamp_ms": (batch.timestamp_ms, 8, "int64"),
        "value": (batch.value, 8, "float64"),
    }
    for name, (data, width, type_name) in columns.items():
        if len(data) != width * count:
            raise InvalidParameterValue(
                name,
                f"<{len(data)} bytes>",
                f"count={count} needs {width * count} bytes ({type_name} little-endian per point)",
            )
    run_ids = tuple(batch.run_ids)
    keys = tuple(batch.keys)
    run_index = _column(columns["run_index"][0], pa.uint32(), "I", count)
    key_index = _column(columns["key_index"][0], pa.uint32(), "I", count)
    step = _column(columns["step"][0], pa.int64(), "q", count)
    timestamp = _column(columns["timestamp_ms"][0], pa.int64(), "q", count)
    value = _column(columns["value"][0], pa.float64(), "d", count)
    _check_indices("run_index", run_index, len(run_ids), "run_ids")
    _check_indices("key_index", key_index, len(keys), "keys")
    # Zero-copy: the validated uint32 indices are < len(dictionary) < 2**31, so the same
    # buffers read as int32 dictionary indices.
    table = pa.Table.from_arrays(
        [
            _dictionary_column(run_index, run_ids),
            _dictionary_column(key_index, keys),
            step,
            timestamp,
            value,
        ],
        schema=DICT_METRICS_SCHEMA,
    )
    return DecodedBatch(batch.stream_id, batch.seq, run_ids, keys, table)


def _le_bytes(column: pa.Array | pa.ChunkedArray, arrow_type: pa.DataType) -> bytes:
    arr = column.cast(arrow_type)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    width = arrow_type.bit_width // 8
    data = bytes(
        arr.buffers()[1].to_pybytes()[arr.offset * width : (arr.offset + len(arr)) * width]
    )
    if _LITTLE_ENDIAN:
        return data
    swapped = array({4: "I", 8: "q"}[width])
    swapped.frombytes(data)
    swapped.byteswap()
    return swapped.tobytes()


def encode_metric_batch(stream_id: str, seq: int, table: pa.Table) -> pb.MetricBatch:
    """The inverse of decode_metric_batch for a METRICS_SCHEMA (or DICT_METRICS_SCHEMA)
    table (tests, tools)."""
    table = table.cast(METRICS_SCHEMA).combine_chunks()
    runs = pc.dictionary_encode(table["run_id"]).combine_chunks()
    keys = pc.dictionary_encode(table["key"]).combine_chunks()
    return pb.MetricBatch(
        stream_id=stream_id,
        seq=seq,
        run_ids=runs.dictionary.to_pylist(),
        keys=keys.dictionary.to_pylist(),
        count=table.num_rows,
        run_index=_le_bytes(runs.indices, pa.uint32()),
        key_index=_le_bytes(keys.indices, pa.uint32()),
        step=_le_bytes(table["step"], pa.int64()),
        timestamp_ms=_le_bytes(table["timestamp"], pa.int64()),
        value=_le_bytes(table["value"], pa.float64()),
    )


def batch_position(payload: bytes) -> tuple[str, int]:
    """(stream_id, seq) of a serialized MetricBatch, for watermark recovery."""
    batch = parse_metric_batch(payload)
    return batch.stream_id, batch.seq


def stream_ack(acked_seq: int, rejected: Iterable[pb.BatchRejection]) -> pb.StreamAck:
    return pb.StreamAck(acked_seq=acked_seq, rejected=rejected)


def rejection(seq: int, err: SteppeError) -> pb.BatchRejection:
    field = err.field if isinstance(err, InvalidParameterValue) else ""
    return pb.BatchRejection(seq=seq, field=field, message=err.message)


# -- run lifecycle ------------------------------------------------------------------------


def status_to_pb(status: str) -> pb.RunStatus:
    return _STATUS_TO_PB[status]


def status_from_pb(field: str, status: int) -> str | None:
    """None for UNSPECIFIED ("keep the current status")."""
    if status == pb.RUN_STATUS_UNSPECIFIED:
        return None
    try:
        return _STATUS_FROM_PB[int(status)]
    except KeyError:
        raise InvalidParameterValue(
            field, status, f"must be one of {', '.join(RUN_STATUSES)}"
        ) from None


def experiment_to_pb(record: ExperimentRecord) -> pb.Experiment:
    return pb.Experiment(
        experiment_id=record.experiment_id,
        name=record.name,
        artifact_location=record.artifact_location,
        lifecycle_stage=record.lifecycle_stage,
        creation_time=record.creation_time,
        last_update_time=record.last_update_time,
        tags=[pb.Tag(key=k, value=v) for k, v in record.tags.items()],
    )


def run_to_pb(record: RunRecord) -> pb.Run:
    return pb.Run(
        info=pb.RunInfo(
            run_id=record.run_id,
            experiment_id=record.experiment_id,
            run_name=record.run_name,
            status=status_to_pb(record.status),
            start_time=record.start_time,
            end_time=record.end_time or 0,
            lifecycle_stage=record.lifecycle_stage,
            artifact_uri=record.artifact_uri,
            user_id=record.user_id,
        ),
        params=[pb.Param(key=k, value=v) for k, v in record.params.items()],
        tags=[pb.Tag(key=k, value=v) for k, v in record.tags.items()],
    )


# -- errors -------------------------------------------------------------------------------


def grpc_error(err: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(status code, details, trailing metadata) for a failed call; metadata carries error_code."""
    if isinstance(err, SteppeError):
        code = getattr(grpc.StatusCode, grpc_status_name(err.error_code))
        return code, err.message, ((ERROR_CODE_KEY, err.error_code),)
    details = f"internal error: {type(err).__name__}: {err}"
    return grpc.StatusCode.INTERNAL, details, ((ERROR_CODE_KEY, SteppeError.error_code),)
