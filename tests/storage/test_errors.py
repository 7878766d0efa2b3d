"""Permanent failures surface from init() as one clear line that names the replica, never a secret."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from conftest import AZURE_ENDPOINT, AZURE_KEY, BUCKET, PORTS, REPO, S3_ENDPOINT, SFTPServer, listening
from lifeboat.agent.storage import StorageError, new_client

SECRET = "s3cr3t-never-printed"


async def init_error(settings: dict[str, Any]) -> str:
    client = new_client(settings)
    try:
        with pytest.raises(StorageError) as info:
            await client.init()
    finally:
        await client.close()
    text = str(info.value)
    assert "\n" not in text, text
    assert SECRET not in text and AZURE_KEY not in text, text
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[str]:
    """A second moto that checks signatures against its (empty) IAM: every key is unknown."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "moto with auth did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def s3(bucket: str, endpoint: str = S3_ENDPOINT) -> dict[str, Any]:
    return {
        "url": f"s3://{bucket}/db?endpoint={endpoint}",
        "access-key-id": "AKIAWRONG",
        "secret-access-key": SECRET,
    }


async def test_s3_errors(servers: SFTPServer, moto_with_auth: str) -> None:
    text = await init_error(s3("no-such-bucket"))
    assert "s3://no-such-bucket/db" in text and "does not exist" in text
    text = await init_error(s3(BUCKET, "http://127.0.0.1:1"))
    assert f"s3://{BUCKET}/db" in text and "cannot reach" in text
    text = await init_error(s3(BUCKET, moto_with_auth))
    assert f"s3://{BUCKET}/db" in text and "credentials" in text


async def test_gcs_errors(servers: SFTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    text = await init_error({"url": "gs://no-such-bucket/db"})
    assert "gs://no-such-bucket/db" in text and "does not exist" in text
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    text = await init_error({"url": f"gs://{BUCKET}/db"})
    assert f"gs://{BUCKET}/db" in text and "cannot reach" in text


async def test_azure_errors(servers: SFTPServer) -> None:
    base = {"endpoint": AZURE_ENDPOINT, "account-key": AZURE_KEY}
    text = await init_error({"url": "abs://devstoreaccount1@no-such-container/db", **base})
    assert "abs://devstoreaccount1@no-such-container/db" in text and "does not exist" in text
    wrong = {
        "url": f"abs://devstoreaccount1@{BUCKET}/db",
        "endpoint": AZURE_ENDPOINT,
        "account-key": "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk=",
    }
    text = await init_error(wrong)
    assert f"abs://devstoreaccount1@{BUCKET}/db" in text and "credentials" in text
    text = await init_error({**wrong, "account-key": AZURE_KEY, "endpoint": "http://127.0.0.1:1/devstoreaccount1"})
    assert "cannot reach" in text


async def test_sftp_errors(servers: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sftp://{servers.user}@127.0.0.1:{PORTS['sftp']}{servers.root}/db"
    shown = f"sftp://{servers.user}@127.0.0.1:{PORTS['sftp']}{servers.root}/db"
    good = {"url": url, "key-path": str(servers.client_key), "host-key": servers.host_key_line}

    # A host key that is not the server's, and none at all (with an empty known_hosts), are refused.
    other = (servers.dir / "client_key.pub").read_text()
    text = await init_error({**good, "host-key": other})
    assert shown in text and "unknown host key" in text
    monkeypatch.setenv("HOME", str(tmp_path))
    text = await init_error({"url": url, "key-path": str(servers.client_key)})
    assert shown in text and "unknown host key" in text
    # ... unless the check is switched off explicitly.
    client = new_client({"url": url, "key-path": str(servers.client_key), "insecure-ignore-host-key": True})
    await client.init()
    await client.close()

    stranger = tmp_path / "stranger_key"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(stranger))
    text = await init_error({**good, "key-path": str(stranger)})
    assert shown in text and "authentication failed" in text
    text = await init_error({**good, "url": f"sftp://{servers.user}:{SECRET}@127.0.0.1:1/db"})
    assert f"sftp://{servers.user}@127.0.0.1:1/db" in text and "cannot connect" in text


async def test_nats_errors(servers: SFTPServer) -> None:
    text = await init_error({"url": f"nats://127.0.0.1:{PORTS['nats']}/no-such-bucket"})
    assert f"nats://127.0.0.1:{PORTS['nats']}/no-such-bucket" in text and "does not exist" in text
    text = await init_error({"url": "nats://127.0.0.1:1/bucket", "max-reconnects": 0, "timeout": "1s"})
    assert "nats://127.0.0.1:1/bucket" in text and "cannot connect" in text
