"""The health gate's core (pure): is the rollout after a schema change healthy, and how to undo it.

Issue 13 §1.  Decisions over the objects the API server returns (plain dicts), no I/O:

* :func:`workload_health`: one Deployment or StatefulSet (and the pods of its new revision):
  ``healthy`` when the new generation is observed and every updated replica is available;
  ``failed`` when the rollout reports ``ProgressDeadlineExceeded`` or a pod of the new revision
  cannot run (crash loop, image pull, container config); ``progressing`` otherwise;
* :func:`gate`: all the named workloads over the window: passed, waiting, or failed (a failure,
  or the window passing while any workload is not healthy, e.g. pods Pending);
* :func:`deployment_undo` / :func:`statefulset_undo`: what ``kubectl rollout undo`` does, as a
  patch: the previous ReplicaSet's pod template (without ``pod-template-hash``), or the previous
  ControllerRevision's stored patch.

* :func:`begin` / :func:`conclude`: the ``status.healthGate`` record and the outcome.

The shell at the end (:func:`observe`) reads the workloads, their ReplicaSets and pods; the
operator's timer (``handlers._check``) calls it and :func:`gate` on every tick while a gate watches.
``onFailure: Rollback`` (undo the workloads, then the schema) is not wired yet: the undo patches are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

HEALTHY, PROGRESSING, FAILED = "healthy", "progressing", "failed"
PASSED, WAITING = "passed", "waiting"
KINDS = ("Deployment", "StatefulSet")
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
TEMPLATE_HASH = "pod-template-hash"
STS_REVISION_LABEL = "controller-revision-hash"
# container states in which a pod of the new revision will not become ready by waiting
BAD_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                         "CreateContainerError", "InvalidImageName", "RunContainerError"})


@dataclass(frozen=True)
class Health:
    kind: str
    name: str
    state: str  # healthy | progressing | failed
    message: str

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class GateVerdict:
    state: str  # passed | waiting | failed
    message: str
    workload: str | None = None  # the workload that failed it


def _cond(obj: dict, ctype: str) -> dict:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def pod_problem(pods: list[dict]) -> str | None:
    """Why a pod of the new revision will not become ready, if it says so (first found)."""
    for p in pods:
        st = p.get("status") or {}
        for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in BAD_WAITING:
                detail = (waiting.get("message") or "").strip()
                return (f"pod {p['metadata']['name']} container {cs.get('name')}: {waiting['reason']}"
                        + (f" ({detail[:200]})" if detail else ""))
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last.get("reason") == "OOMKilled" and int(cs.get("restartCount") or 0) >= 2:
                return f"pod {p['metadata']['name']} container {cs.get('name')}: OOMKilled, restarted " \
                       f"{cs.get('restartCount')} times"
    return None


def _new_pods_deployment(dep: dict, pods: list[dict], replicasets: list[dict]) -> list[dict]:
    cur = current_replicaset(dep, replicasets)
    if cur is None:
        return []
    h = ((cur.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_HASH)
    return [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_HASH) == h]


def workload_health(obj: dict, pods: list[dict] = (), replicasets: list[dict] = ()) -> Health:
    """One workload's rollout.  ``pods``: the workload's pods; ``replicasets``: a Deployment's ReplicaSets."""
    kind = obj.get("kind") or "Deployment"
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = meta.get("name", "")
    want = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    if int(st.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return Health(kind, name, PROGRESSING, f"generation {meta.get('generation')} not observed yet")
    updated, available = int(st.get("updatedReplicas") or 0), int(st.get("availableReplicas") or 0)
    ready = int(st.get("readyReplicas") or 0)
    if kind == "Deployment":
        prog = _cond(obj, "Progressing")
        if prog.get("reason") == "ProgressDeadlineExceeded":
            return Health(kind, name, FAILED, f"ProgressDeadlineExceeded: {prog.get('message', '')}".rstrip(": "))
        new_pods = _new_pods_deployment(obj, list(pods), list(replicasets))
        total = int(st.get("replicas") or 0)
        if updated >= want and available >= want and total <= updated and not st.get("unavailableReplicas"):
            return Health(kind, name, HEALTHY, f"{available}/{want} updated replicas available")
    else:
        new_rev = st.get("updateRevision")
        new_pods = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(STS_REVISION_LABEL)
                    == new_rev] if new_rev else []
        done = not new_rev or st.get("currentRevision") == new_rev or updated >= want
        if done and updated >= want and ready >= want and available >= want:
            return Health(kind, name, HEALTHY, f"{ready}/{want} replicas of {new_rev or 'the revision'} ready")
    problem = pod_problem(new_pods)
    if problem:
        return Health(kind, name, FAILED, problem)
    return Health(kind, name, PROGRESSING, f"{updated} updated, {available} available of {want} replica(s)")


def gate(healths: list[Health], elapsed_seconds: float, window_seconds: float) -> GateVerdict:
    """All the named workloads: failed at the first failure, or when the window passes unhealthy."""
    for h in healths:
        if h.state == FAILED:
            return GateVerdict(FAILED, f"{h.ref} failed: {h.message}", h.ref)
    waiting = [h for h in healths if h.state != HEALTHY]
    if not waiting:
        return GateVerdict(PASSED, "; ".join(f"{h.ref}: {h.message}" for h in healths) or "no workloads")
    if elapsed_seconds >= window_seconds:
        h = waiting[0]
        return GateVerdict(FAILED, f"{h.ref} not healthy within {window_seconds:g}s: {h.message}", h.ref)
    return GateVerdict(WAITING, "; ".join(f"{h.ref}: {h.message}" for h in waiting))


# -- rollout undo ----------------------------------------------------------------------------------

def _rs_revision(rs: dict) -> int:
    try:
        return int(((rs.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def _template_key(template: dict) -> dict:
    t = copy.deepcopy(template or {})
    (t.get("metadata") or {}).get("labels", {}).pop(TEMPLATE_HASH, None)
    return t


def current_replicaset(dep: dict, replicasets: list[dict]) -> dict | None:
    """The ReplicaSet of the Deployment's template (as the deployment controller finds it), else the newest."""
    mine = [rs for rs in replicasets if _owned_by(rs, dep)]
    want = _template_key((dep.get("spec") or {}).get("template"))
    for rs in mine:
        if _template_key((rs.get("spec") or {}).get("template")) == want:
            return rs
    return max(mine, key=_rs_revision) if mine else None


def _owned_by(obj: dict, owner: dict) -> bool:
    uid = (owner.get("metadata") or {}).get("uid")
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs) if uid else bool(refs)


class NoPreviousRevision(Exception):
    pass


def deployment_undo(dep: dict, replicasets: list[dict]) -> dict:
    """The merge patch ``kubectl rollout undo deployment/NAME`` applies: the previous ReplicaSet's template."""
    cur = current_replicaset(dep, replicasets)
    older = [rs for rs in replicasets if _owned_by(rs, dep) and rs is not cur
             and (cur is None or _rs_revision(rs) < _rs_revision(cur))]
    if not older:
        raise NoPreviousRevision(f"Deployment {dep['metadata']['name']} has no previous ReplicaSet to roll back to "
                                 f"(revisionHistoryLimit 0, or it was never updated)")
    prev = max(older, key=_rs_revision)
    template = _template_key((prev.get("spec") or {}).get("template"))
    return {"spec": {"template": template}}


def statefulset_undo(sts: dict, revisions: list[dict]) -> dict:
    """The patch ``kubectl rollout undo statefulset/NAME`` applies: the previous ControllerRevision's data."""
    mine = sorted((r for r in revisions if _owned_by(r, sts)), key=lambda r: int(r.get("revision") or 0))
    current = (sts.get("status") or {}).get("updateRevision")
    older = [r for r in mine if r["metadata"]["name"] != current]
    if current:
        cur_rev = next((int(r.get("revision") or 0) for r in mine if r["metadata"]["name"] == current), None)
        if cur_rev is not None:
            older = [r for r in older if int(r.get("revision") or 0) < cur_rev]
    if not older:
        raise NoPreviousRevision(f"StatefulSet {sts['metadata']['name']} has no previous ControllerRevision to roll "
                                 f"back to")
    return copy.deepcopy(older[-1].get("data") or {})


# -- status transitions (pure) ---------------------------------------------------------------------

WATCHING, GATE_PASSED, GATE_FAILED, SUPERSEDED = "Watching", "Passed", "Failed", "Superseded"


def watching(status: dict | None, generation: int) -> bool:
    g = (status or {}).get("healthGate") or {}
    return g.get("phase") == WATCHING and g.get("generation") == generation


def begin(result, workloads, window: float, generation: int, now: str) -> dict | None:
    """The gate a run starts (``result``: the run's :class:`dbrev.results.RunResult`): only a run that
    changed the schema (applied, some direction)."""
    if not result or result.result != "applied" or (result.direction or "none") == "none":
        return None
    frm = ",".join(sorted(result.from_revisions or [])) or "base"
    to = ",".join(sorted(result.current_revisions or result.to_revisions or [])) or "base"
    names = ", ".join(f"{k}/{n}" for k, n in workloads)
    return {"phase": WATCHING, "generation": generation, "fromRevision": frm, "toRevision": to, "startedAt": now,
            "windowSeconds": float(window), "message": f"waiting for {names} to roll out healthy"}


def awaiting_message(gate_status: dict, detail: str) -> str:
    return (f"schema at {gate_status.get('toRevision')}; watching the rollout (window "
            f"{gate_status.get('windowSeconds', 0):g}s): {detail}")


def conclude(gate_status: dict, verdict: GateVerdict, now: str) -> dict:
    phase = {PASSED: GATE_PASSED, FAILED: GATE_FAILED}.get(verdict.state, WATCHING)
    out = {**gate_status, "phase": phase, "message": verdict.message[:4096]}
    if phase != WATCHING:
        out["finishedAt"] = now
    if verdict.workload:
        out["workload"] = verdict.workload
    return out


def unhealthy_message(gate_status: dict, verdict: GateVerdict) -> str:
    return (f"{verdict.message} after the schema changed {gate_status.get('fromRevision')} -> "
            f"{gate_status.get('toRevision')}. To fix: fix the application release (or revert it and "
            f"spec.revision in git, then `dbrev rollback` the schema); dbrev does not run the plan again "
            f"until the spec or its inputs change")


# -- the shell: read the workloads ------------------------------------------------------------------

def observe(namespace: str, workloads) -> list[Health]:
    """Read each named workload with its pods (and a Deployment's ReplicaSets) and judge it."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from . import kube

    api = kube.api_client()
    apps, core = client.AppsV1Api(api), kube.core()
    out = []
    for kind, name in workloads:
        try:
            raw = (apps.read_namespaced_deployment if kind == "Deployment" else apps.read_namespaced_stateful_set)(
                name, namespace)
        except ApiException as e:
            if e.status == 404:
                out.append(Health(kind, name, PROGRESSING, "not found"))
                continue
            raise
        obj = api.sanitize_for_serialization(raw)
        obj["kind"] = kind
        labels = (((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = api.sanitize_for_serialization(core.list_namespaced_pod(namespace, label_selector=selector)).get(
            "items") or [] if selector else []
        rss = []
        if kind == "Deployment" and selector:
            rss = api.sanitize_for_serialization(apps.list_namespaced_replica_set(
                namespace, label_selector=selector)).get("items") or []
        out.append(workload_health(obj, pods, rss))
    return out


def images(namespace: str, workloads) -> list[str]:
    """The container images of the named workloads' pod templates (for the deployment id)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from . import kube

    api = kube.api_client()
    apps = client.AppsV1Api(api)
    out: list[str] = []
    for kind, name in workloads:
        try:
            raw = (apps.read_namespaced_deployment if kind == "Deployment" else apps.read_namespaced_stateful_set)(
                name, namespace)
        except ApiException as e:
            if e.status == 404:
                continue
            raise
        spec = ((api.sanitize_for_serialization(raw).get("spec") or {}).get("template") or {}).get("spec") or {}
        out += [c.get("image") for c in spec.get("containers") or [] if c.get("image")]
    return out
