"""The door to TensorBoard's event records (``steppe.v1.tensorboard_pb2``, our subset of
its protos): an Event's scalars (``simple_value`` or a one-element tensor of the scalars
plugin) and the hparams plugin's session start info. Decodes bytes; reads no files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from steppe.v1 import tensorboard_pb2 as pb

# tensorflow's DataType numbers of the scalar kinds a summary tensor carries
_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64, _DT_BFLOAT16, _DT_HALF = 1, 2, 3, 9, 14, 19
_CONTENT = {_DT_FLOAT: "<f", _DT_DOUBLE: "<d", _DT_INT32: "<i", _DT_INT64: "<q", _DT_HALF: "<e"}


@dataclass
class Decoded:
    wall_time: float
    step: int
    scalars: list[tuple[str, float]]
    hparams: dict[str, str] | None = None
    skipped: int = 0  # values that are not scalars (images, histograms, text, ...)


@dataclass
class Decoder:
    """Decodes one run's events in order. TensorBoard writes a tag's plugin metadata only
    with its first value, so the decoder remembers each tag's plugin."""

    plugins: dict[str, str] = field(default_factory=dict)

    def decode(self, data: bytes) -> Decoded:
        event = pb.Event.FromString(data)
        out = Decoded(event.wall_time, event.step, [])
        if event.WhichOneof("what") != "summary":
            return out
        values = event.summary.value
        if len(values) == 1:  # the common event: one simple_value, no metadata
            value = values[0]
            if value.WhichOneof("value") == "simple_value" and not value.HasField("metadata"):
                out.scalars.append((value.tag or value.node_name, value.simple_value))
                return out
        for value in values:
            tag = value.tag or value.node_name
            if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
                self.plugins[tag] = value.metadata.plugin_data.plugin_name
            kind = value.WhichOneof("value")
            plugin = self.plugins.get(tag, "")
            if kind == "simple_value":
                out.scalars.append((tag, value.simple_value))
            elif plugin == "hparams":
                start = _session_start(value.metadata.plugin_data.content)
                if start is not None:
                    out.hparams = {**(out.hparams or {}), **start}
            elif kind == "tensor" and plugin in ("scalars", ""):
                number = _scalar(value.tensor)
                if number is None:
                    out.skipped += 1
                else:
                    out.scalars.append((tag, number))
            else:
                out.skipped += 1
        return out


def _scalar(tensor: pb.TensorProto) -> float | None:
    """The value of a one-element numeric tensor; None for anything else."""
    if any(d.size != 1 for d in tensor.tensor_shape.dim):
        return None
    dtype = tensor.dtype
    content = tensor.tensor_content
    if content:
        if dtype == _DT_BFLOAT16 and len(content) == 2:
            return float(struct.unpack("<f", b"\0\0" + content)[0])
        fmt = _CONTENT.get(dtype)
        if fmt is None or len(content) != struct.calcsize(fmt):
            return None
        return float(struct.unpack(fmt, content)[0])
    if dtype == _DT_FLOAT and len(tensor.float_val) == 1:
        return float(tensor.float_val[0])
    if dtype == _DT_DOUBLE and len(tensor.double_val) == 1:
        return float(tensor.double_val[0])
    if dtype == _DT_HALF and len(tensor.half_val) == 1:
        return float(struct.unpack("<e", struct.pack("<H", tensor.half_val[0] & 0xFFFF))[0])
    if dtype == _DT_BFLOAT16 and len(tensor.half_val) == 1:
        return float(struct.unpack("<f", struct.pack("<I", (tensor.half_val[0] & 0xFFFF) << 16))[0])
    if dtype == _DT_INT32 and len(tensor.int_val) == 1:
        return float(tensor.int_val[0])
    if dtype == _DT_INT64 and len(tensor.int64_val) == 1:
        return float(tensor.int64_val[0])
    return None


def _session_start(content: bytes) -> dict[str, str] | None:
    data = pb.HParamsPluginData.FromString(content)
    if data.WhichOneof("data") != "session_start_info":
        return None
    out = {}
    for name, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            number = value.number_value
            out[name] = str(int(number)) if number.is_integer() else repr(number)
        elif kind == "string_value":
            out[name] = value.string_value
        elif kind == "bool_value":
            out[name] = str(value.bool_value)
    return out


def encode_scalar_event(wall_time: float, step: int, tag: str, value: float) -> bytes:
    """An Event with one simple_value scalar (for writing test and benchmark logs fast)."""
    event = pb.Event(wall_time=wall_time, step=step)
    event.summary.value.add(tag=tag, simple_value=value)
    data: bytes = event.SerializeToString()
    return data


def encode_file_version(wall_time: float) -> bytes:
    """The first event of every event file: the format's version."""
    data: bytes = pb.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString()
    return data
