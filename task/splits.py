"""Splitting one labelled data set into training and test parts.

Loaders whose source is a single file or array (scikit-learn's digits, a CSV table) split it
here, stratified by label, so that every class appears in both parts; the split options (seed,
test fraction) are checked here once for all of them, and scikit-learn's errors become
:class:`~privet.task.containers.DataError` messages that say what to change.
"""

import numpy as np

from privet.task.containers import DataError

__all__ = ["check_split_options", "stratified_split"]


def check_split_options(seed: int, test_fraction: float) -> None:
    """Validate the split options shared by the loaders that split a single file."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer in 0..2**32-1, got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float | np.floating):
        raise DataError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, test) index arrays of a stratified split, with sklearn errors as DataError."""
    from sklearn.model_selection import train_test_split  # lazy: keeps client imports lean

    positions = np.arange(labels.shape[0], dtype=np.int64)
    try:
        train_idx, test_idx = train_test_split(
            positions, test_size=float(test_fraction), random_state=int(seed), stratify=labels
        )
    except ValueError as exc:
        detail = str(exc).replace("\n", " ")
        raise DataError(
            f"cannot split {what} into stratified train/test parts with "
            f"test_fraction={test_fraction} ({detail}); change --test-fraction or use a file "
            "with more examples per class"
        ) from exc
    return np.asarray(train_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
