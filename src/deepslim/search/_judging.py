"""What a study records about how its trials were judged, so that a resumed search judges the rest alike.

A study's fingerprint covers its space and objectives (workers must match it); how a trial is *judged* — the proxy's
fine-tune steps and learning rate, the distillation temperature, the latency model and how the latency table's
entries are timed (:func:`deepslim.search.latency.timing`) — is recorded beside it and checked when the same command
resumes the study: resumed with other values, a search would rank accuracies after 80 and after 40 proxy steps (or
latencies predicted and measured, or node sums timed two ways, with the frame fitted to one) as if they were one scale.
"""

from __future__ import annotations

from typing import Any

from deepslim.errors import ConfigError
from deepslim.search.evaluate import Evaluator

ATTR = "deepslim:trial_judging"


def settings(ev: Evaluator) -> dict[str, Any]:
    """How ``ev`` judges a trial, beyond the space: the settings a resumed study must share with the one that judged
    its earlier trials (else accuracies after 80 and 40 proxy steps, say, would be ranked together)."""
    return {"proxy_steps": ev.proxy_steps, "proxy_lr": (ev.proxy_lr or ev.lr) if ev.proxy_steps else None,
            "temperature": ev.temperature, "latency_model": ev.latency_model, "timing": judged_timing(ev)}  # fmt: skip


def judged_timing(ev: Evaluator) -> str:
    """The timing protocol of the entries that judge ``ev``'s latencies: the node table's where the latency model is
    "nodes", else the layer table's (whose protocol session 15 left as it was). Why not always the node table's: its
    change (twins) refused every session-14 study, those judged by the layer table or end to end too, whose judging
    it does not touch (review R15 L9)."""
    return ev.nodes.timing if ev.latency_model == "nodes" and ev.nodes is not None else ev.table.timing


def check(study: Any, name: str, settings: dict[str, Any]) -> None:
    """Refuse to resume ``study`` with trial-judging ``settings`` other than those it recorded, naming the first
    that differs; a study that recorded none (an older deepslim) and has trials is refused too."""
    recorded = study.user_attrs.get(ATTR)
    if recorded is None:
        if study.get_trials(deepcopy=False):
            raise ConfigError(f"study {name!r} does not record how its trials were judged (proxy_steps, temperature, "
                              "...): resume it with the deepslim that created it, or start a new study (another "
                              "out_dir or study name)")  # fmt: skip
        study.set_user_attr(ATTR, settings)
        return
    for key, value in settings.items():
        if key not in recorded and value is not None:
            raise ConfigError(f"study {name!r} records no {key} (an older deepslim judged its trials; this one has "
                              f"{key}={value!r}): resume it with the deepslim that created it, or start a new study "
                              "(another out_dir or study name)")  # fmt: skip
        if recorded.get(key) != value:
            advice = (f"resume it with the deepslim that timed it (this one times {key}={value!r}: no option gives "
                      "the other)" if key == "timing" else f"resume it with the same {key}")  # review R2 17 L1
            raise ConfigError(f"study {name!r} judged its trials with {key}={recorded.get(key)!r}; this search has "
                              f"{key}={value!r}: {advice} (its trials would otherwise be ranked on two scales), or "
                              "start a new study (another out_dir or study name)")  # fmt: skip
