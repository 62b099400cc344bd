"""``fmtl tune`` and ``fmtl compare --preset`` on a tiny synthetic problem, through the console script."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import TINY, results
from hypothesis import given
from hypothesis import strategies as st

from fmtl import balancers
from fmtl.train import presets
from fmtl.train.cli import build_parser, config_from_args, main
from fmtl.train.compare import expand_rows
from fmtl.train.config import load_toml
from fmtl.train.tune import GRIDS, grid_points, point_label, select_point

PNG = b"\x89PNG\r\n\x1a\n"
#: One epoch: these tests check what is trained, reused and selected, not how well.
FAST = [*TINY, "--epochs", "1", "--threads", "1"]


def _fmtl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script (next to this Python), run in ``cwd``."""
    exe = shutil.which("fmtl", path=str(Path(sys.executable).parent)) or shutil.which("fmtl")
    assert exe, "the fmtl console script is not installed"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


@pytest.fixture
def no_run_plots(monkeypatch):
    """Each run's own PNGs (tested in test_train_outputs) take ~95% of a tiny run's time: skip them here."""
    import fmtl.train.plots

    monkeypatch.setattr(fmtl.train.plots, "plot_run", lambda out: [])


def _csv(path: Path) -> dict[str, dict[str, str]]:
    return {r["label"]: r for r in csv.DictReader(path.open())}


def _doctor(run: Path, val: float, test: float) -> None:
    """Rewrites a finished run's validation score and test Δp (a run where validation and test disagree)."""
    res = results(run)
    res["selected"]["score"], res["delta_p"] = val, test
    res["selected"]["delta_p"] = test
    (run / "results.json").write_text(json.dumps(res))


def test_tune_selects_on_validation_reuses_runs_and_writes_a_reusable_config(tmp_path, capsys, no_run_plots):
    out = tmp_path / "t"
    grid = ["--grid", "beta=0.1,0.5", "--seeds", "2", "--out", str(out)]
    assert main(["tune", *FAST, *grid]) == 0
    assert "selected on validation" in capsys.readouterr().out
    table = _csv(out / "tune.csv")
    assert list(table) == ["beta0.1", "beta0.5"] and [r["seeds"] for r in table.values()] == ["2", "2"]
    assert sum(r["selected"] == "true" for r in table.values()) == 1
    stl_dirs = {}
    for label in table:  # one STL run per seed, shared by every grid point
        for s in (0, 1):
            res = results(out / label / f"seed{s}")
            assert stl_dirs.setdefault(s, res["stl_dir"]) == res["stl_dir"] and f"stl-seed{s}-" in res["stl_dir"]
            assert res["config"]["opts"]["beta"] == float(label[4:])
        # the table's validation mean is the runs' validation Δp (at the epoch each selected on validation)
        vals = [results(out / label / f"seed{s}")["selected"]["score"] for s in (0, 1)]
        assert float(table[label]["val_delta_p_mean"]) == pytest.approx(sum(vals) / 2)
    assert len(set(stl_dirs.values())) == 2

    # validation and test disagree: beta=0.1 wins on validation, beta=0.5 on test by far
    for s in (0, 1):
        _doctor(out / "beta0.1" / f"seed{s}", val=10.0 + s, test=-50.0)
        _doctor(out / "beta0.5" / f"seed{s}", val=-10.0, test=50.0 + s)
    checkpoints = [*out.rglob("checkpoint.pt"), *(Path(d) / "checkpoint.pt" for d in stl_dirs.values())]
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    assert len(before) == 2 * 2 + 2
    proc = _fmtl("tune", *FAST, *grid, cwd=tmp_path)  # the console script; every run is reused
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing retrained
    table = _csv(out / "tune.csv")
    assert table["beta0.1"]["selected"] == "true" and table["beta0.5"]["selected"] == "false"
    assert float(table["beta0.1"]["val_delta_p_mean"]) == 10.5
    assert float(table["beta0.1"]["test_delta_p_mean"]) == -50.0  # the selected point's test Δp is reported as is
    assert "selected on validation: beta=0.1" in printed and "its test Δp: -50.00 ± 0.00 %" in printed
    assert "| **0.1**" in (out / "tune.md").read_text()

    # selected.toml: fmtl train resolves it to the selected run itself (so it is reused, not retrained) ...
    sel = out / "selected.toml"
    assert load_toml(sel)["opts"] == {"dbmtl": {"beta": 0.1}} and "seed" not in load_toml(sel)
    assert main(["train", "--config", str(sel), "--seed", "1", "--out", str(out / "beta0.1" / "seed1")]) == 0
    assert "[reused finished run]" in capsys.readouterr().out
    # ... and fmtl compare gives the selected β to DB-MTL only
    args = build_parser().parse_args(["compare", "--config", str(sel), "--methods", "ew,dbmtl"])
    rows = expand_rows(["ew", "dbmtl"], [], config_from_args(args)["opts"])
    assert rows["dbmtl"].opts == {"beta": 0.1} and rows["ew"].opts == {}


@pytest.mark.parametrize("grid, names", [
    (["--grid", "gamma=1,2"], ["gamma", "beta", "beta_sigma", "alpha"]),  # the unknown key and the valid ones
    (["--grid", "beta=abc"], ["beta=abc"]),  # a string where a number goes
    (["--grid", "beta=0.5,1.5"], ["beta=1.5", "[0, 1)"]),
    (["--grid", "beta=0.1,,0.5"], ["empty value"]),
    (["--grid", "beta"], ["KEY=V1,V2"]),
    (["--grid", "beta=0.1,0.1"], ["twice"]),
    (["--grid", "beta=0.1", "--grid", "beta=0.5"], ["already a key"]),
    ([], ["--grid KEY=V1,V2", "paper-beta"]),
    (["--grid-preset", "paper"], ["paper-beta"]),
    (["--grid-preset", "paper-beta", "--method", "pcgrad"], ["dbmtl", "pcgrad"]),
    (["--grid", "c=0.1", "--method", "stl"], ["stl"]),
    (["--grid", 'alpha="a b","a_b"'], ["alphaa_b"]),  # two values, one directory
])  # fmt: skip
def test_bad_grids_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, grid, names):
    out = tmp_path / "t"
    assert main(["tune", *FAST, *grid, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmtl: error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.floats(-100, 100), min_size=1, max_size=3), min_size=1))
def test_the_selected_point_has_the_best_validation_mean(val):
    best = select_point(val)
    mean = {k: sum(v) / len(v) for k, v in val.items()}
    assert mean[best] >= max(mean.values()) - 1e-9 * (1 + abs(mean[best]))
    assert best == next(k for k in val if mean[k] == mean[best])  # ties: the first in grid order


def test_a_point_without_a_finite_validation_value_is_never_selected():
    assert select_point({"a": [math.nan, 100.0], "b": [-1.0, -1.0]}) == "b"
    with pytest.raises(ValueError, match="finite validation"):
        select_point({"a": [math.nan]})


def test_the_paper_beta_grid_is_section_4_1s_and_shares_its_runs_with_fig5():
    method, grid = GRIDS["paper-beta"]
    points = grid_points(grid)
    beta_k = sorted((p["beta"], p["beta_sigma"]) for p in points)  # β_k = β / k^σ
    assert method == "dbmtl" and beta_k == [(b, s) for b in (0.1, 0.5, 0.9) for s in (0.0, 0.5)]
    fig5 = {r.label: r.opts for r in presets.variants("fig5")}
    assert len(fig5) == 19  # β ∈ {0, 0.1, …, 0.9} and {0.1, …, 0.9}/k^0.5
    for p in points:  # the same directory for the same configuration
        assert fig5[point_label(p)] == p


def test_a_tuned_point_is_the_run_fig5_would_train(tmp_path, no_run_plots):
    from fmtl.train.fit import configure
    from fmtl.train.runs import default_stl_dir, prepare

    out = tmp_path / "shared"
    assert main(["tune", *FAST, "--grid", "beta=0.1", "--grid", "beta_sigma=0.0", "--out", str(out)]) == 0
    base = config_from_args(build_parser().parse_args(["compare", *FAST, "--preset", "fig5"]))
    row = {r.label: r for r in presets.variants("fig5")}["beta0.1-beta_sigma0.0"]
    run = configure(None, {**base, "seed": 0, "method": row.method, "opts": row.opts}, {})
    assert prepare(out / row.label / "seed0", run) == "finished"  # compare --preset fig5 --out shared reuses it
    assert (default_stl_dir(out, {**base, "seed": 0}) / "results.json").exists()  # and its STL run


def test_every_preset_row_builds_its_balancer():
    for name in presets.names():
        for row in presets.variants(name):
            balancers.get(row.method, **row.opts)
    fig1 = presets.variants("fig1")
    logs = {r.method for r in fig1 if r.opts.get("log_transform")}
    assert logs == {"pcgrad", "gradvac", "imtl_g", "cagrad", "nash_mtl", "aligned_mtl"}
    assert {r.method for r in fig1 if not r.opts} == logs | {"dbmtl"}  # each also vanilla, and DB-MTL
    assert [r.opts for r in presets.variants("fig6")] == [{"alpha": a} for a in ("max", "min", "mean", "median", 1.0)]


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_plots_in_the_papers_form(tmp_path, name):
    dp = {r.label: (float(i) - 3.0, 0.5) for i, r in enumerate(presets.variants(name))}
    path = presets.plot_preset(name, dp, tmp_path / f"{name}.png")
    assert path.read_bytes()[:8] == PNG
    md, text = presets.paper_table(name, dp)
    assert len(md.splitlines()) == 2 + len(dp) and len(text.splitlines()) == 1 + len(dp)


def test_compare_preset_table5_writes_the_paper_table_and_plot(tmp_path, capsys, no_run_plots):
    out = tmp_path / "t5"
    assert main(["compare", *FAST, "--preset", "table5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in (out / "table5.md").read_text().splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert [c[:3] for c in cells] == [["EW", "✗", "✗"], ["log only", "✓", "✗"], ["grad only", "✗", "✓"],
                                      ["DB-MTL", "✓", "✓"]]  # fmt: skip
    assert all("±" in c[3] for c in cells) and "Table 5" in printed
    assert (out / "table5.png").read_bytes()[:8] == PNG and (out / "table.md").exists()
    assert results(out / "log-only" / "seed0")["config"]["opts"] == {"normalize": False}
    assert results(out / "grad-only" / "seed0")["config"]["opts"] == {"log_transform": False}
    paper = {r["label"]: float(r["delta_p_mean"]) for r in csv.DictReader((out / "table5.csv").open())}
    assert paper["dbmtl"] == pytest.approx(results(out / "dbmtl" / "seed0")["delta_p"])


@pytest.mark.parametrize("args, msg", [(["--preset", "fig7"], "fig1"), (["--preset", "fig1", "--methods", "ew"],
                                                                        "drop --methods"), ([], "--preset NAME")])
def test_compare_preset_errors(tmp_path, capsys, args, msg):
    assert main(["compare", *FAST, *args, "--out", str(tmp_path / "c")]) == 2
    assert msg in capsys.readouterr().err and not (tmp_path / "c").exists()
