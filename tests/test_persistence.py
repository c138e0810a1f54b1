"""Model folders: saving is all-or-nothing, and a damaged or incomplete folder fails with one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import perturbflow as pf
from perturbflow._errors import PerturbFlowError
from perturbflow.cli import main
from perturbflow.models import _persistence


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained_model):
    folder = tmp_path_factory.mktemp("persistence") / "model"
    trained_model.save(folder)
    return folder


@pytest.fixture(scope="module")
def control_file(tmp_path_factory, controls):
    path = tmp_path_factory.mktemp("controls") / "controls.h5ad"
    data = controls.copy()
    del data.uns["perturbflow"]
    data.write_h5ad(path)
    return path


def truncate(name):
    def damage(folder):
        f = folder / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return damage


def edit_json(edit):
    def damage(folder):
        meta = json.loads((folder / "perturbflow.json").read_text())
        edit(meta)
        (folder / "perturbflow.json").write_text(json.dumps(meta))
    return damage


DAMAGES = {
    "truncated flow": (truncate("flow.pt"), ["is damaged", "flow weights could not be read", "flow.pt"]),
    "truncated json": (truncate("perturbflow.json"), ["is damaged", "not valid JSON", "perturbflow.json"]),
    "json lacks fields": (edit_json(lambda m: m.pop("genes")), ["is damaged", "lacks genes", "perturbflow.json"]),
    "vae missing": (lambda d: shutil.rmtree(d / "vae"), ["is damaged", "vae/ is missing"]),
    "vae weights missing": (lambda d: (d / "vae" / "model.pt").unlink(), ["is damaged", "VAE could not be read", "vae/"]),
    "truncated vae": (truncate("vae/model.pt"), ["is damaged", "VAE could not be read", "vae/"]),
    "truncated latent npz": (truncate("latent_shifts.npz"), ["is damaged", "latent_shifts.npz"]),
    "truncated gene npz": (truncate("gene_shifts.npz"), ["is damaged", "gene_shifts.npz"]),
    "marked incomplete": (edit_json(lambda m: m.update(complete=False)), ["is incomplete", "interrupted", "train"]),
    "description missing": (lambda d: (d / "perturbflow.json").unlink(), ["is incomplete", "interrupted"]),
}


@pytest.fixture(params=list(DAMAGES))
def damaged(request, saved, tmp_path):
    damage, fragments = DAMAGES[request.param]
    folder = tmp_path / "damaged_model"
    shutil.copytree(saved, folder)
    damage(folder)
    return folder, fragments


def test_saved_folder_is_marked_complete_and_leaves_nothing_beside(saved):
    assert json.loads((saved / "perturbflow.json").read_text())["complete"] is True
    assert [p.name for p in saved.parent.iterdir()] == ["model"]


def test_damaged_folder_fails_with_one_line(damaged):
    folder, fragments = damaged
    with pytest.raises(PerturbFlowError) as info:
        pf.PerturbFlow.load(folder)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"model folder {folder} " in message
    for fragment in fragments:
        assert fragment in message, message


def test_cli_predict_on_damaged_folder(capsys, damaged, control_file, tmp_path):
    folder, fragments = damaged
    argv = ["predict", folder, "--control-cells", control_file, "--perturbations", "G0", "--out", tmp_path / "p.h5ad"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("perturbflow: error: model folder"), err
    assert "Traceback" not in err and fragments[0] in err
    assert not (tmp_path / "p.h5ad").exists()


def test_folder_without_marker_still_loads(saved, tmp_path):
    """Folders saved before the completion marker existed load as complete."""
    folder = tmp_path / "old_model"
    shutil.copytree(saved, folder)
    edit_json(lambda m: m.pop("complete"))(folder)
    model = pf.PerturbFlow.load(folder)
    assert model.is_trained


def test_a_model_saved_when_auto_meant_the_probe_keeps_the_probe(saved, tmp_path):
    """Before session 21 ``new_context_flow="auto"`` was the probe's choice; such a folder
    (no ``measured_contexts``) loads with ``"probe"``, so its predictions do not change."""
    assert pf.PerturbFlow.load(saved).config.new_context_flow == "auto"
    folder = tmp_path / "session20_model"
    shutil.copytree(saved, folder)
    edit_json(lambda m: m.pop("measured_contexts"))(folder)
    assert pf.PerturbFlow.load(folder).config.new_context_flow == "probe"


def test_overwrite_replaces_the_folder_only_when_complete(trained_model, saved, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    (folder / "stray.txt").write_text("from an older save")
    with pytest.raises(PerturbFlowError, match="already exists and is not empty"):
        trained_model.save(folder)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(_persistence.torch, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            trained_model.save(folder, overwrite=True)
    assert (folder / "stray.txt").exists()  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no half-written folder beside it

    trained_model.save(folder, overwrite=True)
    assert not (folder / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    loaded = pf.PerturbFlow.load(folder)
    for key, value in trained_model.flow.state_dict().items():
        assert torch.equal(value, loaded.flow.state_dict()[key])
