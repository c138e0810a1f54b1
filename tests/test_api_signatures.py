"""Every public function of ``pf.pp``, ``pf.tl`` and ``pf.pl`` follows the same rules (as scanpy checks its own).

The rules:

1. The first parameter names what the function starts from: ``adata`` (the cells it reads
   or writes into), ``adata_pred`` (a prediction compared with real cells), ``model`` (a
   trained PerturbFlow) or ``adata_or_table`` (a plot of a table that may sit in ``.uns``).
2. At most three positional parameters; everything else is keyword-only.
3. ``key_added`` and ``copy`` are keyword-only where present, and ``copy`` defaults to ``False``.
   Plots take keyword-only ``ax``, ``show`` and ``save``, all defaulting to ``None``.
4. Every parameter and the return value carry type hints; the module uses
   ``from __future__ import annotations``.
5. A numpydoc docstring with a ``Parameters`` section naming every parameter and a
   ``Returns`` section (saying what is written where).
"""

from __future__ import annotations

import inspect

import pytest

import perturbflow as pf

FIRST_PARAMETERS = {"adata", "adata_pred", "model", "adata_or_table"}
MAX_POSITIONAL = 3
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

PUBLIC = [
    pytest.param(getattr(module, name), id=f"{module.__name__.split('.')[-1]}.{name}")
    for module in (pf.pp, pf.tl, pf.pl)
    for name in module.__all__
]


def section(doc: str, title: str) -> str:
    """The text of a numpydoc section (empty when absent)."""
    lines = doc.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == title and set(lines[i + 1].strip()) == {"-"}:
            body = []
            for nxt, after in zip(lines[i + 2 :], lines[i + 3 :] + [""]):
                if after.strip() and set(after.strip()) == {"-"}:
                    break
                body.append(nxt)
            return "\n".join(body)
    return ""


def test_namespaces_are_not_empty():
    assert {"check_counts", "parse_perturbations"} <= set(pf.pp.__all__)
    assert {"fit", "latent", "predict", "rank_perturbations", "evaluate"} <= set(pf.tl.__all__)
    assert {"metrics", "delta_scatter", "embedding", "trajectories"} <= set(pf.pl.__all__)


@pytest.mark.parametrize("func", PUBLIC)
def test_first_parameter(func):
    first = next(iter(inspect.signature(func).parameters))
    assert first in FIRST_PARAMETERS, f"{func.__name__} starts with {first!r}"


@pytest.mark.parametrize("func", PUBLIC)
def test_few_positional_parameters(func):
    positional = [p.name for p in inspect.signature(func).parameters.values() if p.kind in POSITIONAL]
    assert len(positional) <= MAX_POSITIONAL, f"{func.__name__}: positional {positional}"


@pytest.mark.parametrize("func", PUBLIC)
def test_key_added_and_copy_are_keyword_only(func):
    params = inspect.signature(func).parameters
    for name in ("key_added", "copy"):
        if name in params:
            assert params[name].kind == inspect.Parameter.KEYWORD_ONLY, f"{func.__name__}: {name} is positional"
    if "copy" in params:
        assert params["copy"].default is False
    if "key_added" in params:
        assert isinstance(params["key_added"].default, str)


@pytest.mark.parametrize("func", [p for p in PUBLIC if p.values[0].__module__.startswith("perturbflow.pl")])
def test_plots_take_ax_show_save(func):
    params = inspect.signature(func).parameters
    for name in ("ax", "show", "save"):
        assert name in params, f"{func.__name__} lacks {name}"
        assert params[name].kind == inspect.Parameter.KEYWORD_ONLY
        assert params[name].default is None


@pytest.mark.parametrize("func", PUBLIC)
def test_type_hints(func):
    sig = inspect.signature(func)
    missing = [p.name for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
    assert not missing, f"{func.__name__}: no type hints on {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{func.__name__}: no return type"
    assert "from __future__ import annotations" in inspect.getsource(inspect.getmodule(func))


@pytest.mark.parametrize("func", PUBLIC)
def test_docstring(func):
    doc = inspect.getdoc(func) or ""
    assert doc.splitlines() and doc.splitlines()[0].strip(), f"{func.__name__}: no summary line"
    returns = section(doc, "Returns")
    assert returns.strip(), f"{func.__name__}: no Returns section"
    parameters = section(doc, "Parameters")
    documented = {
        name.strip().lstrip("*")
        for line in parameters.splitlines()
        if line and not line.startswith(" ")
        for name in line.split(",")
    }
    undocumented = [name for name in inspect.signature(func).parameters if name not in documented]
    assert not undocumented, f"{func.__name__}: parameters not documented: {undocumented}"


@pytest.mark.parametrize("func", PUBLIC)
def test_writers_say_where(func):
    """Functions with ``key_added`` say in Returns where they write."""
    if "key_added" in inspect.signature(func).parameters:
        returns = section(inspect.getdoc(func), "Returns")
        assert "key_added" in returns, f"{func.__name__}: Returns does not say where results are written"


def test_the_checks_catch_a_bad_function():
    def bad(adata, key, value, other, key_added="x", copy=True):
        """Summary.

        Parameters
        ----------
        adata
            Cells.
        """

    sig = inspect.signature(bad)
    assert len([p for p in sig.parameters.values() if p.kind in POSITIONAL]) > MAX_POSITIONAL
    assert sig.parameters["copy"].kind != inspect.Parameter.KEYWORD_ONLY
    assert section(inspect.getdoc(bad), "Returns") == ""
    assert "key" not in section(inspect.getdoc(bad), "Parameters")
