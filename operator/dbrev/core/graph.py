"""The revision graph as plain data, and target resolution over it.

Pure functions only: no files, no database, no Alembic module loading.  The
graph is built from :class:`Node` records (what each script declares), so
the operator and tests can reason about histories without importing them.

Direction is decided here, from ancestor sets, rather than by Alembic's
``upgrade``/``downgrade`` verbs: ``upgrade <an ancestor>`` silently does
nothing in Alembic, and ``downgrade -1`` with several heads picks one
arbitrarily.  With ``closure(x)`` = x and everything it needs:

* steps to undo = closure(current) - closure(target), newest first;
* steps to apply = closure(target) - closure(current), oldest first;

both in the order Alembic itself would run them (:meth:`Graph.alembic_order`).

This handles plain upgrades and downgrades, merges (downgrading to one parent
of a merge also unwinds the other branch, so the database ends exactly at the
declared revision) and moves across branches (undo one, apply the other).
"""

from __future__ import annotations

import difflib
import heapq
import re
from dataclasses import dataclass, field
from typing import Iterable

from .errors import AmbiguousRevision, MultipleHeads, RevisionNotFound, ScriptError, UnknownDatabaseRevision

Heads = tuple[str, ...]


@dataclass(frozen=True)
class Node:
    id: str
    parents: tuple[str, ...] = ()  # down_revision(s)
    dependencies: tuple[str, ...] = ()  # depends_on
    branch_labels: tuple[str, ...] = ()
    doc: str = ""


@dataclass
class Graph:
    nodes: dict[str, Node]
    children: dict[str, tuple[str, ...]] = field(init=False)

    def __post_init__(self) -> None:
        kids: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for p in node.parents:
                if p in kids:
                    kids[p].append(node.id)
        self.children = {k: tuple(sorted(v)) for k, v in kids.items()}
        self._check()

    # -- construction checks -------------------------------------------------
    def _check(self) -> None:
        for node in self.nodes.values():
            for ref in node.parents + node.dependencies:
                if ref not in self.nodes:
                    # resolve a dependency given as a branch label
                    if ref in node.dependencies and self.label_owner(ref):
                        continue
                    raise ScriptError(f"revision {node.id} refers to {ref!r}, which no script defines",
                                      details={"revision": node.id, "missing": ref})
        self.topological(self.nodes)  # raises on cycles
        seen: dict[str, str] = {}
        for node in self.nodes.values():
            for label in node.branch_labels:
                if label in seen:
                    raise ScriptError(f"branch label {label!r} is declared by both {seen[label]} and {node.id}")
                if label in self.nodes:
                    raise ScriptError(f"branch label {label!r} of {node.id} collides with a revision id")
                seen[label] = node.id

    def label_owner(self, label: str) -> str | None:
        for node in self.nodes.values():
            if label in node.branch_labels:
                return node.id
        return None

    # -- shape ---------------------------------------------------------------
    @property
    def heads(self) -> Heads:
        return tuple(sorted(n for n, kids in self.children.items() if not kids))

    @property
    def bases(self) -> Heads:
        return tuple(sorted(n for n, node in self.nodes.items() if not node.parents))

    def _deps(self, node: Node) -> tuple[str, ...]:
        out = []
        for d in node.dependencies:
            out.append(d if d in self.nodes else self.label_owner(d))
        return tuple(x for x in out if x)

    def requires(self, rev: str) -> tuple[str, ...]:
        node = self.nodes[rev]
        return node.parents + self._deps(node)

    def closure(self, revs: Iterable[str]) -> set[str]:
        """The revisions and everything they need (parents and dependencies)."""
        out: set[str] = set()
        stack = list(revs)
        while stack:
            r = stack.pop()
            if r in out:
                continue
            out.add(r)
            stack.extend(self.requires(r))
        return out

    def descendants(self, rev: str) -> set[str]:
        out: set[str] = set()
        stack = [rev]
        while stack:
            r = stack.pop()
            for c in self.children.get(r, ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def topological(self, subset: Iterable[str]) -> list[str]:
        """Order ``subset`` so every revision comes after what it requires (ties by id)."""
        sub = set(subset)
        indeg = {r: 0 for r in sub}
        dependents: dict[str, list[str]] = {r: [] for r in sub}
        for r in sub:
            for req in self.requires(r) if r in self.nodes else ():
                if req in sub:
                    indeg[r] += 1
                    dependents[req].append(r)
        ready = [r for r, d in indeg.items() if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            r = heapq.heappop(ready)
            order.append(r)
            for d in dependents[r]:
                indeg[d] -= 1
                if indeg[d] == 0:
                    heapq.heappush(ready, d)
        if len(order) != len(sub):
            cyc = sorted(r for r, d in indeg.items() if d > 0)
            raise ScriptError(f"the revisions form a cycle: {', '.join(cyc)}")
        return order

    def normalize_heads(self, revs: Iterable[str]) -> Heads:
        """The minimal set of revisions whose closure equals that of ``revs``."""
        revs = set(revs)
        implied: set[str] = set()
        for r in revs:
            implied |= self.closure(self.requires(r))
        return tuple(sorted(revs - implied))

    # -- diffs ---------------------------------------------------------------
    def diff(self, current: Iterable[str], target: Iterable[str]) -> tuple[list[str], list[str]]:
        """(revisions to undo newest first, revisions to apply oldest first).

        The sets come from ancestor closures; the order within each is Alembic's
        (:meth:`alembic_order`), so parallel branches run in the order ``alembic
        upgrade``/``downgrade`` runs them (column order, for one, depends on it).
        """
        current, target = tuple(current), tuple(target)
        have = self.closure(current)
        want = self.closure(target)
        undo = self.alembic_order(have - want, current)
        # an upgrade walks down from the targets, as Alembic resolves them: a head another
        # revision depends_on is not one of its ``heads`` (RevisionMap._real_heads)
        apply = list(reversed(self.alembic_order(want - have, self.normalize_heads(target))))
        return undo, apply

    def _normalized_down(self, rev: str) -> tuple[str, tuple[str, ...]]:
        """Alembic's ``_normalized_down_revisions`` and ``_normalized_resolved_dependencies``.

        A dependency is dropped when an ancestor (by down_revision alone) declares it too.
        """
        node = self.nodes[rev]
        deps = list(dict.fromkeys(self._deps(node)))
        if deps:
            seen: set[str] = set()
            stack = list(node.parents)
            while stack:
                r = stack.pop()
                if r in seen or r not in self.nodes:
                    continue
                seen.add(r)
                declared = set(self._deps(self.nodes[r]))
                deps = [d for d in deps if d not in declared]
                stack.extend(self.nodes[r].parents)
        return tuple(dict.fromkeys(node.parents + tuple(deps))), tuple(deps)

    def alembic_order(self, revisions: Iterable[str], heads: Iterable[str]) -> list[str]:
        """``revisions`` newest first, exactly as Alembic's ``RevisionMap._topological_sort``.

        Alembic walks down from the given ``heads`` (the current heads for a downgrade,
        the targets for an upgrade, whose step list is this reversed), one branch at a
        time, switching to another head whenever the candidate is an ancestor of it; ties
        follow the order the scripts were loaded in (``self.nodes`` insertion order, which
        is Alembic's file order).  Reproduced over plain data so this module stays free of
        Alembic; tests/core/test_graph_order.py compares it with Alembic on generated graphs.
        """
        todo = set(revisions)
        if not todo:
            return []
        index = {r: i for i, r in enumerate(self.nodes)}
        current_heads = sorted({h for h in heads if h in todo}, key=index.__getitem__)
        ancestors = [self.closure([h]) for h in current_heads]
        output: list[str] = []
        idx = 0
        while current_heads:
            candidate = current_heads[idx]
            for j, anc in enumerate(ancestors):
                if j != idx and candidate in anc:
                    idx = j  # another head depends on the candidate: walk that one first
                    break
            else:
                if candidate in todo:
                    output.append(candidate)
                    todo.remove(candidate)
                down, deps = self._normalized_down(candidate)
                to_add = [r for r in down if r in todo and r not in current_heads]
                if not to_add:
                    del current_heads[idx]
                    del ancestors[idx]
                    idx = max(idx - 1, 0)
                elif not deps and len(self.nodes[candidate].parents) == 1:
                    current_heads[idx] = to_add[0]
                    ancestors[idx].discard(candidate)
                else:
                    current_heads[idx] = to_add[0]
                    current_heads.extend(to_add[1:])
                    ancestors[idx] = self.closure([to_add[0]])
                    ancestors.extend(self.closure([h]) for h in to_add[1:])
        if todo:  # not reachable from the heads given (Alembic asserts this never happens)
            output.extend(reversed(self.topological(todo)))
        return output

    def same_state(self, a: Iterable[str], b: Iterable[str]) -> bool:
        return self.closure(a) == self.closure(b)

    def check_live(self, live: Iterable[str]) -> None:
        unknown = sorted(r for r in live if r not in self.nodes)
        if unknown:
            raise UnknownDatabaseRevision(
                f"the database is at revision {', '.join(unknown)}, which none of the scripts defines",
                hint=("supply the script(s) for that revision (a newer migrations folder or "
                      "ConfigMap); dbrev also keeps the scripts it applied in the database and "
                      "uses them when present. If the version table is wrong, fix it with "
                      "`alembic stamp` after checking the schema by hand"),
                details={"unknown": unknown},
            )

    # -- resolution ----------------------------------------------------------
    def resolve(self, target: str, current: Iterable[str] = ()) -> Heads:
        """Turn a user's target into the set of revisions the database should be at.

        Accepts: ``base``; ``head`` (the single head); ``heads``; a full id or
        unique prefix; a branch label; ``X@head`` (the head above X or above
        the branch labelled X); ``-N`` / ``+N`` relative to the current
        revision; ``X-N`` / ``X+N`` relative to X; comma-separated lists.
        """
        current = tuple(current)
        target = (target or "").strip()
        if not target:
            raise RevisionNotFound("no target revision given", hint="use a revision id, head, heads or base")
        if "," in target:
            out: set[str] = set()
            for part in target.split(","):
                out.update(self.resolve(part, current))
            return self.normalize_heads(out)
        if target == "base":
            return ()
        if target == "heads":
            return self.heads
        if target == "head":
            heads = self.heads
            if len(heads) > 1:
                raise MultipleHeads(
                    f"'head' is ambiguous: the scripts have {len(heads)} heads ({', '.join(heads)})",
                    hint="merge them with `alembic merge`, or target 'heads' or one head explicitly",
                    details={"heads": list(heads)})
            return heads
        m = re.fullmatch(r"(?P<base>.*?)(?P<sign>[+-])(?P<n>\d+)", target)
        if m:
            return self._relative(m.group("base"), m.group("sign"), int(m.group("n")), current)
        if target.endswith("@head"):
            anchor = self._lookup(target[: -len("@head")], allow_label=True)
            above = sorted(r for r in self.descendants(anchor) | {anchor} if not self.children[r])
            if len(above) != 1:
                raise MultipleHeads(f"{target!r} is ambiguous: heads above it are {', '.join(above)}",
                                    details={"heads": above})
            return (above[0],)
        if target.endswith("@base"):
            anchor = self._lookup(target[: -len("@base")], allow_label=True)
            return self.normalize_heads(self.nodes[anchor].parents)
        return (self._lookup(target, allow_label=True),)

    def _relative(self, base: str, sign: str, n: int, current: Heads) -> Heads:
        if base in ("", "current"):
            if len(current) != 1:
                what = f"revisions {', '.join(current)}" if current else "no revision (empty)"
                if not current and sign == "+":
                    start = None
                else:
                    raise AmbiguousRevision(
                        f"a relative target needs exactly one current revision; the database is at {what}",
                        hint="name the target revision explicitly")
            else:
                start = current[0]
        elif base in ("head", "base"):
            start = self.resolve(base, current)[0] if self.resolve(base, current) else None
        else:
            start = self._lookup(base, allow_label=True)
        rev = start
        for i in range(n):
            if sign == "-":
                if rev is None:
                    raise RevisionNotFound(f"cannot go {n} step(s) down: base reached after {i}")
                parents = self.nodes[rev].parents
                if len(parents) > 1:
                    raise AmbiguousRevision(
                        f"cannot go {n} step(s) down from {start}: {rev} is a merge of {', '.join(parents)}",
                        hint="name the target revision explicitly")
                rev = parents[0] if parents else None
            else:
                nxt = self.children[rev] if rev else self.bases
                if not nxt:
                    raise RevisionNotFound(f"cannot go {n} step(s) up from {start or 'base'}: "
                                           f"a head was reached after {i}")
                if len(nxt) > 1:
                    raise AmbiguousRevision(
                        f"cannot go up from {rev or 'base'}: it branches into {', '.join(nxt)}",
                        hint="name the target revision explicitly")
                rev = nxt[0]
        return (rev,) if rev else ()

    def _lookup(self, ident: str, allow_label: bool = False) -> str:
        if ident in self.nodes:
            return ident
        if allow_label:
            owner = self.label_owner(ident)
            if owner:
                return owner
        matches = sorted(r for r in self.nodes if r.startswith(ident))
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousRevision(
                f"revision prefix {ident!r} is ambiguous: it matches {', '.join(matches)}",
                hint="use more characters of the id", details={"matches": matches})
        near = difflib.get_close_matches(ident, list(self.nodes), n=3, cutoff=0.4)
        near += [r for r in sorted(self.nodes) if r[:2] == ident[:2] and r not in near][: 3 - len(near)]
        hint = f"nearest ids: {', '.join(near)}" if near else "run `dbrev history` to list the revisions"
        raise RevisionNotFound(
            f"revision {ident!r} not found among the {len(self.nodes)} scripts",
            hint=hint, details={"nearest": near})


def graph_from_nodes(nodes: Iterable[Node]) -> Graph:
    table: dict[str, Node] = {}
    for n in nodes:
        if n.id in table:
            raise ScriptError(f"revision id {n.id} is defined twice")
        table[n.id] = n
    return Graph(table)
