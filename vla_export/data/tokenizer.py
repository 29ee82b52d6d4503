"""Prompt text -> ``input_ids`` and ``attention_mask``, as the policy takes them.

The policy prepends ``<s> <image> [image slots] </image>`` itself, so ``input_ids`` are the prompt's
tokens without ``<s>``, ending in ``</s>`` as the Kosmos-2 processor writes them, right-padded with
the pad id. A real deployment uses the Kosmos-2 tokenizer from a local directory
(:class:`HFTokenizer`); presets with a small vocabulary (tiny, small) carry a built-in word/character
tokenizer (:class:`BuiltinTokenizer`), so tests and the demo go from text to actions without
downloads. NumPy only: the runtime imports this without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from vla_export.errors import ConfigError, DataError
from vla_export.lazy import lazy_import
from vla_export.models.config import PolicyConfig

GROUNDING = "<grounding>"
KOSMOS2_VOCAB_SIZE = 65037
WORD_MARK = "\u2581"  # SentencePiece's word-start marker, as in the Kosmos-2 vocabulary

#: Words given their own token in the built-in vocabulary: the prompt template and the instructions.
WORDS = (
    "An image of a robot go to the cup around leftmost rightmost edge reach left right "
    "box boxes obstacle move forward back turn stop and then pass table chair wall door"
).split()


class Tokenizer(Protocol):
    """What the data sources and the runtime need from a tokenizer."""

    name: str

    def encode(self, prompt: str, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]: ...


def pad_tokens(ids: list[int], max_len: int | None, pad_id: int, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``ids`` to ``max_len`` (no padding when None); a prompt that does not fit is an error."""
    if max_len is None:
        max_len = len(ids)
    if len(ids) > max_len:
        raise DataError(f"the prompt {prompt!r} is {len(ids)} tokens, more than the text length {max_len}; pass a larger text length")
    input_ids = np.full(max_len, pad_id, dtype=np.int64)
    input_ids[: len(ids)] = ids
    mask = np.zeros(max_len, dtype=np.int64)
    mask[: len(ids)] = 1
    return input_ids, mask


@dataclass(frozen=True)
class BuiltinTokenizer:
    """A deterministic tokenizer fitted into a small preset's vocabulary.

    Ids: the config's special tokens keep their ids; then ``<grounding>``, ``<unk>``, the word marker,
    printable ASCII characters and ``WORD_MARK + word`` for :data:`WORDS`, skipping reserved ids and
    stopping at ``vocab_size``. A known word is one token; any other word is the marker and its
    characters, so every prompt encodes.
    """

    config: PolicyConfig
    name: str = "builtin"
    vocab: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = self.config.tokens
        reserved = {t.bos, t.pad, t.eos, t.image_start, t.image_end}
        pieces = [GROUNDING, "<unk>", WORD_MARK] + [chr(c) for c in range(33, 127)] + [WORD_MARK + w for w in WORDS]
        vocab_size = self.config.kosmos_text.vocab_size
        vocab: dict[str, int] = {}
        next_id = 0
        for piece in pieces:
            while next_id in reserved:
                next_id += 1
            if next_id >= vocab_size:
                break
            vocab[piece] = next_id
            next_id += 1
        if len(vocab) < 3 + 94:  # the word marker and every printable character must fit
            raise ConfigError(f"vocabulary of {vocab_size} is too small for the built-in tokenizer; pass --tokenizer DIR")
        object.__setattr__(self, "vocab", vocab)

    def tokenize(self, prompt: str) -> list[str]:
        pieces: list[str] = []
        for i, part in enumerate(prompt.split(GROUNDING)):
            if i:
                pieces.append(GROUNDING)
            for word in part.split():
                if WORD_MARK + word in self.vocab:
                    pieces.append(WORD_MARK + word)
                else:
                    pieces += [WORD_MARK, *word]
        return pieces

    def encode(self, prompt: str, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        unk = self.vocab["<unk>"]
        ids = [self.vocab.get(p, unk) for p in self.tokenize(prompt)] + [self.config.tokens.eos]
        return pad_tokens(ids, max_len, self.config.tokens.pad, prompt)


class HFTokenizer:
    """A Hugging Face tokenizer (Kosmos-2's) loaded from a local directory, never from a hub."""

    def __init__(self, directory: str | Path, config: PolicyConfig):
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"{directory}: tokenizer directory not found")
        transformers = lazy_import("transformers", purpose="loading a tokenizer directory")
        try:
            self._tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{directory}: not a loadable tokenizer directory ({exc})") from None
        self.config = config
        self.name = f"hf:{directory}"
        vocab = len(self._tok)
        if vocab > config.kosmos_text.vocab_size:
            raise ConfigError(
                f"{directory}: tokenizer has {vocab} tokens but the policy's vocabulary is {config.kosmos_text.vocab_size}"
            )
        self._bos = self._tok.bos_token_id
        self._pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else config.tokens.pad

    def encode(self, prompt: str, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids = list(self._tok(prompt, add_special_tokens=True)["input_ids"])
        if ids and self._bos is not None and ids[0] == self._bos:
            ids = ids[1:]  # the policy adds <s> itself
        return pad_tokens(ids, max_len, self._pad, prompt)


def tokenizer_for(config: PolicyConfig, tokenizer_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer for ``config``: ``tokenizer_dir`` when given, else the built-in one for small vocabularies."""
    if tokenizer_dir is not None:
        return HFTokenizer(tokenizer_dir, config)
    if config.kosmos_text.vocab_size >= KOSMOS2_VOCAB_SIZE:
        raise ConfigError(
            f"config '{config.name}' uses the Kosmos-2 vocabulary ({config.kosmos_text.vocab_size} tokens): "
            "pass --tokenizer DIR (a local copy of the Kosmos-2 tokenizer)"
        )
    return BuiltinTokenizer(config)

