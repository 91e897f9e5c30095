"""Condition types and reasons: the one place their names are spelled.

Follows the Kubernetes API conventions as read by kstatus, Flux and Argo CD:
``Ready`` is the summary, ``Reconciling`` means work is under way (or retrying
a transient failure), ``Stalled`` means a human must act.  Reasons are
CamelCase and name the cause.  The engine's errors carry these reasons so
that the CLI, the logs and the operator's status all say the same thing.
"""

from __future__ import annotations

# Condition types
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)
# A detail condition (kstatus, Flux and Argo CD ignore it): can dbrev reach the database right now?
DATABASE_REACHABLE = "DatabaseReachable"
DETAIL_CONDITION_TYPES = (DATABASE_REACHABLE,)
DATABASE_REACHABLE_REASON = DATABASE_REACHABLE  # its reason while True; while False: DatabaseUnavailable

# Reasons: success and progress
AT_REVISION = "AtRevision"
PROGRESSING = "Progressing"
INITIALIZING = "Initializing"

# Reasons: waiting (not failures)
AWAITING_APPROVAL = "AwaitingApproval"
SUSPENDED = "Suspended"

# Reasons: transient failures (retried forever with capped backoff)
DATABASE_UNAVAILABLE = "DatabaseUnavailable"
LOCK_BUSY = "LockBusy"
TIMED_OUT = "TimedOut"
KUBERNETES_UNAVAILABLE = "KubernetesAPIUnavailable"  # reading a Secret/ConfigMap got a 5xx or no answer

# Reasons: a migration Job (the operator runs every plan and apply in a Pod of its own, controller/jobrun)
IMAGE_PULL_FAILED = "ImagePullFailed"  # transient: the image cannot be pulled (yet); retried with backoff
POD_EVICTED = "PodEvicted"  # transient: the node evicted the migration pod (pressure, drain)
JOB_DELETED = "JobDeleted"  # transient: the Job or its pod was deleted mid-run
# transient: the pod's ConfigMap volume does not hold the scripts the operator read (the kubelet's copy lags an
# update); nothing ran, the next pass starts a new pod
SCRIPTS_OUT_OF_DATE = "ScriptsOutOfDate"
NO_DBREV_IN_IMAGE = "DbrevNotInImage"  # Stalled: the image has no `dbrev` command
MIGRATIONS_NOT_FOUND = "MigrationsNotFound"  # Stalled: no migrations at spec.migrations.image.path
OUT_OF_MEMORY = "OutOfMemory"  # Stalled: the migration pod was OOM-killed (its memory limit)
MIGRATION_POD_FAILED = "MigrationPodFailed"  # Stalled: the pod could not run (config error, crash without a result)
JOB_TRANSIENT_REASONS = (IMAGE_PULL_FAILED, POD_EVICTED, JOB_DELETED, SCRIPTS_OUT_OF_DATE)

# Reasons: failures that need a human (Stalled)
DOWNGRADE_DENIED = "DowngradeDenied"
DATA_LOSS_DENIED = "DataLossDenied"
ROLLBACK_NOT_READY = "RollbackNotReady"  # policy.rehearse Require: the rehearsed way back is Broken/Irreversible
ROLLED_BACK = "RolledBack"
MIGRATION_FAILED = "MigrationFailed"
ROLLBACK_FAILED = "RollbackFailed"
INTEGRITY_CHECK_FAILED = "IntegrityCheckFailed"
REVISION_NOT_FOUND = "RevisionNotFound"
AMBIGUOUS_REVISION = "AmbiguousRevision"
MULTIPLE_HEADS = "MultipleHeads"
UNKNOWN_DATABASE_REVISION = "UnknownDatabaseRevision"
INVALID_SCRIPTS = "InvalidScripts"
IRREVERSIBLE_STEP = "IrreversibleStep"
SCRIPT_CONFLICT = "ScriptConflict"
INVALID_DATABASE_URL = "InvalidDatabaseURL"
DATABASE_AUTH_FAILED = "DatabaseAuthFailed"
DATABASE_NOT_FOUND = "DatabaseNotFound"
PERMISSION_DENIED = "PermissionDenied"
PLAN_CHANGED = "PlanChanged"
SECRET_NOT_FOUND = "SecretNotFound"
CONFIGMAP_NOT_FOUND = "ConfigMapNotFound"
CONFLICT = "Conflict"
INVALID_SPEC = "InvalidSpec"

# Reasons: the health gate (healthgate, issue 13 §1)
AWAITING_WORKLOADS = "AwaitingWorkloads"  # Reconciling=True: watching the rollout after a schema change
WORKLOAD_UNHEALTHY = "WorkloadUnhealthy"  # Stalled: a named workload failed its rollout
# onFailure: Rollback (application first, then schema)
ROLLING_BACK_WORKLOADS = "RollingBackWorkloads"  # Reconciling=True: the workloads go back, then the schema
ROLLED_BACK_AFTER_HEALTH_CHECK = "RolledBackAfterHealthCheck"  # Stalled: both went back; spec.revision failed
WORKLOAD_ROLLBACK_FAILED = "WorkloadRollbackFailed"  # Stalled: the workloads could not go back; schema left
SCHEMA_ROLLBACK_BLOCKED = "SchemaRollbackBlocked"  # Stalled: the workloads went back; the schema downgrade did not

# Reasons of the CLI's own refusals (its --json ``error.reason``; never a condition's reason)
MANAGED_BY_GITOPS = "ManagedByGitOps"  # dbrev rollback NAME: Argo CD / Flux owns spec.revision; revert it in git
CLI_REASONS = (MANAGED_BY_GITOPS,)
