"""The CRD's OpenAPI schema: what it admits and rejects at apply time, and that it is structural."""

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml
from kube_helpers import REPO, make_replica

CRD = yaml.safe_load((REPO / "crds" / "sqlitereplicas.yaml").read_text())
(VERSION,) = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def as_json_schema(node: Any) -> Any:
    """The OpenAPI schema as JSON Schema, with the API server's strict field validation.

    ``nullable`` becomes a null alternative; objects without ``additionalProperties`` reject unknown
    fields (as ``kubectl apply`` does with server-side strict field validation); ``metadata`` is the
    API server's to check.
    """
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: as_json_schema(value) for key, value in node.items()}
    if result.get("type") == "object" and "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    if result.pop("nullable", False):
        result = {"anyOf": [result, {"type": "null"}]}
    return result


VALIDATOR = jsonschema.Draft7Validator(as_json_schema(SCHEMA) | {"properties": {
    **as_json_schema(SCHEMA)["properties"], "metadata": {"type": "object"}}})


def errors(obj: dict[str, Any]) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(obj)]


def with_spec(**changes: Any) -> dict[str, Any]:
    replica = make_replica()
    replica["spec"].update(changes)
    return replica


@pytest.mark.parametrize("url", [
    "s3://backups/app", "s3://my.bucket-1", "gs://bucket/a/b", "abs://account@container/db", "abs://container/db",
    "sftp://backup@host.example:2222/srv/db", "sftp://host/srv/db", "nats://nats.svc:4222/lifeboat",
    "file:///backups/app",
])
def test_valid_urls_are_admitted(url: str) -> None:
    assert errors(with_spec(replica={"url": url})) == []


@pytest.mark.parametrize("url", [
    "http://backups/app", "s3://UPPER/app", "s3://b", "sftp://user:password@host/srv", "nats://user:pw@host/b",
    "nats://host:4222/", "file://relative/path", "s3://bucket/with space",
])
def test_invalid_urls_are_rejected(url: str) -> None:
    assert any("does not match" in message for message in errors(with_spec(replica={"url": url})))


def test_the_example_and_a_full_spec_are_admitted() -> None:
    example = next(d for d in yaml.safe_load_all((REPO / "examples" / "replica.yaml").read_text())
                   if d["kind"] == "SQLiteReplica")
    assert errors(example) == []
    full = with_spec(container="app", syncInterval="1m30s", maxLag="2.5m",
                     snapshot={"interval": "24h", "retention": "168h"},
                     restore={"enabled": True, "timestamp": None, "txid": "00000000000000ff"},
                     agent={"image": "lifeboat:1", "imagePullPolicy": "Always", "metricsPort": 9191,
                            "nativeSidecar": False,
                            "resources": {"requests": {"cpu": "50m", "memory": 64 * 2**20},
                                          "limits": {"memory": "1Gi"}}})
    assert errors(full) == []


@pytest.mark.parametrize(("mutate", "fragment"), [
    (lambda s: s.pop("database"), "'database' is a required property"),
    (lambda s: s["replica"].pop("url"), "'url' is a required property"),
    (lambda s: s.update(database="data/app.db"), "does not match"),
    (lambda s: s.update(database="/data/"), "does not match"),
    (lambda s: s.update(syncInterval="1d"), "does not match"),
    (lambda s: s.update(syncInterval="1"), "does not match"),
    (lambda s: s.update(snapshot={"interval": "10 m"}), "does not match"),
    (lambda s: s.update(restore={"txid": "xyz"}), "not valid under any of the given schemas"),  # nullable
    (lambda s: s.update(agent={"metricsPort": 80}), "less than the minimum"),
    (lambda s: s.update(agent={"imagePullPolicy": "Sometimes"}), "is not one of"),
    (lambda s: s.update(agent={"resources": {"limits": {"memory": "lots"}}}), "does not match"),
    (lambda s: s["replica"].update(endpoint="minio:9000"), "does not match"),
    (lambda s: s["replica"].update(forcePathStyle="yes"), "is not of type 'boolean'"),
    (lambda s: s["replica"].update(secretAccessKey="inline"), "Additional properties are not allowed"),
    (lambda s: s["replica"].update(credentials={}), "'secretName' is a required property"),
])
def test_bad_specs_are_rejected(mutate: Any, fragment: str) -> None:
    replica = copy.deepcopy(make_replica())
    mutate(replica["spec"])

    assert any(fragment in message for message in errors(replica)), errors(replica)


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schema_nodes(node[key], f"{path}[{key}]")


def test_schema_is_structural() -> None:
    for path, node in schema_nodes(SCHEMA):
        if path == ".metadata":
            assert node == {"type": "object"}
            continue
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path or '<root>'} has no type"


def test_resource_shape_for_kubectl() -> None:
    assert CRD["spec"]["scope"] == "Namespaced"
    assert CRD["spec"]["names"]["shortNames"] == ["sqlr"]
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns == {
        "Database": ".spec.database", "Replica": ".spec.replica.url", "TXID": ".status.txid",
        "Lag": ".status.lagSeconds", "Followers": ".status.followers", "Follow-Lag": ".status.followLagSeconds",
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Verified": '.status.conditions[?(@.type=="Verified")].status', "Age": ".metadata.creationTimestamp",
    }
