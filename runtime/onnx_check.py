"""Refuse ONNX graphs whose tensors live in external files, without the onnx package.

An ONNX file may say that an initializer's data lives in another file (`external_data` with a
`location`), and onnxruntime then opens that path: `../secret.bin` or `/etc/shadow` would be
read into the graph. Artifacts written by export.build keep every weight inside the graph, so
the runtime refuses any graph that asks for external data, before onnxruntime sees it.

This walks the protobuf wire format over the fields that can hold tensors:
    ModelProto.graph (7), .training_info (20: graphs 1, 2), .functions (25: nodes 7)
    GraphProto.node (1), .initializer (5), .sparse_initializer (15)
    NodeProto.attribute (5)
    AttributeProto.t (5), .g (6), .tensors (10), .graphs (11), .sparse_tensor (22), .sparse_tensors (23)
    SparseTensorProto.values (1), .indices (2)
    TensorProto.external_data (13), .data_location (14; EXTERNAL = 1)
Everything else is skipped by its length, so a 100 MB graph is walked in milliseconds.
"""
from __future__ import annotations

from typing import Iterator

from .fsutil import ArtifactError

_MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies); deeper is refused rather than recursed into


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise _Malformed("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): ints for varints, views for length-delimited fields."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wt == 0:
            v, i = _varint(buf, i)
            yield field, wt, v
        elif wt == 1:
            i += 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            if i + ln > n:
                raise _Malformed("length past the end")
            yield field, wt, buf[i:i + ln]
            i += ln
        elif wt == 5:
            i += 4
        else:
            raise _Malformed(f"wire type {wt}")
        if i > n:
            raise _Malformed("field past the end")


def _sub(buf: memoryview, wanted: dict[int, str]) -> Iterator[tuple[str, memoryview]]:
    for field, wt, v in _fields(buf):
        if wt == 2 and field in wanted:
            yield wanted[field], v


def _tensor(buf: memoryview) -> bool:
    for field, wt, v in _fields(buf):
        if field == 13 and wt == 2:
            return True
        if field == 14 and wt == 0 and v == 1:
            return True
    return False


def _sparse(buf: memoryview) -> bool:
    return any(_tensor(t) for _, t in _sub(buf, {1: "t", 2: "t"}))


def _node(buf: memoryview, depth: int) -> bool:
    for _, attr in _sub(buf, {5: "attr"}):
        for kind, v in _sub(attr, {5: "t", 6: "g", 10: "t", 11: "g", 22: "s", 23: "s"}):
            if (kind == "t" and _tensor(v)) or (kind == "s" and _sparse(v)) or (kind == "g" and _graph(v, depth + 1)):
                return True
    return False


def _graph(buf: memoryview, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested deeper than {_MAX_DEPTH}")
    for kind, v in _sub(buf, {1: "node", 5: "t", 15: "s"}):
        if (kind == "t" and _tensor(v)) or (kind == "s" and _sparse(v)) or (kind == "node" and _node(v, depth)):
            return True
    return False


def uses_external_data(model: bytes) -> bool:
    """True if any tensor of the serialized ModelProto keeps its data in an external file.
    Raises ArtifactError if the bytes are not a well-formed protobuf."""
    buf = memoryview(model)
    try:
        for kind, v in _sub(buf, {7: "g", 20: "ti", 25: "f"}):
            if kind == "g" and _graph(v, 0):
                return True
            if kind == "ti" and any(_graph(g, 0) for _, g in _sub(v, {1: "g", 2: "g"})):
                return True
            if kind == "f" and any(_node(nd, 0) for _, nd in _sub(v, {7: "n"})):
                return True
    except _Malformed as e:
        raise ArtifactError(f"not a valid ONNX file ({e}); re-export the artifact.") from None
    return False


def check_graph_bytes(model: bytes, name: str) -> None:
    """ArtifactError if the graph `name` asks onnxruntime to read tensors from other files."""
    if uses_external_data(model):
        raise ArtifactError(f"graph '{name}' keeps tensors in external data files, which this runtime refuses "
                            f"(they can point anywhere on disk); re-export the artifact with `python -m export.build` "
                            f"(it keeps every weight inside the graph).")
