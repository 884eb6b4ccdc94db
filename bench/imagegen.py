"""Shared by the benchmarks and demos: deterministic disk images (a mix of compressible,
random and zero blocks), the CBT stand-in for raw images, and timing."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypersdk.engine.export import ExportReport, ExportRequest, run_export
from hypersdk.providers.base import Extent, Provider
from hypersdk.repository.manifest import Manifest
from hypersdk.repository.repository import Repository
from hypersdk.state.history import History

MIB = 1024 * 1024
T = TypeVar("T")
# Maps random bytes onto 16 letters: data that zstd shrinks to about half, like text or logs.
_LOW_ENTROPY = bytes(b"etaoinshrdlucmfw"[i % 16] for i in range(256))


def block_data(rng: random.Random, size: int) -> bytes:
    """One block: 50% compressible, 35% random, 15% zero."""
    kind = rng.random()
    if kind < 0.15:
        return bytes(size)
    data = rng.randbytes(size)
    return data.translate(_LOW_ENTROPY) if kind < 0.65 else data


def make_image(path: Path, size: int, *, seed: int = 1, block: int = MIB) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in range(0, size, block):
            data = block_data(rng, min(block, size - offset))
            if any(data[:64]) or any(data):
                f.seek(offset)
                f.write(data)


def change_blocks(path: Path, fraction: float, *, seed: int = 2, block: int = MIB) -> int:
    """Overwrite ``fraction`` of the blocks with new data; returns the number changed."""
    size = os.path.getsize(path)
    rng = random.Random(seed)
    blocks = list(range(-(-size // block)))
    chosen = rng.sample(blocks, max(1, int(len(blocks) * fraction)))
    with open(path, "r+b") as f:
        for b in chosen:
            f.seek(b * block)
            f.write(rng.randbytes(min(block, size - b * block)).translate(_LOW_ENTROPY))
    return len(chosen)


def extents_since(repo: Repository, manifest: Manifest, disk: str, img: Path) -> list[Extent]:
    """The blocks of ``img`` that differ from a generation: the demo's and the benchmarks'
    stand-in for CBT on a raw image, which has no change tracking of its own."""
    index = repo.load_index(manifest, disk)
    out = []
    with open(img, "rb") as f:
        for block in range(index.blocks):
            data = f.read(index.block_size)
            new = repo.codec.chunk_id(data) if any(data) else None
            if new != index.get(block):
                out.append(Extent(block * index.block_size, len(data)))
    return out


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """Seconds ``fn`` takes, starting with no dirty pages so runs compare fairly."""
    os.sync()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def exporter(
    provider: Provider, history: History, output: Path, compression: str, parallel: int
) -> Callable[[bool], ExportReport]:
    """``export(incremental)`` for one provider and repository, as the benchmarks time it."""

    def export(incremental: bool) -> ExportReport:
        request = ExportRequest(
            output=str(output.absolute()),  # a request takes absolute paths only
            incremental=incremental,
            compression=compression,
            parallel=parallel,
        )
        return run_export(provider, request, history)

    return export
