"""The PostgreSQL edge: connections and locks (``db``), dbrev's own state tables (``state``), the
archive of dropped data (``archive``), the catalog checks and the schema fingerprint
(``integrity``), the sample rows of a rehearsal (``seed``) and the throwaway server of
``dbrev check --ephemeral`` (``ephemeral``).
"""
