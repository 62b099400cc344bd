"""Corrupting files the way disks and networks do: one flipped byte inside a tensor's data."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path


def tensor_records(path: Path) -> list[tuple[str, int, int]]:
    """(name, offset of the first data byte, size) of each tensor-data record of a torch.save file."""
    out = []
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 0]
    with path.open("rb") as f:
        for info in infos:
            f.seek(info.header_offset)
            header = f.read(30)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            out.append((info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size))
    return out


def flip_tensor_byte(path: Path, which: int = -1, position: float = 0.5, mask: int = 0x01) -> str:
    """XORs one byte (``mask``) of the ``which``-th largest tensor record, at ``position`` of it.

    The zip structure stays valid (``torch.load`` does not check the records' CRC), so only a
    content checksum notices. Returns the name of the record hit.
    """
    records = sorted(tensor_records(path), key=lambda r: r[2])
    name, start, size = records[which]
    offset = start + min(size - 1, int(size * position))
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
    return name
