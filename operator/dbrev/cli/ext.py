"""Subcommands beyond the engine's: ``operator`` and ``approve``."""

from __future__ import annotations

import os
import sys


def register(sub, add_common) -> None:
    from . import add_logging

    register_archive(sub, add_common)
    p = sub.add_parser("operator", help="run the Kubernetes operator (in-cluster, or from $KUBECONFIG)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                   help="watch this namespace (repeatable; glob patterns allowed)")
    g.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--peering", default=os.environ.get("DBREV_PEERING"), metavar="NAME",
                   help="HA: coordinate with other replicas through this KopfPeering object "
                        "(default: standalone)")
    p.add_argument("--priority", type=int, default=int(os.environ.get("DBREV_PRIORITY", "0")),
                   help="peering priority; give every replica a different one")
    p.add_argument("--metrics-address", default=os.environ.get("DBREV_METRICS_ADDRESS", "0.0.0.0"))
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("DBREV_METRICS_PORT", "8080")),
                   help="serve /metrics on this port (0: off)")
    p.add_argument("--liveness-address", default=os.environ.get("DBREV_LIVENESS_ADDRESS", "0.0.0.0"))
    p.add_argument("--liveness-port", type=int, default=int(os.environ.get("DBREV_LIVENESS_PORT", "8081")),
                   help="serve /healthz on this port (0: off)")
    add_logging(p)
    p.add_argument("--json", action="store_true", help=argparse_hidden())
    p.set_defaults(func=cmd_operator)

    p = sub.add_parser("approve", help="approve the plan a DatabaseRevision is waiting on")
    p.add_argument("name", help="the DatabaseRevision")
    p.add_argument("--namespace", "-n", default=None, help="its namespace (default: the kubeconfig's)")
    p.add_argument("--hash", default=None, metavar="HASH",
                   help="approve only if the waiting plan has this hash (from status.plan.hash)")
    p.add_argument("--json", action="store_true")
    add_logging(p)
    p.set_defaults(func=cmd_approve)


def register_archive(sub, add_common) -> None:
    p = sub.add_parser("archive", help="data kept by the Archive policy: list, restore, prune")
    asub = p.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    a = asub.add_parser("list", help="what was archived, newest last")
    add_common(a, migrations=False)
    a.add_argument("--verify", action="store_true", help="recompute every archive's checksum")
    a.set_defaults(func=cmd_archive_list)
    a = asub.add_parser("restore", help="put archived data back (the schema must have the object again)")
    add_common(a, migrations=False)
    a.add_argument("ids", nargs="*", type=int, metavar="ID", help="archive ids (see `dbrev archive list`)")
    a.add_argument("--revision", default=None, metavar="REV", help="every archive written by this revision's step")
    a.add_argument("--force", action="store_true", help="restore again an archive already restored")
    a.set_defaults(func=cmd_archive_restore)
    a = asub.add_parser("prune", help="retention: drop archives by age and/or count")
    add_common(a, migrations=False)
    a.add_argument("--older-than", default=None, metavar="AGE", help="e.g. 30d, 12h")
    a.add_argument("--keep", type=int, default=None, metavar="N", help="keep the newest N archives")
    a.add_argument("--dry-run", action="store_true")
    a.set_defaults(func=cmd_archive_prune)


def _vt(args):
    from ..pg.state import vt_key

    return vt_key(args.version_table, args.version_table_schema)


def _emit(args, doc, text: str) -> None:
    import json

    from . import doc_stream
    from ..core.redact import redact

    out = doc_stream()
    if args.json:
        out.write(redact(json.dumps(doc, indent=2, default=str)) + "\n")
    else:
        out.write(redact(text) + "\n")
    out.flush()


def cmd_archive_list(args) -> int:
    from ..pg import archive
    from . import db_options
    from ..pg.db import connection

    with connection(db_options(args)) as conn:
        entries = archive.list_archives(conn, args.state_schema, _vt(args))
        if args.verify:
            for e in entries:
                e["checksum_ok"] = archive.verify_checksum(conn, e)
        conn.commit()
    lines = [f"{e['id']:>5}  {e['created_at']:%Y-%m-%d %H:%M}  {e['direction']:<9} {e['revision']:<14} "
             f"{e['kind']:<17} {e['source_schema']}.{e['source_table']}"
             f"{'.' + e['source_column'] if e['source_column'] else ''}  rows={e['rows']}  "
             f"{e['archive_schema']}.{e['archive_table']}"
             f"{'  restored ' + format(e['restored_at'], '%Y-%m-%d %H:%M') if e['restored_at'] else ''}"
             f"{'' if e.get('checksum_ok', True) else '  CHECKSUM MISMATCH'}" for e in entries]
    _emit(args, {"archives": entries}, "\n".join(lines) or "no archives")
    return 0 if all(e.get("checksum_ok", True) for e in entries) else 1


def cmd_archive_restore(args) -> int:
    from ..pg import archive
    from . import db_options
    from ..pg.db import connection
    from ..core.errors import BadInput

    if not args.ids and not args.revision:
        raise BadInput("name the archives to restore", hint="give ids, or --revision REV")
    done = []
    with connection(db_options(args)) as conn:
        entries = archive.list_archives(conn, args.state_schema, _vt(args))
        chosen = [e for e in entries if e["id"] in args.ids or (args.revision and e["revision"].startswith(
            args.revision))]
        missing = sorted(set(args.ids) - {e["id"] for e in chosen})
        if missing or not chosen:
            raise BadInput(f"no archive {', '.join(map(str, missing)) if missing else 'matches'}",
                           hint="see `dbrev archive list`")
        conn.commit()
        with conn.begin():  # all or nothing
            for e in chosen:
                done.append(archive.restore(conn, e, args.state_schema, force=args.force))
    lines = [f"restored archive {d['id']} ({d['kind']} {d['object']}): inserted {d['inserted']}, updated "
             f"{d['updated']}, skipped {d['skipped']}" for d in done]
    _emit(args, {"restored": done}, "\n".join(lines))
    return 0


def cmd_archive_prune(args) -> int:
    from ..pg import archive
    from . import db_options
    from ..pg.db import connection
    from ..core.errors import BadInput

    if args.older_than is None and args.keep is None:
        raise BadInput("give --older-than AGE and/or --keep N")
    age = archive.parse_age(args.older_than) if args.older_than else None
    with connection(db_options(args)) as conn:
        with conn.begin():
            gone = archive.prune(conn, args.state_schema, age, args.keep, _vt(args), args.dry_run)
    verb = "would drop" if args.dry_run else "dropped"
    _emit(args, {"pruned": gone, "dry_run": args.dry_run},
          "\n".join(f"{verb} archive {e['id']} ({e['archive_schema']}.{e['archive_table']}, {e['rows']} rows)"
                    for e in gone) or "nothing to prune")
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def cmd_operator(args) -> int:
    from ..engine.extras import require_operator

    require_operator("dbrev operator")
    os.environ["DBREV_LOG_LEVEL"] = args.log_level.upper()
    from ..controller import main as operator_main
    from ..core.log import setup_logging

    handler = setup_logging(args.log_level, args.log_format)
    import logging

    kopf_logger = logging.getLogger("kopf")
    kopf_logger.addHandler(handler)
    kopf_logger.propagate = False
    # Kopf's own records ("Handler ... succeeded", every timer tick) only when debugging
    kopf_logger.setLevel(logging.DEBUG if args.log_level == "debug" else logging.WARNING)
    operator_main.run(namespaces=args.namespace, all_namespaces=args.all_namespaces, standalone=not args.peering,
                      peering=args.peering, priority=args.priority, metrics_address=args.metrics_address,
                      metrics_port=args.metrics_port, liveness_address=args.liveness_address,
                      liveness_port=args.liveness_port)
    return 0


def named_resource(namespace: str | None, name: str) -> tuple[str, dict]:
    """The DatabaseRevision a cluster verb names: ``-n`` or the kubeconfig context's namespace."""
    from ..engine.extras import require_operator

    require_operator(f"finding DatabaseRevision {name}")
    from kubernetes import config

    from ..controller import kube
    from ..core.errors import BadInput

    ns = namespace
    if not ns:
        try:
            _, active = config.list_kube_config_contexts()
            ns = active.get("context", {}).get("namespace") or "default"
        except Exception:  # noqa: BLE001 - in-cluster or no contexts
            ns = "default"
    obj = kube.get(ns, name)
    if obj is None:
        raise BadInput(f"DatabaseRevision {ns}/{name} not found")
    return ns, obj


def cmd_approve(args) -> int:
    from ..engine.extras import require_operator

    require_operator("dbrev approve")
    import json

    from ..core import conditions as C
    from ..controller import kube
    from ..controller.crd import APPROVE_ANNOTATION, GROUP, PLURAL, VERSION
    from ..core.errors import BadInput, PlanChanged
    from ..controller.status import condition

    ns, obj = named_resource(args.namespace, args.name)
    status = obj.get("status") or {}
    plan_hash = (status.get("plan") or {}).get("hash")
    ready = condition(status, C.READY) or {}
    if ready.get("reason") != C.AWAITING_APPROVAL or not plan_hash:
        raise BadInput(f"DatabaseRevision {ns}/{args.name} is not waiting for an approval "
                       f"(Ready={ready.get('status', 'Unknown')}, reason {ready.get('reason', 'none')})")
    if args.hash and not plan_hash.removeprefix("sha256:").startswith(args.hash.removeprefix("sha256:")):
        raise PlanChanged(f"the waiting plan is {plan_hash}, not {args.hash}", hint="review the new plan first")
    kube.custom().patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, args.name,
                                                 {"metadata": {"annotations": {APPROVE_ANNOTATION: plan_hash}}},
                                                 _content_type=kube.MERGE_PATCH)
    plan = status.get("plan") or {}
    doc = {"namespace": ns, "name": args.name, "approved": plan_hash, "direction": plan.get("direction"),
           "steps": [s.get("revision") for s in plan.get("steps", [])], "destructive": plan.get("destructive", [])}
    from . import doc_stream

    if args.json:
        print(json.dumps(doc, indent=2), file=doc_stream())
    else:
        from ..core.text import plan_summary

        print(f"approved plan {plan_hash} for {ns}/{args.name}: "
              + plan_summary(plan.get("direction"), plan.get("from"), plan.get("to"), len(doc["steps"]))
              + (f", destructive: {', '.join(doc['destructive'])}" if doc["destructive"] else ""), file=doc_stream())
    doc_stream().flush()
    return 0
