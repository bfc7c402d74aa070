"""Tokenizers that work offline.

* :func:`clip_tokenizer` rebuilds the transformers ``CLIPTokenizer`` from the BPE merges that open_clip
  ships inside its package (``bpe_simple_vocab_16e6.txt.gz``): 256 byte symbols, the same with ``</w>``,
  one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (49,408 entries). It tokenises
  exactly like open_clip's ``SimpleTokenizer`` and like ``openai/clip-vit-base-patch16``'s tokenizer.
* :func:`word_tokenizer` builds a real BERT WordPiece tokenizer over a given word list (BLIP-2's tokenizer
  family); BERT's and Llama's own vocabularies are not available offline.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from typing import Iterable

CLIP_VOCAB_SIZE = 49408
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP reversible byte -> printable unicode map (same as open_clip.tokenizer.bytes_to_unicode).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary (49,408 entries) and merge list, read from open_clip's packaged merges."""
    path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab_list) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"open_clip's BPE file gave {len(vocab_list)} tokens, expected {CLIP_VOCAB_SIZE}")
    return {t: i for i, t in enumerate(vocab_list)}, merges


@lru_cache(maxsize=None)
def clip_tokenizer(model_max_length: int = 77):
    """transformers ``CLIPTokenizer`` with the real CLIP vocabulary, built without network access."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
    if len(tok) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"offline CLIPTokenizer has {len(tok)} tokens, expected {CLIP_VOCAB_SIZE}")
    return tok


def word_tokenizer(words: Iterable[str], model_max_length: int = 64):
    """BERT WordPiece tokenizer whose vocabulary is the special tokens plus ``words`` (lower-cased, unique).

    Ids: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, then the words in first-seen order.
    """
    from transformers import BertTokenizer

    vocab = {t: i for i, t in enumerate(BERT_SPECIAL_TOKENS)}
    for w in words:
        w = w.lower()
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = BertTokenizer(vocab=vocab, model_max_length=model_max_length)
    if len(tok) != len(vocab):
        raise RuntimeError(f"word tokenizer has {len(tok)} tokens, expected {len(vocab)}")
    return tok
