"""The ``perturbflow`` command line: train, predict, evaluate, demo, backbones, datasets.

Bad input ends with one line on stderr naming the cause and a non-zero exit, never a
traceback; existing outputs are never replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from perturbflow._errors import PerturbFlowError

logger = logging.getLogger("perturbflow")

EXIT_BAD_INPUT = 2
DEFAULT_EVERY_N_STEPS = 500  # as perturbflow.train.DEFAULT_EVERY_N_STEPS, without importing torch for --help


# ---------------------------------------------------------------------- helpers
def read_h5ad(path: str):
    """Read an AnnData file; a missing or unreadable file is a :class:`PerturbFlowError`."""
    import anndata as ad

    p = Path(path)
    if not p.exists():
        raise PerturbFlowError(f"file not found: {path}")
    if p.is_dir():
        raise PerturbFlowError(f"{path} is a folder, not an .h5ad file")
    try:
        return ad.read_h5ad(p)
    except Exception as exc:  # noqa: BLE001 (h5py and anndata raise many kinds for a bad file)
        raise PerturbFlowError(f"{path} is not a readable .h5ad file ({type(exc).__name__})") from None


def refuse_existing(path: str | Path, overwrite: bool) -> None:
    """Refuse an output path that already holds something, unless ``overwrite``."""
    p = Path(path)
    if overwrite or not p.exists():
        return
    if p.is_dir() and not any(p.iterdir()):
        return
    raise PerturbFlowError(f"{p} already exists; pass --overwrite to replace it")


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write a file or folder under a temporary name beside ``path``, then move it in place.

    A crash half-way leaves the old output untouched and no half-written file behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staged = tmp / target.name
        write(staged)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- commands
def training_checkpoints(args: argparse.Namespace) -> Path:
    """The checkpoint folder of ``train --out DIR``, checked against ``--resume`` / ``--overwrite``.

    The run writes its checkpoints into ``DIR/checkpoints/``; the finished model replaces them.
    """
    from perturbflow.models._persistence import CONFIG_FILE, TRAINING_DIR
    from perturbflow.train import is_main_process, is_unfinished_run

    out = Path(args.out)
    checkpoints = out / TRAINING_DIR
    if not is_main_process():  # a process Lightning started for another device, after rank 0's checks
        return checkpoints
    if args.resume:
        if args.overwrite:
            raise PerturbFlowError("--resume continues the run in --out; it cannot be combined with --overwrite")
        if not is_unfinished_run(checkpoints):
            if (out / CONFIG_FILE).is_file():
                raise PerturbFlowError(f"nothing to resume: {out} holds a finished model")
            raise PerturbFlowError(f"cannot resume: {out} holds no training checkpoints")
        return checkpoints
    refuse_existing(out, args.overwrite)
    if args.overwrite:
        if out.exists() and not out.is_dir():
            out.unlink()
        shutil.rmtree(checkpoints, ignore_errors=True)  # an earlier run's, not to be resumed
    return checkpoints


def cmd_train(args: argparse.Namespace) -> None:
    import perturbflow as pf
    from perturbflow.train import is_main_process

    checkpoints = training_checkpoints(args)
    if args.in_memory:
        adata = read_h5ad(args.data)
    else:  # the counts stay on disk; minibatches and statistics read them by rows
        from perturbflow.data import open_on_disk

        adata = open_on_disk(args.data, layer=args.layer)
    pf.PerturbFlow.setup_anndata(
        adata,
        perturbation_key=args.perturbation_key,
        control_value=args.control,
        layer=args.layer,
        context_keys=args.context_key,
        split_key=args.split_key,
    )
    model = pf.PerturbFlow(adata, backbone=args.backbone)
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    precision = int(args.precision) if str(args.precision).isdigit() else args.precision
    model.train(max_epochs=args.max_epochs, accelerator=args.accelerator, devices=devices, seed=args.seed,
                progress_bar=not args.quiet, checkpoint_dir=checkpoints,
                checkpoint_every_n_steps=args.checkpoint_every, resume=args.resume,
                strategy=args.strategy, precision=precision)
    if is_main_process():
        model.save(args.out, overwrite=True)  # replaces the run's checkpoints only once the model is complete
        print(f"saved model to {args.out}")


def cmd_predict(args: argparse.Namespace) -> None:
    import perturbflow as pf

    refuse_existing(args.out, args.overwrite)
    model = pf.PerturbFlow.load(args.model_dir)
    control = read_h5ad(args.control_cells)
    pred = model.predict(control, perturbations=args.perturbations, n_cells=args.n_cells, seed=args.seed,
                         device=args.device)
    write_atomically(args.out, lambda p: pred.write_h5ad(p, compression="gzip"))
    print(f"wrote {pred.n_obs} predicted cells x {pred.n_vars} genes to {args.out}")
    info = pred.uns["perturbflow_prediction"]
    parts = info.get("flow_correction_part", {})
    print("flow correction applied (share of the flow's move beyond the prior): " + ", ".join(
        f"{context or 'all cells'} {scale:.2f}" + (f" ({parts[context]} only)" if scale and parts.get(context, "all") != "all" else "")
        for context, scale in info["flow_correction"].items()))
    if info.get("exact_mean"):
        print("group means kept exact: " + ", ".join(
            f"{context or 'all cells'} {exact_mean_words(exact)}" for context, exact in info["exact_mean"].items()))
    for context, kept in info.get("specificity", {}).items():
        print(specificity_words(context, kept))


def exact_mean_words(exact: bool | float) -> str:
    """How a context's group means were kept, for the CLI's summary."""
    if isinstance(exact, bool) or exact in (0, 1):
        return "yes" if exact else "no (clipped at 0)"
    return f"{exact:.2f} of clipping's lift put back"


def specificity_words(context: str, kept: dict[str, float]) -> str:
    """How much of each perturbation's own effect a context was given (the rest is the pooled
    effect of all perturbations), for the CLI's summary: the mean, and the most shrunk."""
    mean = sum(kept.values()) / len(kept)
    line = f"own effect kept in {context} (carried from other contexts): mean {mean:.2f} over {len(kept)}"
    shrunk = sorted((share, label) for label, share in kept.items() if share < 0.5)
    if shrunk:
        line += f"; under half for {len(shrunk)}: " + ", ".join(f"{label} {share:.2f}" for share, label in shrunk[:5])
        line += ", ..." if len(shrunk) > 5 else ""
    return line


def cmd_evaluate(args: argparse.Namespace) -> None:
    import perturbflow as pf

    if args.out:
        refuse_existing(args.out, args.overwrite)
    pred = read_h5ad(args.pred)
    real = read_h5ad(args.real)
    table = pf.tl.evaluate(
        pred,
        real,
        perturbation_key=args.perturbation_key,
        control_value=args.control,
        context_keys=args.context_key,
        real_layer=args.layer,
        pred_layer=None if args.pred_layer == "X" else args.pred_layer,
        baselines=args.baselines,
        copy=True,
    )
    _print_summary(table)
    if args.out:
        write_atomically(args.out, lambda p: table.to_csv(p, index=False))
        print(f"wrote metrics to {args.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from perturbflow._demo import run_demo

    refuse_existing(args.out, args.overwrite)
    run_demo(args.out, backbone=args.backbone, seed=args.seed, max_epochs=args.max_epochs)


def cmd_backbones(args: argparse.Namespace) -> None:
    from perturbflow.backbones import list_backbones

    for name, description in list_backbones().items():
        print(f"{name:16s} {description}")


def cmd_datasets(args: argparse.Namespace) -> None:
    from perturbflow import datasets

    if args.action == "list" or args.action is None:
        for name, manifest in datasets.list_datasets().items():
            print(f"{name:24s} {manifest.get('title', '')}")
        return
    if not args.name:
        raise PerturbFlowError("name the dataset to download: perturbflow datasets download NAME")
    path = datasets.download(args.name)
    print(f"{args.name}: {path}")


SUMMARY_COLUMNS = (
    "pearson_delta",
    "pearson_delta_top20",
    "mse_top20",
    "energy_distance",
    "energy_floor",
    "mmd",
    "discrimination_l1",
)


def _print_summary(table) -> None:
    """Print the mean of the headline metrics per model (the full table goes to the CSV)."""
    from rich.console import Console
    from rich.table import Table

    from perturbflow.metrics import summarize

    summary = summarize(table)
    columns = [c for c in SUMMARY_COLUMNS if c in summary.columns]
    out = Table(title=f"mean over {int(summary['n_groups'].iloc[0])} held-out groups")
    out.add_column("model")
    for col in columns:
        out.add_column(col.replace("_", " "), justify="right")
    for name, row in summary.iterrows():
        out.add_row(str(name), *[f"{row[c]:.3f}" for c in columns])
    Console(width=max(100, Console().width)).print(out)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perturbflow",
        description="Predict single-cell perturbation responses with a latent rectified flow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on an AnnData of counts")
    p.add_argument("data", help="AnnData (.h5ad file or .zarr store) of raw counts, read from disk by rows")
    p.add_argument("--perturbation-key", required=True, help="obs column with perturbation labels")
    p.add_argument("--control", required=True, help="label of control cells")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--layer", default=None, help="layer holding counts (default: X)")
    p.add_argument("--context-key", action="append", default=None, help="obs column defining a context (repeatable)")
    p.add_argument("--split-key", default=None, help="obs column with train/val/test; test cells are not fitted")
    p.add_argument("--backbone", default="mlp", help="velocity backbone (see `perturbflow backbones`)")
    p.add_argument("--max-epochs", type=int, default=None, help="epochs of each stage (default: from data size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--devices", default="auto", help="number of devices, or auto")
    p.add_argument("--strategy", default="auto",
                   help="Lightning strategy of both stages, e.g. ddp for several devices (default: auto)")
    p.add_argument("--precision", default=None,
                   help="Lightning precision of both stages, e.g. bf16-mixed (default: 32-bit)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the interrupted run whose checkpoints --out holds (same data and options)",
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=DEFAULT_EVERY_N_STEPS, metavar="N",
        help=f"training steps between checkpoints (default: {DEFAULT_EVERY_N_STEPS})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--in-memory", action="store_true", help="load the whole file into memory first (small .h5ad data)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict perturbed cells from control cells")
    p.add_argument("model_dir", help="model folder written by `perturbflow train`")
    p.add_argument("--control-cells", required=True, help="AnnData (.h5ad) of control cells (counts)")
    p.add_argument("--perturbations", required=True, nargs="+", help="perturbations to predict, e.g. KLF1+MAP2K6")
    p.add_argument("--out", required=True, help="predicted AnnData (.h5ad) to write")
    p.add_argument("--n-cells", type=int, default=None, help="cells per perturbation (default: one per control cell)")
    p.add_argument("--device", default=None,
                   help="where the model runs: cpu, cuda, cuda:N (default: a CUDA device if there is one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score predictions against real cells, beside baselines")
    p.add_argument("pred", help="predicted AnnData (.h5ad)")
    p.add_argument("real", help="real AnnData (.h5ad) with control and held-out perturbed cells (counts)")
    p.add_argument("--perturbation-key", required=True)
    p.add_argument("--control", required=True, help="label of control cells in the real data")
    p.add_argument("--context-key", action="append", default=None, help="obs column defining a context")
    p.add_argument("--layer", default=None, help="layer of the real data holding counts (default: X or 'counts')")
    p.add_argument(
        "--pred-layer",
        default="expected",
        help="layer of the prediction to score: 'expected' (default, X when absent) or X (the sampled counts)",
    )
    p.add_argument(
        "--baselines", nargs="*", default=None, help="baselines to score beside (default: control train_mean additive)"
    )
    p.add_argument("--out", default=None, help="CSV of per-perturbation metrics")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="train, predict and evaluate on built-in synthetic data")
    p.add_argument("--out", default="perturbflow_demo", help="folder for the model, predictions, metrics, figure")
    p.add_argument("--backbone", default="mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("backbones", help="list the registered velocity backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("datasets", help="list or download public datasets")
    p.add_argument("action", nargs="?", choices=["list", "download"], default="list")
    p.add_argument("name", nargs="?", default=None)
    p.set_defaults(func=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        args.func(args)
    except PerturbFlowError as exc:
        print(f"perturbflow: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("perturbflow: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("perturbflow: error: out of memory", file=sys.stderr)
        return 1
    return 0


def _quiet_libraries() -> None:
    """Keep the shell output to progress bars and results (the CLI only; not at import)."""
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "anndata"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
