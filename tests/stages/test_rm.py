import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from chatforge.cli import main
from chatforge.data.jsonl import read_jsonl, write_jsonl
from chatforge.errors import ChatforgeError
from chatforge.metrics import read_metrics
from chatforge.models.reward import load_reward_model
from chatforge.stages import rm
from chatforge.world import render
from chatforge.world.facts import World
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import label_pools
from chatforge.world.tasks import all_tasks


@pytest.fixture(scope="module")
def comparison_files(tiny_world_base, tmp_path_factory):
    """Ranked comparisons of flawed responses (made without a model) from the tiny world."""
    world_dir, _ = tiny_world_base
    world = World.load(world_dir / "world.json")
    pools = render.response_pools(world, all_tasks(world), 160, random.Random(0), k_range=(2, 4))
    pools = [(p, list(dict.fromkeys(r))) for p, r in pools if len(set(r)) >= 2]
    records, _ = label_pools(GoldScorer(world), pools, n_labelers=3, agreement=0.9)
    root = tmp_path_factory.mktemp("comparisons")
    train, val = root / "train.jsonl", root / "val.jsonl"
    write_jsonl(train, records[30:])
    write_jsonl(val, records[:30])
    return train, val


def test_rm_trains_centres_rewards_and_saves_a_classifier(tiny_world_base, comparison_files, tmp_path):
    world_dir, base = tiny_world_base
    train, val = comparison_files
    cfg = rm.Config(model=str(base), train_data=[str(train)], val_data=[str(val)], holdout_labelers=["sim-2"],
                    out_dir=str(tmp_path / "rm"), epochs=6, batch_prompts=8, learning_rate=3e-3, log_every=1,
                    gold_world=str(world_dir), tensorboard=False)
    final = rm.run(cfg)
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    assert abs(summary["train"]["reward_mean"]) < 1e-3  # the bias centres the training responses
    assert "sim-2" in summary["val"]["accuracy_by_labeler"]  # held-out labeler evaluated apart
    assert set(summary["val"]["accuracy_by_k"]) <= {"2", "3", "4"}
    assert 0.0 <= summary["val"]["gold_agreement"] <= 1.0
    assert 0.5 <= summary["val"]["gold_ceiling"] <= 1.0  # the gold scorer agrees with its own noisy labels
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.reward_bias == pytest.approx(summary["reward_bias"])
    card = (final / "README.md").read_text()
    assert "- \"reward-model\"" in card and f"| val_accuracy | {summary['val']['accuracy']:.4g} |" in card
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "rm") if "train/loss" in m]
    per_epoch = len(losses) // 6
    first, last = losses[:per_epoch], losses[-per_epoch:]
    assert sum(last) / len(last) < sum(first) / len(first) - 0.05  # the ranking loss goes down


def test_rm_reads_reward_at_the_last_real_token(tiny_world_base, comparison_files, tmp_path):
    """Padding never changes a sequence's reward."""
    from chatforge.models.reward import build_reward_model, pad_right, sequence_rewards

    _, base = tiny_world_base
    model = build_reward_model(base, pad_token_id=1).eval()
    torch.nn.init.normal_(model.score.weight)
    short, long = [5, 6, 7], [5, 6, 7, 8, 9, 10]
    with torch.no_grad():
        alone = sequence_rewards(model, *pad_right([short], 1))
        padded = sequence_rewards(model, *pad_right([short, long], 1))
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


def test_not_a_reward_model_is_refused(tiny_world_base, tmp_path, capsys):
    _, base = tiny_world_base
    with pytest.raises(ChatforgeError, match="not a reward model"):
        load_reward_model(base)
    bad = tmp_path / "k1.jsonl"
    bad.write_text('{"prompt": "hi", "responses": ["only one"]}\n')
    assert main(["rm", f"model={base}", f"train_data=[{bad}]", f"out_dir={tmp_path / 'o'}"]) == 2
    assert "k1.jsonl:1" in capsys.readouterr().err


def test_all_comparisons_skipped_names_the_skips_not_the_context(tiny_world_base, tmp_path, capsys):
    _, base = tiny_world_base
    skipped = tmp_path / "skipped.jsonl"
    write_jsonl(skipped, [{"prompt": "hi", "responses": ["a", " "]}, {"prompt": "hi", "chosen": "b", "rejected": ""},
                          {"prompt": "hi", "responses": ["a", "a "]}])
    assert main(["rm", f"model={base}", f"train_data=[{skipped}]", f"out_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "rm: no training comparison left" in err and "skipped 3 (empty response: 2, duplicate responses: 1)" in err
    assert "max_len" not in err and "fits in" not in err


def test_rm_data_format_and_field_mapping_are_checked(tiny_world_base, tmp_path, capsys):
    _, base = tiny_world_base
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("question,better,worse\nhi,a,b\nwho?,me,you\n")
    common = ["rm", f"model={base}", f"train_data=[{pairs}]", f"out_dir={tmp_path / 'o'}"]
    assert main([*common, "format=alpaca"]) == 2
    assert "field 'format': expected one of" in capsys.readouterr().err
    assert main([*common, "fields.promt=question"]) == 2
    assert "rm: field 'fields.promt': unknown field name" in capsys.readouterr().err
    assert main([*common, "format=trl", "fields.prompt=question", "fields.chosen=better", "fields.rejected=worse",
                 "epochs=1", "batch_prompts=2", "tensorboard=false"]) == 0
    assert "rm: train: read 2, kept 2" in capsys.readouterr().out


def test_likelihood_reward_adds_the_weighted_mean_logprob_of_the_response(tiny_world_base):
    """reward = head at the last token + w * mean log p(response token) under the tied LM head + bias,
    checked against the causal LM the reward model was built from; padding changes nothing."""
    from chatforge.models.io import load_causal_lm
    from chatforge.models.reward import build_reward_model, pad_right, sequence_rewards

    _, base = tiny_world_base
    model = build_reward_model(base, pad_token_id=1).eval()
    torch.nn.init.normal_(model.score.weight)
    model.config.reward_lm_weight, model.config.reward_bias = 0.5, -0.25
    lm = load_causal_lm(base).eval()
    short, long = [5, 6, 7, 8], [5, 6, 7, 8, 9, 10]
    ids, mask = pad_right([short, long], 1)
    response = mask.clone()
    response[:, :2] = 0  # tokens 0-1 are the prompt
    with torch.no_grad():
        rewards = sequence_rewards(model, ids, mask, response)
        alone = sequence_rewards(model, *pad_right([short], 1), response[:1, :4])
        model.config.reward_lm_weight = 0.0
        heads = sequence_rewards(model, ids, mask) + 0.25
        for row, seq in enumerate((short, long)):
            logp = torch.log_softmax(lm(torch.tensor([seq])).logits[0, :-1], -1)
            mean_logp = torch.stack([logp[t - 1, seq[t]] for t in range(2, len(seq))]).mean()
            torch.testing.assert_close(rewards[row], heads[row] + 0.5 * mean_logp - 0.25, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone[0], rewards[0], atol=1e-5, rtol=1e-5)


def test_likelihood_reward_needs_the_response_mask(tiny_world_base):
    from chatforge.models.reward import build_reward_model, pad_right, sequence_rewards

    _, base = tiny_world_base
    model = build_reward_model(base, pad_token_id=1).eval()
    model.config.reward_lm_weight = 1.0
    with pytest.raises(ChatforgeError, match="response_mask"):
        sequence_rewards(model, *pad_right([[5, 6, 7]], 1))


def test_rm_learns_a_likelihood_weight(tiny_world_base, comparison_files, tmp_path):
    """likelihood_reward learns w (saved as reward_lm_weight); the RM's judge and the bias use it."""
    from chatforge.models.reward import RewardJudge

    world_dir, base = tiny_world_base
    train, val = comparison_files
    cfg = rm.Config(model=str(base), train_data=[str(train)], val_data=[str(val)], out_dir=str(tmp_path / "rm"),
                    epochs=2, batch_prompts=8, learning_rate=3e-3, likelihood_reward=True, lm_coef=1.0,
                    likelihood_learning_rate=0.05, tensorboard=False)
    final = rm.run(cfg)
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    weight = load_reward_model(final).config.reward_lm_weight
    assert weight != 0.0  # moved from its start at 0
    assert abs(summary["train"]["reward_mean"]) < 1e-3  # the bias is set with the weight in the reward
    records = read_jsonl(train)[:4]
    judge = RewardJudge(final)
    scores = judge([r["prompt"] for r in records], [r["responses"][0] for r in records])
    assert len(scores) == 4 and all(s == s for s in scores)  # finite, not nan


def test_likelihood_reward_refuses_untied_embeddings(tiny_world_base, comparison_files, tmp_path):
    from transformers import AutoModelForCausalLM

    _, base = tiny_world_base
    untied = AutoModelForCausalLM.from_pretrained(base)
    untied.config.tie_word_embeddings = False
    untied.save_pretrained(tmp_path / "untied")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base / name).exists():
            (tmp_path / "untied" / name).write_bytes((base / name).read_bytes())
    train, _ = comparison_files
    cfg = rm.Config(model=str(tmp_path / "untied"), train_data=[str(train)], out_dir=str(tmp_path / "rm"),
                    likelihood_reward=True, tensorboard=False)
    with pytest.raises(ChatforgeError, match="likelihood_reward"):
        rm.run(cfg)
