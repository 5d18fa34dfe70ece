"""Backbone, answer-only loss and label scoring on tiny random-init models (unit tests only)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aimray import model as M
from aimray.model import ModelConfig, answer_loss, encode, encode_answer, evaluate, load_backbone, rouge_l
from aimray.tasks.spec import Example, TaskSpec

OPTIONS = ("negative", "neutral", "positive", "mixed feelings")
SPEC = TaskSpec("toy", "What is the sentiment? Choose one from the option.", OPTIONS, load=lambda s, k: None)
TEXTS = [
    "I loved it",
    "terrible service, never again, the worst evening of the year",
    "ok",
    "it was fine I guess but the food was cold and the waiter forgot us twice",
    "best pizza in town",
]
EXAMPLES = [SPEC.example(t, OPTIONS[i % len(OPTIONS)]) for i, t in enumerate(TEXTS)]


@pytest.fixture(params=["tiny_causal", "tiny_seq2seq"])
def backbone(request):
    # fp32 throughout: these tests compare against naive fp32 computations to 1e-4.
    cfg = ModelConfig(name_or_path=request.getfixturevalue(request.param), lora_dropout=0.0, autocast="off")
    bb = load_backbone(cfg)
    # Nonzero LoRA B so the adapter actually changes the outputs under test.
    with torch.no_grad():
        for name, p in bb.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    bb.model.eval()
    return bb


def naive_logprob(bb, ex: Example, answer: list[int]) -> float:
    """log p(answer | prompt) from one full unpadded forward pass."""
    prompt, _ = encode(bb, ex)
    if bb.is_seq2seq:
        out = bb.model(input_ids=torch.tensor([prompt]), labels=torch.tensor([answer]))
        return -out.loss.item() * len(answer)
    ids = torch.tensor([prompt + answer])
    logp = bb.model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(answer))


def test_lora_is_the_only_trainable_part(backbone) -> None:
    trainable = backbone.lora_state()
    assert trainable and all("lora_" in n for n in trainable)
    targets = {"q_proj", "v_proj"} if not backbone.is_seq2seq else {"q", "v"}
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == targets


def test_answer_loss_is_mean_nll_of_answer_tokens(backbone) -> None:
    with torch.no_grad():
        loss = answer_loss(backbone, EXAMPLES).item()
    total = sum(-naive_logprob(backbone, ex, encode(backbone, ex)[1]) for ex in EXAMPLES)
    count = sum(len(encode(backbone, ex)[1]) for ex in EXAMPLES)
    assert loss == pytest.approx(total / count, rel=1e-4)


def test_answer_loss_has_gradient_only_on_lora(backbone) -> None:
    backbone.model.train()
    answer_loss(backbone, EXAMPLES[:2]).backward()
    grads = {n: p.grad for n, p in backbone.model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_label_scores_equal_full_sequence_likelihood(backbone) -> None:
    scores = M.score_options(backbone, EXAMPLES, OPTIONS)
    assert scores.shape == (len(EXAMPLES), len(OPTIONS))
    for i, ex in enumerate(EXAMPLES):
        for j, opt in enumerate(OPTIONS):
            expected = naive_logprob(backbone, ex, encode_answer(backbone, opt))
            assert scores[i, j].item() == pytest.approx(expected, abs=2e-4)


def test_evaluate_returns_predictions_in_input_order(backbone) -> None:
    res = evaluate(backbone, EXAMPLES, OPTIONS, batch_size=2)
    one_by_one = [OPTIONS[M.score_options(backbone, [ex], OPTIONS).argmax().item()] for ex in EXAMPLES]
    assert res.predictions == one_by_one
    hits = sum(p == ex.target for p, ex in zip(one_by_one, EXAMPLES, strict=True))
    assert res.metric == "accuracy" and res.n == len(EXAMPLES) and res.value == hits / len(EXAMPLES)


def test_generation_mode_runs_and_scores_exact_match(backbone) -> None:
    res = evaluate(backbone, EXAMPLES[:3], OPTIONS, mode="generate", batch_size=2)
    assert len(res.predictions) == 3 and all(isinstance(p, str) for p in res.predictions)
    expected = sum(p.lower() == ex.target for p, ex in zip(res.predictions, EXAMPLES, strict=False)) / 3
    assert res.value == expected


def test_both_modes_from_one_pass_equal_each_mode_alone(backbone) -> None:
    # The causal model decodes greedily from the prompts' KV cache, crops it back and scores the options from
    # it: answers equal `generate`'s and scores the option pass's, token for token.
    both = M.evaluate_modes(backbone, EXAMPLES, OPTIONS, ("generate", "score"), batch_size=2, max_new_tokens=6)
    for mode in ("generate", "score"):
        alone = evaluate(backbone, EXAMPLES, OPTIONS, mode=mode, batch_size=2, max_new_tokens=6)
        assert both[mode].predictions == alone.predictions
        assert both[mode].value == alone.value and both[mode].n == len(EXAMPLES)
    answers, scores = M.generate_and_score(backbone, EXAMPLES[:3], OPTIONS, 6)
    assert torch.allclose(scores, M.score_options(backbone, EXAMPLES[:3], OPTIONS), atol=1e-5)
    assert answers == M.generate_answers(backbone, EXAMPLES[:3], 6)
    # a generation config with a logits processor only generate() applies: the modes run one after the other
    config = backbone.model.get_base_model().generation_config
    config.repetition_penalty = 1.3
    try:
        assert backbone.is_seq2seq or not M.plain_greedy(backbone)
        both = M.evaluate_modes(backbone, EXAMPLES, OPTIONS, ("generate", "score"), batch_size=2, max_new_tokens=6)
        alone = evaluate(backbone, EXAMPLES, OPTIONS, mode="generate", batch_size=2, max_new_tokens=6)
        assert both["generate"].predictions == alone.predictions
    finally:
        config.repetition_penalty = None


def test_prompt_truncation_cuts_only_the_text(tiny_causal) -> None:
    bb = load_backbone(ModelConfig(name_or_path=tiny_causal, max_prompt_tokens=40))
    long = SPEC.example("word " * 500, "positive")
    prompt, answer = encode(bb, long)
    assert len(prompt) == 40
    text = bb.tokenizer.decode(prompt)
    assert text.startswith("What is the sentiment?") and text.endswith("\nAnswer:")
    assert bb.tokenizer.decode(answer) == " positive" + bb.tokenizer.eos_token


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lora_r": 0}, "lora_r"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"dtype": "fp8"}, "dtype"),
        ({"autocast": "fp16"}, "autocast"),
    ],
)
def test_model_config_errors_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_missing_model_names_the_field(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model.name_or_path"):
        load_backbone(ModelConfig(name_or_path=str(tmp_path / "nope")))


def test_evaluate_rejects_bad_mode_and_missing_options(tiny_causal) -> None:
    bb = load_backbone(ModelConfig(name_or_path=tiny_causal))
    with pytest.raises(ValueError, match="mode"):
        evaluate(bb, EXAMPLES, OPTIONS, mode="vote")
    with pytest.raises(ValueError, match="options"):
        evaluate(bb, EXAMPLES, (), mode="score")


@pytest.mark.parametrize(
    ("pred", "ref", "value"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("", "", 1.0),
        ("", "cat", 0.0),
        ("dog", "cat", 0.0),
        ("the cat", "the cat sat down", 2 * (1.0 * 0.5) / 1.5),  # lcs 2: precision 1, recall 1/2
        ("The Cat", "the cat", 1.0),
    ],
)
def test_rouge_l(pred, ref, value) -> None:
    assert rouge_l(pred, ref) == pytest.approx(value)


def test_bf16_autocast_follows_the_config_and_stays_close_to_fp32(backbone) -> None:
    cpu = torch.device("cpu")
    assert not backbone.bf16 and M.use_bf16("bf16", cpu) and not M.use_bf16("off", cpu)
    assert M.use_bf16("auto", cpu) == M.native_bf16(cpu)
    fp32 = answer_loss(backbone, EXAMPLES)
    scores32 = M.score_options(backbone, EXAMPLES, OPTIONS)
    bf16 = load_backbone(dataclasses.replace(backbone.config, autocast="bf16"))
    bf16.model.load_state_dict(backbone.model.state_dict())
    bf16.model.eval()
    assert bf16.bf16
    loss = answer_loss(bf16, EXAMPLES)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(fp32.item(), rel=0.02)
    loss.backward()  # gradients reach the fp32 adapter
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in bf16.lora_state().values())
    assert torch.allclose(M.score_options(bf16, EXAMPLES, OPTIONS), scores32, rtol=0.02, atol=0.05)


def test_attention_kernel_follows_precision_and_eager_equals_sdpa(tiny_causal) -> None:
    cpu = torch.device("cpu")
    assert M.attention_kernel(ModelConfig(autocast="bf16"), cpu) == "eager"
    assert M.attention_kernel(ModelConfig(autocast="off"), cpu) == "sdpa"
    assert M.attention_kernel(ModelConfig(autocast="bf16", attention="sdpa"), cpu) == "sdpa"
    losses = []
    for attention in ("sdpa", "eager"):
        bb = load_backbone(ModelConfig(name_or_path=tiny_causal, autocast="off", attention=attention, lora_dropout=0))
        assert bb.model.config._attn_implementation == attention
        losses.append(answer_loss(bb, EXAMPLES).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_auto_precision_is_measured_once_and_cached(tiny_causal, tmp_path, monkeypatch) -> None:
    """model.autocast=auto times a training step in each precision (where bf16 is native) and keeps the
    fastest; the choice and its figures are cached per machine and model, and the probe leaves the adapter,
    its gradients and the model's mode untouched."""
    monkeypatch.setenv("AIMRAY_HOME", str(tmp_path))
    cpu = torch.device("cpu")
    probed = load_backbone(ModelConfig(name_or_path=tiny_causal, autocast="auto"))
    plain = load_backbone(ModelConfig(name_or_path=tiny_causal, autocast="off"))
    assert plain.precision == {"autocast": "off", "attention": "sdpa", "source": "config"} and not plain.bf16
    if not M.native_bf16(cpu):
        assert probed.precision["autocast"] == "off" and "no native bf16" in probed.precision["source"]
        return
    figures = probed.precision["step_seconds"]
    assert set(figures) == {"off/sdpa", "bf16/sdpa", "bf16/eager"} and all(v > 0 for v in figures.values())
    best = min(figures, key=figures.get)
    assert f"{probed.precision['autocast']}/{probed.precision['attention']}" == best
    assert probed.bf16 == (probed.precision["autocast"] == "bf16")
    assert probed.model.config._attn_implementation == probed.precision["attention"]
    assert probed.precision["source"] == "probe" and (tmp_path / "precision.json").exists()
    (tmp_path / "precision.json").write_text('{"torn": ')  # an unreadable cache is measured again
    reprobed = load_backbone(ModelConfig(name_or_path=tiny_causal, autocast="auto"))
    assert reprobed.precision["source"] == "probe"
    # the cache holds the latest measurement (two probes may rank close precisions differently: timing noise)
    again = load_backbone(ModelConfig(name_or_path=tiny_causal, autocast="auto"))
    assert again.precision["source"].startswith("cached probe")
    assert (again.precision["autocast"], again.precision["attention"]) == (
        reprobed.precision["autocast"],
        reprobed.precision["attention"],
    )
    for k, v in probed.lora_state().items():
        assert torch.equal(v, plain.lora_state()[k]) and v.grad is None
    assert probed.model.training == plain.model.training
