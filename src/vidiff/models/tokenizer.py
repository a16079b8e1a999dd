"""An offline CLIP tokenizer built from the real CLIP BPE vocabulary.

The tiny preset needs a tokenizer without touching a model hub. open-clip-torch ships OpenAI CLIP's
byte-pair vocabulary (``bpe_simple_vocab_16e6.txt.gz``); the vocabulary and merge list of the Hugging Face
``CLIPTokenizer`` are derived from it the same way OpenAI's ``SimpleTokenizer`` does, so token ids equal
those of Stable Diffusion 1.5's tokenizer (49408 entries).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from vidiff.assets import clip_bpe_vocab


CLIP_VOCAB_SIZE = 49408
# OpenAI's SimpleTokenizer keeps the first 49152 - 256 - 2 merges of the file (the first line is a header)
_NUM_MERGES = 49152 - 256 - 2


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (token -> id) and merge rules from the gzipped BPE file."""
    bpe_path = Path(bpe_path) if bpe_path is not None else clip_bpe_vocab()
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : _NUM_MERGES + 1]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    vocab, merges = clip_vocab_and_merges()
    return vocab, tuple(merges)


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` equal to Stable Diffusion 1.5's, built offline."""
    vocab, merges = _vocab_and_merges()
    # built in memory (transformers 5 takes the vocabulary and merges directly): no files, nothing left in /tmp
    return CLIPTokenizer(
        vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], model_max_length=model_max_length
    )
