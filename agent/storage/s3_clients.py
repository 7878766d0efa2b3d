"""The S3 clients of the process: built from one botocore session, one per endpoint, credentials
and client options, shared by every replica using them.

A client costs megabytes (its class, the parsed S3 model and endpoint rule set) and a connection
pool; an agent replicating a directory of databases to one bucket needs one, not one per
database. The session's data loader prunes what it parses (`botodata`). A client is closed when
the last replica using it lets it go.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .s3 import S3Options

DEFAULT_REGION = "us-east-1"
HEAD_CONCURRENCY = 50  # Litestream's parallelism for metadata lookups


def _env_seconds(name: str, default: float) -> float:
    """A positive timeout from the environment (tests shorten them), else `default`."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


@dataclass(frozen=True, slots=True)
class ClientKey:
    """Everything a client is built from: replicas with equal keys share one client."""

    region: str
    endpoint: str
    force_path_style: bool
    skip_verify: bool
    sign_payload: bool
    require_content_md5: bool
    pool: int
    connect_timeout: float
    read_timeout: float
    access_key_id: str = field(repr=False)  # never in a log line
    secret_access_key: str = field(repr=False)

    @classmethod
    def of(cls, opts: S3Options) -> ClientKey:
        """The key of a replica's options (the bucket, path and per-request options are not in it);
        the timeouts come from the environment, read now."""
        return cls(
            region=opts.region or DEFAULT_REGION,
            endpoint=opts.endpoint,
            force_path_style=opts.force_path_style,
            skip_verify=opts.skip_verify,
            sign_payload=opts.sign_payload,
            require_content_md5=opts.require_content_md5,
            # Uploads use `concurrency` connections, a metadata listing HEAD_CONCURRENCY.
            pool=max(opts.concurrency, HEAD_CONCURRENCY) + 2,
            connect_timeout=_env_seconds("LIFEBOAT_S3_CONNECT_TIMEOUT", 10.0),
            read_timeout=_env_seconds("LIFEBOAT_S3_READ_TIMEOUT", 30.0),
            access_key_id=opts.access_key_id,
            secret_access_key=opts.secret_access_key,
        )


class _Shared:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.users = 0


_lock = threading.Lock()  # also serializes building clients, which a botocore session requires
_clients: dict[ClientKey, _Shared] = {}
_session: Any = None


def acquire(key: ClientKey) -> Any:
    """The shared client for `key`, built on first use; every call is paired with a `release`."""
    global _session
    with _lock:
        shared = _clients.get(key)
        if shared is None:
            if _session is None:
                _session = _new_session()
            shared = _clients[key] = _Shared(_build(_session, key))
        shared.users += 1
        return shared.client


def release(key: ClientKey) -> None:
    """One user of `key`'s client is done with it; the last one closes its connections."""
    with _lock:
        shared = _clients.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _clients[key]
    shared.client.close()


def _new_session() -> Any:
    import boto3.session
    import botocore.session

    from .botodata import trimmed_loader

    core = botocore.session.get_session()
    core.register_component("data_loader", trimmed_loader(core.get_config_variable("data_path")))
    return boto3.session.Session(botocore_session=core)


def _build(session: Any, key: ClientKey) -> Any:
    from botocore.config import Config

    config = Config(
        region_name=key.region,
        s3={
            "addressing_style": "path" if key.force_path_style else "auto",
            "payload_signing_enabled": key.sign_payload,
        },
        # aws-chunked payload checksums break S3-compatible stores that predate flexible checksums.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # A hung request (accepted, never answered) fails after read_timeout and is retried;
        # the agent's own retry loop takes over after max_attempts, so nothing waits forever.
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=key.connect_timeout,
        read_timeout=key.read_timeout,
        max_pool_connections=key.pool,
    )
    client = session.client(
        "s3",
        endpoint_url=key.endpoint or None,
        config=config,
        verify=not key.skip_verify,
        aws_access_key_id=key.access_key_id or None,
        aws_secret_access_key=key.secret_access_key or None,
    )
    for op in ("PutObject", "CompleteMultipartUpload"):
        client.meta.events.register(f"before-parameter-build.s3.{op}", _create_only)
    if key.require_content_md5:
        client.meta.events.register("before-sign.s3.DeleteObjects", _add_content_md5)
    return client


def _add_content_md5(request: Any, **_: Any) -> None:
    """Content-MD5 on a DeleteObjects request, as Litestream sends it: botocore sends only a CRC32,
    which stores from before S3's flexible checksums (older MinIO, B2) reject."""
    body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
    request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def _create_only(params: dict[str, Any], **_: Any) -> None:
    """LTX objects are written create-only (`If-None-Match: *`, 412 if the key exists), the single
    PutObject and the multipart completion alike: boto3's transfer manager has no argument for it."""
    if str(params.get("Key", "")).endswith(".ltx") and "IfMatch" not in params:
        params.setdefault("IfNoneMatch", "*")
