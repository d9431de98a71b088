"""Benchmark plan for ``mean_teacher``: noisy labels are treated as unlabelled; the
ablation row lets it learn from them too."""

from harness import Plan, Variant


def plan(profile: str, task: str, setting: str | None) -> Plan:
    return Plan(overrides={}, ablations=[Variant("use_noisy_labels", {"use_noisy": True}),
                                         Variant("predict_with_teacher", {"predict_with": "teacher"})])
