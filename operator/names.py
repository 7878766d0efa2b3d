"""Names and label values derived from user-chosen names, kept within Kubernetes' length limits. Pure.

Object names may be 253 characters, label values only 63. A derived name that would be too long keeps
a readable prefix and ends in a hash of the whole, so two long names never collide.
"""

import hashlib

LABEL_VALUE_MAX = 63
_HASH_LENGTH = 10


def bounded(text: str, limit: int = LABEL_VALUE_MAX, suffix: str = "") -> str:
    """``text + suffix`` if it fits in ``limit`` characters, else a prefix of ``text``, a hash, ``suffix``.

    The prefix is cut back to end in a letter or digit, so the result stays a valid label value and
    DNS label when ``text`` and ``suffix`` are.
    """
    if len(text) + len(suffix) <= limit:
        return text + suffix
    digest = hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]
    prefix = text[: limit - len(suffix) - _HASH_LENGTH - 1].rstrip("-._")
    return f"{prefix}-{digest}{suffix}"
