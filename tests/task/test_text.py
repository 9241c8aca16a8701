"""Text examples (issue 15, first layer): reading CSV/TSV/JSONL, numbering labels, and tokens
from a tokenizer in a local Hugging Face folder (trained here: nothing is downloaded)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from privet.task.containers import DataError
from privet.task.text import (
    label_index,
    load_tokenizer,
    read_text_file,
    text_dataset,
    token_ids,
)

SMS = Path(__file__).resolve().parents[3] / "shared" / "data" / "sms-spam" / "SMSSpamCollection"
SECRET = "my pin is 4921"


def sms_lines(count: int) -> list[tuple[str, str]]:
    """The first ``count`` messages of the UCI SMS Spam Collection (label, text)."""
    rows = []
    with SMS.open(encoding="utf-8") as handle:
        for line in handle:
            label, text = line.rstrip("\n").split("\t", 1)
            rows.append((label, text))
            if len(rows) == count:
                break
    return rows


def save_tokenizer(folder: Path, texts: list[str]) -> Path:
    """A word-level tokenizer trained on ``texts``, saved as Hugging Face saves one."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    fast.save_pretrained(str(folder))
    return folder


def test_the_sms_collection_reads_as_tsv_csv_and_jsonl_alike(tmp_path):
    rows = sms_lines(60)
    tsv = tmp_path / "sms.tsv"
    tsv.write_text("label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    with (tmp_path / "sms.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    (tmp_path / "sms.jsonl").write_text(
        "".join(json.dumps({"text": b, "label": a}) + "\n" for a, b in rows), encoding="utf-8"
    )
    tables = [
        read_text_file(tmp_path / f"sms.{s}", "text", "label") for s in ("tsv", "csv", "jsonl")
    ]
    assert tables[0] == tables[1] == tables[2]
    assert tables[0].texts == tuple(b for _, b in rows) and set(tables[0].labels) == {"ham", "spam"}
    assert label_index(tables[0].labels) == {"ham": 0, "spam": 1}


def test_tokens_come_from_the_local_folder_and_round_trip_exactly(tmp_path):
    rows = sms_lines(200)
    texts = [b for _, b in rows]
    folder = save_tokenizer(tmp_path / "model", texts)
    tokenizer = load_tokenizer(folder)
    path = tmp_path / "sms.jsonl"
    path.write_text("".join(json.dumps({"t": b, "y": a}) + "\n" for a, b in rows))
    table = read_text_file(path, "t", "y")
    data = text_dataset(table, tokenizer, 16, label_index(table.labels))
    assert data.features.shape == (200, 2, 16) and data.features.dtype == np.float32
    ids, mask = token_ids(data.features)
    expected = tokenizer(texts, padding="max_length", truncation=True, max_length=16)
    assert np.array_equal(ids, np.asarray(expected["input_ids"]))
    assert np.array_equal(mask, np.asarray(expected["attention_mask"]))
    assert set(np.unique(mask)) == {0, 1} and (ids[mask == 0] == tokenizer.pad_token_id).all()
    assert data.labels.tolist() == [label_index(table.labels)[a] for a, _ in rows]


def test_bad_text_files_and_folders_are_one_line_errors_without_data(tmp_path):
    def error_of(call) -> str:
        with pytest.raises(DataError) as info:
            call()
        text = str(info.value)
        assert "\n" not in text and SECRET not in text
        return text

    good = tmp_path / "ok.csv"
    good.write_text(f"label,text\nham,{SECRET}\n")
    assert "no column 'message'" in error_of(lambda: read_text_file(good, "message", "label"))
    short = tmp_path / "short.csv"
    short.write_text(f"label,text\nham\nspam,{SECRET}\n")
    assert "line 2: 1 fields where the header has 2" in error_of(
        lambda: read_text_file(short, "text", "label")
    )
    empty_text = tmp_path / "blank.jsonl"
    empty_text.write_text(json.dumps({"text": " ", "label": "ham"}) + "\n")
    assert "line 1: the 'text' value is empty" in error_of(
        lambda: read_text_file(empty_text, "text", "label")
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": SECRET, "label": "ham"}) + "\n{" + SECRET + "\n")
    assert "line 2: not a JSON object" in error_of(lambda: read_text_file(broken, "text", "label"))
    odd = tmp_path / "odd.xlsx"
    odd.write_text("x")
    assert "name it .csv, .tsv or .jsonl" in error_of(lambda: read_text_file(odd, "t", "l"))
    assert "does not exist" in error_of(lambda: read_text_file(tmp_path / "no.csv", "t", "l"))
    assert "does not exist" in error_of(lambda: load_tokenizer(tmp_path / "no-model"))
    (tmp_path / "weights-only").mkdir()
    assert "has no tokenizer" in error_of(lambda: load_tokenizer(tmp_path / "weights-only"))
    folder = save_tokenizer(tmp_path / "model", ["ham spam", SECRET])
    table = read_text_file(good, "text", "label")
    assert "not in the run's label set" in error_of(
        lambda: text_dataset(table, load_tokenizer(folder), 8, {"spam": 0})
    )
