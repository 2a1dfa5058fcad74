"""Where the bytes live: local paths, s3:// (pyarrow's S3 client) and any other
fsspec URL, behind one pyarrow FileSystem.

S3 settings come from the standard AWS variables — credentials, AWS_REGION /
AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for
S3-compatible stores — unless `StorageOptions` overrides them.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs


@dataclass(frozen=True)
class StorageOptions:
    endpoint_url: str | None = None   # e.g. http://127.0.0.1:9000 for MinIO or a test server
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    anonymous: bool = False


def split_uri(uri: str) -> tuple[str, str]:
    """(scheme, path-within-that-filesystem); local paths have scheme ''.

    Split at "://" only, not with a URL parser: an object key is not a URL,
    and "#", "?", "%", ";" or spaces are part of it (a parser would file
    "photo #1.jpg" as "photo " plus a fragment). file:// URIs are local paths."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme.isalnum() or len(scheme) == 1:  # a local path (C:\ on Windows)
        return "", os.path.abspath(uri)
    if scheme == "file":
        return "", os.path.abspath(rest)
    return scheme, rest.rstrip("/")


def join_uri(scheme: str, path: str) -> str:
    """The URI of a filesystem path; some fsspec filesystems (memory://) list
    paths with a leading "/" that `split_uri` does not give them."""
    return f"{scheme}://{path.lstrip('/')}" if scheme else path


def s3_settings(options: StorageOptions) -> dict:
    """Keyword arguments for pyarrow.fs.S3FileSystem from options and the AWS variables."""
    endpoint = (options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    kwargs = {"region": options.region or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if options.anonymous:
        kwargs["anonymous"] = True
    elif options.access_key:
        kwargs.update(access_key=options.access_key, secret_key=options.secret_key,
                      session_token=options.session_token)
    return kwargs


@functools.lru_cache(maxsize=None)
def _filesystem(scheme: str, options: StorageOptions) -> pafs.FileSystem:
    if scheme == "":
        return pafs.LocalFileSystem()
    if scheme in ("s3", "s3a"):
        return pafs.S3FileSystem(**s3_settings(options))
    import fsspec  # noqa: PLC0415: only for the other URL schemes

    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))


def resolve(uri: str, options: StorageOptions = StorageOptions()) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `uri` and the path to hand it (cached per process)."""
    scheme, path = split_uri(uri)
    return _filesystem(scheme, options), path


def read_bytes(uri: str, options: StorageOptions = StorageOptions()) -> bytes:
    fs, path = resolve(uri, options)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_head(uri: str, size: int, options: StorageOptions = StorageOptions()) -> bytes:
    """The first `size` bytes of an object (a ranged read on S3), fewer if it is shorter."""
    fs, path = resolve(uri, options)
    with fs.open_input_file(path) as f:
        return f.read(size)


def write_bytes(uri: str, data: bytes, options: StorageOptions = StorageOptions()) -> None:
    fs, path = resolve(uri, options)
    parent = path.rpartition("/")[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def exists(uri: str, options: StorageOptions = StorageOptions()) -> bool:
    return file_info(uri, options).type != pafs.FileType.NotFound


def file_info(uri: str, options: StorageOptions = StorageOptions()) -> pafs.FileInfo:
    fs, path = resolve(uri, options)
    return fs.get_file_info(path)


def list_dir(uri: str, options: StorageOptions = StorageOptions()) -> list[pafs.FileInfo]:
    """Direct children of a folder (one paged listing)."""
    fs, path = resolve(uri, options)
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=False, recursive=False))


def list_files(uri: str, suffixes: tuple[str, ...] | None = None, options: StorageOptions = StorageOptions(),
               threads: int = 32) -> list[str]:
    """URIs of every file below `uri`, sorted.

    Object stores page through a listing 1,000 keys a request; the top-level
    folders (ImageNet's 1,000 class folders) are listed in parallel threads, so
    1.28 M objects take ~1,300 requests spread over `threads` connections.
    """
    scheme, _ = split_uri(uri)
    fs, _ = resolve(uri, options)
    top = list_dir(uri, options)
    dirs = [i.path for i in top if i.type == pafs.FileType.Directory]
    files = [i for i in top if i.type == pafs.FileType.File]

    def below(path):
        return fs.get_file_info(pafs.FileSelector(path, recursive=True))

    with ThreadPoolExecutor(max(1, min(threads, len(dirs)))) as pool:
        for infos in pool.map(below, dirs):
            files.extend(i for i in infos if i.type == pafs.FileType.File)
    keep = [i.path for i in files
            if suffixes is None or i.path.lower().endswith(tuple(s.lower() for s in suffixes))]
    return sorted(join_uri(scheme, p) for p in keep)
