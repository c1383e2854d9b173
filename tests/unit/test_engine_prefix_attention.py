"""The transformers engine's prefix cache and grouped decode attention, on a tiny random Llama
(no model files): reuse must not change what the model computes."""

from __future__ import annotations

import pytest
import torch

from services.model_server.engines.attention import GROUPED_DECODE, attention_kwargs
from services.model_server.engines.prefix_cache import MISS, PrefixCache, rows

pytestmark = pytest.mark.unit

HEADS, KV_HEADS, DIM, LAYERS = 6, 2, 8, 2


def kv(ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer fake keys/values whose content encodes (layer, token id, position)."""
    n = len(ids)
    base = torch.tensor(ids, dtype=torch.float32)[None, None, :, None]
    pos = torch.arange(n, dtype=torch.float32)[None, None, :, None]
    return [
        (
            (base + 1000 * layer + 0.001 * pos).expand(1, KV_HEADS, n, DIM).clone(),
            (base - 1000 * layer).expand(1, KV_HEADS, n, DIM).clone(),
        )
        for layer in range(LAYERS)
    ]


def test_lookup_finds_the_longest_shared_prefix_and_leaves_one_token() -> None:
    cache = PrefixCache(1000, min_tokens=4)
    a = list(range(100, 140))
    b = [*range(100, 120), *range(500, 520)]
    cache.store(a, kv(a))
    cache.store(b, kv(b))
    hit = cache.lookup([*range(100, 130), 7, 8])
    assert hit.length == 30
    keys, _ = hit.layers[1]
    assert keys.shape == (1, KV_HEADS, 30, DIM)
    assert torch.equal(keys, kv(a)[1][0][:, :, :30])
    # the whole prompt cached: one token is left for the caller to compute
    assert cache.lookup(a).length == len(a) - 1


def test_short_or_unrelated_prompts_miss() -> None:
    cache = PrefixCache(1000, min_tokens=8)
    cache.store(list(range(50)), kv(list(range(50))))
    assert cache.lookup([0, 1, 2, 3, 99, 98, 97, 96, 95, 94]) is MISS  # 4 shared < 8
    assert cache.lookup(list(range(5))) is MISS  # shorter than min_tokens
    assert PrefixCache(0).lookup(list(range(50))) is MISS  # disabled


def test_store_drops_entries_the_new_prompt_extends_and_skips_covered_ones() -> None:
    cache = PrefixCache(1000, min_tokens=2)
    step1 = list(range(30))
    step2 = [*step1, 40, 41, 42]
    cache.store(step1, kv(step1))
    cache.store(step2, kv(step2))
    assert len(cache) == 1 and cache.tokens == len(step2)
    cache.store(step1, kv(step1))  # already covered by step2
    assert len(cache) == 1 and cache.tokens == len(step2)


def test_least_recently_used_goes_first_within_the_token_budget() -> None:
    cache = PrefixCache(100, min_tokens=2)
    prompts = [[k * 1000 + i for i in range(40)] for k in range(3)]
    cache.store(prompts[0], kv(prompts[0]))
    cache.store(prompts[1], kv(prompts[1]))
    assert cache.lookup(prompts[0]).length == 39  # touches prompt 0
    cache.store(prompts[2], kv(prompts[2]))  # 120 tokens > 100: evicts prompt 1
    assert cache.tokens <= 100
    assert cache.lookup(prompts[1]) is MISS
    assert cache.lookup(prompts[0]).length == 39


def test_stored_tensors_are_copies() -> None:
    cache = PrefixCache(1000, min_tokens=2)
    ids = list(range(10))
    layers = kv(ids)
    cache.store(ids, layers)
    layers[0][0].zero_()
    assert cache.lookup(ids).layers[0][0].abs().sum() > 0


def test_rows_right_align_hits_and_pad_with_zeros() -> None:
    cache = PrefixCache(1000, min_tokens=2)
    a, b = list(range(10)), list(range(100, 106))
    cache.store(a, kv(a))
    cache.store(b, kv(b))
    hits = [cache.lookup([*a, 1]), MISS, cache.lookup([*b, 1])]
    batched = rows(hits, 10)
    assert batched is not None
    keys = batched.layers[0].keys
    assert keys.shape == (3, KV_HEADS, 10, DIM)
    assert torch.equal(keys[0], kv(a)[0][0][0])
    assert not keys[1].any()
    assert not keys[2, :, :4].any() and torch.equal(keys[2, :, 4:], kv(b)[0][0][0])
    assert rows([MISS, MISS], 0) is None


def tiny_llama(attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=HEADS * DIM,
        intermediate_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
    )
    kwargs = attention_kwargs(attn, "cpu") if attn == "auto" else {"attn_implementation": attn}
    config._attn_implementation = kwargs["attn_implementation"]
    return LlamaForCausalLM(config).eval()


def test_auto_attention_is_grouped_decode_on_cpu_and_default_on_gpu() -> None:
    assert attention_kwargs("auto", "cpu") == {"attn_implementation": GROUPED_DECODE}
    assert attention_kwargs("auto", "cuda:0") == {}
    assert attention_kwargs("eager", "cpu") == {"attn_implementation": "eager"}


def test_grouped_decode_matches_sdpa_with_left_padding() -> None:
    reference, grouped = tiny_llama("sdpa"), tiny_llama("auto")
    grouped.load_state_dict(reference.state_dict())
    ids = torch.randint(1, 64, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :5] = 0  # a left-padded row
    mask[2, :2] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    outs = []
    with torch.inference_mode():
        for model in (reference, grouped):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            cache, m, pos = out.past_key_values, mask, positions[:, -1:] + 1
            nxt = torch.randint(1, 64, (3, 1), generator=torch.Generator().manual_seed(1))
            logits = []
            for _ in range(4):
                m = torch.cat([m, torch.ones(3, 1, dtype=torch.long)], dim=1)
                step = model(
                    input_ids=nxt,
                    attention_mask=m,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                cache, pos = step.past_key_values, pos + 1
                logits.append(step.logits[:, -1])
            outs.append(torch.stack(logits))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
