"""Where a repository's objects are kept: a local folder or S3-compatible object storage.

``open_storage`` takes what ``--output`` names: a path, or ``s3://bucket/prefix``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypersdk.repository.storage.base import ChunkSink, ObjectInfo, Storage

__all__ = ["ChunkSink", "ObjectInfo", "Storage", "absolute_location", "is_url", "open_storage"]


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names object storage rather than a local folder."""
    return isinstance(location, str) and location.startswith("s3://")


def absolute_location(location: str) -> str:
    """What a user typed as ``--output``, made independent of the working directory: a
    URL as it is, a path absolute (job records and the export history keep it)."""
    return location if is_url(location) else os.path.abspath(location)


def open_storage(location: str | os.PathLike[str]) -> Storage:
    if is_url(location):
        # Imported here: obstore loads a native library that a local repository never needs.
        from hypersdk.repository.storage.s3 import S3Storage

        return S3Storage(str(location))
    from hypersdk.repository.storage.local import LocalStorage

    return LocalStorage(Path(location))
