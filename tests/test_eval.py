import json

import pytest

from chatbot.cli import eval_main
from chatbot.config import TrainConfig
from chatbot.data.dataset import load_dataset
from chatbot.evaluate import evaluate_model, example_turns, sample_indices
from chatbot.train.loop import train

CORPUS = "你好\n你好吗\n我很好\n\n今天天气很好\n谢谢\n\nok\n你好\n\n你好吗\n我很好，谢谢\n"


@pytest.fixture
def valid_corpus(tmp_path, chatbot_cache):
    path = tmp_path / "valid.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def test_example_turns_decode_an_encoded_example(valid_corpus, tokenizer):
    dataset = load_dataset(valid_corpus, tokenizer, max_len=32, progress=False)
    assert example_turns(dataset, tokenizer, 0) == ["你好", "你好吗", "我很好"]
    assert example_turns(dataset, tokenizer, 3) == ["你好吗", "我很好，谢谢"]


def test_sample_indices_is_a_seeded_sorted_subset():
    assert sample_indices(5, None, 0) == [0, 1, 2, 3, 4]
    assert sample_indices(5, 9, 0) == [0, 1, 2, 3, 4]
    picked = sample_indices(100, 10, seed=3)
    assert picked == sorted(set(picked)) and len(picked) == 10 and picked == sample_indices(100, 10, seed=3)


def test_evaluate_model_reports_perplexity_and_reply_metrics(tiny_model_dir, valid_corpus):
    report = evaluate_model(str(tiny_model_dir), str(valid_corpus), greedy=True, device="cpu", progress=False,
                            sampling={"max_new_tokens": 8})
    assert report.examples == 4 and report.loss_on == "all"
    # 22-token vocabulary, random weights: perplexity near the vocabulary size.
    assert 10 < report.perplexity["ppl"] < 40 and report.perplexity["tokens"] == 38  # 11 + 10 + 6 + 11 labels
    assert set(report.generation) == {"sampled", "greedy"}
    sampled = report.generation["sampled"]
    assert sampled.options == {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 8}
    assert {"bleu-1", "bleu-2", "bleu-4", "distinct-1", "distinct-2", "avg_reply_chars", "empty_share",
            "repeated_share"} <= set(sampled.metrics)
    greedy = report.generation["greedy"]
    assert [s["reference"] for s in greedy.samples] == ["我很好", "谢谢", "你好", "我很好，谢谢"]
    again = evaluate_model(str(tiny_model_dir), str(valid_corpus), greedy=True, device="cpu", progress=False,
                           sampling={"max_new_tokens": 8})
    assert again == report  # same seed, same replies

def test_cli_writes_json_report(tiny_model_dir, valid_corpus, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert eval_main(["--model", str(tiny_model_dir), "--data", str(valid_corpus), "--output", str(out),
                      "--num-samples", "2", "--examples", "1", "--device", "cpu"]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["examples"] == 2 and len(report["samples"]["sampled"]) == 2
    err = capsys.readouterr().err
    assert "BLEU-1 / 2 / 4" in err and "reference:" in err and "tok:zh" in err


def test_cli_bad_input_exits_2(tiny_model_dir, tmp_path, capsys, chatbot_cache):
    lonely = tmp_path / "lonely.txt"
    lonely.write_text("一句\n\n又一句\n", encoding="utf-8")
    assert eval_main(["--model", str(tiny_model_dir), "--data", str(lonely), "--quiet"]) == 2
    assert "no usable dialogues" in capsys.readouterr().err
    for name in ("tokenizer.json", "vocab.txt"):
        (tiny_model_dir / name).unlink()
    assert eval_main(["--model", str(tiny_model_dir), "--data", str(lonely), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing tokenizer.json or vocab.txt" in err and "chatbot-train" in err and "Traceback" not in err


def test_train_eval_generate_logs_reply_metrics(valid_corpus, model_config, vocab_file, tmp_path):
    train(TrainConfig(train=str(valid_corpus), valid=str(valid_corpus), config=str(model_config),
                      vocab=str(vocab_file), output_dir=str(tmp_path / "out"), epochs=1, batch_size=2,
                      quiet=True, eval_generate=3))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    generated = [r for r in rows if "eval_generate" in r]
    assert len(generated) == 1 and generated[0]["step"] == 2
    assert "bleu-4" in generated[0]["eval_generate"] and "distinct-2" in generated[0]["eval_generate"]


def test_eval_generate_needs_validation_data(valid_corpus, vocab_file, tmp_path):
    with pytest.raises(ValueError, match="--eval-generate needs validation data"):
        train(TrainConfig(train=str(valid_corpus), vocab=str(vocab_file), output_dir=str(tmp_path / "out"),
                          quiet=True, eval_generate=3))
