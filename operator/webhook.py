"""The admission webhook's HTTPS server and its certificates.

Three ways to a certificate:

* files in a directory (``tls.crt``/``tls.key``) — a Secret mounted from cert-manager or by hand;
* an operator-managed Secret (:mod:`lifeboat.operator.rotation`): generated, published in the webhook
  configurations' ``caBundle`` and rotated by the operator, written into that directory;
* (tests) :func:`generate_certificate` directly.

Either way the files are loaded into one TLS context that is reloaded in place when they change
(:class:`ReloadingTLS`): the listening socket is never closed, so a rotation refuses no connection.
"""

import asyncio
import dataclasses
import datetime
import hashlib
import ipaddress
import logging
import pathlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp.web
import kopf
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
DEFAULT_VALIDITY = datetime.timedelta(days=3650)
# Certificates are valid from a little before they are made: clocks of API servers and nodes differ.
BACKDATE = datetime.timedelta(minutes=5)


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


def generate_certificate(names: Sequence[str], *, validity: datetime.timedelta = DEFAULT_VALIDITY) -> TLSBundle:
    """A fresh CA and a serving certificate for ``names`` (DNS names or IP addresses) signed by it.

    Both expire together: the CA is trusted exactly as long as the certificate it signed may be served.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + validity
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A rotation trusts two CAs at once: distinct names and key identifiers let a verifier pick the issuer.
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lifeboat-webhook-ca-{now:%Y%m%dT%H%M%S.%f}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
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
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
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


class ReloadingTLS:
    """The webhook server's TLS context, reloaded in place when its certificate files change.

    kopf's server restarts its listener when the files change, refusing connections meanwhile, which a
    fail-closed webhook turns into denials. A context loaded again serves the new certificate to every
    new connection while the socket stays open (:meth:`server_kwargs` turns kopf's own check off).
    """

    def __init__(self, cert_path: pathlib.Path, key_path: pathlib.Path) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._digest = ""
        self.reload()

    def reload(self) -> bool:
        """Load the files again if they changed; True when the served certificate changed.

        A half-written pair (a mounted Secret being swapped) fails to load and is retried by the next call.
        """
        digest = hashlib.sha256(self.cert_path.read_bytes() + self.key_path.read_bytes()).hexdigest()
        if digest == self._digest:
            return False
        self.context.load_cert_chain(self.cert_path, self.key_path)
        self._digest = digest
        return True

    def server_kwargs(self) -> dict[str, Any]:
        """What kopf's WebhookServer needs to serve this context and never restart on file changes."""
        return {"context": self.context, "certfile": self.cert_path, "pkeyfile": self.key_path,
                "file_check_interval": NEVER.total_seconds()}


# kopf's own file check, which would restart the listener, effectively never runs.
NEVER = datetime.timedelta(days=365)
# How often mounted certificate files are checked (a Secret volume changes within about a minute).
FILE_CHECK_INTERVAL = 60.0


async def reload_forever(tls: ReloadingTLS) -> None:
    """Reload mounted certificate files as they change (cert-manager renewals); until cancelled."""
    while True:
        await asyncio.sleep(FILE_CHECK_INTERVAL)
        try:
            if tls.reload():
                logger.info("Serving the renewed webhook certificate from %s.", tls.cert_path)
        except (OSError, ssl.SSLError) as exc:
            logger.warning("Webhook certificate files unreadable (%s); keeping the current one.", exc)


# Answers a parsed AdmissionReview itself, or returns None to leave it to kopf.
Reviewer = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class NamespacedWebhookServer(kopf.WebhookServer):
    """kopf's HTTPS webhook server, answering some webhooks itself and the rest through kopf's handlers.

    ``reviewers`` answer the reviews of their webhook id (the URL path, e.g. ``inject`` for ``/inject``)
    without kopf's per-request machinery (:mod:`lifeboat.operator.admission`): the body is decoded and
    the answer encoded with orjson, and none of the request's headers or peer certificate is copied for
    handlers that do not read them. A review a reviewer leaves (None) goes to kopf's handlers.

    For kopf's handlers, the AdmissionReview's ``request.namespace`` is put into the object: objects
    created by controllers arrive without ``metadata.namespace``; the handlers see it as the usual
    ``namespace`` kwarg, and since it is in both the original and the patched body, it never shows in
    the returned JSON patch.
    """

    def __init__(self, *, reviewers: Mapping[str, Reviewer] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reviewers = dict(reviewers or {})

    async def _serve(self, fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:  # type: ignore[override]
        # kopf's server calls self._serve(fn, request) for every request; its own is a staticmethod.
        reviewer = self.reviewers.get(request.match_info.get("id") or "")
        if reviewer is not None:
            try:
                review = orjson.loads(await request.read())
            except orjson.JSONDecodeError as exc:  # as kopf answers a body that is no JSON
                raise aiohttp.web.HTTPBadRequest(reason=f"the AdmissionReview is no JSON: {exc}") from exc
            answered = await reviewer(review) if isinstance(review, dict) else None
            if answered is not None:
                return aiohttp.web.Response(body=orjson.dumps(answered), content_type="application/json")
        # kopf reads the body again: aiohttp keeps what was read.
        return await super()._serve(fn, request)

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # kopf's WebhookFn → WebhookClientConfig
        async def answer(request: Any, **kwargs: Any) -> Any:
            payload = request.get("request") or {}
            namespace = payload.get("namespace")
            obj = payload.get("object")
            if namespace and isinstance(obj, dict):
                obj.setdefault("metadata", {}).setdefault("namespace", namespace)
            return await fn(request, **kwargs)

        async for client_config in super().__call__(answer):
            yield client_config
