"""Tokenizers with Hugging Face `tokenizers`: trained on the job's data (BPE, WordPiece, Unigram),
byte-level (no training), or loaded from `tokenizer.uri`. Saved as tokenizer.json beside the
checkpoints and the exported model.

Every tokenizer has the same special tokens at the same ids, so objectives can rely on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing

from pretrain_operator.api.pretrain import TokenizerType

PAD, UNK, CLS, SEP, MASK, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]"
SENTINELS = tuple(f"<extra_id_{i}>" for i in range(100))  # T5 span corruption
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK, EOS, *SENTINELS)


@dataclass(frozen=True, slots=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int
    eos: int
    sentinels: tuple[int, ...]

    @property
    def all(self) -> list[int]:
        return [self.pad, self.unk, self.cls, self.sep, self.mask, self.eos, *self.sentinels]


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer.uri: the tokenizer lacks special tokens {missing[:5]}")
    return SpecialIds(ids[PAD], ids[UNK], ids[CLS], ids[SEP], ids[MASK], ids[EOS],  # type: ignore[arg-type]
                      tuple(ids[s] for s in SENTINELS))  # type: ignore[misc]  # fmt: skip


def _byte_level(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(kind: TokenizerType, vocab_size: int, texts: Iterable[str]) -> Tokenizer:
    """Train a tokenizer of `kind` on `texts` (Byte needs no training)."""
    specials = list(SPECIAL_TOKENS)
    if kind == TokenizerType.BYTE:
        # The 256 byte symbols and no merges: every string encodes, one token per byte.
        symbols = [*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())]
        vocab = {symbol: index for index, symbol in enumerate(symbols)}
        tokenizer = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=[])))
        tokenizer.add_special_tokens(specials)
        return tokenizer
    if kind == TokenizerType.BPE:
        # Byte-level BPE: every string encodes, no [UNK] (the byte-level fallback).
        tokenizer = _byte_level(Tokenizer(models.BPE()))
        trainer: trainers.Trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == TokenizerType.WORD_PIECE:
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token=UNK, show_progress=False
        )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return canonical(tokenizer)


# Unigram scores are log-probabilities; 1e-5 is far below any difference that matters.
UNIGRAM_SCORE_DECIMALS = 5


def canonical(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer whatever process trained it. Hugging Face's WordPiece and Unigram
    trainers learn the same pieces in every run but number them in hash-map order, and Unigram's
    scores are sums in that order (they differ by ~1e-11 between processes): the special tokens
    keep their ids, the other pieces are numbered in sorted order (Unigram: by score, then piece)
    and Unigram scores are rounded."""
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    count = len(SPECIAL_TOKENS)
    if model["type"] == "WordPiece":
        pieces = sorted(model["vocab"], key=model["vocab"].__getitem__)
        model["vocab"] = {p: i for i, p in enumerate([*pieces[:count], *sorted(pieces[count:])])}
    elif model["type"] == "Unigram":
        scored = [[piece, round(score, UNIGRAM_SCORE_DECIMALS)] for piece, score in model["vocab"]]
        model["vocab"] = scored[:count] + sorted(scored[count:], key=lambda e: (-e[1], e[0]))
    else:
        return tokenizer  # byte-level BPE numbers its merges in the order learned: deterministic
    return Tokenizer.from_str(json.dumps(data))


def with_bert_template(tokenizer: Tokenizer) -> Tokenizer:
    """[CLS] text [SEP], as BERT-family checkpoints expect when encoding single texts."""
    ids = special_ids(tokenizer)
    tokenizer.post_processor = TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, ids.cls), (SEP, ids.sep)],
    )
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def limited(texts: Iterable[str], max_characters: int) -> Iterator[str]:
    """The first texts up to a character budget: enough to train a tokenizer, bounded in time."""
    total = 0
    for text in texts:
        yield text
        total += len(text)
        if total >= max_characters:
            return
