"""``dbrev check``, the command: its options, the scratch database, and the report printed.

What is checked is :mod:`dbrev.engine.check` (:func:`~dbrev.engine.check.run_check`).
"""

from __future__ import annotations

import json
import os

from ..core import errors as E
from ..engine import check as K


def register(sub, add_common) -> None:
    p = sub.add_parser("check", help="prove a migrations folder on a scratch database (CI): load, heads, plan, "
                                     "and the stairway up/down/up of every revision",
                       description=K.__doc__.split("\n\n")[1] if K.__doc__ else None)
    add_common(p)
    p.add_argument("--ephemeral", action="store_true",
                   help="start a throwaway PostgreSQL server of dbrev's own (in a temporary folder, on 127.0.0.1) "
                        "and remove it afterwards, instead of --database-url")
    p.add_argument("--from", dest="from_rev", default=None, metavar="REV",
                   help="upgrade to REV without checking, then check only the revisions after it "
                        "(what a pull request adds)")
    p.add_argument("--heads", type=int, default=1, metavar="N", help="the number of heads the history must have "
                                                                      "(default 1)")
    p.add_argument("--allow-irreversible", action="store_true",
                   help="do not fail on steps whose downgrade is missing or raises NotImplementedError")
    p.add_argument("--data", action="store_true",
                   help="after each upgrade, insert a row into every table (values of each column's type, "
                        "foreign keys to existing rows; tables that refuse one are named), so the stairway's "
                        "downgrade counts what a lossy one removes")
    p.add_argument("--format", default="text", choices=["text", "markdown"],
                   help="text (default) or markdown (a pull-request comment); --json for machines")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from . import db_options, migrations_folder
    from ..core.redact import redact, redact_obj

    migrations = migrations_folder(args)
    if not os.path.isdir(migrations):
        raise E.BadInput(f"--migrations {migrations} is not a folder")
    if args.ephemeral and (args.database_url or "").strip():
        raise E.BadInput("pass either --database-url or --ephemeral, not both")

    def go(url: str) -> dict:
        args.database_url = url
        return K.run_check(migrations, db_options(args), from_rev=args.from_rev, heads=args.heads,
                         pythonpath=[os.path.abspath(p) for p in args.pythonpath],
                         allow_irreversible=args.allow_irreversible, data=args.data)

    if args.ephemeral:
        with K.ephemeral_database() as url:
            doc = go(url)
    else:
        url = args.database_url or os.environ.get("DBREV_DATABASE_URL") or ""
        if not url:
            raise E.DatabaseConfigError("dbrev check needs a scratch database",
                                        hint="pass --database-url of an empty database (or set DBREV_DATABASE_URL), "
                                             "or --ephemeral to start a throwaway PostgreSQL")
        doc = go(url)
    if args.json:
        out = json.dumps(redact_obj(K.doc_json(doc)), indent=2, default=str)
    elif args.format == "markdown":
        out = K.markdown(doc)
    else:
        out = K.text(doc)
    from . import doc_stream  # dbrev's own stdout (what scripts print goes to stderr)

    stream = doc_stream()
    stream.write(redact(out).rstrip("\n") + "\n")
    stream.flush()
    return 0 if doc["result"] == K.PASSED else 1
