"""``dbrev rollback``, the command: its options, the run in the database, and ``dbrev rollback NAME`` in the cluster.

What to roll back to and what it would lose is decided in :mod:`dbrev.engine.rollback` (the
runbook's steps, pure where they can be); this module reads the options, prints, and for a
DatabaseRevision in the cluster sets ``spec.revision`` (the workloads its health gate names going
back first) and waits for the operator.
"""

from __future__ import annotations

import os

from ..core import conditions as C
from ..core import errors as E
from ..core.options import DEFAULT_RUN_TIMEOUT
from ..core.results import apply_document
from ..core.text import revisions_shown as _revs, revisions_text
from ..engine.rollback import REASONS, assess, choose_target, history_runs, succeeded


def register(sub, add_common) -> None:
    p = sub.add_parser("rollback", help="roll the database back (by default: undo the last run dbrev applied)",
                       description="The rollback runbook as one command: read the live revision and dbrev's "
                                   "journal of runs, choose the target (default: the revision before the newest "
                                   "applied run that brought the database where it is), show the plan and what "
                                   "it would lose, run it through the same path as `dbrev apply` under the "
                                   "policy flags, validate it (integrity report) and log rollback_triggered / "
                                   "rollback_executed records with the reason and deployment id.")
    add_common(p)
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help="in the cluster: roll this DatabaseRevision back (sets spec.revision; the operator runs "
                        "the downgrade); without it, the database of --database-url")
    p.add_argument("--namespace", "-n", default=None, metavar="NS", help="NAME's namespace (default: the kubeconfig's)")
    p.add_argument("--no-wait", action="store_true", help="in the cluster: return once spec.revision is set")
    p.add_argument("--schema-only", action="store_true",
                   help="in the cluster: do not roll back the workloads spec.healthGate names (by default they go "
                        "back first, as `kubectl rollout undo` does, and the schema once they are available)")
    p.add_argument("--to", dest="to", default=None, metavar="TARGET",
                   help="roll back to this revision instead (a revision id or prefix, -1, -N, base)")
    p.add_argument("--reason", default="critical_bug", choices=REASONS,
                   help="why (logged in the rollback records; default critical_bug)")
    p.add_argument("--deployment-id", default=os.environ.get("DBREV_DEPLOYMENT_ID"), metavar="ID",
                   help="the deployment being rolled back, for the records (default: $DBREV_DEPLOYMENT_ID)")
    p.add_argument("--dry-run", action="store_true", help="show the assessment and the plan; change nothing")
    p.add_argument("--allow-data-loss", action="store_true", help="permit steps that drop or delete data")
    p.add_argument("--archive", action="store_true",
                   help="copy what destructive steps would remove into the dbrev_archive schema first")
    p.add_argument("--no-rollback-on-failure", action="store_true",
                   help="if the rollback fails, leave the database where it stopped instead of returning")
    p.add_argument("--timeout", type=float, default=DEFAULT_RUN_TIMEOUT, metavar="SECONDS",
                   help=f"kill the run after this long (default {DEFAULT_RUN_TIMEOUT:g})")
    p.add_argument("--verify", default=None, metavar="CHECKS", help="comma-separated integrity checks")
    p.add_argument("--exact-counts", action="store_true", help="also compare exact row counts of every table")
    env = p.add_mutually_exclusive_group()
    env.add_argument("--env-py", dest="env_py", action="store_const", const=True, default=None,
                     help="run through the project's env.py (as `dbrev apply --env-py`)")
    env.add_argument("--builtin-env", dest="env_py", action="store_const", const=False,
                     help="run through dbrev's built-in environment (as `dbrev apply --builtin-env`)")
    p.set_defaults(func=cmd_rollback)


def cmd_rollback(args) -> int:
    if args.name:
        return cmd_rollback_cluster(args)
    from .. import cli
    from ..core import log as L
    from ..engine.verbs import apply
    from ..core.options import Policy, RunRequest
    from ..core.results import RESULT_BUSY, RESULT_REFUSED, RunResult

    db = cli.db_options(args)
    migrations = os.path.abspath(cli.migrations_folder(args))
    pythonpath = tuple(os.path.abspath(p) for p in args.pythonpath)
    checks = cli.parse_checks(args.verify)
    with L.log_context(deployment_id=args.deployment_id, rollback_reason=args.reason):
        a = assess(db, migrations, args.to, pythonpath)
        p = a.pop("_plan", None)
        doc = {"result": None, "reason": args.reason, "deployment_id": args.deployment_id, "dry_run": args.dry_run,
               "assessment": a}
        if p is None or p.is_noop:
            doc.update({"result": "noop", "current_revisions": a["current_revisions"],
                        "message": a["target_reason"] if p is None else
                        f"nothing to roll back: the database is already at {_revs(a['current_revisions'])}"})
            cli.write_output(args, doc, doc["message"])
            return 0
        data_loss = "Archive" if args.archive else ("Allow" if args.allow_data_loss else "Deny")
        policy = Policy(downgrade="Allow", data_loss=data_loss, rollback_on_failure=not args.no_rollback_on_failure,
                        verify=checks)
        if args.dry_run:
            from ..core.policy import evaluate

            doc["result"] = "planned"
            doc["decision"] = evaluate(p, policy).to_dict()
            cli.write_output(args, doc, _text(a, p, args) + ("" if doc["decision"]["allowed"] else
                                                     f"\nwould be refused ({doc['decision']['reason']}): "
                                                     f"{doc['decision']['message']}"))
            return 0
        frm, to = a["current_revisions"], list(p.to_revisions)
        L.rollback_triggered(args.reason, frm, to, deployment_id=args.deployment_id, trigger="cli",
                             undoes_run=a["undoes_run"], plan_hash=p.hash)
        req = RunRequest(db=db, migrations=migrations, target=revisions_text(to), policy=policy, expected_hash=p.hash,
                         exact_counts=args.exact_counts, actor=f"cli rollback ({args.reason})",
                         pythonpath=pythonpath, use_env_py=args.env_py)
        try:
            result = apply(req, timeout=args.timeout, on_event=cli.Progress(not args.json), log_level=args.log_level,
                           log_context=L.current_context(), isolate=False)
        except E.Busy as e:
            result = RunResult.of_error(RESULT_BUSY, e)
        except E.PolicyRefused as e:
            result = RunResult.of_error(RESULT_REFUSED, e)
        except Exception as e:  # noqa: BLE001 - logged per the runbook, then reported as apply does
            L.rollback_executed(frm, to, False, deployment_id=args.deployment_id, trigger="cli")
            L.log_error("Rollback failed", e, from_revision=L.revs(frm), to_revision=L.revs(to))
            raise
        ok = succeeded(result, to)
        L.rollback_executed(frm, to, ok, deployment_id=args.deployment_id, trigger="cli",
                            result=result.result)
        doc.update(apply_document(result))
        doc["success"] = ok
        text = _text(a, p, args, header_only=True) + "\n" + cli.apply_text(result, args)
        cli.write_output(args, doc, text)
        code = cli.RESULT_EXIT.get(result.result, 1)
        return code if code or ok else 1




def _text(a: dict, p, args, header_only: bool = False) -> str:
    from .. import cli

    lines = [f"rollback ({args.reason}{', deployment ' + args.deployment_id if args.deployment_id else ''}): "
             f"{_revs(a['current_revisions'])} -> {_revs(list(p.to_revisions))}",
             f"  target: {a['target_reason']}"]
    lines += [f"  note: {n}" for n in a["notes"]]
    if a["loses"]:
        lines.append("  would lose:")
        lines += [f"    ! [{x['revision']}] {x['detail']}" for x in a["loses"]]
    else:
        lines.append("  would lose: nothing the plan's steps declare")
    if not header_only:
        lines.append(cli.plan_text(p))
        if args.dry_run:
            lines.append("dry run: nothing changed")
    return "\n".join(lines)


# -- in the cluster: `dbrev rollback NAME -n NS` ----------------------------------------------------

GITOPS_SOURCES = {"argocd": "Argo CD", "flux": "Flux"}
REQUESTED_BY_ANNOTATION = "dbrev.io/rollback-requested-by"
REASON_ANNOTATION = "dbrev.io/rollback-reason"


def cluster_plan(obj: dict, to: str | None) -> dict:
    """Pure: the target, and whether a GitOps tool owns spec.revision (then the user must revert in git)."""
    from ..controller.deployment import deployment_id

    status = obj.get("status") or {}
    current = status.get("currentRevision")
    if not current:
        raise E.BadInput("the DatabaseRevision has no currentRevision yet", hint="wait for its first run")
    cur = [] if current == "base" else current.split(",")
    choice = choose_target(cur, history_runs(status.get("history") or []), to)
    if choice.target is not None and "," in choice.target:
        raise E.BadInput(f"the target is several revisions ({choice.target}); spec.revision names one",
                         hint="pass --to with one revision or a merge revision")
    dep = deployment_id(obj.get("metadata"))
    return {"current": current, "target": choice.target, "target_reason": choice.message.replace(
        "run ", "status.history entry "), "gitops": GITOPS_SOURCES.get(dep.source), "managed_by": dep.value,
        "spec_revision": (obj.get("spec") or {}).get("revision")}


def gated_workloads(obj: dict) -> tuple[list[tuple[str, str]], str]:
    """Pure: the workloads to roll back before the schema (application first), and why (not).

    Those ``spec.healthGate`` names; none when the health gate's own rollback already put them back
    (``status.healthGate.rolledBack``: undoing them again would go one more release back).
    """
    gate = (obj.get("spec") or {}).get("healthGate") or {}
    names = [(str(w.get("kind")), str(w.get("name"))) for w in gate.get("workloads") or []]
    if not names:
        return [], "no health gate names workloads: only the schema goes back"
    hg = (obj.get("status") or {}).get("healthGate") or {}
    if hg.get("rolledBack") and hg.get("phase") in ("RollingBack", "AwaitingApproval", "RolledBack",
                                                    "RollbackIncomplete"):
        return [], f"the health gate already rolled the workloads back ({', '.join(hg['rolledBack'])})"
    return names, "application first: " + ", ".join(f"{k}/{n}" for k, n in names) + " go back before the schema"


def _roll_back_workloads(ns: str, names, window: float, log) -> tuple[bool, str]:
    """Undo the workloads (all or none) and wait until they are available: (ok, what happened)."""
    import time

    from ..controller import healthgate as HG

    try:
        undos = HG.roll_back_workloads(ns, names)
    except HG.NoPreviousRevision as e:
        return False, f"cannot roll the workloads back: {e}; nothing was changed"
    except HG.UndoRefused as e:
        return False, f"cannot roll the workloads back: {e}; the schema was left as it is"
    text = ", ".join(u.text for u in undos)
    log.state_transition(None, None, "workloads_rolled_back", f"Rolled back {text}")
    started = time.monotonic()
    while True:
        v = HG.gate(HG.observe(ns, names), time.monotonic() - started, window)
        if v.state == HG.PASSED:
            return True, f"rolled back {text}: {v.message}"
        if v.state == HG.FAILED:
            return False, (f"rolled back {text}, but {v.message}; the schema was left as it is (application "
                           f"first)")
        time.sleep(1)


def cmd_rollback_cluster(args) -> int:
    from ..engine.extras import require_operator

    require_operator(f"dbrev rollback {args.name}")
    import getpass
    import json
    import socket
    import time

    from ..core import log as L
    from ..controller import kube
    from ..controller.crd import GROUP, PLURAL, VERSION
    from ..core.redact import redact
    from ..controller.status import condition

    from .ext import named_resource

    ns, obj = named_resource(args.namespace, args.name)
    plan = cluster_plan(obj, args.to)
    doc = {"namespace": ns, "name": args.name, "reason": args.reason, "deployment_id": args.deployment_id,
           "from_revision": plan["current"], "to_revision": plan["target"], "target_reason": plan["target_reason"],
           "dry_run": args.dry_run}

    def out(d, text, code):
        from . import doc_stream  # dbrev's own stdout

        stream = doc_stream()
        print(redact(json.dumps(d, indent=2, default=str)) if args.json else redact(text), file=stream)
        stream.flush()
        return code

    if plan["target"] is None or plan["target"] == plan["current"]:
        return out({**doc, "result": "noop"}, f"nothing to roll back: {ns}/{args.name} is at {plan['current']}", 0)
    if plan["gitops"]:
        msg = (f"{ns}/{args.name} is managed by {plan['gitops']} ({plan['managed_by']}): it would put spec.revision "
               f"back. Revert it in git: set spec.revision to {plan['target']} (it is {plan['spec_revision']}, the "
               f"database at {plan['current']})")
        return out({**doc, "result": "refused", "error": {"reason": C.MANAGED_BY_GITOPS, "message": msg}},
                   f"refused ({C.MANAGED_BY_GITOPS}): {msg}", E.EXIT_REFUSED)
    workloads, why = ([], "--schema-only: the workloads are left as they are") if args.schema_only \
        else gated_workloads(obj)
    doc["workloads"] = {"roll_back": [f"{k}/{n}" for k, n in workloads], "note": why}
    if args.dry_run:
        undo = ""
        if workloads:
            from ..controller import healthgate as HG

            try:
                undo = "; would first roll back " + ", ".join(
                    u.text for u in HG.undo_plan(HG.read_for_undo(ns, workloads)))
            except HG.NoPreviousRevision as e:
                undo = f"; cannot roll the workloads back first: {e}"
            doc["workloads"]["plan"] = undo.split("; ", 1)[1]
        return out({**doc, "result": "planned"}, f"would set spec.revision of {ns}/{args.name} to {plan['target']} "
                                                f"({plan['target_reason']}){undo}; dry run: nothing changed", 0)
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    with L.log_context(namespace=ns, name=args.name, deployment_id=args.deployment_id, rollback_reason=args.reason):
        L.rollback_triggered(args.reason, plan["current"], plan["target"], deployment_id=args.deployment_id,
                             trigger="cli", requested_by=who)
        if workloads:
            from ..controller.spec import parse_duration

            window = parse_duration(((obj.get("spec") or {}).get("healthGate") or {}).get("window") or "10m")
            ok, what = _roll_back_workloads(ns, workloads, min(window, args.timeout), L)
            doc["workloads"]["result"] = what
            if not ok:
                L.rollback_executed(plan["current"], plan["target"], False, deployment_id=args.deployment_id,
                                    trigger="cli", result=C.WORKLOAD_ROLLBACK_FAILED)
                return out({**doc, "result": "failed", "success": False,
                            "error": {"reason": C.WORKLOAD_ROLLBACK_FAILED, "message": what}},
                           f"rollback of {ns}/{args.name} stopped: {what}", 1)
        ann = {REQUESTED_BY_ANNOTATION: who, REASON_ANNOTATION: args.reason}
        if args.deployment_id:
            ann["dbrev.io/deployment-id"] = args.deployment_id
        kube.custom().patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, args.name,
            {"metadata": {"annotations": ann}, "spec": {"revision": plan["target"]}}, _content_type=kube.MERGE_PATCH)
        if args.no_wait:
            return out({**doc, "result": "requested", "requested_by": who},
                       f"set spec.revision of {ns}/{args.name} to {plan['target']}; the operator runs the downgrade", 0)
        gen = (kube.get(ns, args.name) or {}).get("metadata", {}).get("generation")
        deadline = time.monotonic() + args.timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = (kube.get(ns, args.name) or {}).get("status") or {}
            ready, stalled = condition(st, C.READY) or {}, condition(st, C.STALLED) or {}
            if st.get("observedGeneration") == gen and ready.get("status") == "True" \
                    and st.get("currentRevision") == plan["target"]:
                break
            if st.get("observedGeneration") == gen and (stalled.get("status") == "True"
                                                         or ready.get("reason") == C.AWAITING_APPROVAL):
                break
            time.sleep(1)
        ready = condition(st, C.READY) or {}
        ok = ready.get("status") == "True" and st.get("currentRevision") == plan["target"]
        L.rollback_executed(plan["current"], plan["target"], ok, deployment_id=args.deployment_id, trigger="cli",
                            result=ready.get("reason"))
        first = f"{doc['workloads']['result']}; then " if doc["workloads"].get("result") else ""
        text = (f"{first}rolled back {ns}/{args.name}: {plan['current']} -> {plan['target']}, Ready" if ok else
                f"rollback of {ns}/{args.name} to {plan['target']} did not finish: Ready={ready.get('status')} "
                f"({ready.get('reason')}): {ready.get('message', '')}")
        code = 0 if ok else (E.EXIT_REFUSED if ready.get("reason") in (C.DOWNGRADE_DENIED, C.DATA_LOSS_DENIED,
                                                                          C.AWAITING_APPROVAL) else 1)
        return out({**doc, "result": "applied" if ok else "failed", "success": ok, "requested_by": who,
                    "condition": ready, "current_revision": st.get("currentRevision")}, text, code)
