"""Long runs resume: checkpoints every N steps, a killed run resumes, and never loads as finished."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import perturbflow as pf
from perturbflow._errors import PerturbFlowError
from perturbflow.cli import DEFAULT_EVERY_N_STEPS as CLI_DEFAULT_EVERY
from perturbflow.cli import main
from perturbflow.train import DEFAULT_EVERY_N_STEPS, TrainingRun
from perturbflow.train._checkpoints import StepCheckpoint

from .conftest import small_synthetic

TRAIN = ["--perturbation-key", "perturbation", "--control", "control", "--context-key", "cell_type",
         "--split-key", "split"]
FIT = {"max_epochs": 2, "flow_max_epochs": 3, "seed": 0, "progress_bar": False}  # VAE 2 x 6, flow 3 x 10 steps
MODEL = {"flow_steps_per_epoch": 10}


class Interrupted(Exception):
    pass


def interrupt_at(monkeypatch, stage: str, step: int) -> None:
    """Make the ``stage`` ("vae" or "flow") of the next training stop at ``step``, as a kill would."""
    original = StepCheckpoint.on_train_batch_end

    def on_train_batch_end(self, trainer, *args):
        original(self, trainer, *args)
        if self.path.stem == stage and trainer.global_step == step:
            raise Interrupted

    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", on_train_batch_end)


def weights(model) -> dict[str, torch.Tensor]:
    return {**{f"vae.{k}": v for k, v in model.vae.module.state_dict().items()},
            **{f"flow.{k}": v for k, v in model.flow.state_dict().items()}}


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, differ[:3]


@pytest.fixture(scope="module")
def adata():
    """The small synthetic data, with one perturbation's cells for validation (its draws resume too)."""
    adata = small_synthetic()
    split = adata.obs["split"].astype(str)
    split[adata.obs["perturbation"].astype(str) == "G0"] = "val"
    adata.obs["split"] = split
    return adata


@pytest.fixture(scope="module")
def uninterrupted(adata):
    model = pf.PerturbFlow(adata, **MODEL)
    model.train(**FIT)
    return model


@pytest.mark.parametrize(
    ("stage", "step"),
    [("vae", 8), ("flow", 17)],  # last checkpoints at VAE step 6 (an epoch's end), flow step 15 (mid-epoch)
)
def test_resume_continues_the_same_run(adata, uninterrupted, tmp_path, monkeypatch, caplog, stage, step):
    interrupt_at(monkeypatch, stage, step)
    with pytest.raises(Interrupted):
        pf.PerturbFlow(adata, **MODEL).train(**FIT, checkpoint_dir=tmp_path, checkpoint_every_n_steps=3)
    assert (tmp_path / f"{stage}.ckpt").is_file()
    assert (tmp_path / "vae-done").is_dir() == (stage == "flow")  # a finished stage is stored
    monkeypatch.undo()

    caplog.set_level(logging.INFO, logger="perturbflow")
    resumed = pf.PerturbFlow(adata, **MODEL)
    resumed.train(**FIT, checkpoint_dir=tmp_path, checkpoint_every_n_steps=3, resume=True)
    # the same seed stream: the resumed model is the one an uninterrupted run gives
    assert_same_weights(resumed, uninterrupted)
    assert resumed.correction_scale == uninterrupted.correction_scale
    if stage == "flow":
        assert "vae stage already finished" in caplog.text and "not trained again" in caplog.text
    assert "flow stage finished after 30 steps" in caplog.text


def test_resume_needs_checkpoints(adata, tmp_path):
    model = pf.PerturbFlow(adata, **MODEL)
    with pytest.raises(PerturbFlowError, match="holds no training checkpoints"):
        model.train(**FIT, checkpoint_dir=tmp_path / "none", resume=True)
    with pytest.raises(PerturbFlowError, match="checkpoint folder"):
        model.train(**FIT, resume=True)
    assert not (tmp_path / "none").exists()


def test_training_run_checks_its_folder(tmp_path):
    settings = {"seed": 0, "max_epochs": 2}
    TrainingRun(tmp_path / "run", settings)
    with pytest.raises(PerturbFlowError, match="already holds checkpoints"):
        TrainingRun(tmp_path / "run", settings)  # a fresh run never takes over another's checkpoints
    with pytest.raises(PerturbFlowError, match=r"other settings \(seed\)"):
        TrainingRun(tmp_path / "run", {"seed": 1, "max_epochs": 2}, resume=True)
    TrainingRun(tmp_path / "run", settings, resume=True)
    with pytest.raises(PerturbFlowError, match="at least 1 step"):
        TrainingRun(tmp_path / "other", settings, every_n_steps=0)
    assert CLI_DEFAULT_EVERY == DEFAULT_EVERY_N_STEPS


def one_line_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cli_resume_errors(capsys, tmp_path, uninterrupted):
    data = tmp_path / "data.h5ad"  # never read: the checks come first
    err = one_line_error(capsys, "train", data, *TRAIN, "--out", tmp_path / "absent", "--resume")
    assert "cannot resume" in err and "holds no training checkpoints" in err
    uninterrupted.save(tmp_path / "model")
    err = one_line_error(capsys, "train", data, *TRAIN, "--out", tmp_path / "model", "--resume")
    assert "nothing to resume" in err and "finished model" in err
    err = one_line_error(capsys, "train", data, *TRAIN, "--out", tmp_path / "model", "--resume", "--overwrite")
    assert "cannot be combined" in err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended (code {proc.returncode}) before {path.name} was written")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_cli_run_resumes(capsys, caplog, tmp_path):
    adata = pf.datasets.synthetic(n_genes=60, n_atoms=5, n_combos=4, n_cells_per_group=40, n_control_cells=120,
                                  n_heldout_combos=2)
    data = tmp_path / "data.h5ad"
    adata.write_h5ad(data)
    out = tmp_path / "model"
    args = ["train", str(data), *TRAIN, "--out", str(out), "--max-epochs", "1", "--checkpoint-every", "10", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pf.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "perturbflow.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(out / "checkpoints" / "flow.ckpt", proc)  # the VAE is done, the flow midway
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # the killed run's folder is no model: loading and predicting say to resume, in one line
    with pytest.raises(PerturbFlowError, match="unfinished training run.*--resume"):
        pf.PerturbFlow.load(out)
    err = one_line_error(capsys, "predict", out, "--control-cells", data, "--perturbations", "G0",
                         "--out", tmp_path / "pred.h5ad")
    assert str(out) in err and "perturbflow train ... --out" in err and "--resume" in err
    # and a new run does not start over it unless told to
    assert "already exists" in one_line_error(capsys, *args)

    caplog.set_level(logging.INFO, logger="perturbflow")
    assert main([*args, "--resume"]) == 0
    assert "vae stage already finished" in caplog.text
    assert "flow stage finished after 50 steps" in caplog.text  # 1 epoch of 50 steps, as without the kill
    assert not (out / "checkpoints").exists()  # the finished model replaced the run's checkpoints
    model = pf.PerturbFlow.load(out)
    pred = model.predict(adata[adata.obs["perturbation"] == "control"], perturbations=["G0+G1"], n_cells=20)
    assert pred.n_obs == 20 and pred.n_vars == adata.n_vars


def test_damaged_checkpoint_is_one_line(adata, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, "vae", 4)
    with pytest.raises(Interrupted):
        pf.PerturbFlow(adata, **MODEL).train(**FIT, checkpoint_dir=tmp_path, checkpoint_every_n_steps=3)
    monkeypatch.undo()
    ckpt = tmp_path / "vae.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(PerturbFlowError, match=r"vae checkpoint .* is damaged") as info:
        pf.PerturbFlow(adata, **MODEL).train(**FIT, checkpoint_dir=tmp_path, resume=True)
    assert "\n" not in str(info.value)


def test_damaged_finished_stage_is_one_line(tmp_path):
    from perturbflow.train import run_stage

    run = TrainingRun(tmp_path, {"seed": 0})
    run_stage(run.stage("flow"), fit=lambda: 1, save=lambda value, path: (path / "value").write_text("1"),
              load=lambda path: int((path / "value").read_text()))
    resumed = TrainingRun(tmp_path, {"seed": 0}, resume=True)
    assert run_stage(resumed.stage("flow"), fit=lambda: 2, save=None, load=lambda p: int((p / "value").read_text())) == 1
    (tmp_path / "flow-done" / "random_state.pt").write_bytes(b"truncated")
    with pytest.raises(PerturbFlowError, match="finished flow stage .* could not be read") as info:
        run_stage(resumed.stage("flow"), fit=lambda: 2, save=None, load=lambda p: 0)
    assert "\n" not in str(info.value)
