"""`privet model-folder`: make a small local Hugging Face model folder from a text file.

    privet model-folder --data-file public.csv --label-column label --out FOLDER
        [--text-column text] [--hidden-size 64] [--layers 2] [--heads 2]
        [--intermediate-size 256] [--max-positions 512] [--vocab-size 8000] [--seed 0]
        [--train-epochs 0] [--max-length 64]

It trains a WordPiece tokenizer on the file's texts and saves it with a randomly initialised BERT
classifier whose labels are the file's (`privet.task.model_folder`); with ``--train-epochs N``
it trains the classifier on the file's labelled texts without DP, so that the folder is a
pretrained starting point. ``--model hf:FOLDER`` then fine-tunes it. Real work starts from a
pretrained folder instead (any ``save_pretrained`` folder of a sequence classifier with its
tokenizer); this command exists so that text runs can be tried with nothing downloaded. The
tokenizer's vocabulary, and with ``--train-epochs`` the weights, come from the file: give it
public text, never a partner's private data. Exit status: 0 written, 2 a problem (nothing
written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from privet.task.model_folder import BertSize, make_causal_lm_folder, make_text_model_folder
from privet.task.text import read_prompt_file, read_text_file

__all__ = ["add_model_folder_parser", "run_model_folder"]


def add_model_folder_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `model-folder` subcommand."""
    parser = commands.add_parser(
        "model-folder",
        help="make a small local model folder (tokenizer and BERT) for --model hf:FOLDER",
        description=(
            "Train a WordPiece tokenizer on a text file's texts and save it with a randomly "
            "initialised BERT classifier for the file's labels, as save_pretrained does. Use "
            "public text: the vocabulary is a release of facts about it."
        ),
    )
    parser.add_argument(
        "--data-file", metavar="FILE", required=True, help="CSV/TSV with a header, or JSONL"
    )
    parser.add_argument("--text-column", metavar="NAME", default="text", help="(default: text)")
    parser.add_argument("--label-column", metavar="NAME", help="the labels (a classifier)")
    parser.add_argument(
        "--causal-lm",
        action="store_true",
        help="make a small Llama language model for --task causal-lm instead of a classifier; "
        "the tokenizer learns from --text-column (the prompts) and --response-column",
    )
    parser.add_argument(
        "--response-column", metavar="NAME", default="response", help="(default: response)"
    )
    parser.add_argument("--out", metavar="FOLDER", required=True, help="a new folder to write")
    defaults = BertSize()
    for name in ("hidden_size", "layers", "heads", "intermediate_size", "max_positions"):
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        parser.add_argument(flag, type=int, default=default, help=f"(default: {default})")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=defaults.vocab_size,
        help=f"the tokenizer's largest vocabulary (default: {defaults.vocab_size})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights (default: 0)")
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=0,
        help="train the new model this many epochs on the file's labelled texts, without DP: "
        "the file must be public (default: 0, a random model)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=64,
        help="tokens per text when training (default: 64)",
    )


def run_model_folder(args: argparse.Namespace) -> int:
    """Write the folder and say what it holds; returns the exit status."""
    from privet.cli import CliError

    size = BertSize(
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        intermediate_size=args.intermediate_size,
        max_positions=args.max_positions,
        vocab_size=args.vocab_size,
    )
    out = Path(args.out).expanduser()
    if args.causal_lm:
        if args.train_epochs or args.label_column:
            raise CliError(
                "--causal-lm makes a random language model: drop --train-epochs and --label-column"
            )
        prompts = read_prompt_file(
            Path(args.data_file).expanduser(), args.text_column, args.response_column
        )
        make_causal_lm_folder(out, prompts.prompts + prompts.responses, size, seed=args.seed)
        print(
            f"wrote {out}: a Llama language model ({size.layers} layers, hidden size "
            f"{size.hidden_size}, random) and a tokenizer trained on {len(prompts)} prompts and "
            f"responses; use it with --task causal-lm --dataset prompts --model hf:{out}"
        )
        return 0
    if not args.label_column:
        raise CliError("--label-column NAME is needed for a classifier (or give --causal-lm)")
    table = read_text_file(Path(args.data_file).expanduser(), args.text_column, args.label_column)
    make_text_model_folder(
        out,
        table.texts,
        table.labels,
        size,
        seed=args.seed,
        train_epochs=args.train_epochs,
        max_length=args.max_length,
    )
    labels = ", ".join(sorted(set(table.labels)))
    trained = f"trained {args.train_epochs} epoch(s) without DP" if args.train_epochs else "random"
    print(
        f"wrote {out}: a BERT classifier ({size.layers} layers, hidden size {size.hidden_size}, "
        f"{trained}) for labels {labels}, and a tokenizer trained on {len(table)} texts; use it "
        f"with --model hf:{out}",
        file=sys.stdout,
    )
    return 0
