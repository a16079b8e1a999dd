"""An offline CLIP tokenizer built from the real CLIP BPE vocabulary.

The tiny preset needs a tokenizer without touching a model hub. open-clip-torch ships OpenAI CLIP's
byte-pair vocabulary (``bpe_simple_vocab_16e6.txt.gz``); the vocabulary and merge list of the Hugging Face
``CLIPTokenizer`` are derived from it the same way OpenAI's ``SimpleTokenizer`` does, so token ids equal
those of Stable Diffusion 1.5's tokenizer (49408 entries).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from vidiff.assets import clip_bpe_vocab


CLIP_VOCAB_SIZE = 49408
# OpenAI's SimpleTokenizer keeps the first 49152 - 256 - 2 merges of the file (the first line is a header)
_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points >= 256
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (token -> id) and merge rules from the gzipped BPE file."""
    bpe_path = Path(bpe_path) if bpe_path is not None else clip_bpe_vocab()
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : _NUM_MERGES + 1]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


@lru_cache(maxsize=1)
def _files_dir() -> str:
    vocab, merges = clip_vocab_and_merges()
    tmp = Path(tempfile.mkdtemp(prefix="vidiff-clip-tokenizer-"))
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"model_max_length": 77, "pad_token": "<|endoftext|>", "do_lower_case": True}
    (tmp / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(tmp)


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` equal to Stable Diffusion 1.5's, built offline."""
    return CLIPTokenizer.from_pretrained(_files_dir(), model_max_length=model_max_length)
