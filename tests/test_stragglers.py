"""The straggler report compares each rank with the fastest rank doing the same work (its pipeline
stage): a later stage that is slower by design is not a straggler, a rank slower than its peers is.
The distributed path (timing, gathering, the slow-rank drill) runs in the SFT parity tests."""

from xr_nemo.training.stragglers import StragglerReport, report_stragglers


def test_ranks_are_compared_within_their_pipeline_stage():
    report = StragglerReport.of(
        step=50,
        seconds=[1.0, 1.1, 3.0, 6.5],
        stages=[0, 0, 1, 1],
        nodes=["a", "a", "b", "b"],
        threshold=1.5,
    )
    assert report.ratios == [1.0, 1.1, 1.0, 6.5 / 3.0]
    assert report.slow == [3]
    assert report.describe() == "step 50: slow ranks: rank 3 on b (2.17× the fastest of its stage)"


def test_slow_ranks_are_listed_slowest_first_and_recorded_as_metrics(capsys):
    report = StragglerReport.of(
        step=10,
        seconds=[2.0, 1.0, 4.0, 1.0],
        stages=[0, 0, 0, 0],
        nodes=["n0", "n0", "n1", "n1"],
        threshold=1.5,
    )
    assert report.slow == [2, 0]
    metrics = report_stragglers(report, "sft")
    assert metrics == {"straggler_slowest_ratio": 4.0, "straggler_slowest_rank": 2, "straggler_slow_ranks": 2}
    assert "[sft] step 10: slow ranks: rank 2 on n1 (4.00×" in capsys.readouterr().out
