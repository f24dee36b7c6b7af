"""Tokenizer: train a byte-level BPE on the clean documents, or use a given tokenizer.json.

Byte-level BPE never meets an unknown character and decodes back to the exact input text,
which the packing and the round-trip tests rely on. The result is saved in the `tokenizers`
library's own `tokenizer.json`, so users can load it anywhere without Crucible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import Field, field_validator

from pipeline.ground.errors import UserError
from pipeline.ground.schema import Section

EOD = "<|endoftext|>"
PAD = "<|pad|>"


class TokenizerConfig(Section):
    """Train a tokenizer (vocab_size, ...) or load one from `path`."""

    path: Path | None = Field(None, description="An existing tokenizer.json; skips training.")
    vocab_size: int = Field(8192, ge=260, le=2**20, description="Target vocabulary, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="Pairs seen fewer times are not merged.")
    train_chars: int = Field(200_000_000, ge=1000, description="Train on at most this many characters.")
    eod_token: str = EOD
    pad_token: str = PAD
    extra_special_tokens: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        return path


def _capped(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    seen = 0
    for text in texts:
        if seen >= max_chars:
            return
        yield text
        seen += len(text)


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig):  # -> tokenizers.Tokenizer
    """Byte-level BPE over `texts` (first `train_chars` characters), deterministic for one input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=[config.eod_token, config.pad_token, *config.extra_special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_capped(texts, config.train_chars), trainer)
    return tokenizer


def load_tokenizer(path: Path):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def special_ids(tokenizer, config: TokenizerConfig) -> tuple[int, int]:
    """(end-of-document id, padding id); a given tokenizer must define both tokens."""
    ids = []
    for token in (config.eod_token, config.pad_token):
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise UserError(f"tokenizer has no {token!r} token: set prep.tokenizer.eod_token/pad_token to its own")
        ids.append(token_id)
    return ids[0], ids[1]

