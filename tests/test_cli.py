"""The command line: every bad input fails with one line and a non-zero exit; outputs are never clobbered."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from perturbflow.cli import exact_mean_words, main, specificity_words

TRAIN = ["--perturbation-key", "perturbation", "--control", "control"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, synthetic_adata, trained_model):
    d = tmp_path_factory.mktemp("cli")
    data = synthetic_adata.copy()
    del data.uns["perturbflow"]
    data.write_h5ad(d / "data.h5ad")
    controls = data[data.obs["perturbation"] == "control"].copy()
    controls.write_h5ad(d / "controls.h5ad")
    controls[:, 4:].copy().write_h5ad(d / "controls_fewer_genes.h5ad")
    trained_model.save(d / "model")
    (d / "not_h5ad.h5ad").write_text("this is not hdf5")

    def variant(name, edit):
        a = data.copy()
        edit(a)
        a.write_h5ad(d / f"{name}.h5ad")

    def set_value(value):
        def edit(a):
            X = a.X.toarray()
            X[0, 0] = value
            a.X = sp.csr_matrix(X)
        return edit

    variant("negative", set_value(-3))
    variant("fractional", set_value(0.5))
    variant("nonfinite", set_value(np.nan))
    variant("only_control", lambda a: a.obs.__setitem__("perturbation", "control"))
    ad.AnnData(X=np.zeros((0, 5), dtype=np.float32)).write_h5ad(d / "empty.h5ad")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("perturbflow: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    ("data", "extra", "fragments"),
    [
        ("missing.h5ad", [], ["file not found"]),
        ("not_h5ad.h5ad", [], ["not a readable .h5ad"]),
        ("data.h5ad", ["--layer", "raw"], ["layer 'raw' not found"]),
        ("data.h5ad", ["--context-key", "donor"], ["context key 'donor' not found"]),
        ("negative.h5ad", [], ["negative"]),
        ("fractional.h5ad", [], ["not integers"]),
        ("nonfinite.h5ad", [], ["NaN or infinite"]),
        ("only_control.h5ad", [], ["only control cells"]),
        ("empty.h5ad", [], ["no cells"]),
    ],
)
def test_train_bad_input(capsys, files, data, extra, fragments):
    code, err = run(capsys, "train", files / data, *TRAIN, "--out", files / "new_model", *extra)
    assert_one_line_error(code, err, *fragments)
    assert not (files / "new_model").exists()


def test_train_bad_keys(capsys, files):
    code, err = run(capsys, "train", files / "data.h5ad", "--perturbation-key", "guide", "--control", "control", "--out", files / "m")
    assert_one_line_error(code, err, "perturbation key 'guide'")
    code, err = run(capsys, "train", files / "data.h5ad", "--perturbation-key", "perturbation", "--control", "NT", "--out", files / "m")
    assert_one_line_error(code, err, "control label 'NT' not found")


def test_train_refuses_existing_output(capsys, files):
    before = {p.name: p.stat().st_mtime_ns for p in (files / "model").rglob("*")}
    code, err = run(capsys, "train", files / "data.h5ad", *TRAIN, "--out", files / "model")
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in (files / "model").rglob("*")} == before


def test_predict_bad_input(capsys, files):
    out = files / "pred.h5ad"
    code, err = run(capsys, "predict", files / "missing_model", "--control-cells", files / "controls.h5ad", "--perturbations", "G0", "--out", out)
    assert_one_line_error(code, err, "does not exist")
    code, err = run(capsys, "predict", files / "model", "--control-cells", files / "controls.h5ad", "--perturbations", "G0+TP53", "--out", out)
    assert_one_line_error(code, err, "unknown perturbation", "TP53")
    code, err = run(capsys, "predict", files / "model", "--control-cells", files / "controls_fewer_genes.h5ad", "--perturbations", "G0", "--out", out)
    assert_one_line_error(code, err, "genes differ")
    code, err = run(capsys, "predict", files / "model", "--control-cells", files / "missing.h5ad", "--perturbations", "G0", "--out", out)
    assert_one_line_error(code, err, "file not found")
    assert not out.exists()


def test_predict_writes_and_refuses_overwrite(capsys, files):
    out = files / "pred_ok.h5ad"
    args = ["predict", files / "model", "--control-cells", files / "controls.h5ad", "--perturbations", "G0+G1", "G2", "--out", out, "--n-cells", 50]
    code = main([str(a) for a in args])
    printed = capsys.readouterr().out
    assert code == 0
    pred = ad.read_h5ad(out)
    assert pred.n_obs == 100 and pred.X.dtype.kind == "i"
    # what the flow contributed is said, per context, and recorded with the prediction
    applied = pred.uns["perturbflow_prediction"]["flow_correction"]
    assert "flow correction applied" in printed and all(c in printed for c in applied)
    assert "group means kept exact" in printed
    stamp = out.stat().st_mtime_ns
    code, err = run(capsys, *args)
    assert_one_line_error(code, err, "already exists")
    assert out.stat().st_mtime_ns == stamp
    assert run(capsys, *args, "--overwrite")[0] == 0
    assert list(files.glob(".pred_ok*")) == []  # no temporary files left behind


def test_evaluate_writes_csv(capsys, files):
    pred = files / "pred_ok.h5ad"
    if not pred.exists():
        pytest.skip("needs the prediction written by the previous test")
    out = files / "metrics.csv"
    code = main(["evaluate", str(pred), str(files / "data.h5ad"), *TRAIN, "--context-key", "cell_type", "--out", str(out)])
    assert code == 0
    import pandas as pd

    table = pd.read_csv(out)
    assert {"perturbflow", "control", "train_mean", "additive"} <= set(table["model"])
    assert {"pearson_delta", "pearson_delta_top20", "mse_top20"} <= set(table.columns)


def test_backbones_lists_every_name(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp", "dit", "settransformer", "ssm"):
        assert name in out


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "perturbflow.cli", "predict", str(tmp_path / "none"), "--control-cells", "x.h5ad",
         "--perturbations", "A", "--out", str(tmp_path / "p.h5ad")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_predict_summary_says_how_group_means_were_kept():
    """``perturbflow predict`` prints, per context, whether the group means were kept exact,
    or the share of clipping's lift put back (``exact_mean="auto"`` in a new context)."""
    assert exact_mean_words(True) == "yes"
    assert exact_mean_words(False) == "no (clipped at 0)"
    assert exact_mean_words(0.4321) == "0.43 of clipping's lift put back"


def test_specificity_words_name_the_most_shrunk_perturbations():
    words = specificity_words("rep1", {"KLF1": 0.9, "MAP4K3": 0.0, "SGK1": 0.25})
    assert words == ("own effect kept in rep1 (carried from other contexts): mean 0.38 over 3; "
                     "under half for 2: MAP4K3 0.00, SGK1 0.25")
    assert specificity_words("A172", {"TGFBR2": 1.0}).endswith("mean 1.00 over 1")
