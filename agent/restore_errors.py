"""The errors a restore raises; every message names the file, TXID or path at fault."""

from __future__ import annotations


class RestoreError(RuntimeError):
    """A restore could not produce a correct database; the message names the file at fault."""


class NoBackupError(RestoreError):
    """The replica holds no files at all (the only case `-if-replica-exists` skips)."""


class UnservableTargetError(RestoreError):
    """The replica has files, but none that restore the requested TXID or timestamp."""


class OutputExistsError(RestoreError):
    """The output, or a -wal/-shm/-journal beside it, exists and the policy forbids touching it."""
