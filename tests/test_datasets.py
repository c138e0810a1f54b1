"""Dataset manifests: the schema of every shipped manifest, and offline download, check and load."""

from __future__ import annotations

import hashlib
import tomllib
import urllib.parse
from pathlib import Path

import anndata as ad
import pytest
import yaml

import perturbflow as pf
from perturbflow import PerturbFlowError
from perturbflow.datasets import _manifests
from tests.conftest import GEARS_FILE, require

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "data_manifests").glob("*.yaml"))
EXPECTED = {
    "norman2019",
    "replogle2022_k562_essential",
    "adamson2016",
    "dixit2016",
    "kang2018",
    "srivatsan2020_sciplex3",
    "papalexi2021",
}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_manifest(folder: Path, name: str, url: str, checksum: str | None) -> Path:
    manifest = {
        "name": name,
        "title": "Norman 2019, GEARS-format fixture (test only)",
        "url": url,
        "checksum": checksum,
        "checksum_note": "test manifest",
        "size": None,
        "license": "GPL-3.0",
        "citation": "Norman TM et al. Science 365, 786-793 (2019). doi:10.1126/science.aax4438",
        "perturbation_key": "condition",
        "control_value": "ctrl",
        "context_keys": ["cell_type"],
        "counts_layer": "counts",
        "format": "h5ad",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


@pytest.fixture
def local_manifest(tmp_path) -> tuple[Path, Path]:
    """A manifest folder with one manifest pointing at the tiny GEARS fixture by file:// URL."""
    source = require(GEARS_FILE)
    folder = tmp_path / "manifests"
    write_manifest(folder, "norman_tiny", source.resolve().as_uri(), f"md5:{md5(source)}")
    return folder, tmp_path / "cache"


# ---------------------------------------------------------------------- schema
def test_the_public_datasets_have_manifests():
    assert EXPECTED <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_manifest_schema(path):
    manifest = yaml.safe_load(path.read_text())
    pf.datasets.validate_manifest(manifest, path.name)
    assert manifest["name"] == path.stem
    assert urllib.parse.urlparse(manifest["url"]).scheme == "https"
    for key in ("name", "title", "url", "license", "citation", "perturbation_key", "control_value", "format"):
        assert manifest[key].strip(), f"{key} is empty"
    if manifest["checksum"] is None:
        assert len(manifest["checksum_note"]) > 20, "a null checksum needs a note saying why"
    else:
        algorithm, digest = manifest["checksum"].split(":")
        assert len(digest) == {"md5": 32, "sha256": 64}[algorithm]
    assert manifest["size"] is None or manifest["size"] > 0
    assert manifest["format"] == "h5ad"


def test_list_datasets_matches_the_files():
    datasets = pf.datasets.list_datasets()
    assert set(datasets) == {p.stem for p in SHIPPED}
    assert all(m["title"] for m in datasets.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checksum": "md5:xyz"}, "checksum must look like"),
        ({"checksum": "c870e6967d91c017d9da827bab183cd6"}, "checksum must look like"),
        ({"url": "http://example.org/x.h5ad"}, "url scheme"),
        ({"citation": "Someone 2019"}, "DOI"),
        ({"context_keys": "cell_type"}, "'context_keys' must be list"),
        ({"size": "12 MB"}, "'size' must be int"),
        ({"colour": "red"}, "unknown keys"),
        ({"checksum": None, "checksum_note": None}, "checksum_note"),
    ],
)
def test_validate_manifest_rejects(change, message):
    manifest = yaml.safe_load(SHIPPED[0].read_text())
    manifest.update(change)
    if change.get("checksum_note", "") is None:
        del manifest["checksum_note"]
    with pytest.raises(PerturbFlowError, match=message):
        pf.datasets.validate_manifest(manifest, "bad.yaml")


def test_missing_key_is_named():
    manifest = yaml.safe_load(SHIPPED[0].read_text())
    del manifest["license"]
    with pytest.raises(PerturbFlowError, match="missing key 'license'"):
        pf.datasets.validate_manifest(manifest)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(PerturbFlowError, match="unknown dataset 'nope'; known datasets: .*norman2019"):
        pf.datasets.load("nope")


def test_wheel_ships_the_manifests():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    force = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force["data_manifests"] == "perturbflow/datasets/manifests"
    assert _manifests.PACKAGED_MANIFESTS.relative_to(_manifests.PACKAGED_MANIFESTS.parents[2]) == Path(
        "perturbflow/datasets/manifests"
    )


# ---------------------------------------------------------------------- download and load (offline)
def test_load_from_local_manifest(local_manifest):
    folder, cache = local_manifest
    adata = pf.datasets.load("norman_tiny", manifest_dir=folder, cache_dir=cache)
    assert isinstance(adata, ad.AnnData) and adata.shape == (50, 50)
    info = adata.uns["perturbflow_dataset"]
    assert info["perturbation_key"] == "condition" and info["control_value"] == "ctrl"
    assert list(info["context_keys"]) == ["cell_type"] and info["counts_layer"] == "counts"
    assert info["checksum"].startswith("md5:")
    cached = cache / "norman_tiny.h5ad"
    assert md5(cached) == md5(GEARS_FILE)
    # The recorded keys are enough to set the data up.
    pf.PerturbFlow.setup_anndata(
        adata,
        perturbation_key=info["perturbation_key"],
        control_value=info["control_value"],
        layer=info.get("counts_layer"),
        context_keys=list(info["context_keys"]),
    )
    # A second load reuses the checked file instead of copying it again.
    mtime = cached.stat().st_mtime_ns
    pf.datasets.load("norman_tiny", manifest_dir=folder, cache_dir=cache)
    assert cached.stat().st_mtime_ns == mtime


def test_download_uses_the_cache_env_var(local_manifest, tmp_path, monkeypatch):
    folder, _ = local_manifest
    monkeypatch.setenv("PERTURBFLOW_CACHE", str(tmp_path / "env_cache"))
    path = pf.datasets.download("norman_tiny", manifest_dir=folder)
    assert path == tmp_path / "env_cache" / "norman_tiny.h5ad" and path.is_file()


def test_checksum_mismatch_is_a_clear_error_and_keeps_nothing(tmp_path):
    source = require(GEARS_FILE)
    folder, cache = tmp_path / "manifests", tmp_path / "cache"
    write_manifest(folder, "corrupt", source.resolve().as_uri(), "md5:" + "0" * 32)
    with pytest.raises(PerturbFlowError, match="checksum mismatch for dataset 'corrupt'"):
        pf.datasets.load("corrupt", manifest_dir=folder, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())


def test_corrupt_cached_file_is_replaced(local_manifest):
    folder, cache = local_manifest
    cache.mkdir(parents=True)
    (cache / "norman_tiny.h5ad").write_bytes(b"half a file")
    path = pf.datasets.download("norman_tiny", manifest_dir=folder, cache_dir=cache)
    assert md5(path) == md5(GEARS_FILE)


def test_missing_local_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "manifests"
    write_manifest(folder, "gone", (tmp_path / "nothing.h5ad").as_uri(), None)
    with pytest.raises(PerturbFlowError, match="local dataset file not found"):
        pf.datasets.download("gone", manifest_dir=folder, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


def test_cli_lists_and_downloads(local_manifest, monkeypatch, capsys):
    from perturbflow.cli import main

    assert main(["datasets", "list"]) == 0
    assert "norman2019" in capsys.readouterr().out
    folder, cache = local_manifest
    monkeypatch.setattr(_manifests, "PACKAGED_MANIFESTS", folder)
    monkeypatch.setenv("PERTURBFLOW_CACHE", str(cache))
    assert main(["datasets", "download", "norman_tiny"]) == 0
    assert str(cache / "norman_tiny.h5ad") in capsys.readouterr().out
