"""Tools in the scanpy manner: fit, embed, predict, rank and evaluate.

Functions that start from a trained model take it first (``model``); functions that work
on cells take the AnnData first (``adata``, or ``adata_pred`` when a prediction is compared
with real cells). See ``tests/test_api_signatures.py`` for the rules every public function
follows.
"""

from perturbflow.tl._evaluate import evaluate
from perturbflow.tl._model import fit, latent, predict
from perturbflow.tl._rank import rank_perturbations

__all__ = ["evaluate", "fit", "latent", "predict", "rank_perturbations"]
