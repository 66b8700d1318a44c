"""Compressed dump objects: each record's bytes go through a streaming compressor on their way into the
upload's part buffer, so an open object holds one part plus the compressor's state (zlib's is about 0.3 MiB,
zstd's at level 3 about 3.5 MiB), however large the object grows.

An object is one gzip member (zlib, level 6, the `gzip` command's default; the header's time is 0) or one
zstd frame (level 3, the `zstd` command's default, with a content checksum), so `gzip -dc` and `zstd -dc`
read it whole. Its name says so (`.jsonl.gz`, `.bin.zst`) and so does its Content-Type; it has no
Content-Encoding, which would let HTTP clients decompress it on download while the name still says `.gz`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Protocol

import zstandard

from ferry.obsdump.model import Compression

GZIP_LEVEL = 6
ZSTD_LEVEL = 3
SUFFIXES = {Compression.NONE: "", Compression.GZIP: ".gz", Compression.ZSTD: ".zst"}
CONTENT_TYPES = {Compression.GZIP: "application/gzip", Compression.ZSTD: "application/zstd"}


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def compressor(compression: Compression) -> Compressor | None:
    """A new stream for one object; None when the bytes go as they are."""
    if compression is Compression.GZIP:
        return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip header and trailer
    if compression is Compression.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compressobj()
    return None


def compression_of(key: str) -> Compression:
    """What an object's name says about its compression."""
    for compression, suffix in SUFFIXES.items():
        if suffix and key.endswith(suffix):
            return compression
    return Compression.NONE


def decompress(data: bytes, compression: Compression) -> bytes:
    """An object's encoded records (the inverse of writing them through `compressor`)."""
    if compression is Compression.GZIP:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if compression is Compression.ZSTD:
        # A streamed frame does not say its size up front, which ZstdDecompressor.decompress() needs.
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def decompressing(chunks: Iterable[bytes], compression: Compression) -> Iterator[bytes]:
    """`decompress` as the bytes come: an object's encoded records, a piece for each piece of the object."""
    if compression is Compression.NONE:
        yield from chunks
        return
    stream = (
        zlib.decompressobj(16 + zlib.MAX_WBITS)
        if compression is Compression.GZIP
        else zstandard.ZstdDecompressor().decompressobj()
    )
    try:
        for chunk in chunks:
            yield stream.decompress(chunk)
    except (zlib.error, zstandard.ZstdError) as err:
        raise ValueError(f"the object is not a {compression} stream: {err}") from None
    if not stream.eof:
        raise ValueError(f"the {compression} stream of the object ends early: truncated, or not a dump object")
