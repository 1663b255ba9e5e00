"""Job and CronJob (``batch/v1``): the defaults and checks kube-apiserver applies.

A new Job gets its selector made for it (unless ``manualSelector``): its uid under
``batch.kubernetes.io/controller-uid``, with that label and ``batch.kubernetes.io/job-name`` (and their legacy
``controller-uid`` / ``job-name`` forms) added to the pod template, so its pods can only ever be its own.
Without ``completions`` and ``parallelism`` it runs one pod to one success; ``backoffLimit`` is 6.
"""

from __future__ import annotations

from typing import Any

from skiff.cluster import cron
from skiff.cluster.api.selectors import LabelSelector
from skiff.cluster.api.status import FieldError
from skiff.errors import InvalidArgument

Errors = list[FieldError]
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID, LEGACY_JOB_NAME = "controller-uid", "job-name"
RESTART_POLICIES = ("OnFailure", "Never")


def default_job(obj: dict[str, Any], default_pod_template: Any) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    default_pod_template(spec.get("template"))
    if not spec.get("manualSelector"):
        _generate_selector(obj, spec)
    obj.setdefault("status", {})


def _generate_selector(obj: dict[str, Any], spec: dict[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    uid, name = meta.get("uid"), meta.get("name")
    template = spec.get("template")
    if not uid or not isinstance(template, dict) or not isinstance(template.get("metadata"), dict):
        return
    labels = template["metadata"].setdefault("labels", {})
    if isinstance(labels, dict):
        for key, value in ((CONTROLLER_UID, uid), (JOB_NAME, name), (LEGACY_CONTROLLER_UID, uid),
                           (LEGACY_JOB_NAME, name)):
            labels.setdefault(key, value)
    if spec.get("selector") is None:
        spec["selector"] = {"matchLabels": {CONTROLLER_UID: uid}}


def validate_job(obj: dict[str, Any], old: dict[str, Any] | None, validate_pod_spec: Any) -> Errors:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("spec", "Required")]
    errors: Errors = []
    for field in ("parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"):
        value = spec.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            errors.append(FieldError(f"spec.{field}", "Invalid", "must be greater than or equal to 0", value))
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
        errors.append(FieldError("spec.activeDeadlineSeconds", "Invalid", "must be greater than 0", deadline))
    if spec.get("completionMode") not in (None, "NonIndexed"):
        errors.append(FieldError("spec.completionMode", "NotSupported", 'supported values: "NonIndexed"',
                                 spec.get("completionMode")))
    template = spec.get("template")
    if not isinstance(template, dict):
        return [*errors, FieldError("spec.template", "Required")]
    pod_spec = template.get("spec") if isinstance(template.get("spec"), dict) else {}
    policy = pod_spec.get("restartPolicy")
    if policy not in RESTART_POLICIES:
        errors.append(FieldError("spec.template.spec.restartPolicy", "Required" if not policy else "NotSupported",
                                 'supported values: "OnFailure", "Never"' if policy else
                                 'valid values: "OnFailure", "Never"', policy))
    errors += validate_pod_spec(template.get("spec"), "spec.template.spec")
    errors += _selector_errors(obj, spec, template)
    if old is not None:
        before = old.get("spec") or {}
        for field in ("selector", "template", "completions", "completionMode"):
            if field == "template" and spec.get("suspend") and before.get("suspend"):
                continue  # a suspended Job's template may change (kube allows it for scheduling directives)
            if spec.get(field) != before.get(field):
                errors.append(FieldError(f"spec.{field}", "Invalid", "field is immutable", spec.get(field)))
    return errors


def _selector_errors(obj: dict[str, Any], spec: dict[str, Any], template: dict[str, Any]) -> Errors:
    selector = spec.get("selector")
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return [FieldError("spec.selector", "Required")]
    errors = []
    uid = (obj.get("metadata") or {}).get("uid")
    if not spec.get("manualSelector") and (selector.get("matchLabels") or {}).get(CONTROLLER_UID) != uid:
        errors.append(FieldError("spec.selector", "Invalid", "`selector` not auto-generated", selector))
    if not LabelSelector.from_label_selector(selector).matches(labels):
        errors.append(FieldError("spec.template.metadata.labels", "Invalid",
                                 "`selector` does not match template `labels`", labels))
    return errors


# CronJob ------------------------------------------------------------------------------------------------------

CONCURRENCY_POLICIES = ("Allow", "Forbid", "Replace")
MAX_CRONJOB_NAME = 52  # its Jobs are named <cronjob>-<minutes since the epoch>, within 63 characters


def default_cronjob(obj: dict[str, Any], default_pod_template: Any) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)
    job_template = spec.get("jobTemplate")
    job_spec = job_template.get("spec") if isinstance(job_template, dict) else None
    if isinstance(job_spec, dict):
        default_pod_template(job_spec.get("template"))
    obj.setdefault("status", {})


def validate_cronjob(obj: dict[str, Any], old: dict[str, Any] | None, validate_pod_spec: Any) -> Errors:
    errors: Errors = []
    name = (obj.get("metadata") or {}).get("name") or ""
    if len(name) > MAX_CRONJOB_NAME:
        errors.append(FieldError("metadata.name", "Invalid", f"must be no more than {MAX_CRONJOB_NAME} characters",
                                 name))
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [*errors, FieldError("spec", "Required")]
    schedule = spec.get("schedule")
    if not schedule:
        errors.append(FieldError("spec.schedule", "Required"))
    else:
        try:
            cron.parse(schedule, spec.get("timeZone"))
        except InvalidArgument as exc:
            zone_wrong = "time zone" in str(exc)
            errors.append(FieldError("spec.timeZone" if zone_wrong else "spec.schedule", "Invalid", str(exc),
                                     spec.get("timeZone") if zone_wrong else schedule))
    if spec.get("concurrencyPolicy") not in CONCURRENCY_POLICIES:
        errors.append(FieldError("spec.concurrencyPolicy", "NotSupported",
                                 'supported values: "Allow", "Forbid", "Replace"', spec.get("concurrencyPolicy")))
    for field in ("startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        value = spec.get(field)
        if value is not None and (not isinstance(value, int) or value < 0):
            errors.append(FieldError(f"spec.{field}", "Invalid", "must be greater than or equal to 0", value))
    job_template = spec.get("jobTemplate")
    job_spec = job_template.get("spec") if isinstance(job_template, dict) else None
    template = job_spec.get("template") if isinstance(job_spec, dict) else None
    if not isinstance(template, dict):
        return [*errors, FieldError("spec.jobTemplate.spec.template", "Required")]
    pod_spec = template.get("spec") if isinstance(template.get("spec"), dict) else {}
    policy = pod_spec.get("restartPolicy")
    if policy not in RESTART_POLICIES:
        errors.append(FieldError("spec.jobTemplate.spec.template.spec.restartPolicy",
                                 "Required" if not policy else "NotSupported",
                                 'supported values: "OnFailure", "Never"' if policy else
                                 'valid values: "OnFailure", "Never"', policy))
    errors += validate_pod_spec(template.get("spec"), "spec.jobTemplate.spec.template.spec")
    return errors
