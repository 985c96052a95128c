import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from chatforge.data.chat import TokenizedChat, collate, fit_chat, pack, tokenize_chat
from chatforge.data.formats import ReadStats
from chatforge.losses import IGNORE_INDEX
from chatforge.models.io import load_tokenizer

MULTI_TURN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the cat"},
              {"role": "assistant", "content": "sat."}, {"role": "user", "content": "and the dog?"},
              {"role": "assistant", "content": "ran to the house."}]


def masked_texts(tokenizer, chat):
    """The texts of the chat's runs of masked (trained) tokens, in order."""
    runs, current = [], []
    for token, flag in zip(chat.input_ids, chat.loss_mask):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_mask_covers_every_assistant_turn_and_its_end_token(toy_tokenizer_dir):
    tokenizer = load_tokenizer(toy_tokenizer_dir)
    chat = tokenize_chat(tokenizer, MULTI_TURN)
    assert tokenizer.decode(chat.input_ids) == tokenizer.apply_chat_template(MULTI_TURN, tokenize=False)
    # the masked tokens, turn by turn, are exactly the two replies with their <|end|>
    assert masked_texts(tokenizer, chat) == ["sat.<|end|>", "ran to the house.<|end|>"]
    # and nothing of the system / user turns or the assistant headers
    header = tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert all(not flag for token, flag in zip(chat.input_ids, chat.loss_mask) if token == header)


def test_an_assistant_turn_of_weight_0_is_context_only(toy_tokenizer_dir):
    """OpenAI's fine-tuning "weight": 0 keeps a turn out of the loss, not out of the chat."""
    tokenizer = load_tokenizer(toy_tokenizer_dir)
    weighted = [*MULTI_TURN[:2], {**MULTI_TURN[2], "weight": 0}, *MULTI_TURN[3:]]
    chat = tokenize_chat(tokenizer, weighted)
    assert chat.input_ids == tokenize_chat(tokenizer, MULTI_TURN).input_ids
    assert masked_texts(tokenizer, chat) == ["ran to the house.<|end|>"]


def test_collate_labels_stay_inside_each_chat():
    a = TokenizedChat([1, 2, 3, 4], [0, 0, 1, 1])
    b = TokenizedChat([5, 6, 7], [0, 1, 1])
    batch = collate([[a, b], [b]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7], [5, 6, 7, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 0, 0, 0, 0]]
    I = IGNORE_INDEX
    # token 4 is a's last: it has no target (5 starts another chat); 1 predicts nothing (2 is unmasked)
    assert batch["labels"].tolist() == [[I, 3, 4, I, 6, 7, I], [6, 7, I, I, I, I, I]]


def test_pack_first_fit_decreasing():
    chats = [TokenizedChat([0] * n, [1] * n) for n in (5, 3, 4, 2, 6)]
    bins = pack(chats, max_len=8)
    assert all(sum(len(chats[i].input_ids) for i in b) <= 8 for b in bins)
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4] and len(bins) == 3


def test_fit_chat_truncates_from_the_left_keeping_the_last_reply():
    chat = TokenizedChat(list(range(10)), [0, 0, 0, 1, 1, 0, 0, 1, 1, 1])
    stats = ReadStats()
    fitted = fit_chat(chat, 6, "truncate_prompt", stats)
    assert fitted.input_ids == [4, 5, 6, 7, 8, 9] and fitted.loss_mask == [1, 0, 0, 1, 1, 1]
    assert fit_chat(chat, 2, "truncate_prompt", stats) is None  # the last reply alone is 3 tokens
    assert fit_chat(chat, 6, "drop", stats) is None
    assert "too long" in stats.summary()
    # tokens after the last reply (a template's trailing newline) stay with it
    trailing = TokenizedChat(list(range(8)), [0, 0, 1, 0, 0, 1, 0, 0])
    assert fit_chat(trailing, 5, "truncate_prompt", stats).input_ids == [3, 4, 5, 6, 7]


def test_packing_isolation(toy_tokenizer_dir):
    """A chat's per-token losses are the same alone and packed after another chat."""
    tokenizer = load_tokenizer(toy_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    a = tokenize_chat(tokenizer, MULTI_TURN)
    b = tokenize_chat(tokenizer, [{"role": "user", "content": "a red bird"}, {"role": "assistant", "content": "lived."}])

    def token_losses(rows):
        batch = collate(rows, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none",
                                                   ignore_index=IGNORE_INDEX)
        return losses, batch["labels"]

    alone, labels_alone = token_losses([[a]])
    packed, labels_packed = token_losses([[b, a]])
    n_b = len(b.input_ids)
    assert torch.equal(labels_packed[0, n_b:], labels_alone[0])
    torch.testing.assert_close(packed[0, n_b:], alone[0], atol=1e-5, rtol=1e-5)
    # and the test would notice leakage: without position resets the losses differ
    batch = collate([[b, a]], tokenizer.pad_token_id)
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0, n_b:]
        clean = model(input_ids=collate([[a]], tokenizer.pad_token_id)["input_ids"], use_cache=False).logits[0]
    assert not torch.allclose(leaky, clean, atol=1e-3)
