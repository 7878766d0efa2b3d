"""The CRDs as a real API server takes them: structural schemas, defaults, printer columns, and specs
refused at `kubectl apply` by the schema itself (OpenAPI and CEL), before any webhook is asked.

Every object goes through `kubectl apply --dry-run=server`: the whole admission chain runs and nothing
is stored. The API server validates the schema (CEL included) before it calls validating webhooks, so a
message from the schema proves the schema refused it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from k8s import Cluster, Operator, table

NAMESPACE = "crd-checks"


@pytest.fixture(scope="module")
def api(operator: Operator) -> Cluster:
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    return cluster


def replica(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": "db", "namespace": NAMESPACE},
            "spec": {"database": "/data/app.db", "replica": {"url": "s3://backups/app"}, **spec}}


def restore(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
            "metadata": {"name": "r", "namespace": NAMESPACE},
            "spec": {"replica": "db", "target": "inPlace", **spec}}


def dry_run(api: Cluster, obj: dict[str, Any]) -> tuple[int, str, dict[str, Any] | None]:
    proc = api.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(obj), check=False)
    return proc.returncode, proc.stderr, json.loads(proc.stdout) if proc.returncode == 0 else None


def test_both_crds_are_established(api: Cluster) -> None:
    for name in ("sqlitereplicas.lifeboat.dev", "sqliterestores.lifeboat.dev"):
        crd = api.get("crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NonStructuralSchema") is None, conditions


def test_defaults_are_applied_by_the_api_server(api: Cluster) -> None:
    code, err, stored = dry_run(api, replica(restore={}, agent={}))
    assert code == 0, err
    assert stored is not None
    assert stored["spec"]["restore"]["enabled"] is True
    assert stored["spec"]["agent"]["metricsPort"] == 9090
    code, err, stored = dry_run(api, restore())
    assert code == 0, err
    assert stored is not None
    assert (stored["spec"]["verify"], stored["spec"]["stopTimeoutSeconds"]) == (False, 300)


def test_sqliterestore_printer_columns_are_served(api: Cluster) -> None:
    """(SQLiteReplica's columns are checked with the operator's values in test_cluster_pod_flow.)"""
    api.apply(restore(target={"pvc": "scratch"}))
    try:
        (row,) = table(api.kubectl("get", "sqlrestore", "-n", NAMESPACE).stdout)
    finally:
        api.kubectl("delete", "sqliterestore", "r", "-n", NAMESPACE, "--wait=false")
    assert list(row) == ["NAME", "REPLICA", "PHASE", "TXID", "INTEGRITY", "AGE"]
    assert (row["NAME"], row["REPLICA"]) == ("r", "db")


SCHEMA_REJECTS = {
    "relative database path": (replica(database="data/app.db"), "spec.database"),
    "unknown URL scheme": (replica(replica={"url": "ftp://host/app"}), "spec.replica.url"),
    "region on a gs:// URL": (replica(replica={"url": "gs://bucket/app", "region": "us-east-1"}),
                              "spec.replica.region: Invalid value"),
    "forcePathStyle on an abs:// URL": (replica(replica={"url": "abs://acct@ctr/app", "forcePathStyle": True}),
                                        "spec.replica.forcePathStyle: Invalid value"),
    "endpoint on an sftp:// URL": (replica(replica={"url": "sftp://host/app", "endpoint": "http://x"}),
                                   "spec.replica.endpoint: Invalid value"),
    "hostKey on an s3:// URL": (replica(replica={"url": "s3://backups/app", "hostKey": "ssh-ed25519 AAAA"}),
                                "spec.replica.hostKey: Invalid value"),
    "accountName on an s3:// URL": (replica(replica={"url": "s3://backups/app", "accountName": "acct"}),
                                    "spec.replica.accountName: Invalid value"),
    "restore timestamp and txid": (replica(restore={"timestamp": "2026-01-01T00:00:00Z",
                                                    "txid": "0000000000000001"}),
                                   "spec.restore: Invalid value"),
    "SQLiteRestore timestamp and txid": (restore(timestamp="2026-01-01T00:00:00Z", txid="0000000000000001"),
                                         "spec: Invalid value"),
    "SQLiteRestore stopTimeoutSeconds 0": (restore(stopTimeoutSeconds=0), "spec.stopTimeoutSeconds"),
}


@pytest.mark.parametrize("obj,where", SCHEMA_REJECTS.values(), ids=SCHEMA_REJECTS.keys())
def test_the_schema_refuses_a_bad_spec_at_apply_time(api: Cluster, obj: dict[str, Any], where: str) -> None:
    code, err, _ = dry_run(api, obj)
    assert code != 0
    assert "denied the request" not in err, f"refused by a webhook, not by the schema: {err}"
    assert where in err, err


def test_a_bad_sqliterestore_target_is_refused_by_the_webhook(api: Cluster) -> None:
    """A target's shape (inPlace or {pvc: NAME}) is what CEL cannot check on an untyped field."""
    code, err, _ = dry_run(api, restore(target={"volume": "x"}))
    assert code != 0
    assert 'admission webhook "validate.sqliterestores.lifeboat.dev" denied the request' in err, err
    assert "expected inPlace or {pvc: CLAIM_NAME}" in err


@pytest.mark.parametrize("obj", [replica(replica={"url": "gs://bucket/app"}, restore={"txid": "0000000000000001"}),
                                 restore(target={"pvc": "scratch"}, timestamp="2026-01-01T00:00:00Z")],
                         ids=["replica", "restore"])
def test_good_specs_pass(api: Cluster, obj: dict[str, Any]) -> None:
    code, err, _ = dry_run(api, obj)
    assert code == 0, err


# Every check of a SQLiteReplica's spec (lifeboat.operator.spec.problems) is a schema rule of the CRD.
REPLICA_RULES = {name: case for name, case in SCHEMA_REJECTS.items() if not name.startswith("SQLiteRestore")}


@pytest.fixture(scope="module")
def operator_down(api: Cluster, operator: Operator) -> Iterator[Cluster]:
    """The operator stopped and out of the webhook Service (these tests come last in the module)."""
    operator.stop()
    operator.unroute()
    try:
        yield api
    finally:
        operator.start()


@pytest.mark.parametrize("obj,where", REPLICA_RULES.values(), ids=REPLICA_RULES.keys())
def test_the_schema_refuses_a_bad_replica_with_the_operator_down(
    operator_down: Cluster, obj: dict[str, Any], where: str
) -> None:
    code, err, _ = dry_run(operator_down, obj)
    assert code != 0
    assert where in err, err


def test_a_replica_is_created_updated_and_deleted_with_the_operator_down(operator_down: Cluster) -> None:
    """No webhook stands between a SQLiteReplica and the API server: an update that removes a finalizer
    (what uninstall does) passes whatever the operator's state."""
    good = replica(replica={"url": "gs://bucket/app"})
    good["metadata"] = {**good["metadata"], "name": "without-operator", "finalizers": ["lifeboat.dev/test"]}
    operator_down.apply(good)
    operator_down.kubectl("patch", "sqlitereplica", "without-operator", "-n", NAMESPACE, "--type=merge",
                          "-p", json.dumps({"metadata": {"finalizers": None}}))
    operator_down.kubectl("delete", "sqlitereplica", "without-operator", "-n", NAMESPACE)
    assert not operator_down.exists("sqlitereplica", "without-operator", NAMESPACE)
