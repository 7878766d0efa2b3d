"""``kubectl-lifeboat`` finds its cluster and namespace as kubectl does (kubeconfig files only, no API call)."""

from pathlib import Path

import pytest
import yaml
from lifeboat.operator.plugin import connect


def kubeconfig(path: Path, current: str, contexts: dict[str, tuple[str, str | None]]) -> Path:
    """A kubeconfig with one cluster per context: {context: (server, namespace)}."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": name, "cluster": {"server": server}} for name, (server, _) in contexts.items()],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "me",
                                                **({"namespace": ns} if ns else {})}}
                     for name, (_, ns) in contexts.items()],
    }))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path


def test_the_current_context_gives_server_and_namespace_and_flags_override_them(home: Path) -> None:
    (home / ".kube").mkdir()
    kubeconfig(home / ".kube" / "config", "east", {"east": ("https://east:6443", "shop"),
                                                    "west": ("https://west:6443", None)})
    found = connect.connect(None, None, None)
    assert (found.server, found.namespace) == ("https://east:6443", "shop")
    assert connect.connect(None, None, "other").namespace == "other"
    west = connect.connect(None, "west", None)
    assert (west.server, west.namespace) == ("https://west:6443", "default")


def test_kubeconfig_variable_lists_files_that_are_merged_and_the_flag_wins(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(home / "first", "a", {"a": ("https://a:6443", "from-a")})
    second = kubeconfig(home / "second", "b", {"b": ("https://b:6443", "from-b")})
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    assert connect.connect(None, None, None).namespace == "from-a"  # the first file's current-context
    assert connect.connect(None, "b", None).server == "https://b:6443"
    assert connect.connect(str(second), None, None).namespace == "from-b"


def test_missing_kubeconfig_and_context_are_one_line_naming_them(home: Path) -> None:
    with pytest.raises(connect.PluginError, match=r"^--kubeconfig /nowhere: no such file$"):
        connect.connect("/nowhere", None, None)
    with pytest.raises(connect.PluginError, match=r"^no kubeconfig \(\$KUBECONFIG, ~/.kube/config\) and no "
                                                  r"in-cluster ServiceAccount"):
        connect.connect(None, None, None)
    path = kubeconfig(home / "config", "a", {"a": ("https://a:6443", None)})
    with pytest.raises(connect.PluginError, match=f"^kubeconfig {path}: .*nope") as refused:
        connect.connect(str(path), "nope", None)
    assert "\n" not in str(refused.value)
