"""The health gate's core (pure): is the rollout after a schema change healthy, and how to undo it.

Issue 13 §1.  Decisions over the objects the API server returns (plain dicts), no I/O:

* :func:`workload_health`: one Deployment or StatefulSet (and the pods of its new revision):
  ``healthy`` when the new generation is observed and every updated replica is available;
  ``failed`` when the rollout reports ``ProgressDeadlineExceeded`` or a pod of the new revision
  cannot run (crash loop, image pull, container config) or runs but fails its readiness probe for
  longer than the probe allows (:func:`readiness_allowance`); ``progressing`` otherwise;
* :func:`gate`: all the named workloads over the window: passed, waiting, or failed (a failure,
  or the window passing while any workload is not healthy, e.g. pods Pending);
* :func:`deployment_undo` / :func:`statefulset_undo`: what ``kubectl rollout undo`` does, as a
  patch: the previous ReplicaSet's pod template (without ``pod-template-hash``), or the previous
  ControllerRevision's stored patch;
* :func:`stuck_pods`: the pods a StatefulSet's undo waits for forever under ``OrderedReady`` (not Ready,
  of the broken revision: Kubernetes' "forced rollback" caveat), which the undo deletes.

* :func:`begin` / :func:`conclude`: the ``status.healthGate`` record and the outcome.
* ``onFailure: Rollback``, application first, then schema: :func:`undo_plan` (the patches for every
  named workload, or why one cannot be rolled back), :func:`rollback_started` /
  :func:`workloads_not_rolled_back` (the verdicts while the workloads go back), :func:`schema_target`
  (the revision before the run, from dbrev's own history, by the same rule as ``dbrev rollback``) and
  :func:`schema_rolled_back` (the verdict of the downgrade run: done, refused by the policy, awaiting an
  approval, failed).  Afterwards the resource stays Stalled (a standing reason: no loop) until the spec
  changes.

The shell at the end (:func:`observe`, :func:`read_for_undo`, :func:`patch_workload`,
:func:`unstick_statefulset`) reads the workloads, their ReplicaSets / ControllerRevisions and pods,
applies the undo patches and deletes a StatefulSet's stuck pods; the
operator's timer (``handlers._check``) calls them on every tick while a gate watches or rolls back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timezone

from ..core.text import parse_revisions as _revs, revisions_text

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


def _seconds(probe: dict | None, field: str, default: int) -> int:
    value = (probe or {}).get(field)
    return int(value) if value is not None else default


def readiness_allowance(container: dict) -> float | None:
    """How long after a container starts its readiness probe has failed ``failureThreshold`` times in a row
    if it never passed: the startup probe's allowance, the initial delay, the threshold's periods and one
    probe timeout (Kubernetes' defaults where unset).  None: the container declares no readiness probe."""
    probe = container.get("readinessProbe")
    if not probe:
        return None
    startup = container.get("startupProbe")
    allowance = 0.0
    if startup:
        allowance += _seconds(startup, "initialDelaySeconds", 0) + \
            _seconds(startup, "periodSeconds", 10) * _seconds(startup, "failureThreshold", 3)
    period = _seconds(probe, "periodSeconds", 10)
    return allowance + _seconds(probe, "initialDelaySeconds", 0) + period * _seconds(probe, "failureThreshold", 3) \
        + period + _seconds(probe, "timeoutSeconds", 1)


def _age(started: str | None, now: datetime | None) -> float | None:
    if not started or now is None:
        return None
    try:
        at = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - at).total_seconds()


def pod_problem(pods: list[dict], now: datetime | None = None) -> str | None:
    """Why a pod of the new revision will not become ready, if it says so (first found): a container that
    cannot run (crash loop, image pull, config), OOM-killed again and again, or (given ``now``) running
    but failing its readiness probe for longer than the probe allows."""
    for p in pods:
        st = p.get("status") or {}
        containers = {c.get("name"): c for c in (p.get("spec") or {}).get("containers") or []}
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
        if (p.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for cs in st.get("containerStatuses") or []:
            running = (cs.get("state") or {}).get("running") or {}
            allowance = readiness_allowance(containers.get(cs.get("name")) or {})
            age = _age(running.get("startedAt"), now)
            if running and not cs.get("ready") and allowance is not None and age is not None and age > allowance:
                return (f"pod {p['metadata']['name']} container {cs.get('name')}: running {age:.0f}s and not "
                        f"ready: its readiness probe has failed for longer than it allows ({allowance:.0f}s)")
    return None


def _new_pods_deployment(dep: dict, pods: list[dict], replicasets: list[dict]) -> list[dict]:
    cur = current_replicaset(dep, replicasets)
    if cur is None:
        return []
    h = ((cur.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_HASH)
    return [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(TEMPLATE_HASH) == h]


def workload_health(obj: dict, pods: list[dict] = (), replicasets: list[dict] = (),
                    now: datetime | None = None) -> Health:
    """One workload's rollout.  ``pods``: the workload's pods; ``replicasets``: a Deployment's ReplicaSets;
    ``now``: the time to judge a failing readiness probe by (without it, only by the pods' states)."""
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
    problem = pod_problem(new_pods, now)
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


def previous_replicaset(dep: dict, replicasets: list[dict]) -> dict:
    """The ReplicaSet ``kubectl rollout undo`` goes back to: the newest one older than the current one."""
    cur = current_replicaset(dep, replicasets)
    older = [rs for rs in replicasets if _owned_by(rs, dep) and rs is not cur
             and (cur is None or _rs_revision(rs) < _rs_revision(cur))]
    if not older:
        raise NoPreviousRevision(f"Deployment {dep['metadata']['name']} has no previous ReplicaSet to roll back to "
                                 f"(revisionHistoryLimit 0, or it was never updated)")
    return max(older, key=_rs_revision)


def deployment_undo(dep: dict, replicasets: list[dict]) -> dict:
    """What ``kubectl rollout undo deployment/NAME`` puts in place: the previous ReplicaSet's template."""
    prev = previous_replicaset(dep, replicasets)
    return {"spec": {"template": _template_key((prev.get("spec") or {}).get("template"))}}


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


def _previous_controllerrevision(sts: dict, revisions: list[dict]) -> dict:
    mine = sorted((r for r in revisions if _owned_by(r, sts)), key=lambda r: int(r.get("revision") or 0))
    data = statefulset_undo(sts, revisions)
    return next(r for r in reversed(mine) if (r.get("data") or {}) == data)


JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class Undo:
    """One workload's ``kubectl rollout undo``: the patch, how to send it, and what it goes back to."""
    kind: str
    name: str
    patch: object  # a JSON patch (list) for a Deployment, a strategic merge patch (dict) for a StatefulSet
    content_type: str
    to: str  # e.g. "ReplicaSet web-5d9c (revision 1)"
    revision: str | None = None  # a StatefulSet's: the ControllerRevision it goes back to

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def text(self) -> str:
        return f"{self.ref} to {self.to}"


def undo_plan(workloads: list[tuple[dict, list[dict]]]) -> list[Undo]:
    """The undo of every named workload (``(object, its ReplicaSets or ControllerRevisions)``), all or none.

    As ``kubectl rollout undo``: a Deployment gets the previous ReplicaSet's template (replaced whole,
    a JSON patch, so nothing of the new template survives), a StatefulSet the previous ControllerRevision's
    stored patch (a strategic merge patch, as the StatefulSet controller stored it).  Raises
    :class:`NoPreviousRevision` for the first workload that has nothing to go back to: then none is
    patched (the application goes back whole or not at all).
    """
    out = []
    for obj, owned in workloads:
        kind, name = obj.get("kind") or "Deployment", obj["metadata"]["name"]
        if kind == "Deployment":
            prev = previous_replicaset(obj, owned)
            template = _template_key((prev.get("spec") or {}).get("template"))
            patch: object = [{"op": "replace", "path": "/spec/template", "value": template}]
            out.append(Undo(kind, name, patch, JSON_PATCH,
                            f"ReplicaSet {prev['metadata']['name']} (revision {_rs_revision(prev)})"))
        else:
            prev = _previous_controllerrevision(obj, owned)
            out.append(Undo(kind, name, copy.deepcopy(prev.get("data") or {}), STRATEGIC_MERGE_PATCH,
                            f"ControllerRevision {prev['metadata']['name']} (revision {prev.get('revision')})",
                            prev["metadata"]["name"]))
    return out


def _ordinal(pod: dict, sts_name: str) -> int | None:
    tail = (pod.get("metadata") or {}).get("name", "")[len(sts_name) + 1:]
    return int(tail) if tail.isdigit() else None


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def stuck_pods(sts: dict, pods: list[dict], target: str) -> list[dict]:
    """The pods a StatefulSet's rollback waits for forever: the ones dbrev deletes after the undo.

    Kubernetes' "forced rollback" caveat: under ``podManagementPolicy: OrderedReady`` (the default) and
    ``RollingUpdate``, the controller replaces nothing while a pod is not Running and Ready, so a pod of
    the broken revision that never becomes Ready blocks the undo; it must be deleted (the controller
    then recreates it from the revision it goes back to).  Only once the controller has taken the undo
    (``status.observedGeneration`` reached ``metadata.generation`` and ``status.updateRevision`` is the
    ``target`` ControllerRevision: a pod recreated from then on is the old revision's), and only pods the
    StatefulSet controls, not terminating, not Ready, of another revision than ``target``, at an ordinal
    the rolling update replaces (``>= partition``).  ``Parallel`` needs none deleted (the controller
    replaces not-Ready pods itself); ``OnDelete`` replaces pods only when someone deletes them, by
    design: dbrev does not (docs/operations.md).
    """
    spec, st, meta = sts.get("spec") or {}, sts.get("status") or {}, sts.get("metadata") or {}
    strategy = spec.get("updateStrategy") or {}
    if (spec.get("podManagementPolicy") or "OrderedReady") != "OrderedReady":
        return []
    if (strategy.get("type") or "RollingUpdate") != "RollingUpdate":
        return []
    if int(st.get("observedGeneration") or 0) < int(meta.get("generation") or 0) or st.get("updateRevision") != target:
        return []
    partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
    out = []
    for p in pods:
        pm = p.get("metadata") or {}
        ordinal = _ordinal(p, meta.get("name", ""))
        if (not _owned_by(p, sts) or pm.get("deletionTimestamp") or ordinal is None or ordinal < partition
                or (pm.get("labels") or {}).get(STS_REVISION_LABEL) == target or _ready(p)):
            continue
        out.append(p)
    return sorted(out, key=lambda p: _ordinal(p, meta.get("name", "")) or 0)


# -- status transitions (pure) ---------------------------------------------------------------------

WATCHING, GATE_PASSED, GATE_FAILED, SUPERSEDED = "Watching", "Passed", "Failed", "Superseded"
# onFailure: Rollback: the workloads are going back / the schema downgrade waits for an approval /
# both went back / the workloads went back (or could not) and the schema stayed
ROLLING_BACK, AWAITING_APPROVAL, ROLLED_BACK, ROLLBACK_INCOMPLETE = (
    "RollingBack", "AwaitingApproval", "RolledBack", "RollbackIncomplete")
# phases in which the gate, not a run, owns the resource (a resume or unrelated edit runs nothing)
HOLDING = (WATCHING, ROLLING_BACK, AWAITING_APPROVAL)
TRIGGER = "health_check_failure"  # the runbook's reason, the records' and dbrev_rollbacks_total's trigger


def watching(status: dict | None, generation: int) -> bool:
    g = (status or {}).get("healthGate") or {}
    return g.get("phase") == WATCHING and g.get("generation") == generation


def phase(status: dict | None, generation: int) -> str | None:
    """The gate's phase when it belongs to this generation (a spec change leaves it behind)."""
    g = (status or {}).get("healthGate") or {}
    return g.get("phase") if g.get("generation") == generation else None


def holding(status: dict | None, generation: int) -> bool:
    return phase(status, generation) in HOLDING


def begin(result, workloads, window: float, generation: int, now: str) -> dict | None:
    """The gate a run starts (``result``: the run's :class:`dbrev.core.results.RunResult`): only a run that
    changed the schema (applied, some direction)."""
    if not result or result.result != "applied" or (result.direction or "none") == "none":
        return None
    frm = revisions_text(result.from_revisions or [])
    to = revisions_text(result.current_revisions or result.to_revisions or [])
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


# -- onFailure: Rollback, application first, then schema (pure) --------------------------------------

EV_WORKLOAD_UNHEALTHY = "WorkloadUnhealthy"
EV_ROLLBACK_TRIGGERED = "RollbackTriggered"
EV_ROLLBACK_EXECUTED = "RollbackExecuted"
EV_ROLLBACK_FAILED = "RollbackFailed"
EV_WORKLOADS_ROLLED_BACK = "WorkloadsRolledBack"


class NoSchemaTarget(Exception):
    """dbrev's history does not say where the schema was before the gate's run."""


def _verdict(out, status: dict, gen: int, now: str, fields: dict, events=(), rollback=None):
    from . import decide
    from .metrics import RESULT_NOOP
    from .status import compute_conditions

    st = {"observedGeneration": gen, **fields,
          "conditions": compute_conditions(out, gen, status.get("conditions"), now)}
    return decide.Verdict(out, st, list(events), metric_result=RESULT_NOOP, rollback=rollback)


def _failure(hg: dict) -> str:
    """Why the gate failed, as the start of a sentence (no trailing period: messages go on after it)."""
    return (hg.get("failure") or hg.get("message") or "a workload is unhealthy").rstrip(". ")


def _rolled_back_text(hg: dict) -> str:
    return ", ".join(hg.get("rolledBack") or []) or "the workloads"


def rollback_started(status: dict, gen: int, verdict: GateVerdict, undos: list[Undo], now: str):
    """The gate failed under ``onFailure: Rollback`` and every workload can go back: they are being patched."""
    from .status import PROGRESSING_KIND, Outcome
    from ..core import conditions as C

    hg = status["healthGate"]
    rec = {**conclude(hg, verdict, now), "phase": ROLLING_BACK, "failure": verdict.message.rstrip(". ")[:4096],
           "rollbackStartedAt": now, "rolledBack": [u.text for u in undos]}
    rec.pop("finishedAt", None)
    msg = rolling_back_message(rec, "waiting for them to become available")
    out = Outcome(PROGRESSING_KIND, C.ROLLING_BACK_WORKLOADS, msg)
    events = [("Warning", EV_WORKLOAD_UNHEALTHY, f"{rec['failure']} after the schema changed "
                                                 f"{hg.get('fromRevision')} -> {hg.get('toRevision')}"),
              ("Warning", EV_ROLLBACK_TRIGGERED, f"{TRIGGER}: rolling back {_rolled_back_text(rec)}"
                                                 f", then the schema {hg.get('toRevision')} -> "
                                                 f"{hg.get('fromRevision')}")]
    last = {"reason": C.WORKLOAD_UNHEALTHY, "message": verdict.message[:4096], "time": now}
    return _verdict(out, status, gen, now, {"healthGate": rec, "lastError": last}, events)


def rolling_back_message(hg: dict, detail: str) -> str:
    return (f"{_failure(hg)}: rolling back {_rolled_back_text(hg)} (window "
            f"{hg.get('windowSeconds', 0):g}s): {detail}; then the schema goes back {hg.get('toRevision')} -> "
            f"{hg.get('fromRevision')}")


def rolling_back(status: dict, gen: int, detail: str, now: str):
    """Still waiting for the rolled-back workloads to become available."""
    from .status import PROGRESSING_KIND, Outcome
    from ..core import conditions as C

    hg = status["healthGate"]
    out = Outcome(PROGRESSING_KIND, C.ROLLING_BACK_WORKLOADS, rolling_back_message(hg, detail))
    return _verdict(out, status, gen, now, {"healthGate": {**hg, "message": detail[:4096]}})


def workloads_not_rolled_back(status: dict, gen: int, why: str, now: str, name: str, namespace: str,
                              patched: bool, partly: list[str] = ()):
    """The workloads could not be rolled back (nothing to go back to, refused), or went back unhealthy.

    Application first: the schema is left where the run put it, and the resource is Stalled.
    """
    from .status import STALLED_KIND, Outcome
    from ..core import conditions as C

    hg = status["healthGate"]
    failure = _failure(hg)
    frm, to = hg.get("fromRevision"), hg.get("toRevision")
    what = (f"rolled back {_rolled_back_text(hg)}, but {why}" if patched
            else f"the workloads cannot be rolled back: {why}")
    msg = (f"{failure}. {what}. The schema stays at {to} (application first: it goes back only once the workloads "
           f"are healthy on their previous revision). To fix: fix the release, or roll the workloads back by hand "
           f"(kubectl rollout undo) and then the schema with `dbrev rollback {name} -n {namespace} --schema-only "
           f"--to {frm}`; "
           f"dbrev does not run the plan again until the spec changes")
    out = Outcome(STALLED_KIND, C.WORKLOAD_ROLLBACK_FAILED, msg)
    rec = {**hg, "phase": ROLLBACK_INCOMPLETE, "finishedAt": now, "message": msg[:4096]}
    if not patched:
        rec["rolledBack"] = list(partly)  # the ones patched before the API server refused one
    last = {"reason": C.WORKLOAD_ROLLBACK_FAILED, "message": msg[:4096], "time": now}
    events = [] if patched else [("Warning", EV_WORKLOAD_UNHEALTHY, f"{failure} after the schema changed {frm} -> "
                                                                   f"{to}")]
    events.append(("Warning", EV_ROLLBACK_FAILED, msg))
    return _verdict(out, status, gen, now, {"healthGate": rec, "lastError": last}, events, (TRIGGER, "failure"))


def workloads_back(status: dict, verdict: GateVerdict) -> tuple[str, str, str]:
    """The Event when the rolled-back workloads are available again (the schema goes back next)."""
    hg = status["healthGate"]
    return ("Normal", EV_WORKLOADS_ROLLED_BACK, f"{_rolled_back_text(hg)} available again ({verdict.message}); "
                                               f"rolling the schema back {hg.get('toRevision')} -> "
                                               f"{hg.get('fromRevision')}")




def schema_target(status: dict) -> str:
    """Where the schema goes back to: the revision before the run the gate watched.

    From dbrev's own history (status.history), by the rule ``dbrev rollback`` uses
    (:func:`dbrev.engine.rollback.choose_target`: the newest applied upgrade that ended where the database
    is); it must be the gate's ``fromRevision``, else something else moved the database and there is
    no safe default (:class:`NoSchemaTarget`).
    """
    from ..core.errors import DbrevError
    from ..engine.rollback import choose_target, history_runs

    hg = status.get("healthGate") or {}
    cur = status.get("currentRevision")
    if cur != hg.get("toRevision"):
        raise NoSchemaTarget(f"the database is at {cur}, not at {hg.get('toRevision')} where the gate's run left it")
    try:
        choice = choose_target(_revs(cur), history_runs(status.get("history") or []))
    except DbrevError as e:
        raise NoSchemaTarget(e.message) from None
    if choice.target is None or choice.target != hg.get("fromRevision"):
        raise NoSchemaTarget(f"status.history says the run to {cur} started at {choice.target}, the gate recorded "
                             f"{hg.get('fromRevision')}")
    return choice.target


def schema_not_rolled_back(status: dict, gen: int, why: str, now: str, name: str, namespace: str):
    """The workloads went back, the schema cannot (no target, the inputs cannot be read...)."""
    return _schema_incomplete(status, gen, now, name, namespace, f"it cannot go back: {why}", None, [])


def _schema_incomplete(status, gen, now, name, namespace, why: str, target: str | None, events, fields=None,
                       reason: str | None = None):
    from .status import STALLED_KIND, Outcome
    from ..core import conditions as C

    hg = status["healthGate"]
    failure = _failure(hg)
    frm = target or hg.get("fromRevision")
    cur = (fields or {}).get("currentRevision") or status.get("currentRevision") or hg.get("toRevision")
    msg = (f"{failure}. Rolled back {_rolled_back_text(hg)}; the schema stays at {cur}: {why}. To finish the "
           f"rollback, once the policy allows it: `dbrev rollback {name} -n {namespace} --to {frm}` (or set "
           f"spec.revision to {frm} in git); or keep the schema and fix the release. dbrev does not run the plan "
           f"again until the spec changes")
    out = Outcome(STALLED_KIND, reason or C.SCHEMA_ROLLBACK_BLOCKED, msg)
    rec = {**hg, "phase": ROLLBACK_INCOMPLETE, "finishedAt": now, "message": msg[:4096]}
    if target:
        rec["schemaTarget"] = target
    last = {"reason": out.reason, "message": msg[:4096], "time": now}
    out_fields = {**(fields or {}), "healthGate": rec, "lastError": last}
    return _verdict(out, status, gen, now, out_fields, list(events) + [("Warning", EV_ROLLBACK_FAILED, msg)],
                    (TRIGGER, "failure"))


def schema_rolled_back(run, result, status: dict, gen: int, now: str, target: str, spec_revision: str,
                       name: str, namespace: str):
    """The verdict of the schema downgrade run, from the run's own verdict (``decide.from_result``).

    Done and verified: Stalled ``RolledBackAfterHealthCheck`` (spec.revision still names the release that
    failed; it is not applied again until the spec changes).  Awaiting an approval: the run's own
    AwaitingApproval (approving runs the downgrade).  A transient failure: still rolling back (the next
    tick tries again).  Refused by the policy, failed, or not verified: Stalled ``SchemaRollbackBlocked``
    (or the run's ``RollbackFailed`` when it left the database between revisions).
    """
    v = _schema_rolled_back(run, result, status, gen, now, target, spec_revision, name, namespace)
    v.steps, v.findings, v.drift, v.reachable = run.steps, run.findings, run.drift, run.reachable
    return v


def _schema_rolled_back(run, result, status, gen, now, target, spec_revision, name, namespace):
    from ..engine.rollback import succeeded
    from .status import STALLED_KIND, TRANSIENT_KIND, WAITING_KIND, Outcome
    from ..core import conditions as C

    hg = status["healthGate"]
    fields = {k: v for k, v in run.status.items() if k not in ("conditions", "observedGeneration")}
    to = hg.get("toRevision")
    if succeeded(result, _revs(target)):
        failure = _failure(hg)
        msg = (f"{failure}. Rolled back {_rolled_back_text(hg)} and then the schema {to} -> {target}, verified "
               f"({TRIGGER}). spec.revision still names {spec_revision}: dbrev does not apply it again until the "
               f"spec changes. To fix: fix the release and change the spec (or annotate "
               f"dbrev.io/reconcile-requested-at) to apply it again, or revert spec.revision to {target} and the "
               f"workloads in git")
        out = Outcome(STALLED_KIND, C.ROLLED_BACK_AFTER_HEALTH_CHECK, msg)
        rec = {**hg, "phase": ROLLED_BACK, "finishedAt": now, "schemaTarget": target, "message": msg[:4096]}
        fields.update({"healthGate": rec, "lastError": {"reason": out.reason, "message": msg[:4096], "time": now}})
        events = run.events + [("Normal", EV_ROLLBACK_EXECUTED,
                                f"rolled back {_rolled_back_text(hg)} and the schema {to} -> {target}, verified "
                                f"({TRIGGER})")]
        return _verdict(out, status, gen, now, fields, events, (TRIGGER, "success"))
    if run.outcome.kind == WAITING_KIND:  # an approval is needed (spec.policy): approving runs the downgrade
        msg = (f"rolled back {_rolled_back_text(hg)}; the schema downgrade {to} -> {target} needs an approval: "
               f"{run.outcome.message}")
        out = Outcome(WAITING_KIND, run.outcome.reason, msg)
        fields["healthGate"] = {**hg, "phase": AWAITING_APPROVAL, "schemaTarget": target, "message": msg[:4096]}
        return _verdict(out, status, gen, now, fields, run.events)
    if run.outcome.kind == TRANSIENT_KIND:  # the next tick tries again (the workloads are still healthy)
        out = Outcome(TRANSIENT_KIND, run.outcome.reason, f"rolled back {_rolled_back_text(hg)}; the schema "
                                                          f"downgrade {to} -> {target}: {run.outcome.message}")
        fields["healthGate"] = {**hg, "schemaTarget": target}
        return _verdict(out, status, gen, now, fields, run.events)
    refused = result.result == "refused"
    why = (f"going back to {target} was refused by the policy: {run.outcome.message}" if refused
           else f"going back to {target} did not succeed: {run.outcome.message}")
    reason = C.ROLLBACK_FAILED if run.outcome.reason == C.ROLLBACK_FAILED else None
    return _schema_incomplete(status, gen, now, name, namespace, why, target, run.events, fields, reason)


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
        out.append(workload_health(obj, pods, rss, datetime.now(timezone.utc)))
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


def _selector(obj: dict) -> str:
    labels = (((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def read_for_undo(namespace: str, workloads) -> list[tuple[dict, list[dict]]]:
    """Each named workload with what ``kubectl rollout undo`` reads: a Deployment's ReplicaSets, a
    StatefulSet's ControllerRevisions (those its selector matches; :func:`undo_plan` keeps the ones it owns)."""
    from kubernetes import client

    from . import kube

    api = kube.api_client()
    apps = client.AppsV1Api(api)
    out = []
    for kind, name in workloads:
        if kind == "Deployment":
            obj = api.sanitize_for_serialization(apps.read_namespaced_deployment(name, namespace))
            sel = _selector(obj)
            owned = api.sanitize_for_serialization(apps.list_namespaced_replica_set(
                namespace, label_selector=sel)).get("items") or [] if sel else []
        else:
            obj = api.sanitize_for_serialization(apps.read_namespaced_stateful_set(name, namespace))
            sel = _selector(obj)
            owned = api.sanitize_for_serialization(apps.list_namespaced_controller_revision(
                namespace, label_selector=sel)).get("items") or [] if sel else []
        obj["kind"] = kind
        out.append((obj, owned))
    return out


def patch_workload(namespace: str, undo: Undo) -> int:
    """Apply one undo (as ``kubectl rollout undo`` sends it); the workload's generation after it."""
    from kubernetes import client

    from . import kube

    apps = client.AppsV1Api(kube.api_client())
    if undo.kind == "Deployment":
        out = apps.patch_namespaced_deployment(undo.name, namespace, undo.patch, _content_type=undo.content_type)
    else:
        out = apps.patch_namespaced_stateful_set(undo.name, namespace, undo.patch, _content_type=undo.content_type)
    return int(out.metadata.generation or 0)


# how long the undo waits for the StatefulSet controller to take it before looking for stuck pods
UNSTICK_WAIT_SECONDS = 30.0


def unstick_statefulset(namespace: str, undo: Undo, generation: int, wait: float = UNSTICK_WAIT_SECONDS) -> list[str]:
    """The forced rollback of a StatefulSet (:func:`stuck_pods`): delete the pods its undo waits for.

    Waits (at most ``wait`` seconds) for the controller to observe the undone template, then deletes
    each stuck pod with a precondition on its uid (a pod recreated meanwhile is left alone).  Returns
    the names deleted.  Raises ``ApiException`` when the API server refuses a read or a delete.
    """
    import time

    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from ..core import log as L
    from . import kube

    api = kube.api_client()
    apps, core = client.AppsV1Api(api), kube.core()
    deadline = time.monotonic() + wait
    while True:
        obj = api.sanitize_for_serialization(apps.read_namespaced_stateful_set(undo.name, namespace))
        st = obj.get("status") or {}
        if int(st.get("observedGeneration") or 0) >= generation or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if int(st.get("observedGeneration") or 0) < generation:
        L.logger.warning(f"{undo.ref}: the StatefulSet controller has not taken the undo within {wait:g}s; no pod "
                         f"deleted", extra={"workload": undo.ref, "status": "rolling_back"})
        return []
    sel = _selector(obj)
    pods = api.sanitize_for_serialization(core.list_namespaced_pod(namespace, label_selector=sel)).get(
        "items") or [] if sel else []
    deleted = []
    for p in stuck_pods(obj, pods, undo.revision or ""):
        pm = p["metadata"]
        try:
            core.delete_namespaced_pod(pm["name"], namespace, body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid=pm["uid"])))
        except ApiException as e:
            if e.status in (404, 409):  # gone already, or a new pod under that name
                continue
            raise
        L.logger.warning(f"Deleted pod {pm['name']} of {undo.ref}: not Ready on revision "
                         f"{pm['labels'].get(STS_REVISION_LABEL)}, it blocks the rollback under OrderedReady "
                         f"(the StatefulSet's forced rollback)",
                         extra={"event": "stuck_pod_deleted", "workload": undo.ref, "pod": pm["name"],
                                "revision": pm["labels"].get(STS_REVISION_LABEL), "status": "rolling_back"})
        deleted.append(pm["name"])
    return deleted


class UndoRefused(Exception):
    """The API server refused reading or patching a workload; ``done``: the undos applied before it."""

    def __init__(self, message: str, done: list[Undo]):
        super().__init__(message)
        self.done = done


def roll_back_workloads(namespace: str, workloads) -> list[Undo]:
    """Read, plan (all or none) and patch the named workloads back to their previous revision.

    Then, for a StatefulSet, the forced rollback (:func:`unstick_statefulset`): the pods of the broken
    revision it would wait for forever are deleted once its controller has taken the undo.
    Raises :class:`NoPreviousRevision` before patching anything when one has nothing to go back to, and
    :class:`UndoRefused` when the API server refuses a read, a patch or a delete (saying which were
    patched before).
    """
    from kubernetes.client.rest import ApiException

    try:
        undos = undo_plan(read_for_undo(namespace, workloads))
    except ApiException as e:
        raise UndoRefused(f"reading the workloads failed (HTTP {e.status} {e.reason})", []) from None
    done: list[tuple[Undo, int]] = []
    for u in undos:
        try:
            done.append((u, patch_workload(namespace, u)))
        except ApiException as e:
            first = f"rolled back {', '.join(d.text for d, _ in done)}, but " if done else ""
            raise UndoRefused(f"{first}patching {u.ref} failed (HTTP {e.status} {e.reason})",
                              [d for d, _ in done]) from None
    for u, generation in done:  # every template is back first; then the StatefulSets' stuck pods go
        if u.kind != "StatefulSet":
            continue
        try:
            unstick_statefulset(namespace, u, generation)
        except ApiException as e:
            raise UndoRefused(f"rolled back {', '.join(d.text for d, _ in done)}, but deleting the pods of "
                              f"{u.ref} that block it (not Ready on the broken revision, under OrderedReady) failed "
                              f"(HTTP {e.status} {e.reason})", [d for d, _ in done]) from None
    return undos
