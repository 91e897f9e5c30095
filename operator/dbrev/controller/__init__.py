"""The operator: DatabaseRevision resources reconciled by Kopf.

Pure (the functional core of the operator): ``spec`` parses a resource, ``decide`` chooses what a
pass does and reports, ``status`` writes conditions, ``jobs`` builds a migration Job, ``crd`` is the
one source of the CRD. The shell: ``inputs`` and ``kube`` talk to the Kubernetes API, ``jobrun`` runs
a Job, ``healthgate`` watches the rollout after a run, ``metrics`` are Prometheus', ``deployment``
names a release, ``handlers`` are Kopf's thin handlers and ``main`` runs the operator (``dbrev
operator``); ``argocd`` ships the Argo CD health check (``health.lua``).
"""
