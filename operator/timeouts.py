"""How long the operator waits on the API server: kopf's watches and requests, and its own calls.

Every number is here, so that no call can wait forever on a connection that silently died (a node
or load balancer gone without a FIN, an API server frozen mid-response):

* watches: the API server is asked to end each watch after ``WATCH_SERVER`` seconds, and kopf
  resumes it from the last resourceVersion (cheap: no new listing). ``WATCH_CLIENT`` is the
  client's own limit for the same request, a little longer so that the server's clean ending
  normally comes first; it is what ends a watch whose connection is dead. kopf also restarts a
  watch that has been silent for 70 s (API servers send a bookmark every minute), so a hung
  watch costs at most about a minute of latency, never a missed change: the resumed watch
  replays from the last resourceVersion, or kopf lists again after 410 Gone.
* requests (kopf's patches and Events; this package's reads, scales and Job creations): kopf's
  get ``REQUEST`` seconds in all, this package's ``REQUEST`` seconds without a byte of answer (the
  client library's read timeout). Far above a healthy API server's latency even under load, but
  short enough that a hung call fails and is retried (kopf's backoff for handlers, the next round
  for timers) instead of holding a handler indefinitely.
* ``CONNECT``: TCP and TLS setup; an API server that cannot be reached in that long is down.
"""

import kopf

WATCH_SERVER = 120  # whole seconds: the API server parses timeoutSeconds as an integer
WATCH_CLIENT = WATCH_SERVER + 30.0
CONNECT = 10.0
REQUEST = 30.0


def apply(settings: kopf.OperatorSettings) -> None:
    """Put the watch and request timeouts into kopf's settings."""
    settings.watching.server_timeout = WATCH_SERVER
    settings.watching.client_timeout = WATCH_CLIENT
    settings.watching.connect_timeout = CONNECT
    settings.networking.request_timeout = REQUEST
    settings.networking.connect_timeout = CONNECT
