"""The ``CredentialsReady`` verdict: whether the Secret a SQLiteReplica references has the keys it needs.

Only a Secret's key names are read and kept, never its values (:meth:`kube.Kube.secret_keys`); the
Secret is read with a GET, never watched.
"""

import time
from collections.abc import Callable, Mapping
from typing import Any

from lifeboat.operator import kube
from lifeboat.operator import spec as specs
from lifeboat.operator.guards import Verdict

# How long a Secret found good, or one the operator may not read, serves the status rounds before it
# is read again. A good Secret turns bad only when someone edits or deletes it, and then the agent's
# uploads fail and Ready turns False within a round anyway: this condition only names the cause, and
# may do so a few minutes late. An unreadable one turns readable only when RBAC is changed (the chart's
# secretNamespaces, which README's install leaves empty): without this, every round of every
# SQLiteReplica would be a refused GET. Five minutes turn 1,000 SQLiteReplicas' 67 Secret GETs a
# second (one per 15 s round each) into 3.3. A Secret missing or lacking keys is read on every round,
# so one created or fixed later heals within a round.
SECRET_RECHECK = 300.0


class SecretChecks:
    """The verdicts of the credentials Secrets, re-reading a good or unreadable one at most every
    ``SECRET_RECHECK``."""

    def __init__(self, lifeboat: kube.Kube, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifeboat = lifeboat
        self._clock = clock
        # (namespace, Secret name) → (when read, its key names; None: RBAC forbids reading it)
        self._keys: dict[tuple[str, str], tuple[float, frozenset[str] | None]] = {}

    async def verdict(self, namespace: str, spec: Mapping[str, Any], *, fresh: bool = False) -> Verdict:
        """The verdict for ``spec``'s Secret; ``fresh``: read it even if it was found good lately."""
        secret_name = ((spec.get("replica") or {}).get("credentials") or {}).get("secretName")
        if not secret_name:
            return "True", "NoCredentials", "no Secret referenced: the agent uses the pod's ambient identity"
        known = self._keys.get((namespace, secret_name))
        if known is not None and not fresh and self._clock() - known[0] < SECRET_RECHECK:
            # Judged against this spec: another SQLiteReplica naming the Secret may need other keys.
            verdict = judge(namespace, secret_name, spec, known[1])
            if verdict[0] != "False":
                return verdict
        self._keys.pop((namespace, secret_name), None)
        try:
            keys = await self._lifeboat.secret_keys(namespace, secret_name)
        except kube.Forbidden:
            self._keys[namespace, secret_name] = (self._clock(), None)
            return judge(namespace, secret_name, spec, None)
        if keys is None:
            return "False", "SecretNotFound", f"Secret {secret_name!r} not found in namespace {namespace}"
        self._keys[namespace, secret_name] = (self._clock(), keys)
        return judge(namespace, secret_name, spec, keys)


def judge(namespace: str, secret_name: str, spec: Mapping[str, Any], keys: frozenset[str] | None) -> Verdict:
    """The verdict for a Secret found with these key names (None: the operator may not read it)."""
    if keys is None:
        return ("Unknown", "SecretUnreadable",
                f"the operator may not read Secrets in namespace {namespace}; cannot check {secret_name!r}")
    found = specs.secret_problems(spec, keys)
    if found:
        return "False", "SecretKeysMissing", f"Secret {secret_name!r}: {'; '.join(found)}"
    return "True", "SecretFound", f"Secret {secret_name!r} has the keys the replica needs"
