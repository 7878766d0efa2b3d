"""The pod webhook computes one answer per distinct pod and SQLiteReplica: the pods of one ReplicaSet
arrive identical, and a rollout of many would otherwise inject the same template once per pod."""

import base64
import copy
from typing import Any

import kopf
import orjson
import pytest
from kube_helpers import NAMESPACE, make_pod, make_replica
from lifeboat.operator import admission, injection, metrics, restores


class Lead:
    trusted = True  # the indexes are live


class Kube:
    """The one API read an admission makes when the indexes are live: the pod's Namespace."""

    async def namespace(self, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}}


def reviewer(replica: dict[str, Any], restores_: list[dict[str, Any]] | None = None) -> admission.PodAdmission:
    memo = kopf.Memo(lead=Lead(), kube=Kube(),
                     options=type("Options", (), {"native_sidecar": True, "agent_image": "lifeboat:test"})())
    return admission.PodAdmission(memo, {(NAMESPACE, replica["metadata"]["name"]): [replica]},
                                  {NAMESPACE: [] if restores_ is None else restores_})


def review(pod: dict[str, Any], uid: str) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "resource": admission.PODS, "namespace": NAMESPACE, "operation": "CREATE",
                        "object": copy.deepcopy(pod)}}


def patched(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return orjson.loads(base64.b64decode(answer["response"]["patch"]))


@pytest.fixture
def injections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the SQLiteReplicas each computed injection was for."""
    seen: list[str] = []
    real = injection.inject

    def counted(pod: Any, replica: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(replica["metadata"]["name"])
        return real(pod, replica, **kwargs)

    monkeypatch.setattr(injection, "inject", counted)
    return seen


async def test_identical_pods_are_injected_once_each_answered_with_its_own_uid(injections: list[str]) -> None:
    replica = make_replica()
    pods = reviewer(replica)
    counted = metrics.INJECTIONS.labels(NAMESPACE, "db")
    before = counted._value.get()

    answers = [await pods.review(review(make_pod(), f"uid-{i}")) for i in range(3)]

    assert injections == ["db"]
    assert [a["response"]["uid"] for a in answers] == ["uid-0", "uid-1", "uid-2"]
    assert all(a["response"]["allowed"] for a in answers)
    assert patched(answers[0]) == patched(answers[1]) == patched(answers[2])
    assert counted._value.get() == before + 3  # every injected pod is still counted


async def test_a_changed_replica_or_pod_is_injected_anew(injections: list[str]) -> None:
    replica = make_replica()
    pods = reviewer(replica)
    first = patched(await pods.review(review(make_pod(), "uid-1")))

    replica["spec"]["agent"] = {"image": "lifeboat:other"}  # the index holds the updated object
    second = patched(await pods.review(review(make_pod(), "uid-2")))
    await pods.review(review(make_pod(hostname="other"), "uid-3"))

    assert injections == ["db", "db", "db"]
    assert "lifeboat:other" not in orjson.dumps(first).decode()
    assert "lifeboat:other" in orjson.dumps(second).decode()


async def test_a_restore_in_place_refuses_a_pod_whose_answer_was_kept() -> None:
    replica = make_replica()
    running: list[dict[str, Any]] = []
    pods = reviewer(replica, running)
    assert (await pods.review(review(make_pod(), "uid-1")))["response"]["allowed"] is True

    running.append({"metadata": {"name": "back"}, "spec": {"replica": "db"},
                    "status": {"phase": restores.RESTORING}})
    refused = (await pods.review(review(make_pod(), "uid-2")))["response"]

    assert refused["allowed"] is False
    assert refused["status"]["code"] == 403
    assert "SQLiteRestore back" in refused["status"]["message"]


def test_the_oldest_answers_are_forgotten_beyond_the_limit() -> None:
    kept = admission.Answers(limit=2)
    for i in range(3):
        kept.put((i,), {"n": i})

    assert kept.get((0,)) is None
    assert kept.get((1,)) == {"n": 1}
    assert kept.get((2,)) == {"n": 2}
