"""Benchmark plan for ``aide`` (cross-model label self-correction).

Main run: the paper's method with both networks, local label filtering and global
label correction. Ablation rows (the components the paper's framework is built from):
without local label filtering, without global label correction, one network.

Schedule for the quick profile: the paper corrects labels after every epoch of the
warm-up (20 of 100 epochs) and every 10 epochs after; one CHAOS epoch there is ~225
optimiser steps (batch 4), while one quick-profile epoch here is 9 steps (144 slices,
batch 16), so the networks only predict something worth copying after several epochs.
The quick profile therefore keeps the paper's proportions of the ramp (warm-up = half
of the 30 epochs) and lets corrections start once the networks have had ~70 steps.
"""

from harness import Plan, Variant

SCHEDULES = {
    "quick": {"warmup": 15, "correct_start": 8, "correct_every": 10},
    "full": {"warmup": 20, "correct_start": 5, "correct_every": 10},
}


def plan(profile: str, task: str, setting: str | None) -> Plan:
    base = dict(SCHEDULES.get(profile, {}))
    return Plan(
        overrides=base,
        ablations=[
            Variant("no_local_filtering", {**base, "local_filtering": False}),
            Variant("no_global_correction", {**base, "global_correction": False}),
            Variant("one_network", {**base, "two_networks": False}),
        ],
    )
