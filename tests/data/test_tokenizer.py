"""The built-in tokenizer (tiny/small presets) and the local-directory rule for the real one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vla_export.data.preprocess import prompt_for
from vla_export.data.tokenizer import BuiltinTokenizer, tokenizer_for
from vla_export.errors import ConfigError, DataError
from vla_export.models.config import get_preset

PROMPT = prompt_for("go around the leftmost edge to reach the cup")


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_builtin_encodes_the_runtime_prompt_into_the_vocabulary(preset):
    cfg = get_preset(preset)
    ids, mask = tokenizer_for(cfg).encode(PROMPT, cfg.max_text_len)
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (cfg.max_text_len,)
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any()  # right padding
    assert ids[0] != cfg.tokens.bos  # the policy prepends <s> itself
    assert ids[n - 1] == cfg.tokens.eos and (ids[n:] == cfg.tokens.pad).all()
    specials = {cfg.tokens.bos, cfg.tokens.pad, cfg.tokens.image_start, cfg.tokens.image_end}
    assert not specials & set(ids[: n - 1].tolist())
    assert ids.max() < cfg.kosmos_text.vocab_size


def test_builtin_is_deterministic_and_distinguishes_instructions():
    cfg = get_preset("tiny")
    a = BuiltinTokenizer(cfg).encode(PROMPT, 32)[0]
    b = BuiltinTokenizer(cfg).encode(PROMPT, 32)[0]
    c = BuiltinTokenizer(cfg).encode(prompt_for("go around the rightmost edge to reach the cup"), 32)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_grounding_is_one_token_and_unknown_words_spell_out():
    tok = BuiltinTokenizer(get_preset("tiny"))
    assert tok.tokenize("<grounding>An zq!")[:2] == ["<grounding>", "\u2581An"]
    assert tok.tokenize("<grounding>An zq!")[2:] == ["\u2581", "z", "q", "!"]
    ids, mask = tok.encode("<grounding>An zq!")  # no max_len: exactly the tokens
    assert mask.all() and len(ids) == 7  # with </s>


def test_too_long_prompt_is_an_error_not_a_truncation():
    with pytest.raises(DataError, match="more than the text length 4"):
        tokenizer_for(get_preset("tiny")).encode(PROMPT, 4)


def test_kosmos2_vocabulary_needs_a_tokenizer_directory(tmp_path):
    with pytest.raises(ConfigError, match="--tokenizer DIR"):
        tokenizer_for(get_preset("mobile-vla"))
    with pytest.raises(ConfigError, match="not found"):
        tokenizer_for(get_preset("mobile-vla"), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a loadable tokenizer directory"):
        tokenizer_for(get_preset("mobile-vla"), tmp_path / "empty")


def test_tokenizer_module_does_not_import_torch():
    code = "import sys, vla_export.data.tokenizer, vla_export.data.episodes; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
