import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from chatforge.losses import IGNORE_INDEX, token_cross_entropy
from chatforge.models.lm_loss import causal_lm_loss, fused_head, linear_cross_entropy


def tiny_llama(tie: bool):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, tie_word_embeddings=tie)
    return AutoModelForCausalLM.from_config(config)


def plain_loss(model, inputs, labels):
    return token_cross_entropy(model(input_ids=inputs, use_cache=False).logits, labels)


def loss_and_grads(model, loss_fn, inputs, labels):
    model.zero_grad()
    loss = loss_fn(model, inputs, labels)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("tie", [False, True])
def test_fused_loss_and_gradients_match_the_plain_head(tie):
    model = tiny_llama(tie)
    assert fused_head(model) is model.lm_head
    inputs = torch.randint(0, 97, (3, 11))
    labels = torch.randint(0, 97, (3, 11))
    labels[0, :5] = IGNORE_INDEX  # a prompt the loss skips
    fused, fused_grads = loss_and_grads(model, causal_lm_loss, inputs, labels)
    plain, plain_grads = loss_and_grads(model, plain_loss, inputs, labels)
    assert fused == pytest.approx(plain, rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_chunks_scaling_no_grad_and_a_frozen_head_give_the_same_numbers():
    torch.manual_seed(1)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(13, 8)
    labels = torch.tensor([3, IGNORE_INDEX, 0, 12, 5, 5, IGNORE_INDEX, 1, 2, 7])
    expected = token_cross_entropy((hidden @ weight.T)[None], labels[None])
    (expected * 3).backward()
    want = hidden.grad.clone()
    hidden.grad = None
    loss = linear_cross_entropy(hidden, weight, labels, rows=3)  # four chunks, the last one short
    (loss * 3).backward()  # the backward pass scales the gradients found in the forward pass
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and weight.grad is None
    torch.testing.assert_close(hidden.grad, want)
    with torch.no_grad():
        assert linear_cross_entropy(hidden, weight, labels, rows=4).item() == pytest.approx(expected.item(), rel=1e-6)


def test_other_models_and_wrappers_take_the_plain_path():
    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)).eval()
    assert fused_head(gpt2) is None
    assert fused_head(torch.nn.Sequential(tiny_llama(False))) is None
    inputs = torch.randint(0, 50, (2, 6))
    assert causal_lm_loss(gpt2, inputs, inputs).item() == pytest.approx(plain_loss(gpt2, inputs, inputs).item())
