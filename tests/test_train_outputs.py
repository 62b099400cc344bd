"""Outputs of runs and comparisons: tables (Markdown, CSV, LaTeX), compare's rows and plan, plots, TensorBoard."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from _train_helpers import tiny_config

from fmtl.train import train
from fmtl.train.compare import Row, expand_rows, parse_variant, plan
from fmtl.train.plots import plot_run, read_metrics, task_styles
from fmtl.train.report import aggregate, compare_table, compare_tex, mean_normalized_loss

PNG = b"\x89PNG\r\n\x1a\n"

TEMPLATE = {"tasks": ["mu", "homo"], "metrics": {"mu": ["mae"], "homo": ["mae", "acc"]},
            "units": {"mu": "D", "homo": ""},
            "higher_is_better": {"mu": {"mae": False}, "homo": {"mae": False, "acc": True}}}  # fmt: skip


def _run(seed, mu, homo, acc, dp):
    return {"seed": seed, "selected": {"test": {"mu": {"mae": mu}, "homo": {"mae": homo, "acc": acc}}}, "delta_p": dp}


def _rows():
    return {
        "stl": aggregate([_run(0, 0.5, 1.0, 0.9, None), _run(1, 0.5, 1.0, 0.9, None)]),  # STL beats every method
        "ew": aggregate([_run(0, 1.0, 2.0, 0.5, -80.0), _run(1, 1.2, 2.2, 0.6, -90.0)]),
        "nash_mtl": aggregate([_run(0, 0.9, 2.5, 0.7, -70.0), _run(1, 0.7, 2.5, 0.7, -60.0)]),
    }


def _cells(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()[2:]]


def test_the_best_mtl_method_is_marked_never_stl():
    md, _ = compare_table(_rows(), TEMPLATE)
    stl, ew, nash = _cells(md)
    assert not any("**" in c for c in stl) and stl[-1] == "0 (reference)"
    # mu MAE ↓: nash (0.8) beats ew (1.1); homo MAE ↓: ew (2.1); homo ACC ↑: nash (0.7); Δp: nash (−65)
    assert nash[1] == "**0.8**" and ew[1] == "1.1"
    assert ew[2] == "**2.1**" and nash[2] == "2.5"
    assert nash[3] == "**0.7**" and ew[3] == "0.55"
    assert nash[4] == "**-65.00 ± 7.07**" and ew[4] == "-85.00 ± 7.07"


def test_the_csv_holds_every_seed_then_the_mean_and_std():
    _, text = compare_table(_rows(), TEMPLATE)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["method", "seed", "mu_mae", "homo_mae", "homo_acc", "delta_p"]
    ew = {r["seed"]: r for r in rows if r["method"] == "ew"}
    assert set(ew) == {"0", "1", "mean", "std"}
    assert float(ew["0"]["mu_mae"]) == 1.0 and float(ew["1"]["delta_p"]) == -90.0
    assert float(ew["mean"]["homo_mae"]) == pytest.approx(2.1)
    assert float(ew["std"]["delta_p"]) == pytest.approx(math.sqrt(50))
    assert all(float(r["delta_p"]) == 0.0 for r in rows if r["method"] == "stl")


def test_the_latex_table_is_booktabs_escaped_and_marks_the_best_mtl_method():
    tex = compare_tex(_rows(), TEMPLATE, caption="qm9: 2 seeds, Δp vs STL")
    lines = tex.splitlines()
    assert lines[:3] == [r"\begin{table}", r"\centering", r"\caption{qm9: 2 seeds, $\Delta$p vs STL}"]
    assert lines[3] == r"\begin{tabular}{lrrrr}" and lines[4] == r"\toprule" and lines[-2:] == [r"\end{tabular}",
                                                                                                   r"\end{table}"]
    assert r"\bottomrule" in lines and lines.count(r"\midrule") == 2  # below the header and below STL
    body = {line.split(" & ")[0]: line for line in lines if " & " in line}
    assert r"nash\_mtl" in body and r"\textbf{$-$65.00 $\pm$ 7.07}" in body[r"nash\_mtl"]
    assert r"\textbf" not in body["stl"] and body["stl"].endswith(r"0 (reference) \\")
    assert "homo ACC $\\uparrow$" in body["method"]
    # every row has as many cells as the header
    assert len({line.count(" & ") for line in body.values()}) == 1


def test_missing_metrics_are_dashes_not_errors():
    rows = {"stl": aggregate([_run(0, 0.5, 1.0, 0.9, None)]), "ew": aggregate([_run(0, None, 2.0, 0.5, None)])}
    md, text = compare_table(rows, TEMPLATE)
    ew = _cells(md)[1]
    assert ew[1] == "-" and ew[-1] == "-"
    assert "nan" in text.splitlines()[-2]  # the mean row of ew's mu_mae


def test_mean_normalized_loss_puts_every_task_on_one_scale():
    assert mean_normalized_loss([2.0, 2000.0], [1.0, 1000.0]) == pytest.approx(2.0)
    assert mean_normalized_loss([1.0, 5.0], [0.0, 10.0]) == pytest.approx(0.5)  # a zero reference is left out
    assert math.isnan(mean_normalized_loss([1.0], [math.nan]))


# ------------------------------------------------------------------------------------ compare rows

def test_variants_parse_and_expand_into_rows():
    v = parse_variant("dbmtl-log=dbmtl:beta=0.5, alpha=max,hidden=[64,64]")
    assert v == Row("dbmtl-log", "dbmtl", {"beta": 0.5, "alpha": "max", "hidden": [64, 64]})
    assert parse_variant("plain=ew") == Row("plain", "ew", {})
    rows = expand_rows(["ew", "dbmtl"], [v, parse_variant("pcg=pcgrad:log_transform=true")],
                       {"eps": 1e-6, "dbmtl.beta": 0.9, "pcgrad": {"seed": 3}})
    assert list(rows) == ["ew", "dbmtl", "dbmtl-log", "pcg"]
    assert rows["dbmtl"].opts == {"eps": 1e-6, "beta": 0.9}
    assert rows["dbmtl-log"].opts == {"eps": 1e-6, "beta": 0.5, "alpha": "max", "hidden": [64, 64]}  # its own wins
    assert rows["pcg"] == Row("pcg", "pcgrad", {"eps": 1e-6, "seed": 3, "log_transform": True})


@pytest.mark.parametrize("text, msg", [("=dbmtl", "expected LABEL=METHOD"), ("x=", "expected LABEL=METHOD"),
                                       ("a/b=dbmtl", "names a directory"), ("x=dbmtl:beta", "expected key=value")])
def test_malformed_variants_are_named(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_variant(text)


def test_variant_labels_are_unique_and_not_stl():
    with pytest.raises(ValueError, match="STL reference"):
        expand_rows(["ew"], [parse_variant("stl=ew:eps=1")], {})
    with pytest.raises(ValueError, match="already a row"):
        expand_rows([], [parse_variant("a=ew"), parse_variant("a=dbmtl")], {})


def test_the_plan_runs_stl_first_for_each_seed_and_counts_every_run():
    rows = expand_rows(["ew"], [parse_variant("b=dbmtl:beta=0.5")], {})
    jobs = plan(rows, 3)
    assert len(jobs) == 3 * 3
    assert [(j.label, j.seed) for j in jobs[:4]] == [("stl", 0), ("ew", 0), ("b", 0), ("stl", 1)]
    assert jobs[2].method == "dbmtl" and jobs[2].opts == {"beta": 0.5}


# ------------------------------------------------------------------------------------------- plots

def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 12-task DB-MTL run without an STL reference (every plot of a run)."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(method="dbmtl", epochs=2, data={"num_tasks": 12})
    train(cfg, out, quiet=True, plots=False)
    return out


def test_task_styles_tell_40_tasks_apart():
    styles = task_styles(40)
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 40
    assert {s["linestyle"] for s in task_styles(10)} == {"-"}


def test_every_plot_of_a_run_is_written_with_one_line_per_task(run_dir, monkeypatch):
    import matplotlib.figure

    saved = {}
    real = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **kw):
        saved[str(path).rsplit("/", 1)[-1]] = fig
        return real(fig, path, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    written = plot_run(run_dir)
    names = sorted(p.name for p in written)
    assert names == ["cosine.png", "grad_norm.png", "train_loss.png", "val_metrics.png", "weights.png"]
    for p in written:
        w, h = _png_size(p)
        assert w > 300 and h > 200
    tasks, steps, epochs = read_metrics(run_dir / "metrics.jsonl")
    assert len(tasks) == 12
    for name in ("train_loss.png", "grad_norm.png", "weights.png"):
        (ax,) = saved[name].axes
        lines = ax.get_lines()
        assert len(lines) == 12 and len({(ln.get_color(), ln.get_linestyle()) for ln in lines}) == 12
        assert [ln.get_label() for ln in lines] == tasks
    val, dp = saved["val_metrics.png"].axes
    assert len(val.get_lines()) == 12 and len(val.get_lines()[0].get_xdata()) == len(epochs) == 2
    # no STL reference in this run: the second panel is the mean normalized error
    assert "mean" in dp.get_title()
    curve, heat, _colorbar = saved["cosine.png"].axes
    assert len(heat.texts) == 12 * 12  # T ≤ 12: the value in every cell
    assert heat.texts[0].get_text() == "1.00"


def test_the_heatmap_has_no_values_above_twelve_tasks(tmp_path):
    T = 13
    tasks = [f"t{i}" for i in range(T)]
    recs = [{"type": "header", "tasks": tasks}] + [
        {"type": "step", "step": k, "losses": dict.fromkeys(tasks, 1.0), "grad_norms": dict.fromkeys(tasks, None),
         "weights": dict.fromkeys(tasks, 1.0), "cosine": [[1.0 if i == j else 0.1 for j in range(T)] for i in range(T)]}
        for k in (1, 2)]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    import matplotlib.figure

    figs = []
    real = matplotlib.figure.Figure.savefig
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.figure.Figure, "savefig",
                   lambda fig, p, *a, **k: figs.append(fig) or real(fig, p, *a, **k))
        names = sorted(p.name for p in plot_run(tmp_path))
    assert names == ["cosine.png", "train_loss.png", "weights.png"]  # null gradient norms: no grad_norm plot
    assert len(figs[-1].axes[1].texts) == 0


# ------------------------------------------------------------------------------------- tensorboard

def test_tensorboard_holds_every_scalar_of_metrics_jsonl_and_the_hyperparameters(run_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fmtl.train.tensorboard import replay, scalars

    logdir = replay(run_dir, tmp_path / "tb")
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    tasks, steps, epochs = read_metrics(run_dir / "metrics.jsonl")
    want = set().union(*(scalars(r, tasks) for r in steps + epochs))
    assert want <= tags, sorted(want - tags)[:5]
    assert {"train/losses/t0", "train/weights/t11", "train/grad_norms/t3", "train/cosine/t0~t11", "train/cosine/mean",
            "train/samples_per_s", "epoch/val/normalized/t5", "epoch/test/metrics/t0/mse",
            "epoch/train_loss/t2"} <= tags  # fmt: skip
    events = acc.Scalars("train/losses/t0")
    assert [e.step for e in events] == [r["step"] for r in steps]
    assert events[0].value == pytest.approx(steps[0]["losses"]["t0"], rel=1e-6)
    # add_hparams writes its own event file in the same directory, with the configuration and the metrics
    assert any(p.name.startswith("events.out.tfevents") for p in logdir.iterdir())
    hp = EventAccumulator(str(logdir))
    hp.Reload()
    assert "_hparams_/session_start_info" in hp.summary_metadata


def test_tensorboard_log_names_the_extra_when_the_package_is_missing(monkeypatch, tmp_path):
    import builtins

    from fmtl.train.tensorboard import TensorBoardLog

    real = builtins.__import__

    def no_tb(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(ModuleNotFoundError, match=r'pip install "fmtl\[tb\]"'):
        TensorBoardLog(tmp_path, ["a"])


def test_a_comparison_with_variants_writes_one_table(tmp_path, capsys):
    from fmtl.train.compare import compare
    from fmtl.train.config import load_toml

    base = tiny_config(epochs=1)
    res = compare(base, ["ew"], 1, tmp_path / "cmp", variants=[parse_variant("b05=dbmtl:beta=0.5")])
    printed = capsys.readouterr().out
    assert "run 1 of 3: stl seed 0" in printed and "run 3 of 3: b05 seed 0" in printed
    md = (tmp_path / "cmp" / "table.md").read_text()
    assert [c[0] for c in _cells(md.split("\n\n", 1)[1])] == ["stl", "ew", "b05"]
    assert load_toml(tmp_path / "cmp" / "b05" / "seed0" / "config.toml")["opts"] == {"beta": 0.5}
    assert load_toml(tmp_path / "cmp" / "b05" / "seed0" / "config.toml")["method"] == "dbmtl"
    assert (tmp_path / "cmp" / "table.tex").read_text().count(r" \\") == 4  # header + 3 rows
    assert list(res["rows"]) == ["stl", "ew", "b05"]
