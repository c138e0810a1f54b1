"""Datasets: the built-in synthetic Perturb-seq generator and public datasets by manifest."""

from perturbflow.data._synthetic import synthetic

__all__ = ["synthetic"]
