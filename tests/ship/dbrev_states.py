"""DatabaseRevision objects in each state, built with the operator's own functions.

Every status here comes from ``dbrev.controller.decide`` / ``dbrev.controller.status``
(what the handlers write), merged the way the API server stores a
merge-patched status, so the Argo CD and kstatus tests cannot drift from what
the operator really writes.

``python tests/ship/dbrev_states.py --write`` regenerates the Argo CD test
data (``tests/ship/lua/testdata/*.yaml``); ``test_health_lua.py`` fails when
they are stale.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

from dbrev.core import conditions as C
from dbrev.controller import crd
from dbrev.controller import decide
from dbrev.core.results import RunResult
from dbrev.controller.status import initial_conditions


def from_result(result: dict, *args, **kw):
    """decide.from_result on the RunResult the worker would hand over (the document, parsed)."""
    return decide.from_result(RunResult.from_dict(result), *args, **kw)

HERE = Path(__file__).resolve().parent
TESTDATA = HERE / "lua" / "testdata"

T0 = "2026-11-25T10:00:00Z"
T1 = "2026-11-25T10:00:02Z"
T2 = "2026-11-25T10:05:00Z"
T3 = "2026-11-25T10:06:00Z"

# Revisions of examples/migrations.
BASE = "a1b2c3d4e5f6"
PHONE = "b7c8d9e0f1a2"
ITEMS = "c3d4e5f6a7b8"
HASH_UP = "sha256:" + "3f" * 32
HASH_DOWN = "sha256:" + "9c" * 32


def _plan(hash_, direction, frm, to, steps, destructive=()):
    return {"hash": hash_, "direction": direction, "transaction": "single", "from_revisions": frm,
            "to_revisions": to, "destructive": list(destructive), "warnings": [],
            "steps": [{"revision": r, "direction": direction, "doc": d, "destructive": r in destructive,
                       "needs_autocommit": False, "heavy_locks": False, "renderable": True,
                       "script_origin": "files"} for r, d in steps]}


PLAN_UP = _plan(HASH_UP, "upgrade", [], [PHONE], [(BASE, "create customers and orders"),
                                                   (PHONE, "add customer phone")])
PLAN_DOWN = _plan(HASH_DOWN, "downgrade", [PHONE], [BASE], [(PHONE, "add customer phone")], destructive=[PHONE])


def merge_status(stored: dict | None, patch: dict) -> dict:
    """What the API server stores after a JSON merge-patch of ``status`` (None deletes a key)."""
    out = copy.deepcopy(stored or {})
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_status(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resource(generation: int, revision: str, status: dict | None = None, **metadata) -> dict:
    obj = {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {"name": "orders", "namespace": "shop", "generation": generation,
                     "creationTimestamp": T0, "uid": "5b0c7a1e-2f3d-4c5b-9a8e-0d1f2e3c4b5a", **metadata},
        "spec": {"revision": revision, "database": {"urlSecretRef": {"name": "orders-db", "key": "url"}},
                 "migrations": {"configMapRefs": [{"name": "orders-migrations"}]}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _applied_up() -> dict:
    return {"result": "applied", "from_revisions": [], "to_revisions": [PHONE], "current_revisions": [PHONE],
            "direction": "upgrade", "plan_hash": HASH_UP, "duration_seconds": 0.8,
            "steps": [{"revision": BASE, "direction": "upgrade", "status": "applied"},
                      {"revision": PHONE, "direction": "upgrade", "status": "applied"}],
            "integrity": {"passed": True, "findings": [], "fingerprint": "sha256:" + "e1" * 32, "checked_at": T2}}


def build() -> dict[str, dict]:
    """name -> DatabaseRevision object (ordered as a user meets them)."""
    states: dict[str, dict] = {}
    states["no_status"] = resource(1, PHONE)

    first = {"observedGeneration": 1, "conditions": initial_conditions(1, T0)}
    states["initializing"] = resource(1, PHONE, first)

    msg = (f"applying plan {HASH_UP[:19]}: upgrade base -> {PHONE}, {len(PLAN_UP['steps'])} step(s)")
    applying = merge_status(first, decide.progressing(first, 1, T1, msg, PLAN_UP))
    states["applying"] = resource(1, PHONE, applying)

    ready_v = from_result(_applied_up(), applying, 1, T2, "create", T1, PLAN_UP)
    ready = merge_status(applying, ready_v.status)
    states["ready"] = resource(1, PHONE, ready)

    # The user changed spec.revision; the operator has not seen generation 2 yet.
    states["ready_stale_generation"] = resource(2, BASE, ready)

    # Deleting: the API server sets deletionTimestamp (dbrev adds no finalizer; this is what a
    # finalizer of another controller, or foreground deletion, shows).
    states["deleting"] = resource(1, PHONE, ready, deletionTimestamp=T3)

    # A downgrade under policy.downgrade=RequireApproval (messages as dbrev.core.policy.decide words them).
    approval_msg = f"the plan involves downgrade and needs an approval of {HASH_DOWN}"
    waiting_v = from_result(
        {"result": "refused", "current_revisions": [PHONE], "to_revisions": [BASE], "from_revisions": [PHONE],
         "decision": {"reason": C.AWAITING_APPROVAL, "awaiting_approval": True, "message": approval_msg},
         "error": {"reason": C.AWAITING_APPROVAL, "message": approval_msg}},
        ready, 2, T3, "spec", T3, PLAN_DOWN)
    states["awaiting_approval"] = resource(2, BASE, merge_status(ready, waiting_v.status))

    # The same downgrade under policy.downgrade=Deny.
    denied_msg = f"the plan downgrades from {PHONE} to {BASE} (1 step(s)) and the downgrade policy is Deny"
    denied_v = from_result(
        {"result": "refused", "current_revisions": [PHONE], "to_revisions": [BASE], "from_revisions": [PHONE],
         "decision": {"reason": C.DOWNGRADE_DENIED, "message": denied_msg},
         "error": {"reason": C.DOWNGRADE_DENIED, "message": denied_msg}},
        ready, 2, T3, "spec", T3, PLAN_DOWN)
    denied = merge_status(ready, denied_v.status)
    states["stalled_downgrade_denied"] = resource(2, BASE, denied)
    # The user fixed the spec (generation 3); the failure shown is of generation 2.
    states["stalled_stale_generation"] = resource(3, PHONE, denied)

    # A GitOps revert of spec.revision: the downgrade ran and was verified.
    down_v = from_result(
        {"result": "applied", "from_revisions": [PHONE], "to_revisions": [BASE], "current_revisions": [BASE],
         "direction": "downgrade", "plan_hash": HASH_DOWN, "duration_seconds": 0.3,
         "steps": [{"revision": PHONE, "direction": "downgrade", "status": "applied"}],
         "integrity": {"passed": True, "findings": [], "fingerprint": "sha256:" + "d0" * 32, "checked_at": T3}},
        ready, 2, T3, "spec", T3, PLAN_DOWN)
    states["reverted"] = resource(2, BASE, merge_status(ready, down_v.status))

    # An upgrade whose step failed: dbrev rolled the transaction back.
    rb_v = from_result(
        {"result": "rolled_back", "from_revisions": [PHONE], "to_revisions": [ITEMS], "current_revisions": [PHONE],
         "direction": "upgrade", "plan_hash": "sha256:" + "7a" * 32, "duration_seconds": 0.4,
         "steps": [{"revision": ITEMS, "direction": "upgrade", "status": "failed"}],
         "error": {"reason": C.MIGRATION_FAILED, "message": 'relation "order_items" already exists',
                   "step": ITEMS, "direction": "upgrade", "location": f"{ITEMS}_add_order_items.py:21"},
         "rollback": {"triggered": True, "reason": "migration_failure", "method": "transaction", "success": True}},
        ready, 2, T3, "spec", T3, None)
    states["rolled_back"] = resource(2, ITEMS, merge_status(ready, rb_v.status))

    unavailable_v = decide.from_error(
        {"reason": C.DATABASE_UNAVAILABLE, "message": "could not connect to orders-db.shop:5432: connection refused"},
        ready, 2, T3, retry=2)
    states["database_unavailable"] = resource(2, ITEMS, merge_status(ready, unavailable_v.status))

    integrity_v = decide.from_check(
        {"passed": False, "checked_at": T3, "fingerprint": "sha256:" + "e1" * 32,
         "findings": [{"check": "indexes", "object": "public.ix_orders_created_at", "count": 1, "severity": "error",
                       "message": "index public.ix_orders_created_at is INVALID: REINDEX INDEX CONCURRENTLY "
                                  "public.ix_orders_created_at"}]},
        [PHONE], ready, 1, T3)
    states["integrity_check_failed"] = resource(1, PHONE, merge_status(ready, integrity_v.status))

    # A health gate (onFailure: Rollback) after the upgrade to ITEMS: the Deployment failed its rollout,
    # dbrev is rolling it back (then the schema); afterwards both are back and spec.revision still names ITEMS.
    from dbrev.controller import healthgate as HG

    up = {"result": "applied", "from_revisions": [PHONE], "to_revisions": [ITEMS], "current_revisions": [ITEMS],
          "direction": "upgrade", "plan_hash": "sha256:" + "8b" * 32, "duration_seconds": 0.5,
          "steps": [{"revision": ITEMS, "direction": "upgrade", "status": "applied"}],
          "integrity": {"passed": True, "findings": [], "fingerprint": "sha256:" + "e2" * 32, "checked_at": T3}}
    watched = merge_status(ready, from_result(up, ready, 2, T3, "spec", T3, None).status)
    watched["healthGate"] = HG.begin(RunResult.from_dict(up), [("Deployment", "shop-api")], 600, 2, T3)
    failed = HG.GateVerdict(HG.FAILED, 'Deployment/shop-api failed: ProgressDeadlineExceeded: ReplicaSet '
                                       '"shop-api-6d9f8" has timed out progressing.', "Deployment/shop-api")
    undo = HG.Undo("Deployment", "shop-api", [], HG.JSON_PATCH, "ReplicaSet shop-api-5c7b4 (revision 1)")
    rolling = merge_status(watched, HG.rollback_started(watched, 2, failed, [undo], T3).status)
    states["health_gate_rolling_back"] = resource(2, ITEMS, rolling)
    down = {"result": "applied", "from_revisions": [ITEMS], "to_revisions": [PHONE], "current_revisions": [PHONE],
            "direction": "downgrade", "plan_hash": "sha256:" + "8c" * 32, "duration_seconds": 0.4,
            "steps": [{"revision": ITEMS, "direction": "downgrade", "status": "applied"}],
            "integrity": {"passed": True, "findings": [], "fingerprint": "sha256:" + "e1" * 32, "checked_at": T3}}
    run = from_result(down, rolling, 2, T3, "health_gate", T3, None)
    back = HG.schema_rolled_back(run, RunResult.from_dict(down), rolling, 2, T3, PHONE, ITEMS, "orders", "shop")
    states["health_gate_rolled_back"] = resource(2, ITEMS, merge_status(rolling, back.status))

    suspended_v = decide.suspended(ready, 2, T3)
    states["suspended"] = resource(2, ITEMS, merge_status(ready, suspended_v.status), )
    states["suspended"]["spec"]["suspend"] = True
    return states


def testdata_yaml(obj: dict) -> str:
    header = "# Generated by tests/ship/dbrev_states.py from dbrev's own status functions. Do not edit.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=120)


def write(folder: Path = TESTDATA) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, obj in build().items():
        p = folder / f"{name}.yaml"
        p.write_text(testdata_yaml(obj))
        out.append(p)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        for p in write():
            print(f"wrote {p}")
    else:
        yaml.safe_dump_all(build().values(), sys.stdout, sort_keys=False)
