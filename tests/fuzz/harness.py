"""Time-boxed Hypothesis fuzzing: seeds, mutations, a budget, and a crash corpus.

Each target is a function `check(data: bytes)` that feeds one input through our code
and lets only the exceptions its docstrings document escape (it catches those itself).
Anything else is a bug: the fuzz test fails, and the shrunk input is written to
`tests/fuzz/corpus/<target>/<sha1>.bin`, which `test_corpus_replays` runs on every
`pytest` from then on (commit the file with the fix).

`BROADCAST_FUZZ_SECONDS` (default 60) is each target's budget: Hypothesis runs batches
of examples until it is spent, so a target ends within the budget plus one batch.

`BROADCAST_FUZZ_SEED` (default 0) numbers the batches: with the default every run walks
the same inputs, so CI stays a reproducible gate (a bug found by exploring must not fail
an unrelated change); `BROADCAST_FUZZ_SEED=random` explores new ground, for long runs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
SEEDS = HERE / "seeds"
DEFAULT_SECONDS = 60.0
BATCH_EXAMPLES = 200

Check = Callable[[bytes], None]


def budget_seconds() -> float:
    return float(os.environ.get("BROADCAST_FUZZ_SECONDS", DEFAULT_SECONDS))


def first_batch_seed() -> int:
    chosen = os.environ.get("BROADCAST_FUZZ_SEED", "0")
    return secrets.randbits(32) if chosen == "random" else int(chosen)


def seed_files(target: str) -> list[bytes]:
    """Seed inputs kept in `seeds/<target>/`, and every crash found so far."""
    found = []
    for directory in (SEEDS / target, CORPUS / target):
        if directory.is_dir():
            found += [
                p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()
            ]
    return found


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.glob("*/*") if p.is_file())


def save_crash(target: str, data: bytes) -> Path:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha1(data).hexdigest()}.bin"
    path.write_bytes(data)
    return path


# --- mutations ----------------------------------------------------------------------

INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x20, 0x0A, 0x0D, 0x3A]
INTERESTING_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0xFFFFFFFF]
TEXT_TOKENS = [
    b"\r\n",
    b"\n",
    b" ",
    b":",
    b";",
    b"=",
    b"/",
    b",",
    b"-",
    b"*",
    b"0",
    b"-1",
    b"65536",
    b"4294967296",
    b"99999999999999999999999999",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"\xed\xb3\xbf",  # a lone surrogate, not UTF-8
    b"\t",
    b"=" * 40,
    b"a" * 300,
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], text: bool = False) -> bytes:
    """A seed, or two spliced, then a few byte-level edits (AFL's havoc, roughly)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 9))
        at = draw(st.integers(0, len(data)))
        if op == 0 and data:  # flip a bit
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and data:  # an interesting byte
            data[min(at, len(data) - 1)] = draw(st.sampled_from(INTERESTING_BYTES))
        elif op == 2:  # an interesting number, big-endian, 1/2/4 bytes
            width = draw(st.sampled_from([1, 2, 4]))
            value = draw(st.sampled_from(INTERESTING_INTS)) & ((1 << (8 * width)) - 1)
            data[at : at + width] = value.to_bytes(width, "big")
        elif op == 3:  # delete a range
            data[at : at + draw(st.integers(1, 64))] = b""
        elif op == 4:  # truncate
            del data[at:]
        elif op == 5:  # insert random bytes
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == 6 and data:  # duplicate a chunk somewhere else
            start = draw(st.integers(0, len(data) - 1))
            chunk = data[start : start + draw(st.integers(1, 128))]
            data[at:at] = chunk
        elif op == 7:  # splice in part of another seed
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, len(other)))
            data[at:] = other[start:]
        elif op == 8 and text:  # a token that parsers trip on
            data[at:at] = draw(st.sampled_from(TEXT_TOKENS))
        elif op == 9 and text:  # drop or repeat one line
            lines = bytes(data).split(b"\n")
            index = draw(st.integers(0, len(lines) - 1))
            if draw(st.booleans()):
                del lines[index]
            else:
                lines.insert(index, lines[index])
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def inputs(seeds: list[bytes], text: bool = False) -> st.SearchStrategy[bytes]:
    """Mostly mutated seeds; some plain random bytes for what seeds never look like."""
    assert seeds, "a fuzz target needs seed inputs"
    return st.one_of(
        mutated(seeds, text),
        mutated(seeds, text),
        mutated(seeds, text),
        st.binary(max_size=2048),
    )


# --- the run ------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    seconds: float = 0.0
    inputs: int = 0


RUNS: list[Run] = []  # for the summary at the end of the pytest session


def fuzz(target: str, check: Check, strategy: st.SearchStrategy[bytes]) -> Run:
    """Run `check` on inputs from `strategy` until the budget is spent.

    On a failure the shrunk input is saved to the corpus and the failure re-raised.
    """
    run = Run(target)
    RUNS.append(run)
    failing: list[bytes] = []

    def one(data: bytes) -> None:
        run.inputs += 1
        try:
            check(data)
        except BaseException:
            failing.append(data)
            raise

    batch = settings(
        max_examples=BATCH_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )(given(strategy)(one))
    start = time.monotonic()
    end = start + budget_seconds()
    number = first_batch_seed()
    try:
        while True:
            seed(number)(batch)()
            number += 1
            if time.monotonic() >= end:
                break
    except BaseException:
        if failing:
            # Hypothesis replays the shrunk example last, just before it raises.
            path = save_crash(target, failing[-1])
            print(f"\n{target}: crashing input saved to {path.relative_to(HERE)}")
        raise
    finally:
        run.seconds = time.monotonic() - start
    return run
