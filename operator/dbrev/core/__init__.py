"""The functional core: plain data in, plain data out.

The revision graph, the plan, its classification and the policy deciding on it, the typed results,
the condition reasons, the options of a run, errors, redaction and text formatting. No module here
imports SQLAlchemy, a database driver, Kopf or the Kubernetes client (``tests/core/test_purity.py``
imports each one in a fresh interpreter and checks).
"""
