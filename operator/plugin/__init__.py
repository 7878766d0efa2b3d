"""``kubectl-lifeboat``: a kubectl plugin for SQLiteReplicas and SQLiteRestores (status, restore, verify,
pause, resume, logs), talking to the API server with kubectl's own kubeconfig rules."""
