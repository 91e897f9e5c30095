"""Documentation and example files generated from dbrev's own sources.

``python -m dbrev_dev.docs [ROOT]`` (from a checkout) writes:

* ``docs/crd-reference.md``: the DatabaseRevision fields, from the descriptions, defaults and
  validation of :func:`dbrev.controller.crd.crd` (the one source of the CRD);
* the generated blocks of ``docs/operations.md``: the metrics (from :mod:`dbrev.controller.metrics`) and the
  alerts (from ``manifests/monitoring/prometheusrule.yaml``);
* ``examples/argocd/argocd-cm.yaml``: the Argo CD health check (``health.lua``, shipped in
  ``dbrev.controller``) as the ``argocd-cm`` key Argo CD reads (:mod:`dbrev.controller.argocd`);
* the migrations ConfigMaps of the Argo CD and Flux examples, from ``examples/migrations``.

``--check`` writes nothing and exits 1 naming what is stale (``tests/ship/test_docs.py`` runs it).
Without a checkout (this module is development tooling, not in the wheel):
``python -m dbrev.controller.argocd --health-lua`` prints the health check and
``python -m dbrev.controller.argocd --argocd-cm [NAMESPACE]`` prints an ``argocd-cm`` patch installing it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from dbrev.controller import crd as _crd
from dbrev.controller.argocd import ARGOCD_CM, GENERATED_NOTE, argocd_cm

CRD_REFERENCE = Path("docs") / "crd-reference.md"
OPERATIONS = Path("docs") / "operations.md"
PROMETHEUS_RULE = Path("manifests") / "monitoring" / "prometheusrule.yaml"
MIGRATIONS = Path("examples") / "migrations"
# Example folders that get a generated ConfigMap of examples/migrations, and its extra annotations.
MIGRATIONS_CONFIGMAPS = {
    Path("examples") / "argocd" / "shop" / "orders-migrations.yaml": {"argocd.argoproj.io/sync-wave": "-1"},
    Path("examples") / "flux" / "shop" / "database" / "orders-migrations.yaml": {},
}


# ---------------------------------------------------------------------------------------------
# Migrations ConfigMaps of the examples


def migrations_configmap(folder: Path, annotations: dict[str, str]) -> str:
    import yaml

    data = {p.name: p.read_text() for p in sorted(folder.glob("*.py"))}
    meta: dict = {"name": "orders-migrations", "labels": {"app.kubernetes.io/name": "orders",
                                                          "app.kubernetes.io/component": "migrations"}}
    if annotations:
        meta["annotations"] = dict(annotations)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}

    class _Literal(yaml.SafeDumper):
        pass

    def _str(dumper, value):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Literal.add_representer(str, _str)
    header = (f"# {GENERATED_NOTE.format(src=MIGRATIONS.as_posix() + '/')}\n"
              "# The Alembic version scripts, one key per file. In your repository, generate it from your\n"
              "# versions/ folder (kustomize configMapGenerator, or `kubectl create configmap orders-migrations\n"
              "# --from-file=versions/ --dry-run=client -o yaml`).\n")
    return header + yaml.dump(cm, Dumper=_Literal, sort_keys=False, width=120, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# CRD reference


def _md(text) -> str:
    """Table-cell prose: no line breaks, pipes escaped, <placeholders> not taken for HTML tags."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def _code(text) -> str:
    return "`" + str(text).replace("|", "\\|").replace("\n", " ") + "`"


def _type(schema: dict) -> str:
    t = schema.get("type", "object")
    if t == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if schema.get("format"):
        return f"{t} ({schema['format']})"
    return t


def _validation(schema: dict, required: bool) -> str:
    out = []
    if required:
        out.append("**required**")
    if "enum" in schema:
        out.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    if "pattern" in schema:
        out.append("pattern " + _code(schema["pattern"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in schema:
            out.append(f"{word} {schema[key]}")
    for key, word in (("minLength", "length ≥"), ("maxLength", "length ≤"), ("minItems", "items ≥"),
                      ("maxItems", "items ≤")):
        if key in schema:
            out.append(f"{word} {schema[key]}")
    if schema.get("x-kubernetes-list-type"):
        lt = schema["x-kubernetes-list-type"]
        keys = schema.get("x-kubernetes-list-map-keys")
        out.append(f"list-type {lt}" + (f" (keys: {', '.join(keys)})" if keys else ""))
    for rule in schema.get("x-kubernetes-validations") or []:
        out.append(f"CEL {_code(rule['rule'])}: {_md(rule.get('message', ''))}")
    return "; ".join(out)


def _default(schema: dict) -> str:
    if "default" not in schema:
        return ""
    v = schema["default"]
    return _code(v if isinstance(v, str) else json.dumps(v))


def _rows(schema: dict, path: str, required: bool = False):
    yield path, schema, required
    req = set(schema.get("required") or [])
    for name, sub in (schema.get("properties") or {}).items():
        yield from _rows(sub, f"{path}.{name}", name in req)
    if "items" in schema and (schema["items"].get("properties")):
        item = schema["items"]
        req_items = set(item.get("required") or [])
        for name, sub in item["properties"].items():
            yield from _rows(sub, f"{path}[].{name}", name in req_items)


def _table(schema: dict, root: str, root_required: bool) -> list[str]:
    lines = ["| Field | Type | Default | Description | Validation |", "|---|---|---|---|---|"]
    for path, s, required in _rows(schema, root, root_required):
        lines.append(f"| `{path}` | {_type(s)} | {_default(s)} | {_md(s.get('description', ''))} | "
                     f"{_validation(s, required)} |")
    return lines


def crd_reference() -> str:
    c = _crd.crd()
    names = c["spec"]["names"]
    version = c["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    lines = [
        "<!-- " + GENERATED_NOTE.format(src="operator/dbrev/controller/crd.py") + " -->",
        "# DatabaseRevision reference",
        "",
        _md(root["description"]),
        "",
        "| | |",
        "|---|---|",
        f"| API version | `{c['spec']['group']}/{version['name']}` |",
        f"| Kind | `{names['kind']}` (list: `{names['listKind']}`) |",
        f"| Scope | {c['spec']['scope']} |",
        f"| Names | `{names['plural']}`, `{names['singular']}`, short names "
        + ", ".join(f"`{n}`" for n in names.get("shortNames", [])) + ", categories "
        + ", ".join(f"`{n}`" for n in names.get("categories", [])) + " |",
        f"| Subresources | {', '.join(f'`{k}`' for k in version.get('subresources', {}))} |",
        "",
        "`kubectl explain databaserevision.spec` shows the same descriptions.",
        "",
        "## Columns of `kubectl get dbrev`",
        "",
        "| Column | JSONPath | Shown |",
        "|---|---|---|",
    ]
    for col in version.get("additionalPrinterColumns", []):
        shown = "`-o wide`" if col.get("priority") else "always"
        lines.append(f"| {col['name']} | `{_md(col['jsonPath'])}` | {shown} |")
    lines += ["", "## spec", "", _md(root["properties"]["spec"]["description"]), ""]
    lines += _table(root["properties"]["spec"], "spec", "spec" in (root.get("required") or []))
    lines += ["", "## status", "", _md(root["properties"]["status"]["description"]),
              "Written only by the operator (status subresource). The condition types and reasons, and what to",
              "do about each reason: [operations.md](operations.md#troubleshooting-by-condition-reason).", ""]
    lines += _table(root["properties"]["status"], "status", False)
    lines += ["", "## Annotations", "", "| Annotation | Meaning |", "|---|---|",
              f"| `{_crd.APPROVE_ANNOTATION}` | The plan hash (`status.plan.hash`) a human approved; only that exact "
              "plan may run (policy `RequireApproval`). `dbrev approve NAME` sets it. |",
              f"| `{_crd.RECONCILE_ANNOTATION}` | Set by dbrev on a DatabaseRevision when one of its ConfigMaps or "
              "its Secret changes, to trigger a pass. |", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# docs/operations.md: metrics and alerts blocks


def metrics_table() -> str:
    from dbrev.controller import metrics as M

    families = {m.name: m for m in M.REGISTRY.collect()}
    lines = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for name in M.NAMES:
        collector = M.REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 (prometheus_client has no public map)
        fam = families.get(name) or families.get(name.removesuffix("_total"))
        if collector is None or fam is None:
            raise RuntimeError(f"metric {name} is listed in metrics.NAMES but not registered")
        labels = ", ".join(f"`{x}`" for x in getattr(collector, "_labelnames", ()))
        kind = fam.type
        lines.append(f"| `{name}` | {kind} | {labels} | {_md(fam.documentation)} |")
    return "\n".join(lines)


def alerts_table(root: Path) -> str:
    import yaml

    rule = yaml.safe_load((root / PROMETHEUS_RULE).read_text())
    lines = ["| Alert | Severity | Fires when | For |", "|---|---|---|---|"]
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            if "alert" not in r:
                continue
            expr = " ".join(r["expr"].split())
            lines.append(f"| [{r['alert']}](#{r['alert'].lower()}) | {r['labels'].get('severity', '')} | "
                         f"{_code(expr)} | {r.get('for', '—')} |")
    return "\n".join(lines)


def _replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- generated:{name}:begin -->", f"<!-- generated:{name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise RuntimeError(f"{OPERATIONS} lacks the markers {begin} ... {end}")
    note = f"<!-- {GENERATED_NOTE.format(src=_BLOCK_SOURCES[name])} -->"
    return pattern.sub(lambda _: f"{begin}\n{note}\n\n{body}\n\n{end}", text)


_BLOCK_SOURCES = {"metrics": "operator/dbrev/controller/metrics.py", "alerts": PROMETHEUS_RULE.as_posix()}


def operations(root: Path) -> str:
    text = (root / OPERATIONS).read_text()
    text = _replace_block(text, "metrics", metrics_table())
    return _replace_block(text, "alerts", alerts_table(root))


# ---------------------------------------------------------------------------------------------


def generated(root: Path) -> dict[Path, str]:
    """Every generated file under ``root`` (a checkout) -> its content."""
    out = {CRD_REFERENCE: crd_reference() + "\n", OPERATIONS: operations(root), ARGOCD_CM: argocd_cm()}
    for path, meta_annotations in MIGRATIONS_CONFIGMAPS.items():
        out[path] = migrations_configmap(root / MIGRATIONS, meta_annotations)
    return out


def stale(root: Path) -> list[Path]:
    return [p for p, text in generated(root).items()
            if not (root / p).is_file() or (root / p).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dbrev_dev.docs", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=".", help="the checkout (default: the current folder)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is stale")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.check:
        bad = stale(root)
        for p in bad:
            print(f"stale: {p} (run `python -m dbrev_dev.docs`)", file=sys.stderr)
        return 1 if bad else 0
    for path, text in generated(root).items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
