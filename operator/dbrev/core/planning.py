"""Plans: which steps, in which order, what each would do, and a hash to bind approvals to.

:func:`build_plan` is pure given a ``render`` function (the offline SQL of one
step); the engine passes :func:`dbrev.engine.scripts.render`, tests pass a fake.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from .classify import Classification, Effect, classify_source, classify_sql
from .errors import ScriptConflict
from .graph import Graph, Heads
from .scripts_info import Rendered, ScriptInfo
from .text import revisions_text

UPGRADE = "upgrade"
DOWNGRADE = "downgrade"
MIXED = "mixed"
NONE = "none"

TX_SINGLE = "single"
TX_PER_STEP = "per-step"
TX_NONE = "none"


@dataclass
class PlanStep:
    revision: str
    direction: str
    from_revisions: tuple[str, ...]
    to_revisions: tuple[str, ...]
    doc: str
    script: str
    sha256: str
    origin: str
    sql: str
    renderable: bool
    render_error: str | None
    irreversible: bool
    classification: Classification

    @property
    def destructive(self) -> bool:
        return self.classification.destructive

    @property
    def needs_autocommit(self) -> bool:
        return self.classification.needs_autocommit

    @property
    def effects(self) -> list[Effect]:
        return self.classification.effects

    def to_dict(self, include_sql: bool = True) -> dict:
        c = self.classification
        d = {
            "revision": self.revision,
            "direction": self.direction,
            "from_revisions": list(self.from_revisions),
            "to_revisions": list(self.to_revisions),
            "doc": self.doc,
            "script": self.script,
            "script_sha256": self.sha256,
            "script_origin": self.origin,
            "destructive": self.destructive,
            "needs_autocommit": self.needs_autocommit,
            "autocommit_reasons": c.autocommit_reasons,
            "heavy_locks": c.heavy_locks,
            "effects": [e.to_dict() for e in c.effects],
            "renderable": self.renderable,
            "irreversible": self.irreversible,
            "reads_data": c.reads_data,
            "notes": c.notes,
        }
        if self.render_error:
            d["render_error"] = self.render_error
        if not self.renderable and not self.irreversible:
            # what it removes is recorded as it runs, before it commits, and the policy decided on that
            d["classified"] = "online"
        if include_sql:
            d["sql"] = self.sql
        return d


@dataclass
class Plan:
    target: str
    from_revisions: Heads
    to_revisions: Heads
    direction: str
    steps: list[PlanStep]
    version_table: str
    version_table_schema: str | None
    hash: str = ""
    transaction: str = TX_NONE
    warnings: list[str] = field(default_factory=list)
    # a plan that undoes upgrades: the readiness their runs recorded (dbrev.engine.rehearse.attach_recorded)
    recorded_readiness: list[dict] = field(default_factory=list)

    @property
    def destructive_steps(self) -> list[PlanStep]:
        return [s for s in self.steps if s.destructive]

    @property
    def is_noop(self) -> bool:
        return not self.steps

    @property
    def touched_tables(self) -> set[str]:
        out: set[str] = set()
        for s in self.steps:
            out |= s.classification.touched_tables
        return out

    @property
    def renamed_tables(self) -> set[str]:
        return {f"{e.schema}.{e.table}" if e.schema else e.table
                for s in self.steps for e in s.effects if e.kind == "rename" and e.table and not e.column}

    @property
    def declared_loss_tables(self) -> set[str]:
        return {f"{e.schema}.{e.table}" if e.schema else e.table
                for s in self.steps for e in s.effects if e.destructive and e.table}

    @property
    def from_database(self) -> list[str]:
        return [s.revision for s in self.steps if s.origin != "files"]

    def to_dict(self, include_sql: bool = True) -> dict:
        return {
            "target": self.target,
            "from_revisions": list(self.from_revisions),
            "to_revisions": list(self.to_revisions),
            "direction": self.direction,
            "transaction": self.transaction,
            "steps": [s.to_dict(include_sql) for s in self.steps],
            "destructive": [s.revision for s in self.destructive_steps],
            "scripts_from_database": self.from_database,
            "version_table": self.version_table,
            "version_table_schema": self.version_table_schema,
            "warnings": self.warnings,
            "hash": self.hash,
            **({"recorded_readiness": self.recorded_readiness} if self.recorded_readiness else {}),
        }


Renderer = Callable[[str, bool], Rendered]


def direction_of(undo: list[str], apply: list[str]) -> str:
    if undo and apply:
        return MIXED
    if undo:
        return DOWNGRADE
    if apply:
        return UPGRADE
    return NONE


def build_plan(graph: Graph, infos: dict[str, ScriptInfo], sources: dict[str, str], current: Iterable[str],
               target: Heads, render: Renderer, *, target_spec: str = "",
               version_table: str = "alembic_version", version_table_schema: str | None = None) -> Plan:
    """Plan the way from ``current`` to ``target`` (both resolved to full ids)."""
    current = tuple(sorted(current))
    graph.check_live(current)
    undo, apply = graph.diff(current, target)
    steps: list[PlanStep] = []
    for rev in undo:
        steps.append(make_step(graph, infos[rev], sources[rev], False, render, version_table))
    for rev in apply:
        steps.append(make_step(graph, infos[rev], sources[rev], True, render, version_table))
    _mark_created_in_plan(steps)
    plan = Plan(
        target=target_spec or revisions_text(target),
        from_revisions=current,
        to_revisions=tuple(sorted(target)),
        direction=direction_of(undo, apply),
        steps=steps,
        version_table=version_table,
        version_table_schema=version_table_schema,
    )
    if not steps:
        plan.transaction = TX_NONE
    elif any(s.needs_autocommit for s in steps):
        plan.transaction = TX_PER_STEP
        plan.warnings.append(
            "steps " + ", ".join(s.revision for s in steps if s.needs_autocommit)
            + " need autocommit: the run uses one transaction per step, so a failure after them "
              "is undone by running the inverse steps rather than by a transaction rollback")
    else:
        plan.transaction = TX_SINGLE
    for s in steps:
        if not s.renderable and not s.irreversible:
            plan.warnings.append(f"step {s.revision} ({s.direction}) cannot be rendered offline: "
                                 f"{s.render_error}; classified from its source, and online as it runs "
                                 f"(what it removes is checked against the policy before it commits)")
    plan.hash = plan_hash(plan)
    return plan


@dataclass
class StoredCopies:
    """The scripts the database keeps (copies stored when they were applied), sorted against the declared ones.

    ``usable``: copies of revisions no declared script defines (the way back after a file was removed);
    ``conflicts``: revisions whose declared script differs from the copy that was applied;
    ``corrupt``: copies that fail their own sha256 (ignored).
    """

    usable: list[dict] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [f"the stored copy of {r} fails its sha256 check and is ignored" for r in self.corrupt]


def sort_stored(declared: Mapping[str, ScriptInfo], rows: Iterable[dict]) -> StoredCopies:
    """The one rule for stored copies, used by every verb and by the run (pure: ``rows`` as
    :func:`dbrev.pg.state.stored_scripts` reads them)."""
    out = StoredCopies()
    for r in rows:
        if hashlib.sha256(r["source"].encode()).hexdigest() != r["sha256"]:
            out.corrupt.append(r["revision"])
            continue
        info = declared.get(r["revision"])
        if info is None:
            out.usable.append(r)
        elif info.sha256 != r["sha256"]:
            out.conflicts.append(r["revision"])
    return out


def check_conflicts(plan: Plan, conflicts: Iterable[str]) -> Plan:
    """A changed script warns; a plan that would run its downgrade is refused (ScriptConflict): the
    downgrade that undoes what was applied is the stored copy's, not the file's."""
    conflicts = list(conflicts)
    if conflicts:
        used = [s.revision for s in plan.steps if s.revision in conflicts and s.direction == DOWNGRADE]
        plan.warnings.append(f"scripts {', '.join(conflicts)} differ from the copies stored when they were applied")
        if used:
            raise ScriptConflict(
                f"the downgrade would run {', '.join(used)}, whose declared script differs from the one "
                f"that was applied (stored in the database)",
                hint="restore the original script, or remove the changed file so the stored copy is used")
    return plan


def _mark_created_in_plan(steps: list[PlanStep]) -> None:
    """A drop of what an earlier step of this plan created loses only the run's own data (e.g. a fresh
    install that creates, then replaces, a table): not destructive."""
    from dataclasses import replace

    tables: set[str] = set()
    columns: set[str] = set()
    for s in steps:
        c = s.classification
        for i, e in enumerate(c.effects):
            if not e.table:
                continue
            key = f"{e.schema}.{e.table}" if e.schema else e.table
            if key in tables or (e.column and f"{key}.{e.column}" in columns):
                c.effects[i] = replace(e, created_in_plan=True)
        tables |= c.created_tables
        columns |= c.created_columns


def make_step(graph: Graph, info: ScriptInfo, source: str, upgrade: bool, render: Renderer,
          version_table: str) -> PlanStep:
    rendered = render(info.revision, upgrade)
    cls = classify_sql(rendered.sql, version_table)
    if not rendered.ok:
        cls.merge(classify_source(source, "upgrade" if upgrade else "downgrade", version_table))
    else:
        src_cls = classify_source(source, "upgrade" if upgrade else "downgrade", version_table)
        cls.reads_data = src_cls.reads_data
        if src_cls.reads_data:
            cls.notes.append("reads data through the connection at run time: the offline SQL may "
                             "not show every statement")
    if not upgrade and rendered.ok and not rendered.sql.strip():
        up = render(info.revision, True)
        if up.ok and classify_sql(up.sql, version_table).statements:
            cls.notes.append("downgrade() does nothing while upgrade() changes the schema: "
                             "going back leaves the upgrade's changes in place")
    if upgrade:
        frm, to = info.down_revisions, (info.revision,)
    else:
        frm, to = (info.revision,), info.down_revisions
    return PlanStep(
        revision=info.revision, direction=UPGRADE if upgrade else DOWNGRADE,
        from_revisions=frm, to_revisions=to, doc=info.doc, script=info.name, sha256=info.sha256,
        origin=info.origin, sql=rendered.sql, renderable=rendered.ok, render_error=rendered.error,
        irreversible=rendered.irreversible, classification=cls,
    )


def plan_hash(plan: Plan) -> str:
    """sha256 over the range, the version table, each step's script content and SQL."""
    doc = {
        "from": list(plan.from_revisions),
        "to": list(plan.to_revisions),
        "version_table": [plan.version_table_schema, plan.version_table],
        "steps": [[s.revision, s.direction, s.sha256, s.sql] for s in plan.steps],
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def hash_matches(plan_hash_value: str, given: str | None, min_prefix: int = 12) -> bool:
    """An approval names a plan by its full hash or a prefix of at least 12 hex digits."""
    if not given:
        return False
    full = plan_hash_value.removeprefix("sha256:")
    g = given.strip().removeprefix("sha256:")
    return len(g) >= min_prefix and full.startswith(g)
