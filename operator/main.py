"""``lifeboat-operator``: run kopf with the Lifeboat handlers."""

import argparse
import asyncio
import logging
import os
import pathlib
from collections.abc import Sequence

import kopf
from lifeboat.operator import handlers, leadership, loops, metrics, timeouts

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> tuple[handlers.Options, argparse.Namespace]:
    """The handlers' options and the remaining process-level flags."""
    defaults = handlers.Options()
    parser = argparse.ArgumentParser(prog="lifeboat-operator", description=__doc__)
    parser.add_argument("--namespace", "-n", action="append", default=[], dest="namespaces",
                        help="watch only this namespace (repeatable); default: all namespaces")
    parser.add_argument("--webhook-addr", default=defaults.webhook_addr)
    parser.add_argument("--webhook-port", type=int, default=defaults.webhook_port)
    parser.add_argument("--tls-dir", type=pathlib.Path, default=defaults.tls_dir,
                        help="directory with tls.crt and tls.key (e.g. a mounted cert-manager Secret)")
    parser.add_argument("--tls-secret", default=None,
                        help="generate the webhook certificate into this Secret of the operator's namespace "
                             "(and write it to --tls-dir); without it, --tls-dir must hold the files")
    parser.add_argument("--operator-namespace", default=os.environ.get("POD_NAMESPACE"))
    parser.add_argument("--service-name", default=defaults.service_name, help="the webhook Service")
    parser.add_argument("--mutating-webhook", default=defaults.mutating_webhook,
                        help="MutatingWebhookConfiguration to put a generated certificate's CA into")
    parser.add_argument("--validating-webhook", default=defaults.validating_webhook,
                        help="ValidatingWebhookConfiguration to put a generated certificate's CA into")
    parser.add_argument("--agent-image", default=defaults.agent_image,
                        help="image of the injected containers, unless a SQLiteReplica names one")
    parser.add_argument("--native-sidecar", action=argparse.BooleanOptionalAction,
                        default=defaults.native_sidecar,
                        help="inject the agent as a native sidecar (Kubernetes 1.29+) or a regular container")
    parser.add_argument("--metrics-port", type=int, default=8081,
                        help="serves the operator's own Prometheus /metrics; 0 disables")
    parser.add_argument("--liveness-port", type=int, default=8080, help="serves /healthz for the kubelet")
    parser.add_argument("--peering", default="lifeboat",
                        help="the kopf peering object through which the replicas elect the one that reconciles "
                             "(ClusterKopfPeering, or a KopfPeering in each --namespace)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    options = handlers.Options(
        namespaces=tuple(args.namespaces), webhook_addr=args.webhook_addr, webhook_port=args.webhook_port,
        tls_dir=args.tls_dir, tls_secret=args.tls_secret, operator_namespace=args.operator_namespace,
        service_name=args.service_name, mutating_webhook=args.mutating_webhook,
        validating_webhook=args.validating_webhook, agent_image=args.agent_image,
        native_sidecar=args.native_sidecar, metrics_port=args.metrics_port or None)
    return options, args


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``lifeboat-operator``."""
    options, args = parse_args(argv)
    # Every line about an object starts with its [namespace/name]: which replica acted on what shows.
    kopf.configure(verbose=args.verbose, log_prefix=True)
    settings = kopf.OperatorSettings()
    timeouts.apply(settings)
    metrics.time_gc_pauses()
    # Every replica serves the webhook (a fail-closed webhook must outlive one replica); only the
    # elected one reconciles, so no two replicas act on one object with different copies of it.
    leadership.configure(settings, args.peering, clusterwide=not options.namespaces)
    with asyncio.Runner(loop_factory=loops.factory()) as runner:
        loop = runner.get_loop()
        logger.info("Running on the %s event loop.", loops.name(loop))
        kopf.run(
            loop=loop,
            settings=settings,
            clusterwide=not options.namespaces,
            namespaces=list(options.namespaces),
            memo=kopf.Memo(options=options),
            liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz",
        )


if __name__ == "__main__":
    main()
