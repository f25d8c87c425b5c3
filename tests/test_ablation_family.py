"""The report's pre-registered family (Holm over configs × primary endpoints, TOST for "no
difference", the rest exploratory) and its table of statistics (a statistic is one row), on
hand-made run folders (no training: seconds)."""

import csv

import numpy as np
import pytest
from scipy import stats as sps
from test_ablation import BUDGET, ablate, finish_run

from detector.ablation.plan import plan_runs
from detector.ablation.stats import paired_difference, pooled_sd, tost
from detector.ablation.table import STATS, Stat


def by_hand(points: list[float], margin: float) -> float:
    """TOST's p by scipy's one-sample t tests, one per side: H0 mean <= -margin, mean >= margin."""
    lower = sps.ttest_1samp(points, -margin, alternative="greater").pvalue
    upper = sps.ttest_1samp(points, margin, alternative="less").pvalue
    return max(lower, upper)


@pytest.mark.parametrize(
    "points, margin, expected",
    [
        # mean 0, sd 0.57735, se 0.288675: t = 1 / se = 3.4641 on 3 df either side -> 0.020260
        ([0.5, -0.5, 0.5, -0.5], 1.0, 0.020260),
        # mean 0.6, se 0.122474: t.sf(1.6 / se) = 0.00048 and t.cdf(-0.4 / se) = 0.023459
        ([0.6, 0.9, 0.3, 0.6], 1.0, 0.023459),
        # mean 2, beyond the margin: far from equivalent
        ([1.0, 2.0, 3.0, 2.0], 1.0, None),
    ],
)
def test_tost_on_hand_computed_cases(points, margin, expected):
    d = differences(points)
    p = tost(d, margin)
    assert p == pytest.approx(by_hand(points, margin), rel=1e-9)
    if expected is None:
        assert p > 0.9
    else:
        assert p == pytest.approx(expected, abs=1e-6)
    assert np.isnan(tost(paired_difference({0: 1.0, 1: 1.0, 2: 1.0}, {0: 0, 1: 0, 2: 0}), 1.0))


def differences(points: list[float]):
    """The paired differences ``points`` (metric values must be >= 0: 10 + each against 10)."""
    seeds = range(len(points))
    return paired_difference({s: 10 + d for s, d in zip(seeds, points)}, dict.fromkeys(seeds, 10))


def test_pooled_sd_weights_each_config_by_its_degrees_of_freedom():
    a = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})  # sd 1, 2 df
    b = paired_difference({0: 0.0, 1: 4.0}, {0: 0.0, 1: 0.0})  # sd 2.828, 1 df
    assert pooled_sd([a, b]) == pytest.approx(((2 * 1.0 + 1 * 8.0) / 3) ** 0.5)


def make_family_ablation(out):
    """smoothl1 (baseline), l1 and giou, 4 seeds, differences (AP points) known by hand:
    l1: AP +1 +2 +3 +2, AP90 +4 +5 +6 +5; giou: AP +0.1 -0.1 +0.2 -0.2, AP90 0 (untestable)."""
    base_ap, base_ap90 = [0.50, 0.52, 0.47, 0.51], [0.30, 0.33, 0.29, 0.31]
    shift = {
        "l1": ([1, 2, 3, 2], [4, 5, 6, 5]),
        "giou": ([0.1, -0.1, 0.2, -0.2], [0, 0, 0, 0]),
        "smoothl1": ([0] * 4, [0] * 4),
    }
    for run in plan_runs(["smoothl1.yaml", "l1.yaml", "giou.yaml"], [], 4, BUDGET):
        ap, ap90 = shift[run.group]
        values = dict(AP=base_ap[run.seed] + ap[run.seed] / 100)
        values["AP90"] = base_ap90[run.seed] + ap90[run.seed] / 100
        finish_run(out, run, **values)


def test_the_family_is_configs_times_primary_endpoints(tmp_path, capsys):
    out = tmp_path / "abl"
    make_family_ablation(out)
    args = ["--cfgs", "smoothl1.yaml", "l1.yaml", "giou.yaml", "--seeds", "4", "--out", str(out)]
    assert ablate.main([*args, *BUDGET, "--report-only", "--primary", "AP", "AP90"]) == 0
    rows = [r for r in csv.DictReader(open(out / "summary.csv")) if r["kind"] == "paired"]
    paired = {(r["config"], r["metric"]): r for r in rows}
    primary = [key for key, r in paired.items() if r["family"] == "primary"]
    assert sorted(primary) == [("giou", "AP"), ("giou", "AP90"), ("l1", "AP"), ("l1", "AP90")]
    # Holm over exactly 4 tests; giou's AP90 (sd 0: no t test) counts with p = 1
    p = {key: float(paired[key]["p"]) for key in primary if paired[key]["p"]}
    t = sps.ttest_1samp
    assert p[("l1", "AP")] == pytest.approx(t([1, 2, 3, 2], 0).pvalue, rel=1e-5)
    assert p[("l1", "AP90")] == pytest.approx(t([4, 5, 6, 5], 0).pvalue, rel=1e-5)
    holm = {key: float(paired[key]["p_holm"]) for key in primary}
    assert holm[("l1", "AP90")] == pytest.approx(4 * p[("l1", "AP90")], rel=1e-5)
    assert holm[("l1", "AP")] == pytest.approx(3 * p[("l1", "AP")], rel=1e-5)
    assert holm[("giou", "AP90")] == 1.0 and paired[("giou", "AP90")]["verdict"] == "too few seeds"
    assert (
        paired[("l1", "AP")]["verdict"] == "better"
        and paired[("l1", "AP90")]["verdict"] == "better"
    )
    # "no difference" only by TOST: giou's AP within ±1 point, Holm over the same 4 tests
    giou = paired[("giou", "AP")]
    assert float(giou["p_tost"]) == pytest.approx(by_hand([0.1, -0.1, 0.2, -0.2], 1.0), rel=1e-5)
    assert float(giou["p_tost_holm"]) == pytest.approx(4 * float(giou["p_tost"]), rel=1e-5)
    assert giou["verdict"] == "equivalent within ±1" and float(giou["margin"]) == 0.01
    assert float(paired[("l1", "AP90")]["margin"]) == 0.02
    # every other metric is exploratory: no Holm, no verdict
    other = [r for key, r in paired.items() if key not in primary]
    assert other and all(r["family"] == "exploratory" and r["p_holm"] == "" for r in other)
    assert {r["verdict"] for r in other} <= {"exploratory", "too few seeds"}
    md = (out / "summary.md").read_text()
    assert "**Pre-registered family: 4 tests** (each config × AP, AP90)" in md
    assert "95% CI (uncorrected)" in md and "margins ±1 AP, ±2 AP90" in md
    assert "| giou | AP | primary | 4 | +0.0 |" in md and "| equivalent within ±1 |" in md
    # the detectable effect uses the sd pooled over the configs: l1 and giou at AP
    sd = pooled_sd(differences(d) for d in ([1, 2, 3, 2], [0.1, -0.1, 0.2, -0.2]))
    from detector.ablation.stats import detectable_effect

    expected = detectable_effect(sd / 100, 4, 0.05 / 4)
    assert float(paired[("l1", "AP")]["detectable"]) == pytest.approx(expected, rel=1e-5)
    assert float(paired[("giou", "AP")]["detectable"]) == pytest.approx(expected, rel=1e-5)
    # the simultaneous interval of a primary test: t at 1 - 0.05 / (2 * 4), 3 df
    half = sps.t.ppf(1 - 0.05 / 8, 3) * np.std([1, 2, 3, 2], ddof=1) / 2
    low, high = (
        float(paired[("l1", "AP")][k]) for k in ("ci_simultaneous_low", "ci_simultaneous_high")
    )
    assert (low, high) == pytest.approx((0.02 - half / 100, 0.02 + half / 100), rel=1e-5)
    # the seeds rule at 0.05 / 10 (--plan-tests 10): the fewest pairs that find 1 AP point
    assert (
        ablate.main([*args, *BUDGET, "--report-only", "--primary", "AP", "--plan-tests", "10"]) == 0
    )
    need = next(n for n in range(2, 100) if detectable_effect(sd / 100, n, 0.005) <= 0.01)
    assert detectable_effect(sd / 100, need - 1, 0.005) > 0.01
    md = (out / "summary.md").read_text()
    assert "## Power: the seeds rule" in md and "0.05 / 10 = 0.005" in md
    assert f"| AP | {sd:.2f} | 6 | 4 |" in md and f"| ±1 | {need} |" in md


@pytest.mark.parametrize(
    "args, words",
    [
        (["--primary", "AR100"], ["--primary AR100", "AP90"]),
        (["--margins", "AP=1"], ["--margins", "--primary"]),
        (["--primary", "AP", "--margins", "AP90=2"], ["--margins AP90=2"]),
        (["--primary", "AP", "--margins", "AP=-1"], ["POINTS > 0"]),
        (["--plan-tests", "10"], ["--plan-tests 10", "--primary"]),
    ],
)
def test_bad_family_options_are_one_line(tmp_path, capsys, args, words):
    assert ablate.main(["--cfgs", "smoothl1.yaml", "--out", str(tmp_path / "a"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_a_config_without_a_finished_run_still_counts_in_the_family():
    """Holm over exactly configs x primary endpoints: a config whose every seed failed keeps its
    tests, as p = 1, so the others' Holm p and simultaneous intervals do not loosen (with it
    dropped, m fell from 2 to 1 and p_holm to the raw p)."""
    from detector.ablation.report import Family, Group, compare

    def run(ap):
        return {"values": {s.name: (ap if s.name == "AP" else 0.5) for s in STATS}}

    base = Group("smoothl1", 6, {seed: run(0.80 + 0.001 * seed) for seed in range(6)})
    better = Group("l1", 6, {seed: run(0.83 + 0.003 * (seed % 2)) for seed in range(6)})
    failed = Group("giou", 6)  # every seed failed: no results
    paired, tests = compare([base, better, failed], "smoothl1", Family(primary=("AP",)))
    assert tests == 2 and set(paired) == {"l1", "giou"}
    assert paired["giou"]["AP"].verdict == "no pairs: counted at p = 1"
    # not started is not failed
    from detector.ablation.plan import Run
    from detector.ablation.report import NOT_STARTED, _summary_section, _unfinished_section

    failed.unfinished = [(Run("giou", seed, ["giou.yaml"]), NOT_STARTED) for seed in range(6)]
    assert "| giou | 0 of 6: not started |" in "\n".join(_summary_section([base, failed]))
    assert "- **giou**: no run started yet\n" in "\n".join(_unfinished_section([failed]))
    assert paired["giou"]["AP90"].family == "exploratory"  # not a primary endpoint here
    d = paired["l1"]["AP"]
    assert d.p_holm == pytest.approx(min(1.0, 2 * d.p)) and d.family == "primary"
    low, high = sps.t.interval(1 - 0.05 / 2, d.n - 1, loc=d.mean, scale=d.std / d.n**0.5)
    assert (d.sim_low, d.sim_high) == (pytest.approx(low), pytest.approx(high))


def test_a_margin_not_given_keeps_its_default():
    family = ablate.parse_family(["AP", "AP90"], ["AP=0.5"])
    assert family.margins["AP"] == pytest.approx(0.005) and family.margins["AP90"] == 0.02


def test_a_statistic_is_one_row(tmp_path, capsys):
    """One row added to STATS: in summary.md's table, summary.csv's run, group and paired rows."""

    def last_total_loss(run):
        return [r for r in run["log"] if r["type"] == "train"][-1]["total_loss"]

    out = tmp_path / "abl"
    for run in plan_runs(["smoothl1.yaml", "l1.yaml"], [], 2, BUDGET):
        finish_run(out, run)
    row = Stat("last_loss", last_total_loss, scale=1, fmt=".2f", compared=True, table="summary")
    STATS.append(row)
    try:
        args = ["--cfgs", "smoothl1.yaml", "l1.yaml", "--seeds", "2", "--out", str(out)]
        assert ablate.main([*args, *BUDGET, "--report-only"]) == 0
    finally:
        STATS.remove(row)
    md = (out / "summary.md").read_text()
    assert "| images_per_s | last_loss |" in md and "| 3.0 | 0.50 ± 0.00 |" in md
    assert "| l1 | last_loss | 2 |" in md
    rows = [r for r in csv.DictReader(open(out / "summary.csv")) if r["metric"] == "last_loss"]
    assert sorted(r["kind"] for r in rows) == ["group", "group", "paired"] + ["run"] * 4
    assert {float(r["value"]) for r in rows if r["kind"] == "run"} == {0.5}


def test_dynamics_diagnostics_and_where_a_loss_helps(tmp_path, monkeypatch, capsys):
    """A Dynamic run logs beta, its statistic and the zero shares at every update (iterations
    100, 200 and 300, in "dynamic" records) beside its log steps (100 and 300): beta.csv holds each
    update and summary.md the sampling table, whose means are over the updates (a run without
    dynamic records, the smoothl1 runs here: over its log steps); the TP IoUs become tp_iou.csv's
    histogram."""
    import json

    from test_ablation_records import finish_with_heavy_files

    out = tmp_path / "abl"
    finish_with_heavy_files(out, monkeypatch)  # smoothl1 and l1, 2 seeds, with TPs
    for run_dir in (out / "runs").iterdir():
        dynamic = run_dir.name.startswith("l1")  # l1 plays Dynamic: its beta changes
        steps = []
        for i, beta in ((100, 1.0), (200, 0.5), (300, 0.25)):
            sampling = {"num_pos_per_image": 4.0, "num_zero_target_per_image": 1.5}
            if i != 200:
                # a log step; a Dynamic run's zero share here (90%) is not in the mean
                step = {"type": "train", "iter": i, "loss_box_reg": 0.1, "total_loss": 1.0}
                step.update(sampling, beta=beta if dynamic else 1.0)
                step.update({"beta_zero_share": 0.9} if dynamic else {})
                steps.append(json.dumps(step) + "\n")
            if dynamic:
                zero_share = {100: 0.1, 200: 0.5, 300: 0.3}[i]
                update = {"type": "dynamic", "iter": i, "beta": beta, **sampling}
                update.update(beta_statistic=0.0 if i == 200 else 0.3, beta_zero_share=zero_share)
                steps.append(json.dumps(update) + "\n")
        (run_dir / "metrics.jsonl").write_text("".join(steps))
    args = ["--cfgs", "smoothl1.yaml", "l1.yaml", "--seeds", "2", "--out", str(out)]
    assert ablate.main([*args, *BUDGET, "--report-only"]) == 0
    beta = list(csv.DictReader(open(out / "beta.csv")))
    assert [(r["run"], r["iter"], r["beta"]) for r in beta[:3]] == [
        ("l1-seed0", "100", "1"),
        ("l1-seed0", "200", "0.5"),
        ("l1-seed0", "300", "0.25"),
    ]
    assert (
        len(beta) == 6 and beta[1]["beta_statistic"] == "0" and beta[1]["beta_zero_share"] == "0.5"
    )
    md = (out / "summary.md").read_text()
    assert (
        "## Sampled positives and Dynamic's statistic" in md
        and "beta.csv: every logged β of the 2 run(s)" in md
    )
    assert (
        "| config | runs | positives per image | of them zero targets (GT) | "
        "zero statistics per update (%) | final β |" in md
    )
    assert "| l1 | 2 | 4.0 ± 0.0 | 1.5 ± 0.0 | 30.0 ± 0.0 | 0.250 ± 0.000 |" in md
    assert "| smoothl1 | 2 | 4.0 ± 0.0 | 1.5 ± 0.0 | n/a | 1.000 ± 0.000 |" in md
    hist = list(csv.DictReader(open(out / "tp_iou.csv")))
    l1 = {r["iou_low"]: int(r["count"]) for r in hist if r["config"] == "l1"}
    # l1's TPs per seed at IoU 0.8, 0.5 and 0.95: 2 of each over 2 seeds
    assert sum(l1.values()) == 6 and l1["0.500"] == l1["0.800"] == l1["0.950"] == 2
    assert "tp_iou.csv: its counts, pooled over seeds" in md
