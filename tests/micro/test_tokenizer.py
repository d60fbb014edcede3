"""The offline CLIP tokenizer: converter output is what assets/ ships, and it encodes like CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.micro import tokenizer

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(SHIPPED), local_files_only=True)


def test_converter_output_equals_the_shipped_files():
    for name, text in tokenizer.tokenizer_files().items():
        assert (SHIPPED / name).read_bytes() == text.encode("utf-8"), name


def test_cli_writes_the_same_files(tmp_path):
    assert tokenizer.main(["--out", str(tmp_path / "tok")]) == 0
    for name in tokenizer.tokenizer_files():
        assert (tmp_path / "tok" / name).read_bytes() == (SHIPPED / name).read_bytes(), name


def test_vocabulary_layout_is_clips():
    vocab = json.loads((SHIPPED / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and sorted(vocab.values()) == list(range(49408))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["a</w>"] == 320
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    merges = (SHIPPED / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert merges[1] == "i n" and "".join(merges[1].split()) in vocab
    assert len(set(tokenizer.bytes_to_unicode().values())) == 256


def test_known_token_ids(clip_tokenizer):
    assert clip_tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert clip_tokenizer.bos_token_id == 49406 and clip_tokenizer.eos_token_id == 49407
    assert clip_tokenizer.pad_token == "<|endoftext|>" and clip_tokenizer.model_max_length == 77
    assert len(clip_tokenizer) == 49408


def test_prompts_pad_and_truncate_to_77(clip_tokenizer):
    padded = clip_tokenizer("A RED circle on the left", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[:2] == [49406, 320] and padded[-1] == 49407
    long = clip_tokenizer("red " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407
    assert clip_tokenizer.decode(clip_tokenizer("a red circle").input_ids, skip_special_tokens=True) == "a red circle"


def test_a_missing_bpe_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        tokenizer.tokenizer_files(tmp_path / "nope.txt.gz")
