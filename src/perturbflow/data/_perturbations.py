"""Parse perturbation labels into sets of atoms.

``A+B`` (plain), GEARS style ``A+ctrl`` / ``ctrl+A`` / ``ctrl``, and single names all parse
into frozensets, so ``B+A`` and ``A+B`` are the same perturbation.
"""

from __future__ import annotations

from collections.abc import Iterable

GEARS_CONTROL = "ctrl"


def parse_perturbation(
    label: str, control_value: str = "control", separator: str = "+"
) -> frozenset[str]:
    """Parse one label into its set of atoms; the control parses into the empty set.

    Parameters
    ----------
    label
        A perturbation label such as ``"KLF1+MAP2K6"``, ``"KLF1+ctrl"`` or ``"ctrl"``.
    control_value
        The label of control cells in this dataset.
    separator
        The string between the atoms of a combination.

    Returns
    -------
    The atoms of the perturbation; empty for a control.
    """
    label = str(label).strip()
    if label == control_value or label == GEARS_CONTROL:
        return frozenset()
    atoms = [a.strip() for a in label.split(separator)]
    return frozenset(a for a in atoms if a and a not in (GEARS_CONTROL, control_value))


def canonical_label(atoms: Iterable[str], control_value: str = "control", separator: str = "+") -> str:
    """The canonical label of a set of atoms: sorted atoms joined by the separator."""
    atoms = sorted(atoms)
    return separator.join(atoms) if atoms else control_value
