"""Put arbitrary bytes next to a replica's LTX files, through each backend's own SDK handle."""

from __future__ import annotations

import asyncio
import io
from typing import Any


async def raw_put(client: Any, level: int, name: str, body: bytes) -> None:
    """Store `body` as `name` inside the directory/prefix of `level`, bypassing write_ltx_file."""
    kind = client.type
    if kind == "file":
        path = client.level_dir(level) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    elif kind == "s3":
        await asyncio.to_thread(
            client.s3.put_object, Bucket=client.bucket, Key=client.level_prefix(level) + name, Body=body
        )
    elif kind == "gs":
        blob = client.bucket_handle.blob(client.level_prefix(level) + name)
        await asyncio.to_thread(blob.upload_from_string, body)
    elif kind == "abs":
        await asyncio.to_thread(client.container.upload_blob, client.level_prefix(level) + name, body, overwrite=True)
    elif kind == "sftp":
        await client.run(lambda sftp: _sftp_put(sftp, client.level_prefix(level) + name, body))
    elif kind == "nats":
        store = await client.store()
        await store.put(client.level_prefix(level) + name, body)
    else:
        raise AssertionError(kind)


def _sftp_put(sftp: Any, path: str, body: bytes) -> None:
    parent = path.rsplit("/", 1)[0]
    try:
        sftp.stat(parent)
    except FileNotFoundError:
        sftp.mkdir(parent)
    sftp.putfo(io.BytesIO(body), path)
