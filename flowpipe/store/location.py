"""Where a store lives: a local directory, s3://bucket/prefix or gs://bucket/prefix, as a pyarrow filesystem and root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from flowpipe.errors import StoreError

SCHEMES = ("s3", "gs")


@dataclass(frozen=True)
class Location:
    """A parsed --store value: url as the user gave it (normalised), a pyarrow filesystem and the
    root path inside it ("bucket/prefix" for object stores, an absolute path on disk)."""

    url: str
    fs: pafs.FileSystem
    root: str
    local: bool

    @property
    def bucket(self) -> str:
        return "" if self.local else self.root.split("/", 1)[0]


def is_remote(text: str | os.PathLike[str]) -> bool:
    """True for s3:// and gs:// store URLs."""
    return str(text).split("://", 1)[0] in SCHEMES and "://" in str(text)


def parse(text: str | os.PathLike[str]) -> Location:
    """The location of a store given as a path or s3:// / gs:// URL (StoreError: one line).

    Credentials and endpoint come from the standard environment through pyarrow:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION (S3) and
    GOOGLE_APPLICATION_CREDENTIALS (GCS)."""
    text = str(text)
    if not is_remote(text):
        root = Path(text).expanduser().absolute()
        return Location(str(root), pafs.LocalFileSystem(), str(root), True)
    scheme, rest = text.split("://", 1)
    rest = rest.strip("/")
    if not rest or rest.startswith("/"):
        raise StoreError(f"store {text}: no bucket in the URL (use {scheme}://BUCKET/PREFIX)")
    url = f"{scheme}://{rest}"
    try:
        if scheme == "s3":
            fs, root = pafs.FileSystem.from_uri(url)
            if not os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
                # without a region pyarrow asks AWS where the bucket is: nothing answers that
                # for a custom endpoint, so fall back to the region every S3 server accepts
                fs = _s3_with_region(fs, url)
        else:
            fs, root = pafs.FileSystem.from_uri(url)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise StoreError(f"store {url}: {describe(exc)}") from exc
    return Location(url, fs, root.strip("/"), False)


def _s3_with_region(fs: pafs.FileSystem, url: str) -> pafs.FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return fs
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else "https"
    return pafs.S3FileSystem(
        endpoint_override=endpoint, scheme=scheme, region="us-east-1", allow_bucket_creation=False
    )


def describe(exc: BaseException) -> str:
    """One line for an object-store error (pyarrow's messages span several lines)."""
    text = " ".join(str(exc).split())
    for marker, say in (
        ("InvalidAccessKeyId", "bad credentials (AWS_ACCESS_KEY_ID is not known to the server)"),
        ("SignatureDoesNotMatch", "bad credentials (AWS_SECRET_ACCESS_KEY does not match)"),
        ("AccessDenied", "access denied (check the credentials and the bucket's policy)"),
        ("ACCESS_DENIED", "access denied (bad credentials, or no right to the bucket)"),
        ("NoSuchBucket", "the bucket does not exist"),
        ("Couldn't connect to server", "cannot reach the object store (AWS_ENDPOINT_URL?)"),
        ("Could not connect", "cannot reach the object store (AWS_ENDPOINT_URL?)"),
        ("curlCode: 7", "cannot reach the object store (AWS_ENDPOINT_URL?)"),
    ):
        if marker in text:
            return say
    return text[:300]
