"""Raw safetensors surgery for the file cases: split a file into (header dict, data bytes) and join it back,
so that a case can write any header a hostile or broken writer could."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def split(path: Path) -> tuple[dict, bytes]:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict | str | bytes, data: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    hb = text.encode() if isinstance(text, str) else text
    hb += b" " * (-(8 + len(hb)) % 8)
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data


def meta(header: dict) -> dict:
    """The lowbit graph description inside a safetensors header."""
    return json.loads(header["__metadata__"]["lowbit"])


def with_meta(header: dict, m: dict) -> dict:
    h = dict(header)
    h["__metadata__"] = dict(h["__metadata__"], lowbit=json.dumps(m))
    return h
