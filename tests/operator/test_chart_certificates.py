"""cert-manager mode of the chart: the webhooks trust a CA, never the serving certificate itself.

A serving certificate trusted directly (self-signed, new key at each renewal) changes the trust anchor at
every renewal: until cert-manager's CA injector catches up, the API server rejects the new certificate and
a fail-closed webhook denies pods. Rendered by real helm (cert-manager's CRDs are not on the test plane).
"""

from typing import Any

from test_operator_manifests import only, render


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind and d["apiVersion"] == "cert-manager.io/v1"}


def injected_from(docs: list[dict[str, Any]]) -> set[str]:
    return {d["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] for d in docs
            if d["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")}


def test_chart_ca_chain_self_signed_issuer_ca_certificate_ca_issuer_serving_certificate() -> None:
    docs = render("webhook.certManager.enabled=true")
    issuers = by_name(docs, "Issuer")
    certificates = by_name(docs, "Certificate")
    serving = certificates["lb-lifeboat-webhook-tls"]
    ca_issuer = issuers[serving["spec"]["issuerRef"]["name"]]
    assert serving["spec"]["issuerRef"]["kind"] == "Issuer"
    assert not serving["spec"].get("isCA")
    # The serving certificate's issuer signs with the CA Certificate's Secret...
    ca_secret = ca_issuer["spec"]["ca"]["secretName"]
    ca_certificate = next(c for c in certificates.values() if c["spec"]["secretName"] == ca_secret)
    assert ca_certificate["spec"]["isCA"] is True
    assert ca_certificate is not serving
    # ... which a self-signed Issuer issued; that Issuer signs nothing else.
    root = issuers[ca_certificate["spec"]["issuerRef"]["name"]]
    assert root["spec"] == {"selfSigned": {}}
    assert [c for c in certificates.values() if c["spec"]["issuerRef"]["name"] == root["metadata"]["name"]] == \
        [ca_certificate]
    # A renewed CA keeps its key, so what it signed before still verifies.
    assert ca_certificate["spec"]["privateKey"]["rotationPolicy"] == "Never"
    # The webhooks trust the CA, not the serving certificate.
    assert injected_from(docs) == {f"lifeboat-system/{ca_certificate['metadata']['name']}"}


def test_an_own_issuer_signs_the_serving_certificate_and_its_ca_is_trusted() -> None:
    docs = render("webhook.certManager.enabled=true", "webhook.certManager.issuerRef.kind=ClusterIssuer",
                  "webhook.certManager.issuerRef.name=corp-ca")
    assert by_name(docs, "Issuer") == {}
    (serving,) = by_name(docs, "Certificate").values()
    assert serving["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}
    # cert-manager puts the issuing CA into the serving Secret's ca.crt, which the injector copies.
    assert injected_from(docs) == {f"lifeboat-system/{serving['metadata']['name']}"}


def test_generated_mode_renders_no_cert_manager_objects() -> None:
    docs = render()
    assert not by_name(docs, "Issuer") and not by_name(docs, "Certificate")
    assert "annotations" not in only(docs, "MutatingWebhookConfiguration")["metadata"]
