import json

from chatforge.cli import main


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0
    assert "pretrain" in capsys.readouterr().out
    assert main(["nope"]) == 2


def test_stage_help_lists_config_fields(capsys):
    assert main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "learning_rate" in out and "max_steps" in out


def test_unknown_config_key_is_a_clean_error(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("corpus: [x.jsonl]\nlearning_rat: 0.1\n")
    assert main(["pretrain", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "p.yaml:2: unknown field 'learning_rat'" in err and "Traceback" not in err


def test_missing_and_empty_corpus(tmp_path, capsys, toy_tokenizer_dir):
    assert main(["pretrain", "corpus=[nowhere.jsonl]", f"tokenizer={toy_tokenizer_dir}"]) == 2
    assert "nowhere.jsonl: corpus file or folder does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["pretrain", f"corpus=[{empty}]", f"tokenizer={toy_tokenizer_dir}",
                 f"out_dir={tmp_path / 'run'}", "max_steps=1"]) == 2
    assert "shorter than one block" in capsys.readouterr().err
    assert main(["tokenizer", f"corpus=[{empty}]", f"out_dir={tmp_path / 'tok'}"]) == 2
    assert "holds no documents" in capsys.readouterr().err


def test_model_folder_that_is_not_a_model(tmp_path, capsys, toy_corpus):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hello": 1}))
    assert main(["pretrain", f"corpus=[{toy_corpus[0]}]", f"init_from={folder}"]) == 2
    assert "field 'model_type' is missing" in capsys.readouterr().err
