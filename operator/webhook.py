"""The admission webhook's HTTPS server and its certificates.

Three ways to a certificate, in the order the operator tries them:

* files in a directory (``tls.crt``/``tls.key``, optionally ``ca.crt``) — a Secret mounted from
  cert-manager or by hand; kopf re-reads them when they change, so rotation needs no restart;
* an operator-managed Secret: the first replica to start generates a CA and a serving certificate
  with ``cryptography`` and creates the Secret; every replica then serves it and writes the CA into
  the webhook configurations' ``caBundle``;
* (tests) :func:`generate_certificate` directly.
"""

import base64
import dataclasses
import datetime
import ipaddress
import logging
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lifeboat.operator.kube import Kube

logger = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
# Renew an operator-generated certificate once less than this much of its life is left.
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class TLSBundle:
    """PEM-encoded CA certificate, serving certificate and its private key."""

    ca: bytes
    cert: bytes
    key: bytes

    def write(self, directory: pathlib.Path) -> None:
        """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` (owner-only), the files kopf's server loads."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CA_FILE).write_bytes(self.ca)
        (directory / CERT_FILE).write_bytes(self.cert)
        key_path = directory / KEY_FILE
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key)


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names an API server may use for a webhook Service."""
    qualified = f"{service}.{namespace}.svc"
    return [service, f"{service}.{namespace}", qualified, f"{qualified}.cluster.local"]


def generate_certificate(names: Sequence[str], *, days: int = 3650) -> TLSBundle:
    """A fresh CA and a serving certificate for ``names`` (DNS names or IP addresses) signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lifeboat-webhook-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return TLSBundle(
        ca=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
    )


def _usable(bundle: TLSBundle, names: Sequence[str]) -> bool:
    cert = x509.load_pem_x509_certificate(bundle.cert)
    if cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < RENEW_BEFORE:
        return False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names) <= {str(n) for n in sans.get_values_for_type(x509.DNSName)}


def _bundle_from_secret(secret: dict[str, Any]) -> TLSBundle | None:
    data = secret.get("data") or {}
    if not all(key in data for key in (CA_FILE, CERT_FILE, KEY_FILE)):
        return None
    return TLSBundle(*(base64.b64decode(data[key]) for key in (CA_FILE, CERT_FILE, KEY_FILE)))


async def ensure_secret_certificate(
    kube: Kube, namespace: str, secret_name: str, names: Sequence[str]
) -> TLSBundle:
    """The serving certificate from the operator-managed Secret, generated on first use.

    Replicas race on creation; the loser reads the winner's Secret, so all serve the same certificate.
    A certificate near its expiry, or not naming the Service, is regenerated in place; the replicas
    that still serve the old one pick the new one up on their next restart.
    """
    secret = await kube.read_secret(namespace, secret_name)
    bundle = _bundle_from_secret(secret) if secret else None
    if bundle is not None and _usable(bundle, names):
        return bundle
    fresh = generate_certificate(names)
    body = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": secret_name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "lifeboat",
                                "app.kubernetes.io/component": "webhook"}},
        "data": {name: base64.b64encode(pem).decode()
                 for name, pem in ((CA_FILE, fresh.ca), (CERT_FILE, fresh.cert), (KEY_FILE, fresh.key))},
    }
    if secret is None:
        if await kube.create_secret(namespace, body):
            logger.info("Generated the webhook certificate into Secret %s/%s.", namespace, secret_name)
            return fresh
        raced = await kube.read_secret(namespace, secret_name)
        if raced and (bundle := _bundle_from_secret(raced)):
            return bundle
    else:
        await kube.patch_secret(namespace, secret_name, {"data": body["data"]})
        logger.info("Renewed the webhook certificate in Secret %s/%s.", namespace, secret_name)
    return fresh


class NamespacedWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server, with the AdmissionReview's ``request.namespace`` put into the object.

    Pods created by controllers arrive without ``metadata.namespace``; the request carries it. The
    handlers see it as the usual ``namespace`` kwarg, and since it is in both the original and the
    patched body, it never shows in the returned JSON patch.
    """

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # kopf's WebhookFn → WebhookClientConfig
        async def with_namespace(request: Any, **kwargs: Any) -> Any:
            payload = request.get("request") or {}
            namespace = payload.get("namespace")
            obj = payload.get("object")
            if namespace and isinstance(obj, dict):
                obj.setdefault("metadata", {}).setdefault("namespace", namespace)
            return await fn(request, **kwargs)

        async for client_config in super().__call__(with_namespace):
            yield client_config
