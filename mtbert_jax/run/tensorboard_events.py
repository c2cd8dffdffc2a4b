"""TensorBoard event files read back without TensorFlow or TensorBoard: what a run wrote to
WORKDIR/tensorboard, as TensorBoard shows it (tests, notebooks, a cluster node without a browser).

An event file is a TFRecord file of `Event` protocol buffers (tensorboardX ships the proto
classes): each record is an 8-byte little-endian length, the length's 4-byte masked CRC-32C, the
data and the data's masked CRC-32C. A record cut short by a kill mid-write ends the file's
readable part, as it does for TensorBoard.

A SessionLog START event at step S (what a resumed run writes first) drops every value at step
>= S read before it, from every tag: TensorBoard's purge, which hides what a killed process had
logged after the checkpoint its successor resumed from. The files themselves keep those values;
read them through this module, or TensorBoard, to see the run as one uninterrupted run.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator, Union

from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

Value = Union[float, str]


def event_files(logdir: Path) -> list[Path]:
    """The event files of one TensorBoard run directory (not its subdirectories, which are other
    runs), in the order TensorBoard reads them: by name, which starts with the creation time."""
    return sorted(p for p in Path(logdir).iterdir() if p.is_file() and ".tfevents." in p.name)


def records(path: Path) -> Iterator[bytes]:
    """The complete records of one TFRecord file; stops at the first truncated or misframed one."""
    data = Path(path).read_bytes()
    at = 0
    while at + 12 <= len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        end = at + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            return
        yield data[at + 12:at + 12 + length]
        at = end


def events(path: Path) -> Iterator[Event]:
    for record in records(path):
        yield Event.FromString(record)


def read_values(logdir: Path) -> dict[str, list[tuple[int, Value]]]:
    """{tag: [(step, value), ...] in the order written}, after TensorBoard's purge. Scalars are
    floats; text summaries (tag "NAME/text_summary") are their strings; other plugins' values
    (hparams) are left out."""
    found: dict[str, list[tuple[int, Value]]] = {}
    for path in event_files(logdir):
        for event in events(path):
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                found = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in found.items()}
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    found.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif kind == "tensor" and value.tensor.string_val:
                    found.setdefault(value.tag, []).append((event.step, value.tensor.string_val[0].decode()))
                elif kind == "tensor" and value.tensor.float_val:
                    found.setdefault(value.tag, []).append((event.step, float(value.tensor.float_val[0])))
    return {tag: values for tag, values in found.items() if values}


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the scalars only, after TensorBoard's purge."""
    return {tag: values for tag, values in read_values(logdir).items()
            if all(isinstance(v, float) for _, v in values)}
