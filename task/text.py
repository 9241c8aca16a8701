"""Text examples for fine-tuning a pretrained model: a file's texts and labels, and their tokens.

The text layer of issue 15, below the ``hf:`` models that use it:

- `read_text_file` reads a CSV or TSV with a header row, or JSON Lines, and keeps two named
  columns: the text and its label. TSV is read with quoting off (a quote is part of a message,
  as in the UCI SMS Spam Collection).
- `label_index` fixes the class of each label: the sorted distinct labels. Every party that
  sees the same label set numbers it the same way.
- `load_tokenizer` opens the tokenizer of a local Hugging Face folder with
  ``local_files_only=True``, so it never downloads. A folder without one is a one-line error
  that says what is missing.
- `encode_texts` turns texts into token ids and attention masks, padded and truncated to
  ``max_length``. Both are stored as the float32 features of an `ArrayDataset` of shape
  (n, 2, max_length), so text goes through the same containers, splits and partitions as every
  other data set. float32 holds every integer below 2^24 exactly, and a tokenizer with a larger
  vocabulary is refused.

`load_text_data` is the ``text`` data set (``--dataset text``) built from these: a file's texts
tokenized by the run's model folder (``--model hf:FOLDER``), split like any other data set.

Errors are `DataError`s: one line naming the file, the column or the line, and the fix. They
never quote a text or a label, because a message may be private.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privet.task.containers import ArrayDataset, DataError, TrainTest, freeze
from privet.task.local_files import file_key, not_a_file_reason
from privet.task.splits import stratified_split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from privet.task.datasets import DatasetOptions

TEXT_FORMATS = ("csv", "tsv", "jsonl")
"""The text file formats, by suffix (``.csv``, ``.tsv``/``.tab``/``.txt``, ``.jsonl``)."""
EXACT_IDS_BELOW = 2**24
"""float32 features hold every token id below this exactly."""
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class TextTable:
    """A text file's examples: each text and its label, in file order."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


def text_format(path: Path) -> str:
    """The format ``path``'s suffix names, or a DataError listing the known ones."""
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"text file {path}: cannot tell its format from the suffix {path.suffix!r}; name it "
            ".csv, .tsv or .jsonl"
        )
    return fmt


def read_text_file(
    path: Path, text_column: str, label_column: str, fmt: str | None = None
) -> TextTable:
    """The texts and labels of ``path`` (CSV/TSV with a header row, or JSON Lines)."""
    problem = not_a_file_reason(path)
    if problem is not None:
        raise DataError(f"text file {path} {problem}; point --data-file at a text file")
    fmt = fmt or text_format(path)
    if fmt not in TEXT_FORMATS:
        raise DataError(f"unknown text format {fmt!r}; choose one of: {', '.join(TEXT_FORMATS)}")
    rows = _json_rows(path) if fmt == "jsonl" else _delimited_rows(path, fmt)
    texts: list[str] = []
    labels: list[str] = []
    for number, row in rows:
        for column in (text_column, label_column):
            if column not in row:
                raise DataError(
                    f"text file {path}, line {number}: no column {column!r}; name the text and "
                    "label columns with --text-column and --label-column"
                )
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"text file {path}, line {number}: the {text_column!r} value is empty or not "
                "text; remove the line or fill it in"
            )
        if isinstance(label, bool) or not isinstance(label, str | int) or str(label) == "":
            raise DataError(
                f"text file {path}, line {number}: the {label_column!r} value is empty or not "
                "a string or whole number"
            )
        texts.append(text)
        labels.append(str(label))
    if not texts:
        raise DataError(f"text file {path} holds no examples; give it a header and some rows")
    return TextTable(tuple(texts), tuple(labels))


@dataclass(frozen=True)
class PromptTable:
    """A prompt file's examples: each prompt and the response a model should learn to give."""

    prompts: tuple[str, ...]
    responses: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)


def read_prompt_file(
    path: Path, prompt_column: str, response_column: str, fmt: str | None = None
) -> PromptTable:
    """The prompts and responses of ``path`` (CSV/TSV with a header, or JSON Lines)."""
    problem = not_a_file_reason(path)
    if problem is not None:
        raise DataError(f"prompt file {path} {problem}; point --data-file at a prompt file")
    fmt = fmt or text_format(path)
    rows = _json_rows(path) if fmt == "jsonl" else _delimited_rows(path, fmt)
    prompts: list[str] = []
    responses: list[str] = []
    for number, row in rows:
        for column in (prompt_column, response_column):
            if column not in row:
                raise DataError(
                    f"prompt file {path}, line {number}: no column {column!r}; name the columns "
                    "with --prompt-column and --response-column"
                )
            if not isinstance(row[column], str) or not row[column].strip():
                raise DataError(
                    f"prompt file {path}, line {number}: the {column!r} value is empty or not "
                    "text; remove the line or fill it in"
                )
        prompts.append(row[prompt_column])
        responses.append(row[response_column])
    if not prompts:
        raise DataError(f"prompt file {path} holds no examples; give it a header and some rows")
    return PromptTable(tuple(prompts), tuple(responses))


def encode_prompt_responses(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
) -> np.ndarray:
    """(n, 3, max_length) float32: token ids, attention mask, and 1 on the response's tokens.

    Each example is the prompt (with the tokenizer's special tokens) followed by the response
    and an end-of-text token, cut to ``max_length`` and padded. A causal language model learns
    the tokens the third channel marks: the loss is on the response, never on the prompt.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max length must be a whole number of at least 2, got {max_length!r}")
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise DataError("the tokenizer has no end-of-text (eos or sep) token; set one and save it")
    pad = int(tokenizer.pad_token_id)
    heads = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    tails = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    out = np.zeros((len(heads), 3, max_length), dtype=np.int64)
    out[:, 0] = pad
    for row, (head, tail) in enumerate(zip(heads, tails, strict=True)):
        tokens = (list(head) + list(tail) + [int(end)])[:max_length]
        out[row, 0, : len(tokens)] = tokens
        out[row, 1, : len(tokens)] = 1
        out[row, 2, len(head) : len(tokens)] = 1
    if out.size and int(out[:, 0].max()) >= EXACT_IDS_BELOW:
        raise DataError(
            f"a token id reached {int(out[:, 0].max())}, beyond float32's exact integers"
        )
    return out.astype(np.float32)


def _delimited_rows(path: Path, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (quoted fields) or TSV (quoting off) with a header row."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if fmt == "tsv":
                reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(handle)
            lines = list(reader)
    except UnicodeDecodeError:
        raise DataError(f"text file {path} is not UTF-8 text; save it as UTF-8") from None
    except csv.Error as error:
        raise DataError(f"text file {path} is not valid {fmt.upper()}: {error}") from None
    if not lines:
        raise DataError(f"text file {path} is empty; give it a header row and some rows")
    header = [name.strip() for name in lines[0]]
    rows = []
    for number, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue  # a blank line
        if len(fields) != len(header):
            raise DataError(
                f"text file {path}, line {number}: {len(fields)} fields where the header has "
                f"{len(header)}; check the delimiter (a TSV is read with quoting off)"
            )
        rows.append((number, dict(zip(header, fields, strict=True))))
    return rows


def _json_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON Lines file (one object per non-blank line)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"text file {path} is not UTF-8 text; save it as UTF-8") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(
                f"text file {path}, line {number}: not a JSON object; each line of a .jsonl "
                "file must be one"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"text file {path}, line {number}: not a JSON object")
        rows.append((number, row))
    return rows


def label_index(labels: Sequence[str]) -> dict[str, int]:
    """Each distinct label's class: its position among the sorted distinct labels."""
    return {label: index for index, label in enumerate(sorted(set(labels)))}


def folder_label_index(folder: Path) -> dict[str, int] | None:
    """The label names a model folder's ``config.json`` fixes (``id2label``), or None.

    A folder saved with ``id2label={0: "ham", 1: "spam"}`` fixes every party's numbering, so a
    node whose own file lacks a class still numbers the rest as everyone else does. Hugging
    Face's placeholder names (``LABEL_0``, ...) fix nothing: then the data's sorted labels do.
    """
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = config.get("id2label") if isinstance(config, dict) else None
    if not isinstance(names, dict) or not names:
        return None
    try:
        ordered = {int(index): str(name) for index, name in names.items()}
    except (TypeError, ValueError):
        return None
    if sorted(ordered) != list(range(len(ordered))) or len(set(ordered.values())) < len(ordered):
        return None
    if all(name == f"LABEL_{index}" for index, name in ordered.items()):
        return None
    return {name: index for index, name in ordered.items()}


def text_classes(folder: Path, labels: Sequence[str]) -> dict[str, int]:
    """The run's classes: the model folder's label names when it has them, else `label_index`."""
    named = folder_label_index(folder)
    if named is None:
        return label_index(labels)
    unknown = {label for label in labels if label not in named}
    if unknown:
        raise DataError(
            f"{len(unknown)} label value(s) of the data are not among the {len(named)} label "
            f"names (id2label) of model folder {folder}; use the folder's names in the label "
            "column, or save the model with the data's labels"
        )
    return named


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of ``folder`` (`open_tokenizer`), opened once per process per folder state."""
    return _tokenizer_cached(folder.expanduser().resolve(), _folder_state(folder))


def _folder_state(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and times of a folder's files: a changed tokenizer is opened afresh."""
    if not folder.is_dir():
        return ()
    return tuple(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in sorted(folder.iterdir())
        if entry.is_file()
    )


@functools.lru_cache(maxsize=4)
def _tokenizer_cached(
    folder: Path, state: tuple[tuple[str, int, int], ...]
) -> PreTrainedTokenizerBase:
    del state  # part of the cache key only
    return open_tokenizer(folder)


def open_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local Hugging Face folder (``save_pretrained``); never a download.

    A missing folder, or one without a tokenizer (``tokenizer.json`` or a vocabulary with its
    ``tokenizer_config.json``), is a one-line DataError that says what is missing. A tokenizer
    without a padding token, or with more ids than float32 holds exactly, is refused.
    """
    if not folder.is_dir():
        raise DataError(
            f"model folder {folder} does not exist; give a local folder written by "
            "save_pretrained (models are never downloaded)"
        )
    if (
        not (folder / "tokenizer.json").is_file()
        and not (folder / "tokenizer_config.json").is_file()
    ):
        raise DataError(
            f"model folder {folder} has no tokenizer (tokenizer.json or tokenizer_config.json); "
            "save the tokenizer there with tokenizer.save_pretrained"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        first = " ".join(str(error).split())[:200]
        raise DataError(f"model folder {folder}: its tokenizer does not load ({first})") from None
    if tokenizer.pad_token_id is None:
        raise DataError(
            f"model folder {folder}: its tokenizer has no padding token; set pad_token and "
            "save it again"
        )
    if len(tokenizer) > EXACT_IDS_BELOW:
        raise DataError(
            f"model folder {folder}: its tokenizer has {len(tokenizer)} ids, more than the "
            f"{EXACT_IDS_BELOW} Privet carries exactly"
        )
    return tokenizer


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> np.ndarray:
    """Token ids and attention masks of ``texts``, (n, 2, max_length) float32 (exact)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max length must be a whole number of at least 2, got {max_length!r}")
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_attention_mask=True,
    )
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    mask = np.asarray(encoded["attention_mask"], dtype=np.int64)
    if ids.size and int(ids.max()) >= EXACT_IDS_BELOW:
        raise DataError(f"a token id reached {int(ids.max())}, beyond float32's exact integers")
    return np.stack([ids, mask], axis=1).astype(np.float32)


def text_dataset(
    table: TextTable,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    classes: dict[str, int],
) -> ArrayDataset:
    """``table`` tokenized, with its labels numbered by ``classes`` (`label_index`)."""
    unknown = sorted({label for label in table.labels if label not in classes})
    if unknown:
        raise DataError(
            f"{len(unknown)} label value(s) are not in the run's label set of {len(classes)}; "
            "every party must use the same labels"
        )
    features = encode_texts(tokenizer, table.texts, max_length)
    labels = np.asarray([classes[label] for label in table.labels], dtype=np.int64)
    return ArrayDataset(features, labels, len(classes))


def token_ids(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`encode_texts`' features back to (input ids, attention mask), as int64."""
    return features[:, 0].astype(np.int64), features[:, 1].astype(np.int64)


# --------------------------------------------------------------------------------------------
# The "text" data set: a file's texts, tokenized by the run's model folder
# --------------------------------------------------------------------------------------------


def load_text_data(options: DatasetOptions) -> TrainTest:
    """The ``text`` data set: ``data_file`` tokenized by ``model_folder``'s tokenizer, split.

    The test set is a stratified held-out part of ``data_file``, or the whole ``test_file``
    (a text file of the same form). The classes are the model folder's label names when it
    names them (`text_classes`), else the sorted distinct labels of the files.
    """
    if options.model_folder is None:
        raise DataError(
            "dataset 'text' is tokenized by the model's own tokenizer: give --model hf:FOLDER "
            "(a local Hugging Face folder)"
        )
    if options.label_column is None:
        raise DataError("dataset 'text' needs --label-column NAME (the column of the labels)")
    if options.data_file is None and options.test_file is None:
        raise DataError("dataset 'text' needs --data-file FILE (CSV, TSV or JSONL with a header)")
    keys = tuple(
        file_key(Path(name).expanduser())
        if name is not None and Path(name).expanduser().is_file()
        else None
        for name in (options.data_file, options.test_file)
    )
    folder = Path(options.model_folder).expanduser()
    return _load_text_cached(
        options.data_file,
        options.test_file,
        keys,
        options.text_column,
        options.label_column,
        folder,
        _folder_state(folder),
        options.max_length,
        options.seed,
        options.test_fraction,
    )


@functools.lru_cache(maxsize=4)
def _load_text_cached(
    data_file: str | None,
    test_file: str | None,
    keys: tuple[object, ...],
    text_column: str,
    label_column: str,
    folder: Path,
    folder_state: tuple[tuple[str, int, int], ...],
    max_length: int,
    seed: int,
    test_fraction: float,
) -> TrainTest:
    del keys, folder_state  # part of the cache key only: a changed file is read afresh
    tokenizer = load_tokenizer(folder)
    table = (
        None
        if data_file is None
        else read_text_file(Path(data_file).expanduser(), text_column, label_column)
    )
    tests = (
        None
        if test_file is None
        else read_text_file(Path(test_file).expanduser(), text_column, label_column)
    )
    labels = (table.labels if table else ()) + (tests.labels if tests else ())
    classes = text_classes(folder, labels)
    whole = (
        text_dataset(table, tokenizer, max_length, classes)
        if table is not None
        else ArrayDataset(
            np.zeros((0, 2, max_length), np.float32), np.zeros(0, np.int64), len(classes)
        )
    )
    if tests is not None:
        test = text_dataset(tests, tokenizer, max_length, classes)
        return freeze(
            TrainTest(
                train=whole,
                test=test,
                kind="text",
                test_source=f"test-file {test_file} ({len(test)} examples)",
            )
        )
    train_idx, test_idx = stratified_split(whole.labels, test_fraction, seed, "the text file")
    return freeze(
        TrainTest(
            train=whole.subset(train_idx),
            test=whole.subset(test_idx),
            kind="text",
            test_source=f"held-out {test_fraction * 100:g}% of data-file {data_file} "
            f"({len(test_idx)} of {len(whole)} examples)",
        )
    )


def load_prompt_data(options: DatasetOptions) -> TrainTest:
    """The ``prompts`` data set: prompts and responses for a causal language model.

    Features are `encode_prompt_responses`' (ids, mask, response mask); there are no classes
    (every label is 0). The test set is a held-out part of ``data_file`` or the whole
    ``test_file``.
    """
    if options.model_folder is None:
        raise DataError(
            "dataset 'prompts' is tokenized by the model's own tokenizer: give --model "
            "hf:FOLDER (a local Hugging Face folder)"
        )
    if options.data_file is None and options.test_file is None:
        raise DataError("dataset 'prompts' needs --data-file FILE (CSV, TSV or JSONL)")
    folder = Path(options.model_folder).expanduser()
    tokenizer = load_tokenizer(folder)

    def encoded(name: str) -> ArrayDataset:
        table = read_prompt_file(
            Path(name).expanduser(), options.prompt_column, options.response_column
        )
        features = encode_prompt_responses(
            tokenizer, table.prompts, table.responses, options.max_length
        )
        return ArrayDataset(features, np.zeros(len(table), np.int64), 1)

    empty = ArrayDataset(np.zeros((0, 3, options.max_length), np.float32), np.zeros(0, np.int64), 1)
    whole = empty if options.data_file is None else encoded(options.data_file)
    if options.test_file is not None:
        test = encoded(options.test_file)
        return freeze(
            TrainTest(
                whole,
                test,
                "text",
                test_source=f"test-file {options.test_file} ({len(test)} examples)",
            )
        )
    order = np.random.default_rng(options.seed).permutation(len(whole))
    held = max(1, int(round(len(whole) * options.test_fraction)))
    if len(whole) - held < 1:
        raise DataError(
            f"prompt file {options.data_file} has {len(whole)} example(s), too few to hold "
            "some out for testing; add examples or give --test-file"
        )
    test_idx, train_idx = np.sort(order[:held]), np.sort(order[held:])
    return freeze(
        TrainTest(
            whole.subset(train_idx),
            whole.subset(test_idx),
            "text",
            test_source=f"held-out {options.test_fraction * 100:g}% of data-file "
            f"{options.data_file} ({held} of {len(whole)} examples)",
        )
    )
