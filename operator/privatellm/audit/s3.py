"""The few S3 calls the audit log's WORM copy needs, on boto3 with path-style addressing."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

COMPLIANCE = "COMPLIANCE"
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}


def error_code(error: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("AccessDenied"), else the class name."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return type(error).__name__


def sha256_from_checksum(checksum: str | None) -> str | None:
    """An S3 base64 SHA-256 checksum as hex (None stays None)."""
    return base64.b64decode(checksum).hex() if checksum else None


@dataclass(frozen=True)
class ObjectInfo:
    """One version of an object, as HEAD reports it (`S3Client.retention` for its lock)."""

    key: str
    version_id: str | None
    size: int
    # Hex; None when the object was stored without a full-object SHA-256 checksum.
    sha256: str | None
    lock_mode: str | None
    lock_until: datetime | None


@dataclass(frozen=True)
class ObjectVersion:
    """One entry of a version listing (delete markers are left out)."""

    key: str
    version_id: str
    size: int
    last_modified: datetime


class S3Client:
    """The few S3 calls the WORM copy needs, on boto3 with path-style addressing.

    Anything not given comes from the standard AWS environment: AWS_ENDPOINT_URL_S3
    or AWS_ENDPOINT_URL, AWS_REGION or AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or boto3's other credential sources).
    """

    def __init__(
        self,
        endpoint_url: str | None = None,
        *,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self.region = (
            region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        config = Config(
            s3={"addressing_style": "path"},
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        self.raw: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
            config=config,
        )

    def create_bucket(self, bucket: str, *, object_lock: bool = True) -> None:
        """Create `bucket` (with Object Lock, hence versioning, unless told otherwise).

        A bucket we already own is accepted as it is: `bucket_problems` says whether it fits.
        """
        args: dict[str, Any] = {"Bucket": bucket, "ObjectLockEnabledForBucket": object_lock}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.raw.create_bucket(**args)
        except ClientError as error:
            if error_code(error) != "BucketAlreadyOwnedByYou":
                raise

    def bucket_problems(self, bucket: str) -> list[str]:
        """What keeps `bucket` from holding a WORM copy; empty when it can."""
        problems = []
        versioning = self.raw.get_bucket_versioning(Bucket=bucket).get("Status")
        if versioning != "Enabled":
            problems.append(f"bucket {bucket}: versioning is {versioning or 'off'}, not Enabled")
        try:
            lock = self.raw.get_object_lock_configuration(Bucket=bucket)
            enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        except ClientError as error:
            if error_code(error) != "ObjectLockConfigurationNotFoundError":
                raise
            enabled = None
        if enabled != "Enabled":
            problems.append(f"bucket {bucket}: Object Lock is not enabled (enable it at creation)")
        return problems

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        retain_until: datetime | None,
        metadata: dict[str, str] | None = None,
    ) -> str | None:
        """Store a new version of `key`, locked in compliance mode until `retain_until`.

        The SHA-256 and MD5 of `data` travel with it and the server checks them
        (BadDigest otherwise). The new version's id, or None where unversioned.
        """
        args: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "Body": data,
            "ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
            "Metadata": metadata or {},
        }
        if retain_until is not None:
            args["ObjectLockMode"] = COMPLIANCE
            args["ObjectLockRetainUntilDate"] = retain_until
        response = self.raw.put_object(**args)
        version: str | None = response.get("VersionId")
        return version

    def set_retention(
        self, bucket: str, key: str, version_id: str | None, retain_until: datetime
    ) -> None:
        """Lock an existing version in compliance mode until `retain_until` (only ever longer)."""
        args: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "Retention": {"Mode": COMPLIANCE, "RetainUntilDate": retain_until},
        }
        if version_id:
            args["VersionId"] = version_id
        self.raw.put_object_retention(**args)

    def retention(
        self, bucket: str, key: str, version_id: str | None = None
    ) -> tuple[str, datetime] | None:
        """A version's lock (mode, until), or None when it has none.

        Asked with GetObjectRetention: some servers leave the lock headers out of
        HEAD for a version that is no longer the newest (versitygw 1.8 does).
        """
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        try:
            response = self.raw.get_object_retention(**args)
        except ClientError as error:
            if error_code(error) == "NoSuchObjectLockConfiguration":
                return None
            raise
        retention = response.get("Retention", {})
        if "Mode" not in retention or "RetainUntilDate" not in retention:
            return None
        return str(retention["Mode"]), retention["RetainUntilDate"]

    def get(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        body: bytes = self.raw.get_object(**args)["Body"].read()
        return body

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """The object's (or one version's) size, checksum and lock; None when there is none."""
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            args["VersionId"] = version_id
        try:
            response = self.raw.head_object(**args)
        except ClientError as error:
            if error_code(error) in _NOT_FOUND or _status(error) in (404, 405):
                return None
            raise
        checksum = response.get("ChecksumSHA256")
        if response.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            checksum = None
        return ObjectInfo(
            key=key,
            version_id=response.get("VersionId"),
            size=int(response["ContentLength"]),
            sha256=sha256_from_checksum(checksum),
            lock_mode=response.get("ObjectLockMode"),
            lock_until=response.get("ObjectLockRetainUntilDate"),
        )

    def sha256(self, bucket: str, key: str, version_id: str | None = None) -> str | None:
        """The version's SHA-256: from its stored checksum, else by reading it back."""
        info = self.head(bucket, key, version_id)
        if info is None:
            return None
        if info.sha256 is not None:
            return info.sha256
        return hashlib.sha256(self.get(bucket, key, info.version_id)).hexdigest()

    def versions(self, bucket: str, prefix: str) -> dict[str, list[ObjectVersion]]:
        """Every stored version under `prefix` by key, newest first; delete markers left out."""
        found: dict[str, list[ObjectVersion]] = {}
        for page in self.raw.get_paginator("list_object_versions").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for item in page.get("Versions", []):
                found.setdefault(item["Key"], []).append(
                    ObjectVersion(
                        item["Key"], item["VersionId"], int(item["Size"]), item["LastModified"]
                    )
                )
        # Kept in the listing's order, which S3 defines as newest first for each key. Not
        # re-sorted by time: LastModified has whole seconds, and versitygw changes it
        # when a version stops being the newest.
        return found


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
