"""The operator-generated webhook certificate: issued, trusted through the caBundle, rotated, healed.

A rotation never shows the API server a certificate it does not trust yet:

1. Less than a third of the served certificate's life left: a replica issues a new CA and certificate
   into the Secret as the *next* pair, and adds the new CA to the Secret's trust list (``ca.crt``).
2. Every replica, every round, merges the trust list into both webhook configurations' caBundle, with a
   resourceVersion precondition; on a conflict it reads again and merges again, so it never drops a CA
   another replica added.
3. Once the caBundle holds every trusted CA, a replica stamps the Secret with that time; a propagation
   delay later (the API server follows webhook configurations through a watch) the next pair becomes
   the served one.
4. Every replica serves the Secret's served pair (reloaded in place: :class:`webhook.ReloadingTLS`). A CA
   leaves the trust list and the caBundle only once expired, together with the last certificate it signed.

The caBundle is checked every round, so a webhook configuration re-created without it (helm rollback, a
GitOps replace) heals itself. Secrets and configurations are only written with a resourceVersion
precondition: replicas racing through a step do it once, the others see its result in their next round.
"""

import asyncio
import base64
import dataclasses
import datetime
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography import x509
from lifeboat.operator import kube, webhook

logger = logging.getLogger(__name__)

NEXT_CERT = "next.crt"
NEXT_KEY = "next.key"
# When a replica saw the caBundle trust the next CA (RFC 3339).
TRUSTED_SINCE = "lifeboat.dev/next-ca-trusted-since"
# Test-only: the validity of the certificates this operator issues, in seconds (to rotate in a test run).
# Deliberately no flag or chart value: a production certificate has no reason to live for minutes.
TEST_VALIDITY_ENV = "LIFEBOAT_TEST_WEBHOOK_CERT_SECONDS"
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


@dataclasses.dataclass(frozen=True)
class Policy:
    """How long issued certificates live, and the pace of the rounds derived from it."""

    validity: datetime.timedelta = webhook.DEFAULT_VALIDITY

    @classmethod
    def from_env(cls) -> "Policy":
        """The default, or the test-only validity of :data:`TEST_VALIDITY_ENV`."""
        seconds = os.environ.get(TEST_VALIDITY_ENV)
        return cls(datetime.timedelta(seconds=float(seconds))) if seconds else cls()

    @property
    def interval(self) -> float:
        """Seconds between rounds: how soon a re-created webhook configuration heals."""
        return min(60.0, max(1.0, self.validity.total_seconds() / 20))

    @property
    def propagation(self) -> datetime.timedelta:
        """How long a CA is in the caBundle before a certificate it signed is served."""
        return datetime.timedelta(seconds=min(10.0, max(1.0, self.validity.total_seconds() / 20)))


def split_pem(data: bytes) -> list[bytes]:
    """The PEM certificates in a bundle, each ending in a newline."""
    return [m.group(0).rstrip(b"\n") + b"\n" for m in _PEM.finditer(data)]


def unexpired(pems: Iterable[bytes], now: datetime.datetime) -> list[bytes]:
    """These certificates minus the expired and the unreadable ones, without duplicates, in order."""
    kept: list[bytes] = []
    for pem in pems:
        try:
            alive = x509.load_pem_x509_certificate(pem).not_valid_after_utc > now
        except ValueError:
            alive = False
        if alive and pem not in kept:
            kept.append(pem)
    return kept


def renewal_due(cert_pem: bytes, names: Sequence[str], policy: Policy, now: datetime.datetime) -> datetime.datetime:
    """When the certificate is to be replaced: with a third of its life left; now if it does not name the
    Service or outlives what the policy issues."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc - webhook.BACKDATE
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    named = set(names) <= {str(n) for n in sans.get_values_for_type(x509.DNSName)}
    if not named or cert.not_valid_after_utc - now > policy.validity + webhook.BACKDATE:
        return now
    return cert.not_valid_after_utc - lifetime / 3


def needs_renewal(cert_pem: bytes, names: Sequence[str], policy: Policy, now: datetime.datetime) -> bool:
    """Whether :func:`renewal_due` has come."""
    return renewal_due(cert_pem, names, policy, now) <= now


@dataclasses.dataclass(frozen=True)
class Stored:
    """The Secret's view: the trusted CAs, the served pair, and the next pair while a rotation runs."""

    trust: tuple[bytes, ...]
    served: webhook.TLSBundle
    next_pair: tuple[bytes, bytes] | None
    trusted_since: datetime.datetime | None

    @classmethod
    def parse(cls, secret: Mapping[str, Any]) -> "Stored | None":
        """None when the Secret lacks the served pair (not one of ours, or emptied by hand)."""
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        if not {webhook.CA_FILE, webhook.CERT_FILE, webhook.KEY_FILE} <= set(data):
            return None
        since = ((secret.get("metadata") or {}).get("annotations") or {}).get(TRUSTED_SINCE)
        trust = tuple(split_pem(data[webhook.CA_FILE]))
        return cls(
            trust=trust,
            served=webhook.TLSBundle(b"".join(trust), data[webhook.CERT_FILE], data[webhook.KEY_FILE]),
            next_pair=(data[NEXT_CERT], data[NEXT_KEY]) if NEXT_CERT in data and NEXT_KEY in data else None,
            trusted_since=datetime.datetime.fromisoformat(since) if since else None,
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """A caBundle's bytes; nothing for a malformed one (it is replaced by a well-formed one)."""
    try:
        return base64.b64decode(text)
    except ValueError:
        return b""


def secret_body(namespace: str, name: str, bundle: webhook.TLSBundle) -> dict[str, Any]:
    """A new certificate Secret serving ``bundle``."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "lifeboat", "app.kubernetes.io/component": "webhook"}},
        "data": {webhook.CA_FILE: _b64(bundle.ca), webhook.CERT_FILE: _b64(bundle.cert),
                 webhook.KEY_FILE: _b64(bundle.key)},
    }


@dataclasses.dataclass
class Keeper:
    """One replica's side of the rotation: :meth:`round` is one pass over steps 1 to 4 of the module doc."""

    api: kube.Kube
    namespace: str
    secret: str
    names: Sequence[str]
    configurations: Mapping[str, str]  # kind → name of the webhook configurations to keep trusting
    tls_dir: pathlib.Path  # where the served pair is written for the webhook server
    policy: Policy = dataclasses.field(default_factory=Policy.from_env)
    tls: webhook.ReloadingTLS | None = None  # the server's context, once something was served
    pause: float = 0.0  # seconds until the next round: sooner while a rotation is due or under way

    async def start(self) -> webhook.ReloadingTLS:
        """Rounds until this replica has a certificate to serve (a replica losing the race to create the
        Secret serves the winner's from its next round); the context for the webhook server."""
        # Files left by an earlier run of this pod are not to be trusted: always one round first.
        (self.tls_dir / webhook.CERT_FILE).unlink(missing_ok=True)
        await self.round()
        while not (self.tls_dir / webhook.CERT_FILE).exists():
            await asyncio.sleep(1)
            await self.round()
        self.tls = webhook.ReloadingTLS(self.tls_dir / webhook.CERT_FILE, self.tls_dir / webhook.KEY_FILE)
        return self.tls

    async def round(self) -> None:
        """Issue, publish, promote as due; write the served pair and reload the server's context."""
        now = datetime.datetime.now(datetime.UTC)
        secret = await self.api.read_secret(self.namespace, self.secret)
        stored = Stored.parse(secret) if secret else None
        self.pause = self.policy.interval
        if stored is not None:
            due = renewal_due(stored.served.cert, self.names, self.policy, now)
            if stored.next_pair is not None or due <= now:
                self.pause = self.policy.propagation.total_seconds()
            else:
                self.pause = max(1.0, min(self.pause, (due - now).total_seconds()))
        try:
            if secret is None or stored is None:
                # Nothing to rotate from: the first start (or a Secret emptied or deleted by hand).
                await self._create(secret)
                return
            if stored.next_pair is None and needs_renewal(stored.served.cert, self.names, self.policy, now):
                await self._issue_next(secret, stored, now)
                return  # the next round publishes the new CA from the Secret as written
            published = await self.publish(stored.trust, now)
            if stored.next_pair is not None and published:
                if stored.trusted_since is None:
                    await self.api.patch_secret_unchanged(self.namespace, secret, {
                        "metadata": {"annotations": {TRUSTED_SINCE: now.isoformat()}}})
                elif now - stored.trusted_since >= self.policy.propagation:
                    await self._promote(secret, stored, now)
                    return
        except kube.Conflict:
            logger.debug("The webhook certificate Secret changed meanwhile; next round.")
            if stored is None:
                return
        self._serve(stored.served)

    async def _create(self, secret: Mapping[str, Any] | None) -> None:
        fresh = webhook.generate_certificate(self.names, validity=self.policy.validity)
        body = secret_body(self.namespace, self.secret, fresh)
        if secret is None:
            if not await self.api.create_secret(self.namespace, body):
                return  # another replica was first: serve its certificate from the next round on
        else:
            await self.api.patch_secret_unchanged(self.namespace, secret, {"data": body["data"]})
        logger.info("Generated the webhook certificate into Secret %s/%s.", self.namespace, self.secret)
        # Trust first, then serve at once: at startup there is nothing else to serve. (After a Secret
        # deleted by hand, the API server may refuse this certificate for the moment it takes to follow.)
        await self.publish((fresh.ca,), datetime.datetime.now(datetime.UTC))
        self._serve(fresh)

    async def _issue_next(self, secret: Mapping[str, Any], stored: Stored, now: datetime.datetime) -> None:
        fresh = webhook.generate_certificate(self.names, validity=self.policy.validity)
        trust = [*unexpired(stored.trust, now), fresh.ca]
        await self.api.patch_secret_unchanged(self.namespace, secret, {
            "data": {webhook.CA_FILE: _b64(b"".join(trust)), NEXT_CERT: _b64(fresh.cert),
                     NEXT_KEY: _b64(fresh.key)},
            "metadata": {"annotations": {TRUSTED_SINCE: None}}})
        logger.info("Issued the next webhook certificate; serving it once the webhooks trust its CA.")
        self._serve(stored.served)

    async def _promote(self, secret: Mapping[str, Any], stored: Stored, now: datetime.datetime) -> None:
        assert stored.next_pair is not None
        cert, key = stored.next_pair
        trust = unexpired(stored.trust, now)
        await self.api.patch_secret_unchanged(self.namespace, secret, {
            "data": {webhook.CA_FILE: _b64(b"".join(trust)), webhook.CERT_FILE: _b64(cert),
                     webhook.KEY_FILE: _b64(key), NEXT_CERT: None, NEXT_KEY: None},
            "metadata": {"annotations": {TRUSTED_SINCE: None}}})
        logger.info("Serving the renewed webhook certificate.")
        self._serve(webhook.TLSBundle(b"".join(trust), cert, key))

    async def publish(self, trust: Sequence[bytes], now: datetime.datetime) -> bool:
        """Make both webhook configurations trust these CAs (keeping any other unexpired CA there).

        True when both do; False when a configuration is missing (not installed yet, or being re-created).
        """
        published = True
        for kind, name in self.configurations.items():
            for _attempt in range(5):
                configuration = await self.api.webhook_configuration(kind, name)
                if configuration is None:
                    published = False
                    break
                webhooks = configuration.get("webhooks") or []
                current = {(w.get("clientConfig") or {}).get("caBundle") or "" for w in webhooks}
                existing = [pem for b64 in current for pem in split_pem(_unb64(b64))]
                merged = _b64(b"".join(unexpired([*existing, *trust], now)))
                if current == {merged}:
                    break
                try:
                    await self.api.set_ca_bundle(kind, configuration, merged)
                    logger.info("Updated the caBundle of %s %s.", kind, name)
                    break
                except kube.Conflict:
                    continue  # another replica wrote it: merge with what it wrote
            else:
                published = False
        return published

    def _serve(self, bundle: webhook.TLSBundle) -> None:
        bundle.write(self.tls_dir)
        if self.tls is not None and self.tls.reload():
            logger.info("Serving a new webhook certificate.")

    async def run(self) -> None:
        """Rounds until cancelled; a failed round is logged and retried in the next one."""
        while True:
            await asyncio.sleep(self.pause or self.policy.interval)
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Webhook certificate round failed; retrying in %.0f s.", self.policy.interval)
