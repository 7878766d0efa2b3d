"""The shipped manifests: the Helm chart rendered by real helm and validated offline, the CRD, examples."""

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kube_helpers import REPO
from lifeboat.operator import injection, main, spec

CHART = REPO / "charts" / "lifeboat"
# The oldest release with native sidecars and a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
RELEASE_NAMESPACE = "lifeboat-system"
# Kinds from other projects' CRDs, which kubernetes-validate has no schema for.
FOREIGN_KINDS = {"cert-manager.io/v1": {"Certificate", "Issuer"}, "monitoring.coreos.com/v1": {"PrometheusRule"},
                 "kopf.dev/v1": {"ClusterKopfPeering", "KopfPeering"}}


def tool(env: str, relative: str) -> pathlib.Path:
    """A binary installed by .ci/k8s-tools.sh (or named by an environment variable)."""
    path = pathlib.Path(os.environ.get(env) or REPO / ".ci-work" / "tools" / relative)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `bash .ci/k8s-tools.sh` first (or set {env})")
    return path


def helm(*args: str) -> str:
    result = subprocess.run([str(tool("LIFEBOAT_HELM", "helm/helm")), *args], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def render(*values: str) -> list[dict[str, Any]]:
    """`helm template` of the chart with ``--set`` values, as a list of objects."""
    sets = [arg for value in values for arg in ("--set", value)]
    text = helm("template", "lb", str(CHART), "--namespace", RELEASE_NAMESPACE, "--include-crds", *sets)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


VARIANTS = {
    "defaults": (),
    "namespaced-cert-manager-regular-sidecar": (
        "watchNamespaces={apps,web}", "webhook.certManager.enabled=true", "agent.nativeSidecar=false"),
    "cert-manager-issuer": ("webhook.certManager.enabled=true", "webhook.certManager.issuerRef.kind=ClusterIssuer",
                            "webhook.certManager.issuerRef.name=corp-ca", "secretNamespaces={apps}"),
    "monitoring": ("metrics.grafanaDashboard.enabled=true", "metrics.prometheusRule.enabled=true"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(*VARIANTS[request.param])


def validate(doc: dict[str, Any]) -> None:
    """Strict offline validation against every Kubernetes version the chart supports."""
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_helm_lint_strict() -> None:
    output = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in output


def test_chart_crd_is_identical_to_the_source_crd() -> None:
    for name in ("sqlitereplicas.yaml", "kopfpeerings.yaml"):
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), name


def test_every_rendered_object_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["kind"] in FOREIGN_KINDS.get(doc["apiVersion"], set()):
            continue
        validate(doc)


def test_mutating_webhook_is_fail_closed_scoped_and_fast(rendered: list[dict[str, Any]]) -> None:
    # One entry per label (writers, read replicas): an objectSelector cannot match either of two keys.
    writers, followers = only(rendered, "MutatingWebhookConfiguration")["webhooks"]

    for hook, label in ((writers, spec.REPLICA_LABEL), (followers, spec.FOLLOW_LABEL)):
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["timeoutSeconds"] <= 10
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert [r["operations"] for r in hook["rules"]] == [["CREATE"]]
        assert [r["resources"] for r in hook["rules"]] == [["pods"]]
        assert hook["objectSelector"] == {"matchExpressions": [{"key": label, "operator": "Exists"}]}
        excluded = hook["namespaceSelector"]["matchExpressions"][0]
        assert excluded["operator"] == "NotIn"
        assert {"kube-system", RELEASE_NAMESPACE} <= set(excluded["values"])
        service = only(rendered, "Service")
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"], "namespace": RELEASE_NAMESPACE, "path": "/inject", "port": 443}


def test_the_validating_webhook_covers_sqliterestores_only(rendered: list[dict[str, Any]]) -> None:
    """SQLiteReplicas are validated by the CRD's CEL rules alone: a webhook would block updates (the
    finalizer's removal included) of objects stored before a rule was tightened."""
    (restores,) = only(rendered, "ValidatingWebhookConfiguration")["webhooks"]

    assert restores["clientConfig"]["service"]["path"] == "/validate-restore"
    assert restores["rules"][0]["resources"] == ["sqliterestores"]
    assert restores["rules"][0]["operations"] == ["CREATE"]


def test_webhook_paths_are_the_operators_handler_ids(rendered: list[dict[str, Any]]) -> None:
    import kopf
    from lifeboat.operator import admission, handlers  # noqa: F401  (registers the handlers)
    # kopf's handlers, and the pod admission the webhook server answers itself.
    ids = {h.id for h in kopf.get_default_registry()._webhooks.get_all_handlers()} | {admission.POD_WEBHOOK}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in only(rendered, kind)["webhooks"]:
            assert hook["clientConfig"]["service"]["path"].lstrip("/") in ids


def test_operator_deployment_is_redundant_locked_down_and_consistent(rendered: list[dict[str, Any]]) -> None:
    deployment = only(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert deployment["spec"]["replicas"] == 2
    assert only(rendered, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"] and container["readinessProbe"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The arguments parse, and name the objects the chart renders.
    options, _ = main.parse_args(container["args"])
    assert options.service_name == only(rendered, "Service")["metadata"]["name"]
    assert options.mutating_webhook == only(rendered, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert options.validating_webhook == only(rendered, "ValidatingWebhookConfiguration")["metadata"]["name"]
    tls_mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert pathlib.Path(tls_mount["mountPath"]) == options.tls_dir


def test_cert_handling_modes() -> None:
    generated = render()
    args = only(generated, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    options, _ = main.parse_args(args)
    assert options.tls_secret == "lb-lifeboat-webhook-tls"
    assert not [d for d in generated if d["apiVersion"].startswith("cert-manager.io")]
    assert "caBundle" not in only(generated, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]

    managed = render("webhook.certManager.enabled=true")
    args = only(managed, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert main.parse_args(args)[0].tls_secret is None
    certificate = next(d for d in managed if d["kind"] == "Certificate" and not d["spec"].get("isCA"))
    assert "lb-lifeboat-webhook.lifeboat-system.svc" in certificate["spec"]["dnsNames"]
    volumes = only(managed, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": certificate["spec"]["secretName"]}} in volumes
    # What the webhooks trust: tests/operator/test_chart_certificates.py.


def rules_by_binding(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(binding, rule) for every rule granted through a binding."""
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Role", "ClusterRole")}
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        for rule in role["rules"]:
            yield binding, rule


def test_rbac_never_grants_cluster_wide_secret_access(rendered: list[dict[str, Any]]) -> None:
    for binding, rule in rules_by_binding(rendered):
        if "secrets" in rule["resources"]:
            assert binding["kind"] == "RoleBinding"
            assert "list" not in rule["verbs"] and "watch" not in rule["verbs"]
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_rbac_follows_watched_namespaces() -> None:
    docs = render("watchNamespaces={apps,web}")

    bindings = [(b["kind"], b["metadata"].get("namespace"), b["roleRef"]["name"]) for b, _ in rules_by_binding(docs)]
    assert ("ClusterRoleBinding", None, "lb-lifeboat") not in bindings
    assert {("RoleBinding", "apps", "lb-lifeboat"), ("RoleBinding", "web", "lb-lifeboat")} <= set(bindings)
    secret_namespaces = {ns for kind, ns, role in bindings if role == "lb-lifeboat-secrets"}
    assert secret_namespaces == {"apps", "web"}
    selector = only(docs, "MutatingWebhookConfiguration")["webhooks"][0]["namespaceSelector"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["apps", "web"]} in \
        selector["matchExpressions"]
    args = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert main.parse_args(args)[0].namespaces == ("apps", "web")


@pytest.mark.parametrize(("values", "kind", "namespaces"), [
    ((), "ClusterKopfPeering", {None}),
    (("watchNamespaces={apps,web}",), "KopfPeering", {"apps", "web"}),
])
def test_the_replicas_elect_their_reconciler_through_the_charts_peering_objects(
    values: tuple[str, ...], kind: str, namespaces: set[str | None]
) -> None:
    docs = render(*values)
    (container,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    name = main.parse_args(container["args"])[1].peering
    peerings = [d for d in docs if d["kind"] == kind]
    assert {(d["metadata"]["name"], d["metadata"].get("namespace")) for d in peerings} == {
        (name, namespace) for namespace in namespaces}
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    plural = f"{kind.lower()}s"
    granted = {(verb, tuple(rule.get("resourceNames") or ())) for _, rule in rules_by_binding(docs)
               if rule["apiGroups"] == ["kopf.dev"] and rule["resources"] == [plural] for verb in rule["verbs"]}
    assert granted == {("list", ()), ("watch", ()), ("get", (name,)), ("patch", (name,))}


def test_native_sidecar_value_reaches_the_operator() -> None:
    for value, expected in (("true", True), ("false", False)):
        args = only(render(f"agent.nativeSidecar={value}"), "Deployment")["spec"]["template"]["spec"][
            "containers"][0]["args"]
        assert main.parse_args(args)[0].native_sidecar is expected


def test_images_default_to_the_dockerfiles_operator_and_agent_targets() -> None:
    pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/lifeboat-dev/lifeboat-operator:0.1.0"
    # The operator's own default and the chart's agree: injected pods run the agent's image.
    assert main.parse_args(container["args"])[0].agent_image == injection.DEFAULT_IMAGE
    assert injection.DEFAULT_IMAGE == "ghcr.io/lifeboat-dev/lifeboat-agent:0.1.0"
    args = only(render("agent.image=registry.example/agent:1"), "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert main.parse_args(args)[0].agent_image == "registry.example/agent:1"


def load_examples() -> dict[str, list[dict[str, Any]]]:
    return {name: [d for d in yaml.safe_load_all((REPO / "examples" / name).read_text()) if d]
            for name in ("replica.yaml", "app-deployment.yaml")}


def test_examples_are_valid_and_inject_cleanly() -> None:
    examples = load_examples()
    for docs in examples.values():
        for doc in docs:
            if doc["apiVersion"] != f"{spec.GROUP}/{spec.VERSION}":
                validate(doc)
    replica = only(examples["replica.yaml"], spec.KIND)
    assert spec.problems(replica["spec"]) == []
    secret = only(examples["replica.yaml"], "Secret")
    assert spec.secret_problems(replica["spec"], secret["stringData"]) == []

    template = only(examples["app-deployment.yaml"], "Deployment")["spec"]["template"]
    assert template["metadata"]["labels"][spec.REPLICA_LABEL] == replica["metadata"]["name"]
    pod = injection.inject({"apiVersion": "v1", "kind": "Pod", **template}, replica)
    validate(pod)
    agent = next(c for c in pod["spec"]["initContainers"] if c["name"] == injection.AGENT_CONTAINER)
    assert agent["securityContext"]["runAsUser"] == 10001


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(tool("LIFEBOAT_HADOLINT", "hadolint/bin/hadolint")), str(REPO / "Dockerfile")],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM docker.io/library/debian:bookworm-slim" in dockerfile
    assert "USER 65532:65532" in dockerfile
