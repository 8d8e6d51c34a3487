"""Read an ONNX file without trusting it: size limits before every allocation, no code, no files it names elsewhere.

`onnx.load` would follow external-data locations wherever they point and allocate whatever dims a tensor
declares; here the protobuf is parsed from the bytes of the one file the user named, and tensors are decoded by
hand: the declared element count is capped and must agree with the bytes present before anything is allocated,
and external data is read only from regular files inside the model's own folder (symlinks resolved first).
`onnx.checker` is never run: it would read external data itself.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from .errors import OnnxImportError

__all__ = [
    "MAX_ACTIVATION",
    "MAX_ELEMENTS",
    "MAX_FILE_BYTES",
    "MAX_TOTAL_BYTES",
    "Budget",
    "read_model",
    "tensor_array",
]

#: protobuf cannot hold a message over 2 GiB, so no valid ONNX file (external data aside) is larger.
MAX_FILE_BYTES = 2**31 - 1
#: The largest constant tensor (weights, a folded constant) the importer allocates: 2**26 entries = 256 MiB of
#: float32, far above any verification benchmark's layers and far below the machine.
MAX_ELEMENTS = 2**26
#: The largest activation of one example at one node (the import runs three examples through every node):
#: 2**22 entries, 16 MiB of float32 (64 x 224 x 224 is 3.2M).
MAX_ACTIVATION = 2**22
#: All constants of one model together (decoded initializers, external data, folded constants): a file names
#: an external file as often as it likes, so its own size does not bound what it makes the importer read.
MAX_TOTAL_BYTES = 2**31

#: ONNX TensorProto data types the importer decodes, with their little-endian numpy types.
_DTYPES: dict[int, np.dtype[np.generic]] = {
    onnx.TensorProto.FLOAT: np.dtype("<f4"),
    onnx.TensorProto.INT64: np.dtype("<i8"),
    onnx.TensorProto.INT32: np.dtype("<i4"),
}


class Budget:
    """The bytes of constants the import may still allocate (see MAX_TOTAL_BYTES)."""

    def __init__(self, total: int | None = None) -> None:
        self.total = MAX_TOTAL_BYTES if total is None else total
        self.left = self.total

    def charge(self, nbytes: int, what: str) -> None:
        """Spend `nbytes`, or refuse naming `what` when the model's constants would exceed the total."""
        if nbytes > self.left:
            raise OnnxImportError(f"{what}: the model's constants exceed the importer's limit of {self.total} bytes")
        self.left -= nbytes


def read_model(path: str | Path) -> onnx.ModelProto:
    """Parse the ONNX file at `path` (only that file is read here; external data is read by `tensor_array`).

    Raises:
        OnnxImportError: missing, not a regular file, empty, too large, or not a parsable ONNX model.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as err:
        raise OnnxImportError(f"{p}: cannot read the ONNX file ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise OnnxImportError(f"{p}: not a regular file")
    if st.st_size == 0:
        raise OnnxImportError(f"{p}: the ONNX file is empty")
    if st.st_size > MAX_FILE_BYTES:
        raise OnnxImportError(f"{p}: {st.st_size} bytes is more than an ONNX protobuf can hold (2 GiB)")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise OnnxImportError(f"{p}: cannot read the ONNX file ({err.strerror or err})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as err:
        raise OnnxImportError(f"{p}: not an ONNX model: the protobuf does not parse ({err}); truncated?") from None
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxImportError(f"{p}: not an ONNX model: no graph or no opset (a truncated or foreign file?)")
    return model


def _element_count(tensor: onnx.TensorProto, what: str) -> int:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise OnnxImportError(f"{what}: negative dimension in {dims}")
    count = int(math.prod(dims))
    if count > MAX_ELEMENTS:
        raise OnnxImportError(f"{what}: {count} elements (dims {dims}) is over the importer's limit of {MAX_ELEMENTS}")
    return count


def _external_bytes(tensor: onnx.TensorProto, model_dir: Path, nbytes: int, what: str) -> bytes:
    """The tensor's bytes from its external file, which must be a regular file inside `model_dir`."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    if not location or "\x00" in location or os.path.isabs(location):
        raise OnnxImportError(f"{what}: external data location {location!r} is not a relative path")
    base = model_dir.resolve()
    try:
        target = (base / location).resolve(strict=True)
    except (OSError, RuntimeError):
        raise OnnxImportError(f"{what}: external data file {location!r} not found next to the model") from None
    if not target.is_relative_to(base):
        raise OnnxImportError(f"{what}: external data {location!r} lies outside the model's folder: refused")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries.get("length", str(nbytes)))
    except ValueError:
        raise OnnxImportError(f"{what}: external data offset/length are not integers") from None
    if offset < 0 or length != nbytes:
        raise OnnxImportError(f"{what}: external data offset {offset} / length {length}, expected {nbytes} bytes")
    # O_NONBLOCK: opening a FIFO planted as the data file must not hang; anything but a regular file is refused
    # on the opened descriptor, so a swap after the checks above changes nothing.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(target, flags)
    except OSError as err:
        raise OnnxImportError(f"{what}: cannot open external data {location!r} ({err.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OnnxImportError(f"{what}: external data {location!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if offset + nbytes > st.st_size:
            raise OnnxImportError(
                f"{what}: external data {location!r} holds {st.st_size} bytes, too few for the tensor"
            )
        f.seek(offset)
        return f.read(nbytes)


def tensor_array(tensor: onnx.TensorProto, model_dir: Path, what: str, budget: Budget | None = None) -> np.ndarray:
    """Decode a TensorProto (float32, int64 or int32) into a new numpy array, checking sizes before allocating.

    Args:
        tensor: an initializer or a Constant's value.
        model_dir: the folder external data must lie in.
        what: how messages name the tensor (e.g. "initializer 'fc1.weight'").
        budget: charged with the tensor's bytes before they are read.
    """
    dtype = _DTYPES.get(tensor.data_type)
    if dtype is None:
        name = (
            onnx.TensorProto.DataType.Name(tensor.data_type)
            if tensor.data_type in onnx.TensorProto.DataType.values()
            else str(tensor.data_type)
        )
        raise OnnxImportError(f"{what}: data type {name} is not supported (float32, and int64/int32 for shapes)")
    if tensor.HasField("segment"):
        raise OnnxImportError(f"{what}: segmented tensors are not supported")
    count = _element_count(tensor, what)
    nbytes = count * dtype.itemsize
    if budget is not None:
        budget.charge(nbytes, what)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raw = _external_bytes(tensor, model_dir, nbytes, what)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        field = {np.dtype("<f4"): tensor.float_data, np.dtype("<i8"): tensor.int64_data}.get(dtype, tensor.int32_data)
        if len(field) != count:
            raise OnnxImportError(f"{what}: {len(field)} values for dims {list(tensor.dims)} ({count} entries)")
        return np.asarray(field, dtype=dtype.newbyteorder("=")).reshape(tuple(tensor.dims))
    if len(raw) != nbytes:
        raise OnnxImportError(f"{what}: {len(raw)} bytes of data for dims {list(tensor.dims)} ({nbytes} bytes)")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(tuple(tensor.dims))
