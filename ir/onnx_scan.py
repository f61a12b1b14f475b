"""Reading an ``.onnx`` file without copying its weights.

``onnx.load`` copies every weight into the proto, yet the analysis needs only the graph,
the shapes and dtypes of the weights and a few small constants. ``read_light`` walks the
protobuf wire format of the file, leaves out the ``raw_data`` of each large initializer of
the main graph, and parses the rest; ``FileWeights.loader`` gives, per left
out tensor, a function that reads its bytes from the file on first use.

Rules:
- a tensor is left in the file only when it is plain (a numeric or bool ``data_type``
  numpy reads as is, stored in ``raw_data``, no segment, not external) and that data is
  over ``8 * keep`` bytes, so over ``keep`` elements (the caller's limit: every constant
  that folding or shape inference reads is parsed as ``onnx.load`` parses it);
- the array a loader gives is the one ``numpy_helper.to_array`` gives for the full tensor
  (same dtype, shape and read-only buffer);
- the file stays open until the weights' owner is collected, so replacing it (an atomic
  write over the input) does not change what is read; one written in place since (its
  size or modification time changed) is an error naming it;
- the walk reads the file with ``pread`` in small windows around the record headers and
  copies the bytes it keeps in one read per run between left-out data (not a memory map:
  each page a walk touches there is a page fault, several microseconds in a virtual
  machine, one per initializer header: over 2 ms on a DenseNet);
- anything unexpected (a text-format file, a malformed record, a big-endian host) makes
  ``read_light`` return None and the caller loads the file the usual way; a file with no
  weight to leave out is parsed from the bytes the walk read (not read a second time).
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from drpopt.errors import BadInputError

_T = onnx.TensorProto
_PLAIN = frozenset(
    [
        _T.FLOAT,
        _T.DOUBLE,
        _T.FLOAT16,
        _T.BFLOAT16,
        _T.INT8,
        _T.UINT8,
        _T.INT16,
        _T.UINT16,
        _T.INT32,
        _T.UINT32,
        _T.INT64,
        _T.UINT64,
        _T.BOOL,
    ]
)
_GRAPH, _NODE, _INITIALIZER = 7, 1, 5  # ModelProto.graph, GraphProto.node/.initializer
_DATA_TYPE, _SEGMENT, _RAW, _LOCATION = 2, 3, 9, 14  # TensorProto fields


_BYTES = [bytes([n]) for n in range(0x80)]


class _Malformed(Exception):
    """The bytes are not the protobuf wire format this reader expects."""


def _varint(buf, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def encode_varint(n: int) -> bytes:
    """The protobuf varint of ``n >= 0``."""
    return _encode(n)


def _encode(n: int) -> bytes:
    if n < 0x80:
        return _BYTES[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _File:
    """An open file read through ``pread``: ``at`` gives a window holding a range (read
    well ahead while the walk goes on near where the window ends, a little after a jump
    over left-out data), ``read`` the exact bytes of a range."""

    _AHEAD, _JUMP = 16384, 512

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.data, self.lo = b"", 0

    def at(self, off: int, n: int) -> tuple[bytes, int]:
        """(window, its file offset) with ``[off, off + n)`` inside (clipped at the end of
        the file: a record header read past it is malformed)."""
        lo = self.lo
        if lo <= off and off + n <= lo + len(self.data):
            return self.data, lo
        end = lo + len(self.data)
        ahead = self._AHEAD if lo <= off <= end + self._AHEAD else self._JUMP
        self.data, self.lo = _pread(self.fd, min(max(n, ahead), self.size - off), off), off
        return self.data, off

    def read(self, off: int, n: int) -> bytes:
        lo = self.lo
        if lo <= off and off + n <= lo + len(self.data):
            return self.data[off - lo : off - lo + n]
        if n <= 0:
            return b""
        data = _pread(self.fd, n, off)
        if len(data) != n:
            raise _Malformed("record past the end of the file")
        return data


def _pread(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)
    while 0 < len(data) < n:
        more = os.pread(fd, n - len(data), off + len(data))
        if not more:
            break
        data += more
    return data


def _records(f: _File, i: int, end: int):
    """(field, wire type, record start, value start, value end) of each record in the file
    range ``[i, end)``."""
    buf, base, top = b"", 0, 0  # the window, its file offset, and where it ends
    while i < end:
        if i < base or i + 21 > top:  # a tag and a length: two varints
            buf, base = f.at(i, 21)
            top = base + len(buf)
        j = i - base
        tag = buf[j]  # one-byte tags and lengths inline: a graph has a record per node
        if tag < 0x80:
            j += 1
        else:
            tag, j = _varint(buf, j)
        wire = tag & 7
        if wire == 2:
            n = buf[j]
            if n < 0x80:
                j += 1
            elif buf[j + 1] < 0x80:  # two bytes: most node records
                n = (n & 0x7F) | (buf[j + 1] << 7)
                j += 2
            else:
                n, j = _varint(buf, j)
            stop = base + j + n
        elif wire == 0:
            stop = base + _varint(buf, j)[1]
        elif wire == 5:
            stop = base + j + 4
        elif wire == 1:
            stop = base + j + 8
        else:  # groups: not in onnx.proto
            raise _Malformed(f"wire type {wire}")
        if stop > end:
            raise _Malformed("record past its end")
        yield tag >> 3, wire, i, base + j, stop
        i = stop


def _raw_span(f: _File, start: int, end: int, least: int) -> tuple[int, int, int] | None:
    """Where a plain tensor's ``raw_data`` of more than ``least`` bytes lies (record start,
    data start, data end); None when the tensor must be parsed whole."""
    dtype = 0
    raw = None
    for field, wire, rec, a, b in _records(f, start, end):
        if field == _DATA_TYPE and wire == 0:
            buf, base = f.at(a, b - a)
            dtype = _varint(buf, a - base)[0]
        elif field == _RAW and wire == 2:
            raw = (rec, a, b)
        elif field in (_SEGMENT, _LOCATION):
            return None
    if raw is None or dtype not in _PLAIN or raw[2] - raw[1] <= least:
        return None
    return raw


def _light_graph(
    f: _File, start: int, end: int, keep: int, spans: dict[int, tuple[int, int]], layout: Layout
) -> bytes:
    """The graph record's bytes with the raw data of large initializers left out: more
    than ``8 * keep`` bytes, so more than ``keep`` elements of any plain dtype. ``layout``
    gets where each node and initializer record lies in them."""
    least = 8 * keep
    parts = []
    copied = start  # bytes from here on are not yet in ``parts``
    done = 0  # their length so far: file offset ``rec`` is at ``done + rec - copied``
    nodes, inits = layout.nodes, layout.initializers
    index = -1
    for field, wire, rec, a, b in _records(f, start, end):
        if field == _NODE and wire == 2:
            nodes.append((done + rec - copied, b - rec))
            continue
        if field != _INITIALIZER or wire != 2:
            continue
        index += 1
        found = _raw_span(f, a, b, least) if b - a > least else None
        if found is None:
            inits.append((done + rec - copied, b - rec))
            continue
        raw_rec, raw_a, raw_b = found
        body = f.read(a, raw_rec - a) + f.read(raw_b, b - raw_b)
        run = f.read(copied, rec - copied)
        record = b"\x2a" + _encode(len(body)) + body  # field 5, length-delimited
        parts.append(run)
        parts.append(record)
        inits.append((done + len(run), len(record)))
        done += len(run) + len(record)
        copied = b
        spans[index] = (raw_a, raw_b - raw_a)
    parts.append(f.read(copied, end - copied))
    return b"".join(parts)


class Layout:
    """Where the records of the light file's main graph lie in its bytes, so a model for
    shape inference is cut from them (``shape_model``) instead of copied node by node."""

    def __init__(self) -> None:
        self.head = self.tail = self.graph = b""  # model fields before/after; graph body
        self.nodes: list[tuple[int, int]] = []  # (offset in ``graph``, length) per node
        self.initializers: list[tuple[int, int]] = []  # likewise per initializer

    def shape_model(self, nodes: list[int], initializers: list[int], extra: list[bytes]) -> bytes:
        """The model's bytes without the given node and initializer records (indices) and
        with the ``extra`` graph records (``input_record``, ``initializer_record``) after
        the others."""
        cuts = sorted([self.nodes[i] for i in nodes] + [self.initializers[i] for i in initializers])
        graph, pieces, pos = self.graph, [], 0
        for off, n in cuts:
            pieces.append(graph[pos:off])
            pos = off + n
        pieces.append(graph[pos:] if pos else graph)
        pieces.extend(extra)
        body = b"".join(pieces)
        return b"".join((self.head, b"\x3a", _encode(len(body)), body, self.tail))


def input_record(name: str, elem_type: int, dims) -> bytes | None:
    """A ``GraphProto.input`` record typing ``name`` as a tensor of ``elem_type`` and
    ``dims`` (None for a negative dim: written by protobuf instead)."""
    typ = _tensor_type(elem_type, tuple(dims))
    if typ is None:
        return None
    raw = name.encode()
    info = b"\x0a" + _encode(len(raw)) + raw + typ
    return b"\x5a" + _encode(len(info)) + info  # field 11


@functools.lru_cache(maxsize=4096)  # weights of one shape recur (every dense layer's conv)
def _tensor_type(elem_type: int, dims: tuple[int, ...]) -> bytes | None:
    """``ValueInfoProto.type`` record of a tensor type with a static shape."""
    shape = []
    for d in dims:
        if d < 0:
            return None
        v = _encode(d)
        shape.append(b"\x0a" + _encode(len(v) + 1) + b"\x08" + v)  # Dimension.dim_value
    shape_body = b"".join(shape)
    tensor = b"\x08" + _encode(elem_type) + b"\x12" + _encode(len(shape_body)) + shape_body
    typ = b"\x0a" + _encode(len(tensor)) + tensor  # TypeProto.tensor_type
    return b"\x12" + _encode(len(typ)) + typ


def initializer_record(tensor: onnx.TensorProto) -> bytes:
    """A ``GraphProto.initializer`` record holding ``tensor``."""
    raw = tensor.SerializeToString()
    return b"\x2a" + _encode(len(raw)) + raw


class FileWeights:
    """The tensors ``read_light`` left in the file: ``loader(index)`` per initializer index
    of the main graph (None for one that was parsed whole). Owns ``fd``, the open file."""

    def __init__(self, path: Path, fd: int, spans: dict[int, tuple[int, int]]) -> None:
        self.path = path
        self.spans = spans
        self.layout: Layout | None = None  # the light file's records (``from_onnx`` takes it)
        self._fd = fd
        self._stamp = _stamp(fd)
        weakref.finalize(self, os.close, fd)

    def loader(self, index: int, tensor: onnx.TensorProto) -> Callable[[], np.ndarray] | None:
        span = self.spans.get(index)
        if span is None:
            return None
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        dims, name = tuple(tensor.dims), tensor.name
        return lambda: np.frombuffer(self._read(*span, name), dtype=dtype).reshape(dims)

    def _read(self, offset: int, length: int, name: str) -> bytes:
        data = os.pread(self._fd, length, offset)
        while 0 < len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        if len(data) != length or _stamp(self._fd) != self._stamp:
            raise BadInputError(
                f"{self.path}: the file changed while it was in use (reading the data of "
                f"'{name}'); run again on a model file that is not being written"
            )
        return data


def _stamp(fd: int) -> tuple[int, int]:
    """Size and modification time: a file written in place since reading has others (one
    replaced by a rename keeps them: the open file is still the old one)."""
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def read_light(path: Path, keep: int) -> tuple[onnx.ModelProto, FileWeights] | None:
    """The model in ``path`` with its weights of more than ``keep`` elements left in the
    file (see the module rules), or None when the file is to be loaded the usual way."""
    fmt = onnx.serialization.registry.get_format_from_file_extension(Path(path).suffix)
    if sys.byteorder != "little" or fmt not in (None, "protobuf"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # onnx.load says what is wrong
        return None
    try:
        model, spans, layout = _parse_light(_File(fd, os.fstat(fd).st_size), keep)
        if model is not None:
            weights = FileWeights(Path(path), fd, spans)
            weights.layout = layout
            return model, weights
    except Exception:  # malformed or unreadable: onnx.load says what is wrong
        pass
    os.close(fd)
    return None


def _parse_light(
    f: _File, keep: int
) -> tuple[onnx.ModelProto | None, dict[int, tuple[int, int]], Layout]:
    spans: dict[int, tuple[int, int]] = {}
    layout = Layout()
    head, tail = [], []
    graphs = 0
    for field, wire, rec, a, b in _records(f, 0, f.size):
        if field == _GRAPH and wire == 2:
            graphs += 1
            layout.graph = _light_graph(f, a, b, keep, spans, layout)
        else:
            (tail if graphs else head).append(f.read(rec, b - rec))
    if graphs != 1:  # parse as usual
        return None, spans, layout
    # with nothing left out (weights as Constant nodes, paddle2onnx's way) the bytes read
    # are the file's: parsed here, not read again by ``onnx.load``, and their layout kept
    layout.head, layout.tail = b"".join(head), b"".join(tail)
    graph = layout.graph
    model = onnx.ModelProto()
    model.ParseFromString(b"".join((layout.head, b"\x3a", _encode(len(graph)), graph, layout.tail)))
    return model, spans, layout


_RAW_DTYPES = {t: np.dtype(helper.tensor_dtype_to_np_dtype(t)) for t in _PLAIN}


def tensor_array(tensor: onnx.TensorProto, base_dir: str = "") -> np.ndarray:
    """``numpy_helper.to_array(tensor, base_dir)``, without its general path for the common
    case (a plain dtype in ``raw_data``): the same array, read-only over the same bytes."""
    dtype = _RAW_DTYPES.get(tensor.data_type)
    if (
        dtype is not None
        and tensor.data_location != _T.EXTERNAL
        and tensor.HasField("raw_data")
        and not tensor.HasField("segment")
        and sys.byteorder == "little"
    ):
        array = np.frombuffer(tensor.raw_data, dtype=dtype)
        dims = tensor.dims[:]  # a list (see ``onnx_types``)
        if len(dims) == 1 and dims[0] == array.size:  # most constants: no reshape needed
            return array
        return array.reshape(dims)
    if tensor.data_location != _T.EXTERNAL:
        if tensor.data_type == _T.FLOAT and tensor.float_data and sys.byteorder == "little":
            packed = _packed_floats(tensor)  # older paddle2onnx: weights in float_data
            if packed is not None:
                return packed
        return numpy_helper.to_array(tensor, base_dir)
    try:
        return numpy_helper.to_array(tensor, base_dir)
    except Exception as err:  # onnx raises ValueError, OSError and others on a bad file
        where = next((e.value for e in tensor.external_data if e.key == "location"), "")
        why = " ".join(str(err).split())[:160] or type(err).__name__
        raise BadInputError(
            f"{Path(base_dir or '.') / where}: the external data of '{tensor.name}' could not "
            f"be read ({why}); keep the model's complete .data file beside it"
        ) from err


_FLOAT_DATA = 4  # TensorProto.float_data: packed, 4 bytes a float, little-endian


def _packed_floats(tensor: onnx.TensorProto) -> np.ndarray | None:
    """``numpy_helper.to_array`` of a FLOAT tensor in ``float_data``, read from its packed
    record (copies of the bytes, not a Python float per element); None when the record
    is not the one packed run this expects."""
    data = tensor.SerializeToString()
    i, end, found = 0, len(data), None
    try:
        while i < end:
            tag, i = _varint(data, i)
            wire = tag & 7
            if wire == 2:
                n, i = _varint(data, i)
                if tag >> 3 == _FLOAT_DATA:
                    if found is not None:
                        return None
                    found = (i, n)
                i += n
            elif wire == 0:
                i = _varint(data, i)[1]
            elif wire == 5:
                if tag >> 3 == _FLOAT_DATA:
                    return None  # not packed
                i += 4
            elif wire == 1:
                i += 8
            else:
                return None
    except (_Malformed, IndexError):
        return None
    if found is None or found[1] != 4 * len(tensor.float_data) or i != end:
        return None
    start, n = found
    array = np.frombuffer(data, dtype="<f4", count=n // 4, offset=start)
    return array.reshape(tensor.dims).copy()  # writable, as ``to_array``'s is
