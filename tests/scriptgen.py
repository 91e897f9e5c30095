"""Write small Alembic version scripts for tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_script(folder: Path, rev: str, down, upgrade: str = "pass", downgrade: str = "pass", *,
                 doc: str | None = None, extra: str = "", name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    down_src = repr(down) if not isinstance(down, (list, tuple)) else repr(tuple(down))
    body = f'''"""{doc or 'revision ' + rev}"""
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down_src}
branch_labels = None
depends_on = None
{extra}

def upgrade():
{textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    ")}


def downgrade():
{textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    ")}
'''
    path = folder / (name or f"{rev}_{(doc or 'rev').replace(' ', '_')[:20]}.py")
    path.write_text(body)
    return path


def linear_history(folder: Path, n: int, prefix: str = "r") -> list[str]:
    """n revisions, each creating table t<i> with a row, downgrade drops it."""
    revs = []
    down = None
    for i in range(1, n + 1):
        rev = f"{prefix}{i:03d}aaaa"
        write_script(folder, rev, down,
                     f'op.create_table("t{i}", sa.Column("id", sa.Integer, primary_key=True))\n'
                     f'op.execute("INSERT INTO t{i} DEFAULT VALUES")',
                     f'op.drop_table("t{i}")', doc=f"create t{i}")
        revs.append(rev)
        down = rev
    return revs
