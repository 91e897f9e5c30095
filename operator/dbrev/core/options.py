"""Plain option records shared by the CLI, the worker and the operator.

Kept free of heavy imports (SQLAlchemy, Alembic, pglast) so that the CLI's
parent process and the operator can build a request without loading them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: the application_name of dbrev's sessions comes from this variable when set (default "dbrev"): a migration Job
#: sets its own so that the operator can find and end the session of a pod that died mid-run
APPLICATION_NAME_ENV = "DBREV_APPLICATION_NAME"

# Defaults of the run's settings, shared by the CLI flags, the CRD (its defaults and reference) and the spec parser.
DEFAULT_CONNECT_TIMEOUT = 60.0
DEFAULT_LOCK_TIMEOUT = 10.0
DEFAULT_STATEMENT_TIMEOUT = 0.0  # no limit
DEFAULT_RUN_TIMEOUT = 3600.0  # kill a run that takes longer (seconds)
STATE_SCHEMA = "dbrev"

ALLOW = "Allow"
DENY = "Deny"
REQUIRE_APPROVAL = "RequireApproval"
ARCHIVE = "Archive"

DOWNGRADE_VALUES = (ALLOW, DENY, REQUIRE_APPROVAL)
DATA_LOSS_VALUES = (DENY, ARCHIVE, ALLOW, REQUIRE_APPROVAL)

ALL_CHECKS = ("constraints", "indexes", "sequences", "orphans", "rowCounts", "fingerprint")


def advisory_key(schema: str, table: str) -> int:
    digest = hashlib.sha256(f"dbrev:{schema}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class DbOptions:
    url: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # total, across retries (cold starts)
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT  # seconds to wait for the advisory lock and for table locks
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT  # 0 = none
    version_table: str = "alembic_version"
    version_table_schema: str | None = None
    state_schema: str = STATE_SCHEMA

    @property
    def lock_key(self) -> int:
        return advisory_key(self.version_table_schema or "public", self.version_table)


@dataclass(frozen=True)
class Policy:
    downgrade: str = ALLOW
    data_loss: str = DENY
    rollback_on_failure: bool = True
    verify: tuple[str, ...] = ALL_CHECKS
    repair_sequences: bool = False  # move sequences the run left behind past their column's maximum
    rehearse: str = "Report"  # Never | Report | Require: rehearse the way back before commit (dbrev.engine.rehearse)

    def __post_init__(self):
        if self.rehearse not in ("Never", "Report", "Require"):
            raise ValueError("rehearse policy must be one of Never, Report, Require")
        if self.downgrade not in DOWNGRADE_VALUES:
            raise ValueError(f"downgrade policy must be one of {', '.join(DOWNGRADE_VALUES)}")
        if self.data_loss not in DATA_LOSS_VALUES:
            raise ValueError(f"dataLoss policy must be one of {', '.join(DATA_LOSS_VALUES)}")


@dataclass
class RunRequest:
    db: DbOptions
    migrations: str
    target: str
    policy: Policy = field(default_factory=Policy)
    approval: str | None = None  # a plan hash approving a plan that needs approval
    expected_hash: str | None = None  # refuse unless the plan has exactly this hash
    exact_counts: bool = False
    actor: str = "cli"
    pythonpath: tuple[str, ...] = ()
    use_stored_scripts: bool = True
    # the project's env.py (True), dbrev's built-in environment (False), or as Alembic would (None): a
    # script location (env.py next to versions/) runs through its env.py, a bare versions folder built-in
    use_env_py: bool | None = None
