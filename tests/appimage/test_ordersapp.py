"""The test application of the image tests (tests/appimage/ordersapp), on the host: its history runs
under plain Alembic as its team runs it (``alembic upgrade head`` in its folder, the URL in
$DATABASE_URL), and dbrev running the same script location through the same env.py gives the same
schema — constraint names from env.py's naming convention, the app's column types, its seeded data.
What the node tests (tests/operator/test_appimage_node.py) then do in the images, here in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appschema import APP, BROKEN, BROKEN_REV, CONVENTION_NAMES, REVS, V1_HEAD, V2_HEAD, constraint_names, counts, \
    diff, schema
from clihelp import dbrev
from dbhelp import heads, q

ALEMBIC = Path(sys.executable).with_name("alembic")


def alembic(url: str, *args: str, cwd: Path = APP) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DBREV_DATABASE_URL", None)
    return subprocess.run([str(ALEMBIC), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def app_copy(tmp_path: Path, n: int, broken: bool = False) -> Path:
    """The app's folder with its first ``n`` version scripts (an image tag's /app)."""
    dest = tmp_path / f"app{n}{'b' if broken else ''}"
    shutil.copytree(APP, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for p in sorted((dest / "migrations" / "versions").glob("*.py"))[n:]:
        p.unlink()
    if broken:
        for p in BROKEN.glob("*.py"):
            shutil.copy(p, dest / "migrations" / "versions" / p.name)
    return dest


def apply(url: str, loc: Path, target: str, *flags: str):
    # no --pythonpath: alembic.ini's prepend_sys_path (the folder above env.py) makes ordersapp importable
    return dbrev("apply", "--migrations", str(loc / "migrations"), "-r", target, "--timeout", "60", *flags, url=url,
                 timeout=120)


def test_dbrev_through_the_apps_env_py_gives_the_schema_plain_alembic_gives(database_url, second_database_url):
    p = alembic(second_database_url, "upgrade", "head")
    assert p.returncode == 0, p.stderr
    assert heads(second_database_url) == [V2_HEAD]
    r = apply(database_url, APP, "head")
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.json["result"] == "applied" and heads(database_url) == [V2_HEAD]
    assert diff(schema(second_database_url), schema(database_url)) == {}
    assert set(CONVENTION_NAMES) <= constraint_names(database_url)  # env.py's naming convention ran
    assert {"ck_customer_country_upper", "uq_shipment_order_id"} <= constraint_names(database_url)
    # the custom type bound the seed's Decimals as cents, in both
    for url in (database_url, second_database_url):
        assert q(url, "SELECT email, balance, country FROM customer ORDER BY id")[0] == ("ada@example.org", 1250, "DE")
        assert counts(url) == {"customer": 3, "orders": 4, "shipment": 0}


def test_an_older_copy_downgrades_from_the_stored_scripts_and_the_broken_step_rolls_back(database_url, tmp_path):
    v1, broken = app_copy(tmp_path, 3), app_copy(tmp_path, 5, broken=True)
    r = apply(database_url, APP, "head")
    assert r.code == 0, r.stderr[-3000:]
    before = counts(database_url)
    at_v2 = schema(database_url)

    r = apply(database_url, broken, "head")
    assert r.code != 0 and r.json["result"] in ("rolled_back", "failed"), r.stdout[-3000:]
    assert heads(database_url) == [V2_HEAD] and diff(schema(database_url), at_v2) == {}

    # v1's folder lacks scripts 4 and 5: the downgrade runs dbrev's stored copies (which import ordersapp)
    r = apply(database_url, v1, V1_HEAD, "--allow-downgrade", "--allow-data-loss")
    assert r.code == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert heads(database_url) == [V1_HEAD]
    assert counts(database_url) == {**before, "shipment": None}
    assert "country" not in {c[2] for c in schema(database_url)["columns"] if c[1] == "customer"}
    assert REVS[:3] == ["c0de00000001", "c0de00000002", "c0de00000003"] and BROKEN_REV not in REVS


@pytest.fixture
def second_database_url(pg_admin_url):
    from dbrev.pg.ephemeral import create_database, drop_database

    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url.rsplit("/", 1)[1])


def test_each_image_tag_carries_its_scripts_and_dbrev_the_documented_way():
    from dbrev_dev.envtest import images as I

    def scripts(tag):
        return sorted(k.rsplit("/", 1)[1].split("_", 1)[0] for k in I.app_files(tag) if k.startswith("migrations/versions/"))
    assert scripts(f"{I.ORDERSAPP_IMAGE}:v1") == REVS[:3] == scripts(f"{I.NODBREV_IMAGE}:v1")
    assert scripts(f"{I.ORDERSAPP_IMAGE}:v2") == REVS
    assert scripts(f"{I.ORDERSAPP_IMAGE}:broken") == REVS + [BROKEN_REV]
    files = I.app_files(f"{I.ORDERSAPP_IMAGE}:v2")
    assert {"alembic.ini", "migrations/env.py", "ordersapp/models.py", "ordersapp/types.py"} <= set(files)
    assert not [k for k in files if "__pycache__" in k or k.endswith(".pyc")]
    # the lean install, the one line docs/install.md gives; none in the image without dbrev
    assert "\nRUN pip install dbrev\n" in I.app_deps_containerfile(True)
    assert "dbrev" not in I.app_deps_containerfile(False).replace(I.BASE_IMAGE, "")
    assert "[operator]" not in I.app_deps_containerfile(True)
    assert I.APP_MIGRATIONS == "/app/migrations" and (APP / "migrations" / "env.py").is_file()
