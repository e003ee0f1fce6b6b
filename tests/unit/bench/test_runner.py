"""bench.__main__: which results file each benchmark writes, ids chosen case-insensitively, targets read from text."""

from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS, main, meets


def test_every_benchmark_has_a_results_file_of_its_own() -> None:
    names = [benchmark.results_name for benchmark in BENCHMARKS]

    assert len(names) == len(set(names))
    # B3b runs B3's module again, at 50M rows, into its own file, and tells the module so.
    b3b = next(b for b in BENCHMARKS if b.id == "B3b")
    assert b3b.name == "b3_spark_vs_pandas" and b3b.results_name != b3b.name
    for arguments in (b3b.quick, b3b.full):
        assert arguments[arguments.index("--report-as") + 1] == b3b.results_name
    assert b3b.full[b3b.full.index("--rows") + 1] == "50000000"


def test_ids_are_chosen_whatever_their_case(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "b3b,B11"])

    assert exit_info.value.code == 2
    assert "unknown benchmark(s) ['B11']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [(0.95, ">= 0.8 on 2 cores", True), (0.7, ">= 0.8", False), (1.2, "<= 1.15", False), (0.4, None, None)],
)
def test_meets_reads_the_first_bound(value: float, target: str | None, expected: bool | None) -> None:
    assert meets(value, target) is expected
