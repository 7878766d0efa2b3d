"""Read replicas, the pure parts: the follower pod's injection, the label check, the
``followInterval`` validation and the follower status from their ``/metrics``."""

from typing import Any

import pytest
from kube_helpers import make_pod, make_replica
from lifeboat.operator import guards, injection, spec, status


def follower_pod(**pod_spec: Any) -> dict[str, Any]:
    pod = make_pod(**pod_spec)
    pod["metadata"]["labels"] = {"app": "reader", "lifeboat.dev/follow": "db"}
    return pod


def by_name(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]}


def test_follower_gets_a_latest_state_restore_and_the_follow_sidecar() -> None:
    replica = make_replica(followInterval="250ms", restore={"timestamp": "2026-01-01T00:00:00Z"})

    result = injection.inject(follower_pod(), replica, follower=True)

    assert [c["name"] for c in result["spec"]["initContainers"]] == ["lifeboat-restore", "lifeboat-follow"]
    containers = by_name(result)
    restore, sidecar = containers["lifeboat-restore"], containers["lifeboat-follow"]
    # The writer's point in time is not the follower's: it restores the latest state, for follow mode.
    assert restore["args"] == ["restore", "-if-db-not-exists", "-if-replica-exists", "-follow-ready",
                               "-config", "/etc/lifeboat/lifeboat.yml", "/data/app.db"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["restore", "-f", "-follow-interval", "250ms", "-config", "/etc/lifeboat/lifeboat.yml",
                               "/data/app.db"]
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["ports"][0]["containerPort"] == 9090
    # The same replica settings and credentials as the writer's agent.
    writer = by_name(injection.inject(make_pod(), replica))["lifeboat-agent"]
    for key in ("image", "envFrom", "volumeMounts", "securityContext", "resources"):
        assert sidecar[key] == writer[key], key
    assert "lifeboat-agent" not in containers


def test_follow_interval_defaults_to_one_second() -> None:
    sidecar = by_name(injection.inject(follower_pod(), make_replica(), follower=True))["lifeboat-follow"]
    assert sidecar["args"][2:4] == ["-follow-interval", "1s"]


def test_follower_app_may_mount_the_database_read_only() -> None:
    pod = follower_pod()
    pod["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = True

    result = injection.inject(pod, make_replica(), follower=True)

    mount = by_name(result)["lifeboat-follow"]["volumeMounts"][0]
    assert mount == {"name": "data", "mountPath": "/data"}
    with pytest.raises(injection.InjectionError, match="read-only"):
        injection.inject({**pod, "metadata": make_pod()["metadata"]}, make_replica())


def test_follower_injection_is_idempotent() -> None:
    once = injection.inject(follower_pod(), make_replica(), follower=True)
    assert injection.inject(once, make_replica(), follower=True) == once


def test_labels_pick_the_role_and_both_are_refused() -> None:
    assert injection.target({"lifeboat.dev/replica": "db"}) == ("db", False)
    assert injection.target({"lifeboat.dev/follow": "db"}) == ("db", True)
    assert injection.wants_injection({"lifeboat.dev/follow": "db"})
    assert not injection.wants_injection({"app": "x"})
    with pytest.raises(injection.InjectionError, match=r"both lifeboat\.dev/replica .* and lifeboat\.dev/follow"):
        injection.target({"lifeboat.dev/replica": "db", "lifeboat.dev/follow": "db"})


def test_the_single_writer_guard_does_not_count_followers() -> None:
    def running(pod: dict[str, Any], name: str) -> dict[str, Any]:
        return {**pod, "metadata": {**pod["metadata"], "name": name}, "status": {"phase": "Running"}}

    writer = running(injection.inject(make_pod(), make_replica()), "writer")
    readers = [running(injection.inject(follower_pod(), make_replica(), follower=True), f"reader-{i}")
               for i in range(3)]

    verdict = guards.single_writer([writer, *readers], [])

    assert verdict[0] == "True", verdict
    assert verdict[2].startswith("1 pod(s) run the agent")


@pytest.mark.parametrize(("value", "fragment"), [("soon", "not a duration"), ("0s", "longer than zero")])
def test_follow_interval_is_validated(value: str, fragment: str) -> None:
    found = spec.problems(make_replica(followInterval=value)["spec"])
    assert any(p.startswith("followInterval:") and fragment in p for p in found), found


METRICS = """\
# HELP lifeboat_follow_lag_seconds Follow lag
# TYPE lifeboat_follow_lag_seconds gauge
lifeboat_follow_lag_seconds{db="/data/app.db"} 0.75
# TYPE lifeboat_follow_txid gauge
lifeboat_follow_txid{db="/data/app.db"} 42.0
lifeboat_follow_ready{db="/data/app.db"} 1.0
"""


def test_follower_status_from_metrics() -> None:
    answered = status.PodReport("reader-a", agent_status=status.parse_follow_metrics(METRICS))
    restoring = status.PodReport("reader-b", agent_status=status.parse_follow_metrics(
        METRICS.replace("ready{db=\"/data/app.db\"} 1.0", "ready{db=\"/data/app.db\"} 0.0")))
    gone = status.PodReport("reader-c", error="agent unreachable: ClientConnectorError")

    summary = status.summarize_followers([gone, restoring, answered])

    assert summary["followers"] == 3
    assert summary["followLagSeconds"] == 0.75
    assert summary["followerPods"] == [
        {"name": "reader-a", "txid": "000000000000002a", "lagSeconds": 0.75, "ready": True, "error": None},
        {"name": "reader-b", "txid": None, "lagSeconds": None, "ready": False, "error": None},
        {"name": "reader-c", "txid": None, "lagSeconds": None, "ready": False,
         "error": "agent unreachable: ClientConnectorError"},
    ]


def test_no_followers_no_lag() -> None:
    assert status.summarize_followers([]) == {"followers": 0, "followLagSeconds": None, "followerPods": []}
