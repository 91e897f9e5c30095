"""The engine: a run from the scripts to the database and back.

``verbs`` are the entry points the CLI and the operator call (observe, plan, apply, verify, history);
``scripts`` loads Alembic version scripts; ``runner`` executes a plan; ``worker`` runs it in a child
process; ``rollback`` and ``rehearse`` go back; ``check`` is ``dbrev check``; ``log`` is the logging
standard and ``extras`` the two installs. Importing this package imports none of them.
"""
