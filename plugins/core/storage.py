"""One object store for every zone: local folders (paths or ``file://`` URLs) and ``s3://bucket/prefix``.

Keys are ``/``-separated paths relative to the store's root URL. Writes are atomic: a reader sees the whole object or
none of it (a hidden temporary file renamed into place locally; one PUT on S3). ``put_if_absent`` creates an object
only if no object has that key, which is what makes concurrent writers safe (the schema registry relies on it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pyarrow.fs as pafs

from plugins.core.errors import ConfigError, ObjectNotFoundError, ObjectTooLargeError, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the store root, size in bytes and last modification time."""

    key: str
    size: int
    modified_at: datetime | None


def _endpoint_from_env() -> str | None:
    for name in ENDPOINT_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class ObjectStore:
    """A root URL in an object store, local or S3, with atomic writes."""

    def __init__(self, url: str, *, s3_endpoint_url: str | None = None, setting: str = "url") -> None:
        if not url:
            raise ConfigError(setting, "is empty; give a local folder, a file:// URL or s3://bucket/prefix")
        self.url = url
        self.setting = setting
        parsed = urlparse(url)
        self.s3_endpoint_url = s3_endpoint_url or _endpoint_from_env()
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ConfigError(setting, f"'{url}' names no bucket; use s3://bucket/prefix")
            self.is_s3 = True
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self._root = f"{self.bucket}/{self.prefix}".rstrip("/")
            self.fs: pafs.FileSystem = self._s3_filesystem()
        elif parsed.scheme in ("", "file"):
            path = parsed.path if parsed.scheme == "file" else url
            if parsed.scheme == "file" and parsed.netloc:
                path = f"{parsed.netloc}{parsed.path}"  # file://relative/dir
            self.is_s3 = False
            self.bucket = ""
            self.prefix = ""
            self._root = str(Path(path).expanduser().absolute())
            self.fs = pafs.LocalFileSystem()
        else:
            raise ConfigError(setting, f"unsupported scheme '{parsed.scheme}://' in '{url}'; use a path or s3://")

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # -- construction helpers -------------------------------------------------------------------------------------

    def _s3_filesystem(self) -> pafs.S3FileSystem:
        kwargs: dict[str, object] = {"region": _region()}
        if self.s3_endpoint_url:
            endpoint = urlparse(self.s3_endpoint_url)
            if not endpoint.scheme or not endpoint.netloc:
                raise ConfigError("s3_endpoint_url", f"'{self.s3_endpoint_url}' is not a URL like http://host:port")
            kwargs["endpoint_override"] = endpoint.netloc
            kwargs["scheme"] = endpoint.scheme
        return pafs.S3FileSystem(**kwargs)  # type: ignore[arg-type]

    @cached_property
    def _s3_client(self) -> S3Client:
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint_url, region_name=_region())

    # -- paths ----------------------------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        key = key.strip("/")
        if not key:
            return self._root
        if ".." in key.split("/"):
            raise StorageError(f"key '{key}' may not contain '..'")
        return f"{self._root}/{key}"

    def _s3_key(self, key: str) -> str:
        return f"{self.prefix}/{key.strip('/')}".strip("/")

    def fs_path(self, key: str = "") -> str:
        """The path of ``key`` in :attr:`fs` (``bucket/prefix/key`` on S3, an absolute path locally)."""
        return self._path(key)

    def url_for(self, key: str) -> str:
        """The full URL of ``key``: what a person pastes into another tool."""
        if self.is_s3:
            return f"s3://{self._path(key)}"
        return self._path(key)

    def local_path(self, key: str) -> Path:
        """The filesystem path of ``key`` in a local store."""
        if self.is_s3:
            raise StorageError(f"{self.url} is not a local store")
        return Path(self._path(key))

    # -- writes ---------------------------------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` atomically, replacing any object there; returns the object's URL."""
        path = self._path(key)
        try:
            if self.is_s3:
                # The whole payload goes in one write and the stream completes on close, so no reader can see a part.
                with self.fs.open_output_stream(path, compression=None, metadata={}) as out:
                    out.write(data)
            else:
                target = Path(path)
                tmp = self._local_tmp(target, data)
                os.replace(tmp, target)
                fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"could not write {self.url_for(key)}: {exc}") from exc
        return self.url_for(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if no object has that key. Returns False when one already does."""
        if self.is_s3:
            from botocore.exceptions import ClientError

            try:
                self._s3_client.put_object(Bucket=self.bucket, Key=self._s3_key(key), Body=data, IfNoneMatch="*")
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                    return False
                raise StorageError(f"could not write {self.url_for(key)}: {exc}") from exc
            return True
        target = Path(self._path(key))
        tmp = self._local_tmp(target, data)
        try:
            os.link(tmp, target)  # link() fails if the name exists: an atomic create-once.
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        return True

    def _local_tmp(self, target: Path, data: bytes) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{_TMP_PREFIX}{target.name}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing object is not an error."""
        try:
            self.fs.delete_file(self._path(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"could not delete {self.url_for(key)}: {exc}") from exc

    def move(self, source: str, destination: str) -> None:
        """Move an object to another key in this store (a rename locally, copy then delete on S3)."""
        try:
            if not self.is_s3:
                Path(self._path(destination)).parent.mkdir(parents=True, exist_ok=True)
            self.fs.move(self._path(source), self._path(destination))
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"no object at {self.url_for(source)}") from exc
        except OSError as exc:
            raise StorageError(f"could not move {self.url_for(source)}: {exc}") from exc

    # -- reads ----------------------------------------------------------------------------------------------------

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The whole content of ``key``; with ``max_bytes``, ObjectTooLargeError past that size (read no further)."""
        try:
            with self.fs.open_input_stream(self._path(key), compression=None) as stream:
                if max_bytes is None:
                    return bytes(stream.read())
                data = bytes(stream.read(max_bytes + 1))
                if len(data) > max_bytes:
                    raise ObjectTooLargeError(f"{self.url_for(key)} is larger than {max_bytes} bytes")
                return data
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"no object at {self.url_for(key)}") from exc
        except OSError as exc:
            # An S3 object deleted between pyarrow's HEAD and its GET fails the GET with a generic error
            # ("INTERNAL_FAILURE ... Failed to flush response stream"), not a 404: look again before calling it failed.
            if _is_not_found(exc) or self._gone(key):
                raise ObjectNotFoundError(f"no object at {self.url_for(key)}") from exc
            raise StorageError(f"could not read {self.url_for(key)}: {exc}") from exc

    def _gone(self, key: str) -> bool:
        """Whether ``key`` is now known to be absent (a failed look says nothing: False)."""
        try:
            return not self.exists(key)
        except OSError:
            return False

    def exists(self, key: str) -> bool:
        """Whether an object has this key."""
        info = self.fs.get_file_info(self._path(key))
        return bool(info.type == pafs.FileType.File)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursively), sorted by key; temporary files are never listed."""
        return sorted(self.iter_objects(prefix), key=lambda info: info.key)

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursively), in no particular order."""
        base = self._path(prefix)
        selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise StorageError(f"could not list {self.url_for(prefix)}: {exc}") from exc
        if not infos and self.is_s3 and self.fs.get_file_info(self.bucket).type == pafs.FileType.NotFound:
            # An empty zone and a mistyped bucket must not look alike: "0 batches" from a bucket that is not there.
            raise StorageError(
                f"{self.setting}: bucket '{self.bucket}' does not exist; check the URL (and the endpoint) or create it"
            )
        root_len = len(self._root) + 1
        for info in infos:
            if info.type != pafs.FileType.File or info.base_name.startswith(_TMP_PREFIX):
                continue
            yield ObjectInfo(key=info.path[root_len:], size=info.size or 0, modified_at=info.mtime)


def _is_not_found(exc: OSError) -> bool:
    """Whether pyarrow's error says the object is not there."""
    text = str(exc)
    return any(sign in text for sign in ("NoSuchKey", "NO_SUCH_KEY", "does not exist", "HTTP status 404"))


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
