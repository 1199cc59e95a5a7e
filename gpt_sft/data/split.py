"""Splitting instruction data into train / validation / test, the book's way by default."""

from __future__ import annotations

from datasets import Dataset, DatasetDict

from .load import dataset_origin
from .validate import InstructionDataError


def split_dataset(
    dataset: Dataset,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    val_fraction: float | None = None,
    *,
    shuffle: bool = False,
    seed: int = 123,
) -> DatasetDict:
    """Split into train / validation / test, as the book does by default.

    The book's split, in file order: ``train = data[:int(0.85 n)]``, ``test`` = the next
    ``int(0.10 n)`` entries, ``validation`` = the rest (935 / 110 / 55 on the book's 1100 entries).

    Args:
        dataset: The data (any columns).
        train_fraction: Fraction for training (book: 0.85).
        test_fraction: Fraction for testing (book: 0.10).
        val_fraction: Fraction for validation; ``None`` (the book) means everything left. When
            given, the validation split has ``int(val_fraction * n)`` entries and left-over entries
            are unused.
        shuffle: Shuffle the entries (with ``seed``) before splitting; the book does not.
        seed: Seed of the shuffle.

    Returns:
        A :class:`datasets.DatasetDict` with keys ``"train"``, ``"validation"`` and ``"test"``.

    Raises:
        InstructionDataError: a split would be empty (data set too small) -- names the source.
        ValueError: fractions out of range or summing to more than 1.
    """
    fractions = {"train_fraction": train_fraction, "test_fraction": test_fraction}
    if val_fraction is not None:
        fractions["val_fraction"] = val_fraction
    for key, value in fractions.items():
        if not 0.0 < float(value) <= 1.0:
            raise ValueError(f"{key} must be in (0, 1], got {value}")
    if sum(fractions.values()) > 1.0 + 1e-9:
        raise ValueError(f"split fractions sum to more than 1: {fractions}")
    n = len(dataset)
    train_portion = int(n * train_fraction)
    test_portion = int(n * test_fraction)
    if val_fraction is None:
        val_portion = n - train_portion - test_portion
    else:
        val_portion = min(int(n * val_fraction), n - train_portion - test_portion)
    if min(train_portion, test_portion, val_portion) <= 0:
        raise InstructionDataError(
            dataset_origin(dataset),
            f"data set too small to split: {n} entries give train/validation/test = "
            f"{train_portion}/{val_portion}/{test_portion} with fractions {fractions}; every split needs "
            "at least one entry (use more data or other fractions)",
        )
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    end_test = train_portion + test_portion
    return DatasetDict(
        train=dataset.select(range(0, train_portion)),
        validation=dataset.select(range(end_test, end_test + val_portion)),
        test=dataset.select(range(train_portion, end_test)),
    )


