"""``injection.inject``: the pure pod mutation behind the webhook."""

import copy
from typing import Any

import pytest
from kube_helpers import make_pod, make_replica
from lifeboat.operator import injection


def init_names(pod: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod["spec"].get("initContainers", [])]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def test_restore_first_then_native_sidecar_then_user_init_containers() -> None:
    pod = make_pod(initContainers=[{"name": "migrate", "image": "app:1"}])

    result = injection.inject(pod, make_replica())

    assert init_names(result) == ["lifeboat-restore", "lifeboat-agent", "migrate"]
    agent = container(result, "lifeboat-agent")
    assert agent["restartPolicy"] == "Always"
    assert agent["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["args"] == ["replicate", "-config", "/etc/lifeboat/lifeboat.yml"]
    assert "restartPolicy" not in container(result, "lifeboat-restore")
    assert [c["name"] for c in result["spec"]["containers"]] == ["app"]


def test_regular_container_when_native_sidecars_are_off() -> None:
    result = injection.inject(make_pod(), make_replica(), native_sidecar=False)

    assert init_names(result) == ["lifeboat-restore"]
    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "lifeboat-agent"]
    assert "restartPolicy" not in container(result, "lifeboat-agent")


def test_spec_overrides_the_operator_default_for_sidecars() -> None:
    result = injection.inject(make_pod(), make_replica(agent={"nativeSidecar": False}), native_sidecar=True)

    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "lifeboat-agent"]


def test_restore_command_plain_and_point_in_time() -> None:
    plain = container(injection.inject(make_pod(), make_replica()), "lifeboat-restore")
    assert plain["command"] == ["lifeboat"]
    assert plain["args"] == ["restore", "-if-db-not-exists", "-if-replica-exists",
                             "-config", "/etc/lifeboat/lifeboat.yml", "/data/app.db"]

    at_time = container(injection.inject(make_pod(), make_replica(restore={"timestamp": "2026-01-02T03:04:05Z"})),
                        "lifeboat-restore")
    assert at_time["args"][-3:] == ["-timestamp", "2026-01-02T03:04:05Z", "/data/app.db"]

    at_txid = container(injection.inject(make_pod(), make_replica(restore={"txid": "00000000000000ff"})),
                        "lifeboat-restore")
    assert at_txid["args"][-3:] == ["-txid", "00000000000000ff", "/data/app.db"]


def test_restore_disabled_leaves_only_the_agent() -> None:
    result = injection.inject(make_pod(), make_replica(restore={"enabled": False}))

    assert init_names(result) == ["lifeboat-agent"]


def test_agent_uses_the_apps_mount_with_its_subpath() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "data", "mountPath": "/data", "subPath": "tenant-a", "readOnly": False}]

    result = injection.inject(pod, make_replica())

    for name in ("lifeboat-restore", "lifeboat-agent"):
        mounts = container(result, name)["volumeMounts"]
        assert mounts[0] == {"name": "data", "mountPath": "/data", "subPath": "tenant-a"}
        assert {"name": "lifeboat-config", "mountPath": "/etc/lifeboat", "readOnly": True} in mounts


def test_longest_mount_prefix_wins() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "data", "mountPath": "/var"},
        {"name": "db", "mountPath": "/var/lib/app/"},
        {"name": "other", "mountPath": "/var/lib/application"},  # a prefix as a string, not as a directory
    ]
    pod["spec"]["volumes"] += [{"name": "db", "emptyDir": {}}, {"name": "other", "emptyDir": {}}]

    result = injection.inject(pod, make_replica(database="/var/lib/app/state/app.db"))

    assert container(result, "lifeboat-agent")["volumeMounts"][0] == {"name": "db", "mountPath": "/var/lib/app/"}


def test_generate_name_pod_without_namespace_is_injected() -> None:
    pod = make_pod()
    assert "name" not in pod["metadata"] and "namespace" not in pod["metadata"]

    result = injection.inject(pod, make_replica())

    assert result["metadata"]["generateName"] == "app-7d9f-"
    assert "name" not in result["metadata"]
    assert result["metadata"]["annotations"]["lifeboat.dev/injected"] == "db"


def test_injection_is_idempotent_and_pure() -> None:
    pod = make_pod()
    original = copy.deepcopy(pod)

    once = injection.inject(pod, make_replica())
    twice = injection.inject(once, make_replica())

    assert twice == once
    assert pod == original


def test_config_volume_secret_env_metrics_and_annotations() -> None:
    result = injection.inject(make_pod(), make_replica(agent={"metricsPort": 9191}))

    agent = container(result, "lifeboat-agent")
    assert agent["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert container(result, "lifeboat-restore")["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert agent["ports"] == [{"name": "lifeboat-http", "containerPort": 9191, "protocol": "TCP"}]
    assert {"name": "lifeboat-config", "configMap": {"name": "db-lifeboat"}} in result["spec"]["volumes"]
    annotations = result["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"],
            annotations["prometheus.io/path"]) == ("true", "9191", "/metrics")


def test_apps_own_scrape_annotations_are_kept() -> None:
    pod = make_pod()
    pod["metadata"]["annotations"] = {"prometheus.io/port": "8080"}

    result = injection.inject(pod, make_replica())

    assert result["metadata"]["annotations"]["prometheus.io/port"] == "8080"


def test_gcs_credentials_are_mounted_as_a_file() -> None:
    replica = make_replica(replica={"url": "gs://bucket/app", "credentials": {"secretName": "gcs"}})

    result = injection.inject(make_pod(), replica)

    agent = container(result, "lifeboat-agent")
    assert "envFrom" not in agent
    assert agent["env"] == [{"name": "GOOGLE_APPLICATION_CREDENTIALS",
                             "value": "/var/run/secrets/lifeboat/credentials.json"}]
    assert {"name": "lifeboat-gcs-credentials", "secret": {"secretName": "gcs"}} in result["spec"]["volumes"]


def test_security_context_is_locked_down_and_follows_the_apps_user() -> None:
    pod = make_pod(securityContext={"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 2000})

    context = container(injection.inject(pod, make_replica()), "lifeboat-agent")["securityContext"]

    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert (context["runAsUser"], context["runAsGroup"]) == (1000, 2000)

    default = container(injection.inject(make_pod(), make_replica()), "lifeboat-agent")["securityContext"]
    assert default["runAsUser"] == 65532


def test_resources_default_and_from_spec() -> None:
    default = container(injection.inject(make_pod(), make_replica()), "lifeboat-agent")["resources"]
    assert default["requests"] == {"cpu": "50m", "memory": "64Mi"}
    # A namespace ResourceQuota on limits.cpu and limits.memory admits only containers that set both.
    assert set(default["limits"]) == {"cpu", "memory"}
    assert container(injection.inject(make_pod(), make_replica()), "lifeboat-restore")["resources"] == default

    wanted = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}
    custom = container(injection.inject(make_pod(), make_replica(agent={"resources": wanted})), "lifeboat-agent")
    assert custom["resources"] == wanted


@pytest.mark.parametrize(("change", "replica_spec", "message"), [
    (lambda p: p["spec"]["containers"][0].update(volumeMounts=[]), {},
     "database /data/app.db is on no volume mounted by any container"),
    (lambda p: None, {"database": "/srv/app.db"}, "database /srv/app.db is on no volume"),
    (lambda p: p["spec"]["containers"][0]["volumeMounts"][0].update(readOnly=True), {}, "mounted read-only"),
    (lambda p: p["spec"].update(volumes=[]), {}, "names no volume of the pod"),
    (lambda p: None, {"container": "web"}, "pod has no container 'web'"),
    (lambda p: p["spec"]["containers"].append(
        {"name": "sidecar", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}), {},
     "set spec.container"),
    (lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 9090}]), {}, "already uses port 9090"),
])
def test_denials_say_what_is_wrong(change: Any, replica_spec: dict[str, Any], message: str) -> None:
    pod = make_pod()
    change(pod)

    with pytest.raises(injection.InjectionError, match=message.replace(".", r"\.")):
        injection.inject(pod, make_replica(**replica_spec))


def test_spec_container_picks_among_several() -> None:
    pod = make_pod()
    pod["spec"]["containers"].append(
        {"name": "web", "image": "x", "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "w"}]})

    result = injection.inject(pod, make_replica(container="web"))

    assert container(result, "lifeboat-agent")["volumeMounts"][0]["subPath"] == "w"


def test_database_volume_at_tmp_is_mounted_once() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/tmp/"}]

    result = injection.inject(pod, make_replica(database="/tmp/app.db"))

    for name in ("lifeboat-restore", "lifeboat-agent"):
        paths = [m["mountPath"].rstrip("/") for m in container(result, name)["volumeMounts"]]
        assert paths.count("/tmp") == 1, paths
        assert container(result, name)["volumeMounts"][0]["name"] == "data"


def test_database_volume_under_tmp_keeps_the_scratch_tmp() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/tmp/db"}]

    mounts = container(injection.inject(pod, make_replica(database="/tmp/db/app.db")), "lifeboat-agent")["volumeMounts"]

    assert [m["mountPath"] for m in mounts] == ["/tmp/db", "/etc/lifeboat", "/tmp"]


def test_bidirectional_propagation_is_not_copied_onto_the_unprivileged_containers() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    pod["spec"]["containers"][0]["volumeMounts"][0]["mountPropagation"] = "Bidirectional"

    result = injection.inject(pod, make_replica())

    for name in ("lifeboat-restore", "lifeboat-agent"):
        assert container(result, name)["volumeMounts"][0]["mountPropagation"] == "HostToContainer"
        assert "privileged" not in container(result, name)["securityContext"]
    host = make_pod()
    host["spec"]["containers"][0]["volumeMounts"][0]["mountPropagation"] = "HostToContainer"
    agent = container(injection.inject(host, make_replica()), "lifeboat-agent")
    assert agent["volumeMounts"][0]["mountPropagation"] == "HostToContainer"


def test_subpathexpr_gets_the_variables_it_refers_to() -> None:
    pod = make_pod()
    app = pod["spec"]["containers"][0]
    app["env"] = [
        {"name": "UNRELATED", "value": "x"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TENANT", "value": "t-$(POD_NAME)"},
        {"name": "ESCAPED", "value": "$$(UNRELATED)"},
    ]
    app["volumeMounts"] = [{"name": "data", "mountPath": "/data", "subPathExpr": "$(TENANT)/$(ESCAPED)"}]

    result = injection.inject(pod, make_replica())

    for name in ("lifeboat-restore", "lifeboat-agent"):
        agent = container(result, name)
        assert agent["volumeMounts"][0]["subPathExpr"] == "$(TENANT)/$(ESCAPED)"
        # In the app's order, so $(POD_NAME) is defined before TENANT's value refers to it.
        assert agent["env"] == app["env"][1:]


def test_subpathexpr_variables_come_before_the_credentials_variable() -> None:
    pod = make_pod()
    app = pod["spec"]["containers"][0]
    app["env"] = [{"name": "SHARD", "value": "3"}]
    app["volumeMounts"] = [{"name": "data", "mountPath": "/data", "subPathExpr": "s$(SHARD)"}]
    replica = make_replica(replica={"url": "gs://bucket/app", "credentials": {"secretName": "gcs"}})

    agent = container(injection.inject(pod, replica), "lifeboat-agent")

    assert [e["name"] for e in agent["env"]] == ["SHARD", "GOOGLE_APPLICATION_CREDENTIALS"]


def test_subpathexpr_variable_outside_env_is_denied() -> None:
    pod = make_pod()
    app = pod["spec"]["containers"][0]
    app["envFrom"] = [{"configMapRef": {"name": "settings"}}]
    app["volumeMounts"] = [{"name": "data", "mountPath": "/data", "subPathExpr": "$(TENANT)"}]

    with pytest.raises(injection.InjectionError, match=r"subPathExpr refers to \$\(TENANT\), not defined"):
        injection.inject(pod, make_replica())


@pytest.mark.parametrize("path", ["/etc/lifeboat", "/var/run/secrets/lifeboat/"])
def test_database_on_a_path_the_injected_containers_mount_is_denied(path: str) -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": path}]

    with pytest.raises(injection.InjectionError, match="where the lifeboat containers mount their own files"):
        injection.inject(pod, make_replica(database=path.rstrip("/") + "/app.db"))


def test_warning_when_the_apps_uid_comes_only_from_its_image() -> None:
    (warning,) = injection.warnings(make_pod(), make_replica())
    assert "container 'app' and its pod set no securityContext.runAsUser" in warning
    assert "65532" in warning

    assert injection.warnings(make_pod(securityContext={"runAsUser": 1000}), make_replica()) == []
    named = make_pod()
    named["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1000}
    assert injection.warnings(named, make_replica()) == []
    # Reinvoked on a pod it injected already: no second warning.
    assert injection.warnings(injection.inject(make_pod(), make_replica()), make_replica()) == []


def test_container_uid_wins_over_the_pods() -> None:
    pod = make_pod(securityContext={"runAsUser": 1000, "runAsGroup": 1000})
    pod["spec"]["containers"][0]["securityContext"] = {"runAsUser": 2000}

    context = container(injection.inject(pod, make_replica()), "lifeboat-agent")["securityContext"]

    assert (context["runAsUser"], context["runAsGroup"]) == (2000, 1000)


def test_istio_native_sidecar_and_init_come_before_ours() -> None:
    pod = make_pod(initContainers=[
        {"name": "istio-init", "image": "proxyv2"},
        {"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always"},
        {"name": "migrate", "image": "app:1"},
    ])

    result = injection.inject(pod, make_replica())

    assert init_names(result) == ["istio-init", "istio-proxy", "lifeboat-restore", "lifeboat-agent", "migrate"]


def test_without_a_native_sidecar_proxy_ours_run_before_the_mesh_redirects_traffic() -> None:
    # The proxy is a regular container: after the iptables setup, the restore could reach no one.
    pod = make_pod(initContainers=[{"name": "linkerd-init", "image": "proxy-init"}])
    pod["spec"]["containers"].append({"name": "linkerd-proxy", "image": "proxy"})

    assert init_names(injection.inject(pod, make_replica(), native_sidecar=False)) == [
        "lifeboat-restore", "linkerd-init"]
    assert init_names(injection.inject(pod, make_replica())) == ["lifeboat-restore", "lifeboat-agent", "linkerd-init"]


def test_cni_validators_and_linkerd_native_proxy_come_before_ours() -> None:
    pod = make_pod(initContainers=[
        {"name": "linkerd-network-validator", "image": "cni"},
        {"name": "linkerd-proxy", "image": "proxy", "restartPolicy": "Always"},
    ])

    assert init_names(injection.inject(pod, make_replica()))[2:] == ["lifeboat-restore", "lifeboat-agent"]
    cni = make_pod(initContainers=[{"name": "istio-validation", "image": "proxyv2"},
                                   {"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always"}])
    assert init_names(injection.inject(cni, make_replica(), native_sidecar=False)) == [
        "istio-validation", "istio-proxy", "lifeboat-restore"]


def test_agent_port_is_excluded_from_mesh_interception() -> None:
    annotations = injection.inject(make_pod(), make_replica(agent={"metricsPort": 9191}))["metadata"]["annotations"]

    assert annotations["traffic.sidecar.istio.io/excludeInboundPorts"] == "9191"
    assert annotations["config.linkerd.io/skip-inbound-ports"] == "9191"


def test_mesh_exclusions_are_appended_to_the_apps() -> None:
    pod = make_pod()
    pod["metadata"]["annotations"] = {"traffic.sidecar.istio.io/excludeInboundPorts": "8081, 8082",
                                      "config.linkerd.io/skip-inbound-ports": "9090"}

    annotations = injection.inject(pod, make_replica())["metadata"]["annotations"]

    assert annotations["traffic.sidecar.istio.io/excludeInboundPorts"] == "8081,8082,9090"
    assert annotations["config.linkerd.io/skip-inbound-ports"] == "9090"
