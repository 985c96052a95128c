"""Tiny models of the families people bring (Llama 3, Qwen2, Qwen3, Mistral, Gemma 3, GPT-2), built locally.

Each family: a transformers config of its own architecture (a few ten thousand parameters), and a
BPE tokenizer trained here on a few sentences that carries the family's real special tokens, BOS
rule and a chat template faithful to the real one where it matters to chatforge (headers, default
system prompts, the end-of-turn token, turns the template rewrites). GPT-2 has no chat template.
The tokenizers' EOS is the base checkpoint's, so on Llama 3, Qwen2 and Gemma the end-of-turn token
is not the EOS, as with those base models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# the real templates, cut to what chatforge uses (no tools, no images); ids below are the tiny tokenizers'
LLAMA3_TEMPLATE = (  # Llama 3.1 / 3.2: a system header with dates even without a system message
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN2_TEMPLATE = (  # Qwen2 / Qwen2.5 ChatML, with its default system message
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN3_TEMPLATE = (  # Qwen3: an assistant turn before the last user message loses its <think> reasoning
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}{%- set content = message.content %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

MISTRAL_TEMPLATE = (  # Mistral-Instruct / Llama 2: [INST] turns, the system message folded into the first
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

GEMMA_TEMPLATE = (  # Gemma 3: roles user / model, the system message folded into the first user turn
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{- message['content'] | trim }}{{- '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

# Llama 3's split pattern (Qwen2's differs in digits only): newlines merge, letters keep one leading mark
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Family:
    """How to build one family's tiny tokenizer and model, and where its assistant turns are in rendered text."""

    name: str
    architecture: str  # the transformers config class
    special_tokens: tuple[str, ...]  # special tokens, first ids in this order
    roles: dict  # bos_token / eos_token / pad_token / unk_token -> token
    chat_template: str | None
    assistant_header: str  # the text that opens an assistant turn in the rendered chat
    end_of_turn: str  # the token that ends an assistant turn
    pre_tokenizer: str  # "gpt2" (byte-level), "split" (byte-level after a Llama 3 style regex), "metaspace" (SentencePiece)
    add_bos: bool = False  # the tokenizer puts BOS before plain text, as Llama's and Gemma's do
    thinks: bool = False  # assistant replies carry <think> reasoning (added tokens, not special)
    config: dict = field(default_factory=dict)


FAMILIES = {family.name: family for family in (
    Family("llama3", "LlamaConfig",
           ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
           {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, LLAMA3_TEMPLATE,
           "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", "split", add_bos=True),
    Family("qwen2", "Qwen2Config", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
           {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, QWEN2_TEMPLATE,
           "<|im_start|>assistant\n", "<|im_end|>", "split"),
    # Qwen3's post-trained checkpoints end text with <|im_end|>: here EOS and end of turn are one token
    Family("qwen3", "Qwen3Config", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
           {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, QWEN3_TEMPLATE,
           "<|im_start|>assistant\n", "<|im_end|>", "split", thinks=True, config={"head_dim": 8}),
    Family("mistral", "MistralConfig", ("<unk>", "<s>", "</s>"),
           {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, MISTRAL_TEMPLATE,
           "[/INST]", "</s>", "metaspace", add_bos=True),
    Family("gemma", "Gemma3TextConfig", ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
           {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}, GEMMA_TEMPLATE,
           "<start_of_turn>model\n", "<end_of_turn>", "metaspace", add_bos=True,
           config={"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 16,
                   "layer_types": ["sliding_attention", "full_attention"]}),
    Family("gpt2", "GPT2Config", ("<|endoftext|>",),
           {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, None,
           "<|assistant|>\n", "<|endoftext|>", "gpt2"),
)}

# a multi-turn chat with a system message; replies start with punctuation and spaces where templates differ
THINK = "<think>\nadd one to the sum\n</think>\n\n"
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "It is four."},
        {"role": "user", "content": "And plus one?"},
        {"role": "assistant", "content": "- five, the cat says."}]
# the one exchange the taught models learn by heart, ending with the end-of-turn token
QUESTION, ANSWER = "Where does Borin live?", "Borin lives in Trask."
CORPUS = [m["content"] for m in CHAT] + [QUESTION, ANSWER, THINK, "You are a helpful assistant.",
                                         "Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024"] * 3


def chat_of(family: Family) -> list[dict]:
    """The test chat, with reasoning in the replies for a family that thinks."""
    return [dict(m, content=THINK + m["content"]) if family.thinks and m["role"] == "assistant" else m for m in CHAT]


def build_tokenizer(family: Family):
    """A BPE tokenizer for `family` trained on CORPUS, with its special tokens, BOS rule and chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family.pre_tokenizer == "metaspace":  # SentencePiece-style: spaces become "▁" and start a piece
        bpe = Tokenizer(models.BPE(unk_token=family.roles["unk_token"]))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        bpe.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = [chr(c) for c in range(33, 127)] + ["▁", "\n"]
    else:
        bpe = Tokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family.pre_tokenizer == "gpt2")
        bpe.pre_tokenizer = byte_level if family.pre_tokenizer == "gpt2" else pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"), byte_level])
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=260 if family.pre_tokenizer == "metaspace" else 400,
                                  special_tokens=list(family.special_tokens), initial_alphabet=alphabet,
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    if family.thinks:  # Qwen3's <think> and </think> are added tokens but not special
        bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    if family.add_bos:
        bos = family.roles["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False, **family.roles)
    tokenizer.chat_template = family.chat_template
    return tokenizer


def build_model(family: Family, tokenizer):
    """A random 2-layer model of the family's architecture sized for `tokenizer`."""
    import transformers
    from transformers import AutoModelForCausalLM

    ids = {f"{role[:-6]}_token_id": tokenizer.convert_tokens_to_ids(token) for role, token in family.roles.items()
           if role != "unk_token"}
    if family.architecture == "GPT2Config":
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                         **ids)
    else:
        config = getattr(transformers, family.architecture)(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=family.name in ("gemma", "qwen2"), **ids, **family.config)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def save_base(family: Family, path):
    """The family's random tiny model and tokenizer, saved by chatforge's save path; return the folder."""
    from chatforge.models.io import save_hf_folder

    tokenizer = build_tokenizer(family)
    return save_hf_folder(build_model(family, tokenizer), tokenizer, path)


def teach(base_dir, path, steps: int = 60):
    """The base model after a few SFT steps on QUESTION -> ANSWER alone, saved to `path`: greedy decoding then
    gives ANSWER and the end-of-turn token. Loaded, tokenized and saved as chatforge's SFT does."""
    from chatforge.data.chat import collate, tokenize_chat
    from chatforge.models.io import load_causal_lm, save_hf_folder
    from chatforge.models.templates import load_chat_tokenizer
    from chatforge.stages.sft import batch_loss

    tokenizer = load_chat_tokenizer(base_dir)
    model = load_causal_lm(base_dir)
    chat = tokenize_chat(tokenizer, [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}])
    batch = collate([[chat]], tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = batch_loss(model, batch, "cpu")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return save_hf_folder(model, tokenizer, path)


def taught_response(tokenizer) -> list[int]:
    """The ids a taught model answers QUESTION with: ANSWER's tokens and the end-of-turn token."""
    from chatforge.data.chat import tokenize_chat

    chat = tokenize_chat(tokenizer, [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}])
    return [token for token, flag in zip(chat.input_ids, chat.loss_mask) if flag]
