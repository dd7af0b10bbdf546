"""The ``edgefleet-server run`` options of the artifact store: the object store, its
credentials, and what devices download from (docs/deployment.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_store_options"]


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from exc
    if not 60 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{value} is outside 60..86400 seconds")
    return value


def add_store_options(run: Any) -> None:
    """Add them to the ``run`` parser."""
    run.add_argument(
        "--artifact-store",
        default="",
        metavar="s3://BUCKET[/PREFIX]",
        help="keep model files in S3-compatible object storage (AWS S3, MinIO, Ceph RGW) and "
        "let devices download them with presigned URLs; default: the data dir's artifacts "
        "folder, served over gRPC (docs/deployment.md)",
    )
    run.add_argument(
        "--s3-endpoint",
        default="",
        metavar="URL",
        help="the object store's S3 endpoint, e.g. https://rgw.example:7480 (default: AWS S3)",
    )
    run.add_argument("--s3-region", default="us-east-1", help="its region (default us-east-1)")
    run.add_argument(
        "--s3-credentials",
        type=Path,
        help="an AWS shared-credentials file ([default] aws_access_key_id, "
        "aws_secret_access_key); default: the s3-credentials systemd credential, else "
        "boto3's own chain (environment, instance role)",
    )
    run.add_argument("--s3-ca-file", type=Path, help="the CA of the endpoint's TLS certificate")
    run.add_argument(
        "--s3-public-endpoint",
        default="",
        metavar="URL",
        help="the endpoint devices reach the store at, when not --s3-endpoint (presigned "
        "URLs name it)",
    )
    run.add_argument(
        "--s3-create-bucket", action="store_true", help="create the bucket when it is missing"
    )
    run.add_argument(
        "--artifact-mirror",
        default="",
        metavar="URL",
        help="a mirror of the artifacts (a CDN, a caching proxy) devices try first, "
        "https://host/path/{artifact} ({artifact} = the sha256); devices check every byte "
        "against the signed manifest and fall back to the store or the server",
    )
    run.add_argument(
        "--download-url-lifetime",
        type=_seconds,
        default=900,
        metavar="SECONDS",
        help="how long a presigned download URL stays valid (default 900; a device asks for "
        "a new one when it resumes)",
    )
