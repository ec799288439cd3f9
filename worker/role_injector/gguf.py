"""GGUF files (llama.cpp's model format): the metadata and tensor table of a model, read within
bounds, and a copy of a model with another file's metadata.

`bake train` reads the base model's chat template, architecture and weight types from here, and
gives the model llama-finetune writes back the base's metadata: the trainer's saver writes the
training window as the context length and leaves out the chat template, so without this the baked
model would be served with another prompt format than the one it was trained on.

The format (GGUF v2/v3, little-endian): magic `GGUF`, version, tensor count, key/value count, the
key/value pairs, the tensor table (name, dimensions, type, offset in the data), then the tensor data
from the next multiple of `general.alignment` (default 32).
"""

from __future__ import annotations

import math
import os
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from role_injector.errors import InvalidRequest

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_KEYS = 100_000
MAX_TENSORS = 1_000_000
MAX_STRING_BYTES = 16 * 1024 * 1024  # one key or string value (a chat template is a few KiB)
MAX_DIMENSIONS = 8
DEFAULT_ALIGNMENT = 32
COPY_BLOCK = 8 << 20

# Value types: struct formats of the scalar ones; 8 is a string, 9 an array.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9

# ggml tensor types: name, elements per block, bytes per block (gguf-py's GGML_QUANT_SIZES).
TENSOR_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}
F32 = 0


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int  # from the start of the data

    @property
    def type_name(self) -> str:
        return TENSOR_TYPES[self.type][0] if self.type in TENSOR_TYPES else f"type {self.type}"

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def size(self) -> int:
        """Bytes of its data; 0 for a type this module does not know."""
        _, block, block_bytes = TENSOR_TYPES.get(self.type, ("", 1, 0))
        return self.elements // block * block_bytes


@dataclass(frozen=True)
class GgufFile:
    path: Path
    version: int
    metadata: Mapping[str, Any]  # arrays are left out (None) unless asked for by key
    raw_metadata: Mapping[str, bytes]  # each key/value pair as it is in the file, for copying
    tensors: tuple[Tensor, ...]
    raw_tensors: bytes  # the tensor table as it is in the file
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def weight_types(self) -> dict[str, int]:
        """How many tensors of each type, by type name."""
        counts: dict[str, int] = {}
        for tensor in self.tensors:
            counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
        return counts

    def f32_size(self) -> int:
        """Bytes of the tensor data once every weight is F32."""
        return sum(tensor.elements * 4 for tensor in self.tensors)

    def complete(self) -> bool:
        """Whether the file holds all the tensor data its table announces."""
        end = max((t.offset + t.size for t in self.tensors), default=0)
        return self.data_offset + end <= self.file_size


class _Reader:
    """Reads the header within the file's size, so a damaged or hostile count fails at once."""

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle, self.path, self.size = handle, path, size

    def fail(self, what: str) -> InvalidRequest:
        return InvalidRequest(f"{self.path} is not a valid GGUF file: {what}", details={"file": str(self.path)})

    def read(self, count: int) -> bytes:
        if count > self.size - self.handle.tell():
            raise self.fail("it ends inside its header")
        return self.handle.read(count)

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > MAX_STRING_BYTES:
            raise self.fail(f"a string of {length} bytes")
        try:
            return self.read(length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string that is not UTF-8") from None

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        if length > self.size - self.handle.tell():
            raise self.fail("it ends inside its header")
        self.handle.seek(length, os.SEEK_CUR)

    def value(self, kind: int, keep: bool) -> Any:
        if kind in SCALARS:
            return self.unpack(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind != ARRAY:
            raise self.fail(f"a value of unknown type {kind}")
        item_kind, count = self.unpack("<I"), self.unpack("<Q")
        if item_kind == ARRAY:
            raise self.fail("an array of arrays")
        if count > self.size - self.handle.tell():
            raise self.fail(f"an array of {count} items")
        if item_kind in SCALARS and not keep:
            self.handle.seek(count * struct.calcsize(SCALARS[item_kind]), os.SEEK_CUR)
            return None
        if item_kind == STRING and not keep:
            for _ in range(count):
                self.skip_string()
            return None
        return [self.value(item_kind, True) for _ in range(count)]


def read_gguf(path: Path, arrays: Iterable[str] = ()) -> GgufFile:
    """The header of a GGUF file; the values of array keys named in `arrays` are read too."""
    wanted = set(arrays)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            reader = _Reader(handle, path, size)
            if size < 24 or reader.read(4) != MAGIC:
                raise InvalidRequest(f"{path} is not a GGUF file (llama.cpp's model format)",
                                     details={"file": str(path)})
            version, tensor_count, key_count = reader.unpack("<I"), reader.unpack("<Q"), reader.unpack("<Q")
            if version not in VERSIONS:
                raise reader.fail(f"version {version} (this reader knows {VERSIONS})")
            if key_count > MAX_KEYS or tensor_count > MAX_TENSORS:
                raise reader.fail(f"{key_count} keys and {tensor_count} tensors")
            metadata: dict[str, Any] = {}
            raw_metadata: dict[str, bytes] = {}
            for _ in range(key_count):
                start = handle.tell()
                key = reader.string()
                metadata[key] = reader.value(reader.unpack("<I"), key in wanted)
                end = handle.tell()
                handle.seek(start)
                raw_metadata[key] = handle.read(end - start)
            tensors_start = handle.tell()
            tensors = []
            for _ in range(tensor_count):
                name = reader.string()
                dimensions = reader.unpack("<I")
                if dimensions > MAX_DIMENSIONS:
                    raise reader.fail(f"tensor {name!r} has {dimensions} dimensions")
                shape = tuple(reader.unpack("<Q") for _ in range(dimensions))
                tensors.append(Tensor(name, shape, reader.unpack("<I"), reader.unpack("<Q")))
            tensors_end = handle.tell()
            handle.seek(tensors_start)
            raw_tensors = handle.read(tensors_end - tensors_start)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}", details={"file": str(path)}) from None
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise InvalidRequest(f"{path} is not a valid GGUF file: general.alignment {alignment!r}",
                             details={"file": str(path)})
    return GgufFile(path=path, version=version, metadata=metadata, raw_metadata=raw_metadata,
                    tensors=tuple(tensors), raw_tensors=raw_tensors,
                    data_offset=-(-tensors_end // alignment) * alignment, file_size=size)


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def string_entry(key: str, value: str) -> bytes:
    """A key/value pair with a string value, as it is written in a file."""
    return _string(key) + struct.pack("<I", STRING) + _string(value)


def write_with_metadata(source: GgufFile, metadata: Mapping[str, bytes], target: Path) -> None:
    """Write `source`'s tensors (table and data, unchanged) to `target` with `metadata` (raw pairs, as
    `GgufFile.raw_metadata`) instead of its own. The alignment must stay the same."""
    header = MAGIC + struct.pack("<IQQ", 3, len(source.tensors), len(metadata))
    body = header + b"".join(metadata.values()) + source.raw_tensors
    padding = -len(body) % _alignment_of(metadata, source)
    with source.path.open("rb") as reader, target.open("wb") as writer:
        writer.write(body + b"\0" * padding)
        reader.seek(source.data_offset)
        shutil.copyfileobj(reader, writer, COPY_BLOCK)


def _alignment_of(metadata: Mapping[str, bytes], source: GgufFile) -> int:
    """The source's alignment, which its tensor offsets assume; the new metadata must say the same."""
    if metadata.get("general.alignment") != source.raw_metadata.get("general.alignment"):
        raise InvalidRequest(f"the metadata for {source.path} sets another general.alignment than its tensors have")
    return int(source.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
