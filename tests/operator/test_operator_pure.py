"""Pure pieces: agent config rendering, spec checks, status aggregation, certificates."""

import datetime
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from kube_helpers import make_replica
from lifeboat.operator import agent_config, handlers, spec, status, webhook


def test_agent_config_maps_camel_case_options_to_litestream_keys() -> None:
    replica = make_replica(replica={"url": "s3://backups/app", "endpoint": "http://minio:9000", "region": "eu-1",
                                    "forcePathStyle": True, "skipVerify": False},
                           syncInterval="500ms", snapshot={"interval": "24h", "retention": "72h"},
                           agent={"metricsPort": 9191})

    config = yaml.safe_load(agent_config.render(replica["spec"]))

    assert config == {
        "addr": ":9191",
        "snapshot": {"interval": "24h", "retention": "72h"},
        "dbs": [{"path": "/data/app.db", "replica": {
            "url": "s3://backups/app", "endpoint": "http://minio:9000", "region": "eu-1",
            "force-path-style": True, "skip-verify": False, "sync-interval": "500ms"}}],
    }


def test_agent_config_holds_secret_references_never_secret_names_or_values() -> None:
    sftp = make_replica(replica={"url": "sftp://backup@host:22/srv/app", "hostKey": "ssh-ed25519 AAAA",
                                 "credentials": {"secretName": "sftp-creds"}})
    s3 = make_replica()

    sftp_replica = yaml.safe_load(agent_config.render(sftp["spec"]))["dbs"][0]["replica"]
    s3_text = agent_config.render(s3["spec"])

    assert sftp_replica["password"] == "${SFTP_PASSWORD}"
    assert sftp_replica["host-key"] == "ssh-ed25519 AAAA"
    assert "credentials" not in s3_text and "s3-creds" not in s3_text
    assert "secret" not in s3_text.lower()


def test_configmap_body_carries_the_rendered_config() -> None:
    replica = make_replica()

    body = handlers.configmap_body("db", "apps", replica["spec"])

    assert body["metadata"]["name"] == "db-lifeboat"
    assert body["metadata"]["labels"]["lifeboat.dev/replica"] == "db"
    assert body["data"] == {"lifeboat.yml": agent_config.render(replica["spec"])}


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("250ms", 0.25)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert spec.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "s", "1s2", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        spec.parse_duration(text)


@pytest.mark.parametrize(("replica_spec", "expected"), [
    ({}, []),
    ({"replica": {"url": "abs://acct@container/app", "accountName": "acct"}}, []),
    ({"replica": {"url": "gs://bucket/app", "region": "x"}}, ["replica.region applies to s3:// URLs, not gs://"]),
    ({"replica": {"url": "file:///backups", "endpoint": "http://x"}},
     ["replica.endpoint applies to s3:// and abs:// URLs, not file://"]),
    ({"replica": {"url": "ftp://host/x"}}, ["replica.url 'ftp://host/x': scheme must be one of "
                                            "s3, abs, sftp, gs, nats, file"]),
    ({"restore": {"timestamp": "2026-01-01T00:00:00Z", "txid": "0000000000000001"}},
     ["restore.timestamp and restore.txid are exclusive: pick one point in time"]),
])
def test_spec_problems(replica_spec: dict[str, Any], expected: list[str]) -> None:
    assert spec.problems(make_replica(**replica_spec)["spec"]) == expected


def test_secret_problems_name_missing_keys() -> None:
    s3 = make_replica()["spec"]
    assert spec.secret_problems(s3, {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}) == []
    assert spec.secret_problems(s3, {"AWS_ACCESS_KEY_ID"}) == [
        "Secret lacks key(s) AWS_SECRET_ACCESS_KEY needed for s3:// replicas"]
    sftp = make_replica(replica={"url": "sftp://u@h/p"})["spec"]
    assert spec.secret_problems(sftp, set()) == []


def report(name: str, lag: float | None, error: str | None = None, path: str = "/data/app.db") -> status.PodReport:
    return status.PodReport(name, agent_status={"databases": [
        {"path": path, "txid": 300, "remote_txid": 255, "last_sync": "2026-01-01T00:00:00Z",
         "lag_seconds": lag, "error": error}]})


@pytest.mark.parametrize(("reports", "verdict"), [
    ([], ("False", "NoPods")),
    ([report("a", 0.2), report("b", 1.0)], ("True", "Replicating")),
    ([report("a", 0.2), report("b", 61.0)], ("False", "Lagging")),
    ([report("a", None)], ("False", "NotSynced")),
    ([report("a", 0.1, error="s3: 403 Forbidden")], ("False", "AgentError")),
    ([status.PodReport("a", error="agent unreachable: ClientConnectorError")], ("False", "AgentError")),
    ([report("a", 0.1, path="/elsewhere.db")], ("False", "AgentError")),
])
def test_ready_means_every_pod_replicates_within_max_lag(
    reports: list[status.PodReport], verdict: tuple[str, str]
) -> None:
    summary = status.summarize(reports, database="/data/app.db")

    ready, reason, _ = status.readiness(summary["pods"], max_lag=60.0)
    assert (ready, reason) == verdict


def test_summary_reports_pods_in_hex_and_the_worst_lag() -> None:
    summary = status.summarize([report("b", 2.5), report("a", 0.5)], database="/data/app.db")

    assert [p["name"] for p in summary["pods"]] == ["a", "b"]
    assert summary["pods"][0]["txid"] == "000000000000012c"
    assert summary["txid"] == "00000000000000ff"
    assert summary["lagSeconds"] == 2.5


def test_condition_transition_time_moves_only_on_status_change() -> None:
    first = status.set_condition([], "Ready", "False", "NoPods", "m", generation=1, now="T1")
    same = status.set_condition(first, "Ready", "False", "NoPods", "m2", generation=2, now="T2")
    changed = status.set_condition(same, "Ready", "True", "Replicating", "ok", generation=2, now="T3")
    other = status.set_condition(changed, "ConfigReady", "True", "Rendered", "", generation=2, now="T4")

    assert same[0]["lastTransitionTime"] == "T1" and same[0]["message"] == "m2"
    assert changed[0]["lastTransitionTime"] == "T3"
    assert [c["type"] for c in other] == ["ConfigReady", "Ready"]


def test_generated_certificate_serves_the_service_names_and_chains_to_its_ca() -> None:
    names = webhook.service_dns_names("lifeboat-webhook", "lifeboat-system")

    bundle = webhook.generate_certificate(names)

    cert = x509.load_pem_x509_certificate(bundle.cert)
    ca = x509.load_pem_x509_certificate(bundle.ca)
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "lifeboat-webhook.lifeboat-system.svc" in sans.get_values_for_type(x509.DNSName)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=365)
    assert b"PRIVATE KEY" in bundle.key


@pytest.mark.parametrize("replica", [
    {"url": "s3://backups/app", "endpoint": "http://minio:9000", "region": "eu-1", "forcePathStyle": True,
     "skipVerify": True, "credentials": {"secretName": "s3"}},
    {"url": "abs://acct@container/app", "accountName": "acct", "endpoint": "http://azurite:10000"},
    {"url": "sftp://backup@host:22/srv/app", "hostKey": "ssh-ed25519 AAAA", "keyPath": "/keys/id",
     "credentials": {"secretName": "sftp"}},
    {"url": "gs://bucket/app", "credentials": {"secretName": "gcs"}},
    {"url": "nats://nats:4222/lifeboat"},
    {"url": "file:///backups/app"},
], ids=lambda r: r["url"].split(":")[0])
def test_the_agent_accepts_every_rendered_config(replica: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from lifeboat.agent import config as agent_side  # the agent's config model, not its engine

    monkeypatch.setenv("SFTP_PASSWORD", "from-the-secret")
    spec_ = make_replica(replica=replica, syncInterval="2s", snapshot={"interval": "1h", "retention": "24h"},
                         agent={"metricsPort": 9191})["spec"]

    parsed = agent_side.parse_config(agent_config.render(spec_), "configmap")

    (db,) = parsed.dbs
    assert db.path == "/data/app.db"
    assert db.replica is not None and db.replica.url == replica["url"]
    assert db.replica.sync_interval == 2.0
    if replica["url"].startswith("sftp"):
        assert db.replica.settings["password"] == "from-the-secret"


def test_a_status_round_is_material_only_beyond_ticking_values() -> None:
    pod = {"name": "app-0", "txid": "0000000000000002", "lagSeconds": 0.5, "lastSync": "2026-01-01T00:00:00Z",
           "error": None}
    current = {"pods": [{k: v for k, v in pod.items() if v is not None}], "lagSeconds": 0.5}
    later = {**pod, "lagSeconds": 3.0, "lastSync": "2026-01-01T00:00:02Z"}
    assert not status.changes(current, {"pods": [later], "lagSeconds": 3.0, "txid": None})
    assert status.changes(current, {"pods": [{**later, "txid": "0000000000000003"}]})
    assert status.changes(current, {"uninjectedPods": ["app-1"]})
