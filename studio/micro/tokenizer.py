"""Build the CLIP tokenizer files offline from the BPE vocabulary that open_clip ships.

The embedded model uses the standard CLIP tokenizer (as in openai/clip-vit-large-patch14)
so any SD1.x text encoder's token ids mean the same. Its vocabulary is OpenAI's
``bpe_simple_vocab_16e6.txt.gz``, which the open-clip-torch wheel carries; from it we write
``vocab.json`` + ``merges.txt`` in the Hugging Face layout, plus the two small config files
``transformers.CLIPTokenizer.from_pretrained(folder)`` reads. No download.

    python -m studio.micro.tokenizer --out assets/tokenizer
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# CLIP keeps 49152 - 256 - 2 merges so that 256 bytes, their 256 end-of-word forms, the
# merges and the two special tokens make a vocabulary of exactly 49408.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408

_SPECIAL = {"content": None, "single_word": False, "lstrip": False, "rstrip": False, "normalized": True}


def bundled_bpe_path() -> Path:
    """The BPE vocabulary inside the installed open_clip package (open-clip-torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{BPE_FILE} comes with the open-clip-torch package; install it (pip install open-clip-torch)"
        )
    # find_spec locates the package without importing it (importing open_clip loads torch).
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"open_clip is installed but {BPE_FILE} is not in {list(spec.submodule_search_locations)}")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map that CLIP's BPE is written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters)))


def read_merges(bpe_path: Path) -> list[str]:
    """The N_MERGES merge rules ("a b" lines) of the BPE file, header dropped."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"{bpe_path} does not hold {N_MERGES} two-part merge rules")
    return merges


def build_vocab(merges: list[str]) -> dict[str, int]:
    """token -> id exactly as CLIP numbers them."""
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"built {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def tokenizer_files(bpe_path: Path | None = None) -> dict[str, str]:
    """File name -> text of every file of the tokenizer folder."""
    merges = read_merges(bpe_path or bundled_bpe_path())
    vocab = build_vocab(merges)
    special = {
        "bos_token": {**_SPECIAL, "content": BOS},
        "eos_token": {**_SPECIAL, "content": EOS},
        "unk_token": {**_SPECIAL, "content": EOS},
        "pad_token": EOS,
    }
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": special["bos_token"],
        "eos_token": special["eos_token"],
        "unk_token": special["unk_token"],
        "pad_token": EOS,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        # Byte-for-byte the layout of openai/clip-vit-large-patch14: one-line vocab.json
        # in id order with characters unescaped, merges.txt with no final newline.
        "merges.txt": "#version: 0.2\n" + "\n".join(merges),
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
    }


def write_tokenizer(out: Path, bpe_path: Path | None = None) -> list[Path]:
    """Write the tokenizer folder; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in tokenizer_files(bpe_path).items():
        path = out / name
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(text, encoding="utf-8", newline="\n")
        temporary.replace(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.micro.tokenizer", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the tokenizer files into")
    parser.add_argument("--bpe", type=Path, default=None, help=f"{BPE_FILE} to read (default: the one open_clip ships)")
    args = parser.parse_args(argv)
    for path in write_tokenizer(args.out, args.bpe):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
