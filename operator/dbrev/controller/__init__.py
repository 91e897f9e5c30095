"""The operator: DatabaseRevision resources reconciled by Kopf.

``spec`` and ``decide`` are pure (the functional core); ``inputs`` and
``kube`` talk to the Kubernetes API; ``handlers`` are Kopf's thin handlers;
``main`` runs the operator (``dbrev operator``).
"""
