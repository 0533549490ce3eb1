"""An object store in an S3 bucket, or on any S3-compatible server (MinIO, Ceph, R2...).

The object ``a/b`` of ``s3://bucket/prefix`` is the S3 object ``prefix/a/b``. An S3 PUT
replaces an object atomically, so readers never see a partial write. Every PUT carries
a SHA-256 checksum that the server checks, and reads ask for it back so that botocore
verifies the bytes it received (:class:`~orchestrator.storage.objects.CorruptObject`
when they do not match).

Credentials come from boto3's usual chain (environment variables, shared config files,
instance or container roles); they are never part of the URL, an error or a log line.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NoReturn, cast
from urllib.parse import quote, urlencode, urlsplit

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from orchestrator.errors import ConfigError, CorruptObject, ObjectMissing, StorageError
from orchestrator.storage.objects import ObjectStore, check_key, check_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["S3Settings", "S3Store"]

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]*")
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_CONNECTION_ERRORS = (
    bex.ConnectionError,  # refused, DNS, connect timeout, proxy
    bex.HTTPClientError,  # connection closed, read timeout, broken stream
)
Addressing = Literal["auto", "path", "virtual"]


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How to reach the server; the URL options of ``s3://`` (see ``open_object_store``)."""

    endpoint: str | None = None
    region: str | None = None
    addressing: Addressing = "auto"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3

    @classmethod
    def from_options(cls, options: dict[str, str], url: str) -> S3Settings:
        """Parse URL query options; ``ConfigError`` naming ``url`` for a bad value."""

        def bad(name: str, why: str) -> NoReturn:
            raise ConfigError(f"object store URL {url!r}: option {name}={options[name]!r} {why}")

        endpoint = options.get("endpoint") or None
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                bad("endpoint", "must be an http:// or https:// URL")
            if parts.username or parts.password:
                raise ConfigError(
                    f"object store URL {url!r}: the endpoint must not carry credentials"
                )
            if parts.query or parts.fragment:
                bad("endpoint", "must not have a query or fragment")
        region = options.get("region") or None
        if region is not None and not _REGION.fullmatch(region):
            bad("region", "is not a region name")
        addressing = options.get("addressing", "path" if endpoint else "auto")
        if addressing not in ("auto", "path", "virtual"):
            bad("addressing", "must be path, virtual or auto")
        style = cast(Addressing, addressing)
        numbers: dict[str, float] = {}
        for name, default in (("connect_timeout", 5.0), ("read_timeout", 60.0)):
            try:
                numbers[name] = float(options.get(name, default))
            except ValueError:
                bad(name, "is not a number of seconds")
            if not 0 < numbers[name] <= 3600:
                bad(name, "must be between 0 and 3600 seconds")
        try:
            attempts = int(options.get("max_attempts", 3))
        except ValueError:
            bad("max_attempts", "is not a whole number")
        if not 1 <= attempts <= 20:
            bad("max_attempts", "must be between 1 and 20")
        return cls(
            endpoint=endpoint,
            region=region,
            addressing=style,
            connect_timeout=numbers["connect_timeout"],
            read_timeout=numbers["read_timeout"],
            max_attempts=attempts,
        )

    def options(self) -> dict[str, str]:
        """The URL options that differ from the defaults (inverse of ``from_options``)."""
        out: dict[str, str] = {}
        if self.endpoint:
            out["endpoint"] = self.endpoint
        if self.region:
            out["region"] = self.region
        if self.addressing != ("path" if self.endpoint else "auto"):
            out["addressing"] = self.addressing
        if self.connect_timeout != 5.0:
            out["connect_timeout"] = f"{self.connect_timeout:g}"
        if self.read_timeout != 60.0:
            out["read_timeout"] = f"{self.read_timeout:g}"
        if self.max_attempts != 3:
            out["max_attempts"] = str(self.max_attempts)
        return out


class S3Store(ObjectStore):
    """Objects in ``bucket`` under ``prefix/``, through one thread-safe boto3 client."""

    def __init__(self, bucket: str, prefix: str = "", settings: S3Settings | None = None) -> None:
        self.settings = settings = settings or S3Settings()
        if not _BUCKET.fullmatch(bucket):
            raise ConfigError(f"object store URL s3://{bucket}: {bucket!r} is not a bucket name")
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except ValueError as exc:
                raise ConfigError(f"object store s3://{bucket}: bad prefix: {exc}") from None
        self.bucket = bucket
        self.prefix = prefix
        self._base = prefix + "/" if prefix else ""
        query = urlencode(settings.options(), safe=":/")
        self.url = f"s3://{bucket}/{quote(prefix)}" + (f"?{query}" if query else "")
        config = Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            s3={"addressing_style": settings.addressing},
            max_pool_connections=32,
        )
        try:
            session = boto3.session.Session()
            self._client: S3Client = session.client(
                "s3",
                endpoint_url=settings.endpoint,
                region_name=settings.region,
                config=config,
            )
        except bex.BotoCoreError as exc:
            raise ConfigError(f"cannot set up object store {self.url}: {exc}") from None
        self._closed = False

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # ------------------------------------------------------------------ operations

    def put(self, key: str, data: bytes) -> None:
        with self._calls("write", key):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._base + check_key(key),
                Body=data,
                ChecksumAlgorithm="SHA256",
            )

    def get(self, key: str) -> bytes:
        with self._calls("read", key):
            response = self._client.get_object(
                Bucket=self.bucket, Key=self._base + check_key(key), ChecksumMode="ENABLED"
            )
            with response["Body"] as body:
                return body.read()  # botocore checks the stored checksum as it reads

    def exists(self, key: str) -> bool:
        try:
            with self._calls("look up", key):
                self._client.head_object(Bucket=self.bucket, Key=self._base + check_key(key))
        except ObjectMissing:
            return False
        return True

    def list(self, prefix: str = "") -> builtins.list[str]:
        check_prefix(prefix)
        keys: builtins.list[str] = []
        with self._calls("list", prefix or "(all)"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._base + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item.get("Key", "").removeprefix(self._base)
                    if _is_key(key):  # skip "folder" markers and foreign names
                        keys.append(key)
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        try:
            with self._calls("delete", key):
                self._client.delete_object(Bucket=self.bucket, Key=self._base + check_key(key))
        except ObjectMissing:
            pass

    def check(self) -> None:
        with self._calls("list", self._base or "(all)"):
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._base, MaxKeys=1)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _calls(self, action: str, key: str) -> Iterator[None]:
        """Turn botocore's exceptions into StorageError (ObjectMissing, CorruptObject)."""
        if self._closed:
            raise StorageError(f"cannot {action} object {key!r}: {self.url} is closed")
        where = f"object {key!r} in {self.url}"
        try:
            yield
        except bex.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _MISSING_CODES and action != "list":
                raise ObjectMissing(key, self.url) from None
            if code == "NoSuchBucket":
                raise StorageError(
                    f"cannot {action} {where}: bucket {self.bucket!r} does not exist"
                ) from None
            if code in _DENIED_CODES or status == 403:
                raise StorageError(
                    f"cannot {action} {where}: access denied ({code}); check the credentials "
                    "and the bucket policy"
                ) from None
            if code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
                raise StorageError(
                    f"cannot {action} {where}: the server received different bytes "
                    f"than were sent ({code})"
                ) from None
            message = error.get("Message") or "no message"
            raise StorageError(
                f"cannot {action} {where}: the server said {code or status}: {message}"
            ) from None
        except bex.FlexibleChecksumError:
            raise CorruptObject(
                key, self.url, "the bytes read do not match its stored checksum"
            ) from None
        except bex.NoCredentialsError:
            raise StorageError(
                f"cannot {action} {where}: no AWS credentials found (set AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an instance role)"
            ) from None
        except _CONNECTION_ERRORS as exc:
            endpoint = self.settings.endpoint or "the S3 endpoint"
            raise StorageError(
                f"cannot {action} {where}: cannot reach {endpoint} "
                f"after {self.settings.max_attempts} attempt(s): {exc}"
            ) from None
        except bex.BotoCoreError as exc:
            raise StorageError(f"cannot {action} {where}: {type(exc).__name__}: {exc}") from None


def _is_key(key: str) -> bool:
    try:
        check_key(key)
    except ValueError:
        return False
    return True
