"""Public datasets described by manifests (YAML files), downloaded and checked with pooch.

Where the manifests live: the canonical files are the YAML files of the repository's
top-level ``data_manifests/`` folder. A wheel carries a copy of that folder as
``perturbflow/datasets/manifests/`` (``force-include`` in ``pyproject.toml``); an editable
install or a source checkout reads the top-level folder directly. The packaged copy is
looked for first, then the repository folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from anndata import AnnData

from perturbflow._errors import PerturbFlowError

logger = logging.getLogger(__name__)

PACKAGED_MANIFESTS = Path(__file__).parent / "manifests"
REPO_MANIFESTS = Path(__file__).resolve().parents[3] / "data_manifests"
CACHE_ENV = "PERTURBFLOW_CACHE"
UNS_KEY = "perturbflow_dataset"

REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "title": (str,),
    "url": (str,),
    "checksum": (str, type(None)),
    "size": (int, type(None)),
    "license": (str,),
    "citation": (str,),
    "perturbation_key": (str,),
    "control_value": (str,),
    "context_keys": (list,),
    "counts_layer": (str, type(None)),
    "format": (str,),
}
OPTIONAL_KEYS: dict[str, tuple[type, ...]] = {
    "checksum_note": (str,),
    "description": (str,),
    "source": (str,),
    "combination_separator": (str,),
    "dose_key": (str,),
    "notes": (str,),
}
CHECKSUM_PATTERN = re.compile(r"^(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$")
DOI_PATTERN = re.compile(r"10\.\d{4,9}/\S+")
FORMATS = ("h5ad",)
URL_SCHEMES = ("https", "file")


def resolve_manifest_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder of manifests: ``path`` if given, else the packaged copy, else the repository's."""
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise PerturbFlowError(f"manifest folder {folder} does not exist")
        return folder
    for folder in (PACKAGED_MANIFESTS, REPO_MANIFESTS):
        if folder.is_dir():
            return folder
    raise PerturbFlowError(
        f"no dataset manifests found (looked in {PACKAGED_MANIFESTS} and {REPO_MANIFESTS}); "
        "pass manifest_dir="
    )


def validate_manifest(manifest: dict[str, Any], source: str = "manifest") -> dict[str, Any]:
    """Check a manifest's keys, types and values; raise one :class:`PerturbFlowError` naming every problem.

    Parameters
    ----------
    manifest
        The parsed YAML mapping.
    source
        What to call it in the error (usually its file name).

    Returns
    -------
    The manifest, unchanged.
    """
    if not isinstance(manifest, dict):
        raise PerturbFlowError(f"{source}: a manifest must be a mapping of keys to values")
    problems = []
    for key, types in REQUIRED_KEYS.items():
        if key not in manifest:
            problems.append(f"missing key {key!r}")
        elif not isinstance(manifest[key], types) or isinstance(manifest[key], bool):
            problems.append(f"{key!r} must be {' or '.join(t.__name__ for t in types)}")
    for key, types in OPTIONAL_KEYS.items():
        if key in manifest and not isinstance(manifest[key], types):
            problems.append(f"{key!r} must be {' or '.join(t.__name__ for t in types)}")
    unknown = sorted(set(manifest) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if not problems:
        scheme = urllib.parse.urlparse(manifest["url"]).scheme
        if scheme not in URL_SCHEMES:
            problems.append(f"url scheme must be one of {URL_SCHEMES}, not {scheme or 'none'!r}")
        checksum = manifest["checksum"]
        if checksum is None and not manifest.get("checksum_note"):
            problems.append("checksum is null: add a checksum_note saying why")
        if checksum is not None and not CHECKSUM_PATTERN.match(checksum):
            problems.append("checksum must look like 'md5:<32 hex>' or 'sha256:<64 hex>'")
        if manifest["size"] is not None and manifest["size"] <= 0:
            problems.append("size must be a positive number of bytes or null")
        if not DOI_PATTERN.search(manifest["citation"]):
            problems.append("citation must include a DOI (10.xxxx/...)")
        if not all(isinstance(k, str) for k in manifest["context_keys"]):
            problems.append("context_keys must be a list of strings")
        if manifest["format"] not in FORMATS:
            problems.append(f"format must be one of {FORMATS}")
    if problems:
        raise PerturbFlowError(f"{source}: invalid dataset manifest: {'; '.join(problems)}")
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    import yaml

    try:
        manifest = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PerturbFlowError(f"{path.name}: not valid YAML ({exc})") from None
    validate_manifest(manifest, path.name)
    if manifest["name"] != path.stem:
        raise PerturbFlowError(f"{path.name}: name {manifest['name']!r} differs from the file name")
    return manifest


def list_datasets(manifest_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The datasets described by manifests, by name.

    Parameters
    ----------
    manifest_dir
        Folder of ``*.yaml`` manifests (default: the packaged or repository manifests).

    Returns
    -------
    ``{name: manifest}`` sorted by name; each manifest is the validated YAML mapping.
    """
    folder = resolve_manifest_dir(manifest_dir)
    return {p.stem: _read_manifest(p) for p in sorted(folder.glob("*.yaml"))}


def get_manifest(name: str, manifest_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The validated manifest of dataset ``name``; an unknown name lists the known ones."""
    folder = resolve_manifest_dir(manifest_dir)
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(folder.glob("*.yaml"))) or "none"
        raise PerturbFlowError(f"unknown dataset {name!r}; known datasets: {known}")
    return _read_manifest(path)


def resolve_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Download folder: ``path``, else ``$PERTURBFLOW_CACHE``, else pooch's user cache for perturbflow."""
    if path is not None:
        return Path(path)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import pooch

    return Path(pooch.os_cache("perturbflow"))


def _copy_local_file(
    url: str, output_file: str, pooch_obj: Any = None, check_only: bool = False
) -> bool | None:
    """A pooch downloader for ``file://`` URLs (pooch has none): copy the file to ``output_file``."""
    source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if check_only:
        return source.is_file()
    if not source.is_file():
        raise PerturbFlowError(f"local dataset file not found: {source}")
    shutil.copyfile(source, output_file)
    return None


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def download(
    name: str,
    *,
    manifest_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progressbar: bool = True,
) -> Path:
    """Download dataset ``name`` into the cache (once) and check it against the manifest's checksum.

    The file is written under a temporary name and moved into place only once its checksum
    matches, so an interrupted or corrupt download leaves nothing behind. A file already in
    the cache is reused when its checksum matches.

    Parameters
    ----------
    name
        Dataset name (see :func:`list_datasets`).
    manifest_dir
        Folder of manifests (default: the packaged or repository manifests).
    cache_dir
        Download folder (default: ``$PERTURBFLOW_CACHE``, else pooch's user cache).
    progressbar
        Show a progress bar while downloading over https.

    Returns
    -------
    Path of the checked file in the cache.
    """
    import pooch

    manifest = get_manifest(name, manifest_dir)
    folder = resolve_cache_dir(cache_dir)
    url, checksum = manifest["url"], manifest["checksum"]
    fname = f"{manifest['name']}.{manifest['format']}"
    local = urllib.parse.urlparse(url).scheme == "file"
    if checksum is None:
        logger.warning(
            "dataset %s has no published checksum (%s); the download cannot be verified",
            name,
            manifest.get("checksum_note", ""),
        )
    try:
        path = pooch.retrieve(
            url,
            known_hash=checksum,
            fname=fname,
            path=folder,
            downloader=_copy_local_file if local else None,
            progressbar=progressbar and not local and _has_tqdm(),
        )
    except ValueError as exc:
        if "hash" in str(exc).lower():
            raise PerturbFlowError(
                f"checksum mismatch for dataset {name!r}: the file from {url} does not match {checksum}; "
                f"it was not kept in {folder}"
            ) from None
        raise PerturbFlowError(f"download of dataset {name!r} from {url} failed: {exc}") from None
    except OSError as exc:
        raise PerturbFlowError(f"download of dataset {name!r} from {url} failed: {exc}") from None
    except Exception as exc:  # requests raises its own kinds for network failures
        if type(exc).__module__.startswith("requests"):
            raise PerturbFlowError(f"download of dataset {name!r} from {url} failed: {exc}") from None
        raise
    return Path(path)


def load(
    name: str,
    *,
    manifest_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progressbar: bool = True,
) -> AnnData:
    """Download (once), check and read dataset ``name``.

    Parameters
    ----------
    name
        Dataset name (see :func:`list_datasets`).
    manifest_dir
        Folder of manifests (default: the packaged or repository manifests).
    cache_dir
        Download folder (default: ``$PERTURBFLOW_CACHE``, else pooch's user cache).
    progressbar
        Show a progress bar while downloading over https.

    Returns
    -------
    The AnnData, with the manifest recorded in ``uns['perturbflow_dataset']``: ``name``,
    ``title``, ``url``, ``license``, ``citation``, ``perturbation_key``, ``control_value``,
    ``context_keys``, and ``checksum`` / ``counts_layer`` when not null (``counts_layer``
    absent means the counts are in ``X``). Pass these keys on to
    :meth:`PerturbFlow.setup_anndata <perturbflow.PerturbFlow.setup_anndata>`.
    """
    import anndata as ad

    manifest = get_manifest(name, manifest_dir)
    path = download(name, manifest_dir=manifest_dir, cache_dir=cache_dir, progressbar=progressbar)
    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 (h5py and anndata raise many kinds for a bad file)
        raise PerturbFlowError(
            f"dataset {name!r} at {path} is not a readable .h5ad file ({type(exc).__name__})"
        ) from None
    adata.uns[UNS_KEY] = {k: v for k, v in manifest.items() if v is not None}
    adata.uns[UNS_KEY]["context_keys"] = list(manifest["context_keys"])
    return adata
