"""agent/storage/botodata.py: botocore's data files pruned while parsed, against botocore's own data."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import botocore
import pytest
from botocore.regions import EndpointResolver
from lifeboat.agent.storage.botodata import (
    ENDPOINT_SERVICES,
    ENDPOINTS_SPEC,
    TrimmedFileLoader,
    prune,
    trimmed_loader,
)

ENDPOINTS = Path(botocore.__file__).parent / "data" / "endpoints.json"


def test_pruned_endpoints_are_the_full_table_without_the_other_services() -> None:
    text = ENDPOINTS.read_text()
    full = json.loads(text)
    for partition in full["partitions"]:
        partition["services"] = {k: v for k, v in partition["services"].items() if k in ENDPOINT_SERVICES}
    assert prune(text, ENDPOINTS_SPEC) == full
    assert all({"s3", "sts"} <= set(p["services"]) for p in full["partitions"])


def test_pruned_endpoints_resolve_s3_and_sts_as_the_full_table() -> None:
    text = ENDPOINTS.read_text()
    full, pruned = EndpointResolver(json.loads(text)), EndpointResolver(prune(text, ENDPOINTS_SPEC))
    for partition in json.loads(text)["partitions"]:
        name = partition["partition"]
        assert pruned.get_available_endpoints("s3", name) == full.get_available_endpoints("s3", name)
        for region in [*partition["regions"], "aws-global", "nowhere-1"]:
            for service in ("s3", "sts"):
                for dualstack, fips in ((False, False), (True, False), (False, True)):
                    kw = {"use_dualstack_endpoint": dualstack, "use_fips_endpoint": fips}
                    assert _endpoint(pruned, service, region, kw) == _endpoint(full, service, region, kw)


def _endpoint(resolver: EndpointResolver, service: str, region: str, kw: dict[str, bool]) -> Any:
    """What the resolver answers, or the error it raises (a variant a region lacks)."""
    try:
        return resolver.construct_endpoint(service, region, **kw)
    except Exception as exc:
        return repr(exc)


@pytest.mark.parametrize(
    ("text", "spec", "expected"),
    [
        (' { "a" : [ {"x": 1, "y" : {"z": [2]}} , { } ,{"x":"}"}], "b" :"s" } \n', {"a": {"x": None}},
         {"a": [{"x": 1}, {}, {"x": "}"}]}),
        ('{"a": {"b": 1, "c": 2}, "d": 3}', {"a": {"*": None, "c": {}}, "*": None}, {"a": {"b": 1, "c": 2}, "d": 3}),
        ("[]", {"x": None}, []),
        ('"\\u00e9"', {"x": None}, "\u00e9"),
        ('{"a": 1}', None, {"a": 1}),
    ],
)
def test_prune_keeps_what_the_spec_names(text: str, spec: Any, expected: Any) -> None:
    assert prune(text, spec) == expected


@pytest.mark.parametrize("text", ['{"a": 1,}', '{"a" 1}', "[1 2]", '{"a": 1} x', '{"a": 1', "{1: 2}", ""])
def test_prune_rejects_what_json_rejects(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        prune(text, {"a": None})


def test_models_lose_the_text_of_documentation_strings_only(tmp_path: Path) -> None:
    model = {
        "documentation": "<p>The service.</p>",
        "shapes": {"S": {"type": "structure", "documentation": "a shape",
                         "members": {"documentation": {"shape": "T", "documentation": "a member"}}}},
    }
    with gzip.open(tmp_path / "service-2.json.gz", "wt") as f:
        json.dump(model, f)
    loaded = TrimmedFileLoader().load_file(str(tmp_path / "service-2"))
    assert loaded == {
        "documentation": "",
        "shapes": {"S": {"type": "structure", "documentation": "",
                         "members": {"documentation": {"shape": "T", "documentation": ""}}}},
    }
    assert type(loaded) is dict and type(loaded["shapes"]) is dict
    assert TrimmedFileLoader().load_file(str(tmp_path / "missing")) is None


def test_data_path_is_searched_first(tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text(json.dumps({"partitions": [{"services": {"s3": {}, "ec2": {}}}]}))
    loader = trimmed_loader(f"{tmp_path}{os.pathsep}~/elsewhere")
    assert loader.search_paths[:2] == [str(tmp_path), os.path.expanduser("~/elsewhere")]
    assert loader.load_data("endpoints") == {"partitions": [{"services": {"s3": {}}}]}
