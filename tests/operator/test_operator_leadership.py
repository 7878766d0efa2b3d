"""The operator's settings for peering and for waiting on the API server, as ``lifeboat-operator`` sets them."""

import asyncio
import datetime
import pathlib
import socket

import kopf
import pytest
import urllib3
import yaml
from lifeboat.operator import kube, leadership, timeouts


def test_the_earlier_replica_has_the_higher_priority_and_none_tie() -> None:
    assert leadership.seniority(1_000_000_000) > leadership.seniority(1_000_001_000)
    assert leadership.seniority() != leadership.seniority(0)


def test_peering_is_mandatory_by_seniority_with_a_short_lifetime() -> None:
    settings = kopf.OperatorSettings()
    leadership.configure(settings, "lb", clusterwide=False)
    assert (settings.peering.name, settings.peering.mandatory, settings.peering.standalone) == ("lb", True, False)
    assert settings.peering.namespaced
    assert settings.peering.lifetime == leadership.LIFETIME
    assert settings.peering.priority < 0


def test_no_watch_nor_call_waits_unbounded() -> None:
    settings = kopf.OperatorSettings()
    timeouts.apply(settings)
    watching, networking = settings.watching, settings.networking
    assert None not in (watching.server_timeout, watching.client_timeout, watching.connect_timeout,
                        networking.request_timeout, networking.connect_timeout)
    # kopf sends it as the watch's timeoutSeconds, which the API server parses as an integer ("120.0": 400).
    assert isinstance(watching.server_timeout, int)
    # The server ends a watch cleanly before the client gives up on it.
    assert watching.client_timeout > watching.server_timeout


def test_peering_objects_follow_the_watched_namespaces() -> None:
    assert leadership.peering_objects(()) == [("clusterkopfpeerings", None)]
    assert leadership.peering_objects(("a", "b")) == [("kopfpeerings", "a"), ("kopfpeerings", "b")]


def test_a_replica_leads_while_no_live_record_outranks_it() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
    me = {"priority": -200, "lifetime": 15, "lastseen": "2026-01-01T11:59:58+00:00"}
    elder = {"priority": -100, "lifetime": 15, "lastseen": "2026-01-01T11:59:58+00:00"}
    younger = {"priority": -300, "lifetime": 15, "lastseen": "2026-01-01T11:59:58.5"}
    assert leadership.leads({"me": me, "younger": younger}, -200, now)
    assert not leadership.leads({"me": me, "elder": elder}, -200, now)
    # The elder's record has run out (it died without a goodbye): the next in line leads.
    assert leadership.leads({"me": me, "elder": {**elder, "lastseen": "2026-01-01T11:59:44+00:00"}}, -200, now)


async def test_a_call_to_an_api_server_that_never_answers_fails_instead_of_hanging(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call of the operator's own client carries the read timeout (kopf's are in its settings)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers a byte
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "silent",
        "clusters": [{"name": "silent", "cluster": {"server": f"http://127.0.0.1:{silent.getsockname()[1]}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "silent", "context": {"cluster": "silent", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(timeouts, "REQUEST", 0.5)
    lifeboat = kube.Kube(kube.load_api_client())
    try:
        async with asyncio.timeout(30):  # far beyond the read timeout: only a call without one gets here
            with pytest.raises(urllib3.exceptions.MaxRetryError) as failed:
                await lifeboat.replica("apps", "db")
        assert isinstance(failed.value.reason, urllib3.exceptions.ReadTimeoutError)
    finally:
        silent.close()
