"""botocore's data files for the S3 client, pruned while they are parsed.

An S3 client is built from JSON in botocore's `data` directory, and most of what is parsed stays
in the process for good (the loader caches it, and memory freed after parsing stays in Python's
heap), so it is peak RSS that counts, not what is kept. What `TrimmedFileLoader` changes:

* `endpoints.json` (1.2 MB of text, ~7 MB parsed) lists every partition's endpoints for every AWS
  service. The S3 client reads the S3 entry (its regions and signature versions) and credential
  providers the STS and SSO ones; the rest is dropped service by service as the file is read
  (`prune`), so the whole table never exists at once. A service left out only loses botocore's
  legacy endpoint hints: its client falls back to the service's endpoint rule set, as for any new
  region.
* `documentation` strings (1 MB of the S3 model's 1.4 MB) feed only botocore's docstrings: they
  are emptied.
* objects are plain dicts, not OrderedDicts: dicts keep their order, and an OrderedDict costs a
  linked-list node per key on top.

Files given through AWS_DATA_PATH or ~/.aws/models are found and pruned the same way.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from botocore.loaders import JSONFileLoader, Loader

# What is kept: a mapping prunes an object (its keys; "*": every other key), or each object of an
# array; None keeps the value whole; a key absent from its mapping without "*" is dropped.
Spec = Mapping[str, "Spec"] | None
ENDPOINT_SERVICES = ("s3", "sts", "portal.sso", "oidc")  # S3 and the credential providers' services
ENDPOINTS_SPEC: Spec = {"partitions": {"services": dict.fromkeys(ENDPOINT_SERVICES), "*": None}, "*": None}
_DROP = object()  # the spec of a dropped value
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def prune(text: str, spec: Spec) -> Any:
    """`json.loads(text)`, keeping only what `spec` selects; a dropped value is decoded on its own
    and discarded at once, so the memory held is what is kept plus the largest dropped value."""
    value, end = _value(text, _SPACE.match(text).end(), spec)
    end = _SPACE.match(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _value(text: str, i: int, spec: Spec | object) -> tuple[Any, int]:
    if isinstance(spec, Mapping):
        if text.startswith("{", i):
            return _object(text, i, spec)
        if text.startswith("[", i):
            return _array(text, i, spec)
    return _DECODER.raw_decode(text, i)


def _after(text: str, i: int, delimiters: str, what: str) -> tuple[str, int]:
    """The delimiter at `i` (after any white space) and the position after it, and its white space."""
    i = _SPACE.match(text, i).end()
    if i >= len(text) or text[i] not in delimiters:
        raise json.JSONDecodeError(f"Expecting {what}", text, i)
    return text[i], _SPACE.match(text, i + 1).end()


def _object(text: str, i: int, spec: Mapping[str, Spec]) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    i = _SPACE.match(text, i + 1).end()
    if text.startswith("}", i):
        return out, i + 1
    while True:
        if not text.startswith('"', i):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        key, i = _DECODER.raw_decode(text, i)
        _, i = _after(text, i, ":", "':' delimiter")
        sub = spec[key] if key in spec else spec.get("*", _DROP)
        value, i = _value(text, i, sub)
        if sub is not _DROP:
            out[key] = value
        delimiter, i = _after(text, i, ",}", "',' delimiter")
        if delimiter == "}":
            return out, i


def _array(text: str, i: int, spec: Mapping[str, Spec]) -> tuple[list[Any], int]:
    out: list[Any] = []
    i = _SPACE.match(text, i + 1).end()
    if text.startswith("]", i):
        return out, i + 1
    while True:
        value, i = _value(text, i, spec)
        out.append(value)
        delimiter, i = _after(text, i, ",]", "',' delimiter")
        if delimiter == "]":
            return out, i


def _without_documentation(obj: dict[str, Any]) -> dict[str, Any]:
    # Emptied, not removed: botocore reads some (client context parameters) with `[...]`. Only a
    # string: a model member named "documentation" (a dict) is data.
    if isinstance(obj.get("documentation"), str):
        obj["documentation"] = ""
    return obj


class TrimmedFileLoader(JSONFileLoader):
    """botocore's JSON file loader, pruning as the module docstring says."""

    OPENERS = ((".json", open), (".json.gz", gzip.open))  # botocore's extensions, in its order

    def load_file(self, file_path: str) -> Any:
        """The data of `file_path` + `.json` or `.json.gz`, or None when neither exists."""
        for ext, opener in self.OPENERS:
            path = file_path + ext
            if not os.path.isfile(path):
                continue
            with opener(path, "rb") as f:
                text = f.read().decode("utf-8")
            if os.path.basename(file_path) == "endpoints":
                return prune(text, ENDPOINTS_SPEC)
            return json.loads(text, object_hook=_without_documentation)
        return None


def trimmed_loader(data_path: str | None) -> Loader:
    """A botocore `Loader` reading through `TrimmedFileLoader`; `data_path` is AWS_DATA_PATH's value,
    searched first, as botocore's own `create_loader` does."""
    extra = None
    if data_path:
        extra = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
    return Loader(extra_search_paths=extra, file_loader=TrimmedFileLoader())
