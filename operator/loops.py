"""The operator's event loop: uvloop's when it is installed, asyncio's own otherwise.

``kopf run`` picks uvloop by itself, ``kopf.run()`` does not; ``lifeboat-operator`` calls the latter. On
uvloop the webhook's TLS, HTTP and scheduling cost less CPU per admission, and with 50 admissions in
flight every one of them waits for the others' CPU.
"""

import asyncio
from collections.abc import Callable


def factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` when uvloop is installed; None (asyncio's default loop) otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def name(loop: asyncio.AbstractEventLoop) -> str:
    """The loop's implementation as a log line shows it: ``uvloop`` or ``asyncio``."""
    return type(loop).__module__.partition(".")[0]
