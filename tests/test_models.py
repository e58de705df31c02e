"""Logits from hidden states as each architecture computes them, and model directories salsa writes."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from salsa.generation import position_ids, prefill
from salsa.models import forward_logits
from salsa.policy import response_forward

# Tiny configs of architectures whose final logits are not just the output projection.
FAMILIES = {
    "llama": {},
    "gemma2": {"final_logit_softcapping": 0.5, "head_dim": 8, "query_pre_attn_scalar": 8},
    "cohere": {"logit_scale": 0.3},
    "granite": {"logits_scaling": 4.0},
}


def _tiny(family: str):
    config = AutoConfig.for_model(
        family, vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=1.0, **FAMILIES[family],
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_scores_use_the_final_logits_of_each_architecture(family):
    model = _tiny(family)
    ids = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        kept, _ = forward_logits(model, ids, torch.ones_like(ids), keep=3)
        assert torch.allclose(kept, expected[:, -3:], atol=1e-4)
        # the log-probs RL, evaluation and sampling score responses with: processed, not the raw output layer's
        got = response_forward(model, ids, torch.ones_like(ids), prompt_length=4).logprobs
        raw = model.get_output_embeddings()(model.get_decoder()(input_ids=ids).last_hidden_state)
    want = expected[:, 3:-1].log_softmax(-1).gather(-1, ids[:, 4:, None]).squeeze(-1)
    assert torch.allclose(got, want, atol=1e-4)
    if family != "llama":  # these architectures change the logits after the output layer
        unprocessed = raw[:, 3:-1].log_softmax(-1).gather(-1, ids[:, 4:, None]).squeeze(-1)
        assert not torch.allclose(got, unprocessed, atol=1e-3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_decoding_step_reads_the_prompt_from_the_cache(family):
    # A cache handed to the model under a keyword its transformers release does not read is dropped without a word,
    # and each decoding step then sees its own token only: one cached step must give the logits of one whole pass.
    model = _tiny(family)
    ids = torch.randint(0, 96, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # the second row left-padded, as sampling batches its prompts
    with torch.no_grad():
        whole, _ = forward_logits(model, ids, mask, position_ids(mask), keep=1)
        cache, _, _ = prefill(model, ids[:, :-1], mask[:, :-1])
        step, _ = forward_logits(model, ids[:, -1:], mask, position_ids(mask)[:, -1:], cache=cache, keep=1)
    assert torch.allclose(step, whole, atol=1e-4)


@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("route", ["one token", "whole rows", "shared prompt", "prompt_state"])
def test_response_log_probs_and_their_gradient_match_a_full_log_softmax(route, with_entropy):
    # response_forward takes the chosen token's log-prob as logit/T - logsumexp(logits/T) per part of the pass;
    # it must equal log_softmax(logits/T) gathered, in values, entropy and the gradient RL trains on.
    model = _tiny("llama").train()
    torch.manual_seed(1)
    prompts = torch.randint(0, 96, (4, 5))
    if route in ("shared prompt", "prompt_state"):
        prompts[2:] = prompts[0]  # rows 0, 2, 3 share a prompt: one prefill serves them
    response_length = 1 if route == "one token" else 6
    sequences = torch.cat([prompts, torch.randint(0, 96, (4, response_length))], 1)
    mask = torch.ones_like(sequences)
    mask[1, :2] = 0  # a left-padded row
    temperature = 0.7
    weights = torch.randn(4, response_length)

    state = prefill(model, sequences[:, :5], mask[:, :5], hidden=True) if route == "prompt_state" else None
    out = response_forward(model, sequences, mask, 5, temperature, with_entropy, prompt_state=state)
    (out.logprobs * weights).sum().backward()
    got_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(input_ids=sequences, attention_mask=mask, position_ids=position_ids(mask)).logits[:, 4:-1]
    all_logprobs = (logits / temperature).log_softmax(-1)
    want = all_logprobs.gather(-1, sequences[:, 5:, None]).squeeze(-1)
    (want * weights).sum().backward()

    torch.testing.assert_close(out.logprobs, want)
    for got_grad, p in zip(got_grads, model.parameters(), strict=True):
        torch.testing.assert_close(got_grad, p.grad, atol=1e-4 * p.grad.abs().max().item(), rtol=0)
    if with_entropy:
        torch.testing.assert_close(out.entropy, -(all_logprobs.exp() * all_logprobs).sum(-1).detach())
    else:
        assert out.entropy is None
