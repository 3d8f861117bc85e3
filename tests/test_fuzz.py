"""The project's fuzzer in the suite: 2,000 seeded cases of mutated zoo and small specs, each
loaded and (when it loads and is small) built, run, exported and run on onnxruntime. Every case
must succeed or stop with one of cnngraph's own errors in one line; no traceback, no hang.
The long run (20,000 cases) is in docs/robustness.md."""
import random

import pytest

from cnngraph import fuzz

SEED, CASES = 10, 2000


def test_cases_are_reproducible_from_seed_and_index():
    """Case i of seed s is the same whenever it is made (and in whatever order)."""
    first = [fuzz.make_case(SEED, i).describe() for i in (5, 900, 1999)]
    again = [fuzz.make_case(SEED, i).describe() for i in (1999, 900, 5)][::-1]
    assert first == again
    assert fuzz.make_case(SEED, 5).describe() != fuzz.make_case(SEED + 1, 5).describe()


def test_mutations_cover_every_level_and_source():
    cases = [fuzz.make_case(SEED, i) for i in range(300)]
    kinds = {m.split(":")[0].split(" ")[0] for c in cases for m in c.mutations}
    assert {"value", "plausible", "structure", "text", "cheap"} <= kinds
    assert {c.form for c in cases} == {"dict", ".yaml", ".json"}
    assert {c.source for c in cases} == set(fuzz.sources())


def test_the_fuzzer_survives_its_own_mutations():
    """Mutations applied on top of mutations (huge ints, inf, bombs, deep nesting) never break
    the fuzzer itself: each tree can still be mutated and written out."""
    rng = random.Random(0)
    for start in range(20):
        tree = {"name": "t", "input": [3, 8, 8], "layers": [{"name": "c", "op": "conv2d"}]}
        for _ in range(6):
            (fuzz.mutate_structure if rng.random() < 0.5 else fuzz.mutate_value)(rng, tree)
            fuzz._dump(tree, ".yaml"), fuzz._dump(tree, ".json")


def test_fuzz_2000_cases_no_traceback_no_hang():
    report = fuzz.run(SEED, CASES, workers=2, timeout=60.0)  # a slow CI is not a hang
    assert len(report.results) == CASES
    outcomes = report.outcomes()
    # the pipeline is exercised end to end, not only the loader
    assert outcomes[("onnxruntime", "ok")] >= 50, report.summary()
    assert outcomes[("load", "error")] >= CASES // 2, report.summary()
    if report.findings:
        pytest.fail("\n" + report.summary(), pytrace=False)
