"""``s3://bucket/prefix`` URLs: parsed and checked once, spelled one way."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypersdk.errors import UsageError

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9!_.*'()@=+,;:$& -]+")


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str  # "" or segments joined by "/", no leading or trailing "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def contains(self, other: S3Url) -> bool:
        """Whether ``other`` lies at or under this URL (whole segments: ``s3://b/pre``
        does not contain ``s3://b/prefix2``)."""
        if other.bucket != self.bucket:
            return False
        if not self.prefix:
            return True
        return other.prefix == self.prefix or other.prefix.startswith(self.prefix + "/")


def parse_s3_url(url: str) -> S3Url:
    """Check and split an ``s3://bucket/prefix`` URL; UsageError naming it otherwise.
    Empty, ``.`` and ``..`` segments are refused, so one prefix is spelled one way."""
    if not url.startswith("s3://"):
        raise UsageError(f"{url!r} is not an s3:// URL")
    rest = url[len("s3://") :].removesuffix("/")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UsageError(f"{url}: {bucket!r} is not a valid S3 bucket name")
    if prefix:
        for seg in prefix.split("/"):
            if not seg or seg in (".", "..") or not _SEGMENT.fullmatch(seg):
                raise UsageError(
                    f"{url}: the prefix has an empty, '.', '..' or unusual segment {seg!r}"
                )
    if "?" in url or "#" in url:
        raise UsageError(f"{url}: an s3:// URL has no query or fragment")
    return S3Url(bucket, prefix)
