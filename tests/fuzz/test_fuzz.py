"""Fuzz targets (issue #9): each runs for BROADCAST_FUZZ_SECONDS (default 60), and every
crash found so far is replayed on each run. See tests/fuzz/harness.py and README
"Fuzzing"."""

from __future__ import annotations

import pytest

from .harness import budget_seconds, corpus_files, fuzz, inputs
from .targets import TARGETS, seeds

# The budget, plus room for Hypothesis to shrink a failure before it reports it.
TIMEOUT_S = budget_seconds() * 1.2 + 120


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz(target: str) -> None:
    check, _, text = TARGETS[target]
    corpus = seeds(target)
    for seed in corpus:  # the seeds themselves must pass, or they seed nothing
        check(seed)
    run = fuzz(target, check, inputs(corpus, text))
    assert run.inputs > 0


@pytest.mark.parametrize(
    "path", corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name[:12]}"
)
def test_corpus_replays(path) -> None:
    """Every input that once crashed a target passes through it cleanly now."""
    check = TARGETS[path.parent.name][0]
    check(path.read_bytes())
