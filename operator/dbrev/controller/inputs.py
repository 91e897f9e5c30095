"""What a pass needs from the cluster: the database URL (from a Secret) and the scripts (from ConfigMaps).

Errors carry condition reasons and never the Secret's content.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..engine.extras import require_operator

require_operator(__name__)  # before kopf/kubernetes: a clear error on a lean install

from kubernetes.client.rest import ApiException

from ..core import conditions as C
from ..core.errors import BadInput, DatabaseUnavailable, DbrevError, ScriptError
from ..core.redact import register_secret
from ..engine.scripts import files_sha256, materialize
from .spec import Spec


class InputError(BadInput):
    pass


class KubernetesUnavailable(DbrevError):
    """The Kubernetes API did not answer a read (5xx, timeout, connection refused): clears by itself."""

    exit_code = DatabaseUnavailable.exit_code
    reason = C.KUBERNETES_UNAVAILABLE
    transient = True


@dataclass(frozen=True)
class Inputs:
    url: str
    migrations: Path | None  # ConfigMap scripts materialized (None: the scripts are in spec.migrations.image)
    scripts_hash: str  # over every script's name and content (an image: its name and path)
    secret_version: str  # resourceVersion of the Secret(s) used
    database_key: str  # identifies the history (URL-based here; the handler replaces it by the server's identity)
    configmap_files: tuple[tuple[str, tuple[str, ...]], ...] = ()  # each ConfigMap's script keys (a Job mounts them)

    @property
    def inputs_hash(self) -> str:
        return "sha256:" + hashlib.sha256(f"{self.scripts_hash}|{self.secret_version}|{self.database_key}"
                                          .encode()).hexdigest()[:32]


def scripts_root() -> Path:
    root = Path(os.environ.get("DBREV_SCRIPTS_DIR") or Path(tempfile.gettempdir()) / "dbrev-scripts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def read_error(e: ApiException, kind: str, namespace: str, name: str) -> DbrevError:
    """A failed read of a Secret or ConfigMap as the error a user sees: not found, forbidden, or the API being away."""
    if e.status == 404:
        reason = C.SECRET_NOT_FOUND if kind == "Secret" else C.CONFIGMAP_NOT_FOUND
        return InputError(f"{kind} {namespace}/{name} not found", reason=reason)
    if e.status == 403:
        return InputError(f"dbrev may not read {kind} {namespace}/{name} (403 Forbidden)", reason=C.PERMISSION_DENIED,
                          hint="grant the operator's ServiceAccount get on it (see manifests/)")
    return KubernetesUnavailable(f"reading {kind} {namespace}/{name} from the Kubernetes API failed: HTTP {e.status}",
                                 hint="the API server is unavailable or overloaded; dbrev retries")


def _read(what, kind: str, namespace: str, name: str):
    """One API read: HTTP errors and lost connections sorted into what a user must fix and what clears."""
    from urllib3.exceptions import HTTPError

    try:
        return what(name, namespace)
    except ApiException as e:
        raise read_error(e, kind, namespace, name) from None
    except (HTTPError, OSError) as e:
        raise KubernetesUnavailable(f"reading {kind} {namespace}/{name}: the Kubernetes API did not answer "
                                    f"({type(e).__name__})", hint="dbrev retries") from None


def _secret_value(core, namespace: str, name: str, key: str) -> tuple[str, str]:
    sec = _read(core.read_namespaced_secret, "Secret", namespace, name)
    data = sec.data or {}
    if key not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise InputError(f"Secret {namespace}/{name} has no key {key!r} (its keys: {keys})", reason=C.SECRET_NOT_FOUND)
    try:
        value = base64.b64decode(data[key]).decode("utf-8").strip()
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"Secret {namespace}/{name} key {key!r} is not UTF-8 text",
                         reason=C.INVALID_DATABASE_URL) from None
    register_secret(value)
    return value, sec.metadata.resource_version or ""


def read_url(core, namespace: str, spec: Spec) -> tuple[str, str]:
    """(database URL, Secret resourceVersion)."""
    from sqlalchemy.engine import URL

    if spec.url_secret:
        url, version = _secret_value(core, namespace, spec.url_secret.name, spec.url_secret.key)
        if not url:
            raise InputError(f"Secret {namespace}/{spec.url_secret.name} key {spec.url_secret.key!r} is empty",
                             reason=C.INVALID_DATABASE_URL)
        return url, version
    cr = spec.credentials
    password, version = _secret_value(core, namespace, cr.password.name, cr.password.key)
    query = {"sslmode": cr.ssl_mode} if cr.ssl_mode else {}
    url = URL.create("postgresql+psycopg", username=cr.user, password=password, host=cr.host, port=cr.port,
                     database=cr.database, query=query)
    return url.render_as_string(hide_password=False), version


def read_scripts(core, namespace: str, spec: Spec) -> tuple[Path, str, tuple]:
    """Materialize every ``*.py`` key of the ConfigMaps into a folder; (folder, content hash, each ConfigMap's
    script keys)."""
    files: dict[str, str] = {}
    origin: dict[str, str] = {}
    for cm_name in spec.configmaps:
        cm = _read(core.read_namespaced_config_map, "ConfigMap", namespace, cm_name)
        for key, text in sorted((cm.data or {}).items()):
            if not key.endswith(".py"):
                continue
            if key in files:
                raise ScriptError(f"script {key} appears in both ConfigMap {origin[key]} and {cm_name}", path=key)
            files[key] = text
            origin[key] = cm_name
        for key in (cm.binary_data or {}):
            if key.endswith(".py"):
                raise ScriptError(f"script {key} in ConfigMap {cm_name} is binaryData; store scripts as data",
                                  path=key)
    if not files:
        raise InputError(f"ConfigMap(s) {', '.join(spec.configmaps)} hold no *.py scripts",
                         reason=C.INVALID_SCRIPTS)
    by_cm = tuple((cm, tuple(sorted(k for k, o in origin.items() if o == cm))) for cm in spec.configmaps)
    return materialize(files, scripts_root()), files_sha256(files), by_cm


def image_hash(spec: Spec) -> str:
    """The inputs an image brings: its name (a new tag is new scripts) and where the migrations are in it."""
    img = spec.image
    return hashlib.sha256(f"image\0{img.name}\0{img.path}".encode()).hexdigest()


def identity_key(identity: str) -> str:
    """The databaseKey of a server identity (:func:`dbrev.pg.db.database_identity`)."""
    return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()[:24]


def database_key(url: str, spec: Spec) -> str:
    """host:port/db + version table, hashed: the fallback when the server's identity cannot be read."""
    from ..pg.db import normalize_url

    try:
        u = normalize_url(url)
    except DbrevError:
        return ""
    ident = f"{(u.host or '').lower()}:{u.port or 5432}/{u.database}|{spec.version_table_schema or 'public'}." \
            f"{spec.version_table}"
    return "sha256:" + hashlib.sha256(ident.encode()).hexdigest()[:24]


def gather(core, namespace: str, spec: Spec) -> Inputs:
    url, secret_version = read_url(core, namespace, spec)
    if spec.image is not None:
        return Inputs(url, None, image_hash(spec), secret_version, database_key(url, spec))
    folder, scripts_hash, by_cm = read_scripts(core, namespace, spec)
    return Inputs(url, folder, scripts_hash, secret_version, database_key(url, spec), by_cm)
