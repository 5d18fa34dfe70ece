"""Backbone + LoRA, answer-only training loss, and evaluation by label-word scoring or generation.

Causal LMs are fed left-padded batches, so every answer ends at the last position: the training loss and
the scores need logits only at the last few positions (`logits_to_keep`), which skips most of the LM-head
cost (49,152 x 576 for SmolLM2, about 40% of a forward pass per position).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from aimray import assets
from aimray.config import DEFAULT_BACKBONE, ModelConfig
from aimray.files import read_json, write_json_atomic
from aimray.tasks.spec import Example

# Quiet, library-internal noise: peft calls a transformers property that v5 renamed, and the weight-loading
# progress bar repeats in every Ray worker.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
hf_logging.disable_progress_bar()


@dataclass
class Backbone:
    """A frozen pretrained LM with one trainable LoRA adapter, its tokenizer, and a token cache."""

    model: PeftModel
    tokenizer: object
    config: ModelConfig
    is_seq2seq: bool
    _encoded: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trainable adapter tensors (the only thing the continual loop differences and merges)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    precision: dict = field(default_factory=dict)  # the resolved precision and how (resolve_precision)

    @property
    def bf16(self) -> bool:
        """Whether forward passes run under bf16 autocast (model.autocast, resolved for this device)."""
        if self.precision:
            return self.precision["autocast"] == "bf16"
        return use_bf16(self.config.autocast, self.device)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """bf16 matmuls in hardware: AMX or AVX512-BF16 on a CPU, bf16 support on a CUDA GPU (probed once per
    device: every forward pass asks)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def use_bf16(autocast: str, device: torch.device) -> bool:
    return autocast == "bf16" or (autocast == "auto" and native_bf16(device))


def attention_kernel(cfg: ModelConfig, device: torch.device) -> str:
    """The kernel a model is loaded with: model.attention, or for "auto" eager under bf16 autocast on a CPU
    and sdpa otherwise (with model.autocast="auto", resolve_precision then keeps the faster kernel)."""
    if cfg.attention != "auto":
        return cfg.attention
    return "eager" if device.type == "cpu" and use_bf16(cfg.autocast, device) else "sdpa"


def resolve_path(name_or_path: str) -> str:
    """ "smollm2" -> the converted offline backbone; anything else is an HF id or a local folder."""
    if name_or_path == DEFAULT_BACKBONE:
        return str(assets.backbone_dir())
    return name_or_path


def read_model_config(name_or_path: str):
    """The backbone's HF config; FileNotFoundError naming model.name_or_path when it cannot be read here."""
    try:
        return AutoConfig.from_pretrained(resolve_path(name_or_path))
    except OSError as err:
        raise FileNotFoundError(
            f"model.name_or_path={name_or_path!r}: not a model folder, and not an HF id that can be loaded here "
            f"(no hub access?): {err}"
        ) from None


def _default_targets(model: torch.nn.Module) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for pair in (["q_proj", "v_proj"], ["q", "v"], ["query", "value"]):
        if set(pair) <= names:
            return pair
    raise ValueError("could not find query/value projections for LoRA; set model.lora_targets")


def load_backbone(cfg: ModelConfig | None = None, seed: int = 0) -> Backbone:
    """Load the LM (causal or seq2seq, from its config), freeze it, and add a fresh LoRA adapter."""
    cfg = cfg or ModelConfig()
    path = resolve_path(cfg.name_or_path)
    hf_config = read_model_config(cfg.name_or_path)
    is_seq2seq = bool(getattr(hf_config, "is_encoder_decoder", False))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    kwargs = {}
    if not is_seq2seq or cfg.attention != "auto":
        kwargs["attn_implementation"] = attention_kernel(cfg, device)
    model = auto.from_pretrained(path, dtype=getattr(torch, cfg.dtype), **kwargs)
    return wrap_backbone(model, AutoTokenizer.from_pretrained(path), cfg, device, seed)


def wrap_backbone(model, tokenizer, cfg: ModelConfig, device: torch.device, seed: int = 0) -> Backbone:
    """A loaded LM made a Backbone: checkpointing as configured, frozen, a fresh LoRA adapter, on `device`,
    its precision resolved (benchmarks/gpu_check.py wraps models built from a configuration this way)."""
    is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)  # LoRA A is randomly initialised
    lora = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if is_seq2seq else TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets) or _default_targets(model),
    )
    bb = Backbone(get_peft_model(model, lora).to(device), tokenizer, cfg, is_seq2seq)
    bb.precision = resolve_precision(bb)
    if cfg.compile == "train":
        compile_for_training(bb)
    return bb


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing of every transformer layer, non-reentrant (the adapter's gradients flow
    without the inputs requiring grad; dropout masks are replayed): transformers' own switch, under the name
    this version has."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def compile_for_training(bb: Backbone) -> int:
    """model.compile="train": every transformer layer (the children of the model's `layers` / `block` lists)
    calls a torch.compile'd version of itself (dynamic shapes: one graph for every layer and batch shape)
    when it runs in training mode with gradients on, i.e. in training and burst steps; evaluation, the
    memory-loss forward and the precision probe stay eager (the KV cache of label scoring would recompile
    per layer). Inductor's on-disk caches (TORCHINDUCTOR_CACHE_DIR, default $AIMRAY_HOME/inductor) make the
    compile cost once per machine: measured 2026-12-01 on this project's 2-core AMX machine, SmolLM2, batch
    8: the first process's first step 42 s, later processes' 7 s (1 s eager), then 1.26x eager's steps.
    Dropout masks come from inductor's own generator: seeded and reproducible, not eager's numbers.
    Returns the number of layers compiled; ValueError when the model has no such list."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(assets.home() / "inductor"))
    lists = [m for name, m in bb.model.named_modules() if name.rsplit(".", 1)[-1] in ("layers", "block")]
    layers = [layer for m in lists if isinstance(m, torch.nn.ModuleList) for layer in m]
    if not layers:
        raise ValueError(f"model.compile=train: no transformer layer list (layers, block) in {bb.config.name_or_path}")
    for layer in layers:
        eager = layer._call_impl
        compiled = torch.compile(eager, dynamic=True)

        def call(*args, _layer=layer, _eager=eager, _compiled=compiled, **kwargs):
            run = _compiled if _layer.training and torch.is_grad_enabled() else _eager
            return run(*args, **kwargs)

        layer._compiled_call_impl = call  # what nn.Module.__call__ runs when set (Module.compile sets it too)
    return len(layers)


# ------------------------------------------------------------------------------------- precision by probe

PROBE_BATCH, PROBE_WORDS, PROBE_STEPS = 4, 64, 2  # about 10 s for SmolLM2 on one CPU core, once


@functools.cache
def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    with contextlib.suppress(OSError):
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        return names[0].split(":", 1)[1].strip() if names else ""
    return ""


def probe_key(bb: Backbone) -> str:
    """What a measured precision choice holds for: this machine and device, the model, dtype and threads."""
    device = torch.cuda.get_device_name(bb.device) if bb.device.type == "cuda" else cpu_name()
    parts = [platform.node(), device, torch.__version__, bb.config.name_or_path, bb.config.dtype]
    return "|".join([*parts, f"threads={torch.get_num_threads()}", f"attention={bb.config.attention}"])


def step_seconds(bb: Backbone, bf16: bool, kernel: str | None) -> float:
    """Median seconds of one training step (forward + backward of the answer loss) on a synthetic batch,
    after one warm-up step. Leaves the adapter, its gradients, the model's mode and torch's RNG as they were."""
    if kernel is not None:
        bb.model.set_attn_implementation(kernel)
    batch = [Example("probe", " ".join(["word"] * PROBE_WORDS), f"label{i}") for i in range(PROBE_BATCH)]
    saved = dict(bb.precision)
    bb.precision = {"autocast": "bf16" if bf16 else "off"}
    was_training = bb.model.training
    bb.model.eval()  # no dropout: nothing drawn from torch's RNG
    times = []
    try:
        for i in range(PROBE_STEPS + 1):
            t0 = time.perf_counter()
            answer_loss(bb, batch).backward()
            if bb.device.type == "cuda":
                torch.cuda.synchronize(bb.device)
            if i:
                times.append(time.perf_counter() - t0)
    finally:
        for p in bb.model.parameters():
            p.grad = None
        bb.model.train(was_training)
        bb.precision = saved
        for ex in batch:
            bb._encoded.pop((ex.prefix, ex.text, ex.suffix, ex.target), None)
    return sorted(times)[len(times) // 2]


def resolve_precision(bb: Backbone) -> dict:
    """model.autocast="auto" resolved by measurement: where bf16 matmuls are native, time a training step in
    fp32 and under bf16 autocast (for a causal LM on a CPU with both attention kernels, unless
    model.attention fixes one) and keep the fastest. The choice and its figures are cached per machine,
    device, model, dtype and thread count in $AIMRAY_HOME/precision.json, so the probe runs once; every
    run's manifest records the result. "bf16" and "off" are taken as given."""
    cfg = bb.config
    kernel = getattr(bb.model.config, "_attn_implementation", None)
    if cfg.autocast != "auto":
        return {"autocast": "bf16" if cfg.autocast == "bf16" else "off", "attention": kernel, "source": "config"}
    if not native_bf16(bb.device):
        return {"autocast": "off", "attention": kernel, "source": "no native bf16 matmuls on this device"}
    switch = not bb.is_seq2seq and cfg.attention == "auto"
    kernels = ("sdpa", "eager") if switch and bb.device.type == "cpu" else ("sdpa",) if switch else (None,)
    candidates = [("off", "sdpa" if switch else None)] + [("bf16", k) for k in kernels]
    path = assets.home() / "precision.json"
    try:
        cache = read_json(path) if path.exists() else {}
    except ValueError:  # an unreadable cache is measured again, not trusted
        cache = {}
    key = probe_key(bb)
    if key in cache:
        choice = {**cache[key], "source": f"cached probe ({path})"}
    else:
        seconds = {f"{a}/{k or 'default'}": step_seconds(bb, a == "bf16", k) for a, k in candidates}
        best = min(candidates, key=lambda c: seconds[f"{c[0]}/{c[1] or 'default'}"])
        choice = {"autocast": best[0], "attention": best[1] or kernel, "step_seconds": seconds}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**cache, key: choice}, sort_keys=True)
        choice = {**choice, "source": "probe"}
    if switch:
        bb.model.set_attn_implementation(choice["attention"])
    return choice


# ---------------------------------------------------------------------------------------------- encoding


def encode(bb: Backbone, ex: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one example, cached. Only `ex.text` is truncated to fit the budget.

    Causal: the answer is " " + target followed by EOS, so scores are the probability of answering and
    stopping. Seq2seq: the tokenizer's own target encoding (T5 appends EOS).
    """
    key = (ex.prefix, ex.text, ex.suffix, ex.target)
    hit = bb._encoded.get(key)
    if hit is not None:
        return hit
    tok = bb.tokenizer
    head = tok(ex.prefix, add_special_tokens=True)["input_ids"] if ex.prefix else []
    tail = tok(ex.suffix, add_special_tokens=False)["input_ids"] if ex.suffix else []
    if not ex.prefix:  # raw prompts (paper layout): the text carries everything
        head = [tok.bos_token_id] if getattr(tok, "add_bos_token", False) and tok.bos_token_id else []
    body = tok(ex.text, add_special_tokens=False)["input_ids"]
    budget = max(bb.config.max_prompt_tokens - len(head) - len(tail), 1)
    prompt = head + body[:budget] + tail
    answer = encode_answer(bb, ex.target)
    bb._encoded[key] = (prompt, answer)
    return prompt, answer


def encode_answer(bb: Backbone, target: str) -> list[int]:
    tok = bb.tokenizer
    if bb.is_seq2seq:
        return tok(text_target=target)["input_ids"]
    return tok(" " + target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _left_pad(seqs: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids, mask


def _right_pad(seqs: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def _positions(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids that skip left padding (RoPE is relative, but this keeps absolute positions exact)."""
    return (mask.cumsum(-1) - 1).clamp(min=0) + (start if isinstance(start, int) else start[:, None])


# ---------------------------------------------------------------------------------------------- training


def answer_tokens(bb: Backbone, batch: Sequence[Example]) -> int:
    """Number of answer tokens in a batch (the normaliser of the mean answer loss)."""
    return sum(len(encode(bb, ex)[1]) for ex in batch)


def answer_loss(bb: Backbone, batch: Sequence[Example], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the answer tokens of a batch (prompt tokens carry no loss): their mean, or with
    reduction="sum" their sum (data-parallel ranks divide by the global token count)."""
    pairs = [encode(bb, ex) for ex in batch]
    pad = bb.tokenizer.pad_token_id
    dev = bb.device
    if bb.is_seq2seq:
        ids, mask = _right_pad([p for p, _ in pairs], pad)
        labels, lmask = _right_pad([a for _, a in pairs], pad)
        labels[lmask == 0] = -100
        with bb.autocast():
            logits = bb.model(
                input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev), use_cache=False
            ).logits
    else:
        ids, mask = _left_pad([p + a for p, a in pairs], pad)
        n_ans = max(len(a) for _, a in pairs)
        labels = torch.full((len(pairs), n_ans), -100, dtype=torch.long)
        for i, (_, a) in enumerate(pairs):
            labels[i, n_ans - len(a) :] = torch.tensor(a)
        # Logits at the last n_ans + 1 positions; position t predicts token t + 1, so drop the final one.
        with bb.autocast():
            out = bb.model(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=_positions(mask).to(dev),
                logits_to_keep=n_ans + 1,
                use_cache=False,
            )
        logits = out.logits[:, :-1]
    logits = logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.to(dev).reshape(-1), ignore_index=-100, reduction=reduction
    )


# -------------------------------------------------------------------------------------------- evaluation


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers renamed past_key_values to cache; pass whichever this version takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def score_options(bb: Backbone, batch: Sequence[Example], options: Sequence[str]) -> torch.Tensor:
    """Log-likelihood of each option as the answer, shape (batch, options).

    Causal: one pass over the prompts (keeping their KV cache and only the last position's logits), then
    one pass over every option token continuing each cached prompt, batch x options rows of a few tokens.
    Seq2seq: the encoder runs once per prompt; the decoder scores every option.
    """
    with bb.autocast():
        return _score_options(bb, batch, options)[1]


def _score_options(
    bb: Backbone, batch: Sequence[Example], options: Sequence[str], max_new: int = 0
) -> tuple[list[str] | None, torch.Tensor]:
    """(greedy answers or None, option log-likelihoods); a causal model with max_new > 0 also decodes the
    answers, continuing the prompts' KV cache before the options do."""
    answers = None
    pad = bb.tokenizer.pad_token_id
    dev = bb.device
    model = bb.model.get_base_model()
    n, c = len(batch), len(options)
    prompts = [encode(bb, ex)[0] for ex in batch]
    opt_ids = [encode_answer(bb, o) for o in options]
    oids, omask = _right_pad(opt_ids, pad)  # (c, T)
    oids_rep, omask_rep = oids.repeat(n, 1).to(dev), omask.repeat(n, 1).to(dev)  # row i*c + j
    if bb.is_seq2seq:
        ids, mask = _right_pad(prompts, pad)
        enc = model.get_encoder()(input_ids=ids.to(dev), attention_mask=mask.to(dev))
        enc.last_hidden_state = enc.last_hidden_state.repeat_interleave(c, dim=0)
        start = model.config.decoder_start_token_id
        dec_in = torch.cat([torch.full((n * c, 1), start, device=dev), oids_rep[:, :-1]], dim=1)
        out = model(
            encoder_outputs=enc,
            attention_mask=mask.to(dev).repeat_interleave(c, dim=0),
            decoder_input_ids=dec_in,
        )
        logp = out.logits.float().log_softmax(-1)
    else:
        first, cache, mask = _prompt_pass(bb, prompts)
        if max_new > 0:
            answers = _greedy_after(bb, first, cache, mask, max_new)
        logp = _option_logp(bb, first, cache, mask, oids_rep, omask_rep, c)
    tok_logp = logp.gather(-1, oids_rep.unsqueeze(-1)).squeeze(-1) * omask_rep
    return answers, tok_logp.sum(-1).view(n, c).cpu()


def _prompt_pass(bb: Backbone, prompts: list[list[int]]) -> tuple[torch.Tensor, object, torch.Tensor]:
    """Causal: one pass over the left-padded prompts; (last position's logits (n, 1, V), KV cache, mask)."""
    ids, mask = _left_pad(prompts, bb.tokenizer.pad_token_id)
    ids, mask = ids.to(bb.device), mask.to(bb.device)
    model = bb.model.get_base_model()
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1)
    return out.logits, getattr(out, "cache", None) or out.past_key_values, mask


def _option_logp(bb: Backbone, first: torch.Tensor, cache, mask: torch.Tensor, oids, omask, c: int) -> torch.Tensor:
    """Causal: log-probabilities of every option token continuing each cached prompt (row i*c + j: prompt i,
    option j). The cache is repeated in place, c rows per prompt."""
    cache.batch_repeat_interleave(c)
    lengths = mask.sum(-1).repeat_interleave(c)
    rest = bb.model.get_base_model()(
        input_ids=oids,
        attention_mask=torch.cat([mask.repeat_interleave(c, dim=0), omask], dim=1),
        position_ids=_positions(omask, lengths),
        use_cache=False,
        **{_cache_kwarg(bb.model.get_base_model()): cache},
    )
    # Row r, position t: the distribution of option token t (position 0 comes from the prompt pass).
    logits = torch.cat([first.repeat_interleave(c, dim=0), rest.logits[:, :-1]], dim=1)
    return logits.float().log_softmax(-1)


def _greedy_after(bb: Backbone, first: torch.Tensor, cache, mask: torch.Tensor, max_new: int) -> list[str]:
    """Causal: greedy decoding continuing each cached prompt (what `generate(do_sample=False)` returns), then
    the cache cropped back to the prompts so that option scoring can reuse it."""
    model, width = bb.model.get_base_model(), mask.size(1)
    eos = model.generation_config.eos_token_id
    eos = torch.tensor(eos if isinstance(eos, list) else [eos], device=mask.device)
    lengths, tok = mask.sum(-1), first[:, -1].argmax(-1)
    done = torch.zeros_like(tok, dtype=torch.bool)
    out = []
    for t in range(max_new):
        out.append(torch.where(done, bb.tokenizer.pad_token_id, tok))
        done |= torch.isin(tok, eos)
        if bool(done.all()) or t == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=(lengths + t)[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{_cache_kwarg(model): cache},
        )
        tok = step.logits[:, -1].argmax(-1)
    if cache.get_seq_length() > width:  # a negative count removes tokens in every transformers version
        cache.crop(width - cache.get_seq_length())
    new = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(mask.size(0))]
    return [t.strip() for t in bb.tokenizer.batch_decode(new, skip_special_tokens=True)]


def plain_greedy(bb: Backbone) -> bool:
    """Whether decoding greedily from the prompts' cache (_greedy_after) is what generate() does for this
    model: an EOS token and none of the generation config's logits processors (repetition penalty, banned
    n-grams or tokens, a minimum length, forced tokens, a sequence bias)."""
    g = bb.model.get_base_model().generation_config
    processors = (
        g.repetition_penalty not in (None, 1.0),
        g.encoder_repetition_penalty not in (None, 1.0),
        bool(g.no_repeat_ngram_size),
        bool(g.suppress_tokens),
        bool(g.begin_suppress_tokens),
        bool(g.bad_words_ids),
        bool(g.min_new_tokens),
        bool(g.min_length),
        g.forced_bos_token_id is not None,
        g.forced_eos_token_id is not None,
        bool(g.sequence_bias),
    )
    return g.eos_token_id is not None and not any(processors)


@torch.no_grad()
def generate_and_score(
    bb: Backbone, batch: Sequence[Example], options: Sequence[str], max_new_tokens: int
) -> tuple[list[str], torch.Tensor]:
    """Both scorings of a batch from one pass over its prompts (causal models: the greedy answers, then the
    options' log-likelihoods continuing the same KV cache); seq2seq models run the two one after the other."""
    if bb.is_seq2seq:
        return generate_answers(bb, batch, max_new_tokens), score_options(bb, batch, options)
    with bb.autocast():
        return _score_options(bb, batch, options, max_new_tokens)


@torch.no_grad()
def generate_answers(bb: Backbone, batch: Sequence[Example], max_new_tokens: int = 16) -> list[str]:
    """Greedy generation of the answer text (exact-match evaluation and generation tasks)."""
    pad = bb.tokenizer.pad_token_id
    dev = bb.device
    prompts = [encode(bb, ex)[0] for ex in batch]
    if bb.is_seq2seq:
        ids, mask = _right_pad(prompts, pad)
    else:
        ids, mask = _left_pad(prompts, pad)
    with bb.autocast():
        out = bb.model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    new = out if bb.is_seq2seq else out[:, ids.size(1) :]
    return [t.strip() for t in bb.tokenizer.batch_decode(new, skip_special_tokens=True)]


def stemmed_rouge_l() -> Callable[[str, str], float]:
    """ROUGE-L F1 as the released evaluation computes it: rouge-score's tokenizer and Porter stemmer."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError("eval.rouge_stemmer=true needs rouge-score: pip install 'aimray[reference]'") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return lambda prediction, reference: scorer.score(reference, prediction)["rougeL"].fmeasure


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased whitespace tokens (longest common subsequence)."""
    p, r = prediction.lower().split(), reference.lower().split()
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


@dataclass(frozen=True)
class EvalResult:
    metric: str  # accuracy or rouge_l
    value: float  # in [0, 1]
    n: int
    predictions: list[str]


def evaluate(
    bb: Backbone,
    examples: Sequence[Example],
    options: Sequence[str] = (),
    mode: str = "score",
    batch_size: int = 16,
    max_new_tokens: int = 0,
    rouge_stemmer: bool = False,
) -> EvalResult:
    """Score a list of examples of one task.

    mode "score": the option with the highest likelihood (needs options); "generate": greedy generation,
    lower-cased exact match, or ROUGE-L when the task has no options. Examples are length-sorted into
    batches so that padding is small; predictions come back in the input order.
    """
    return evaluate_modes(bb, examples, options, (mode,), batch_size, max_new_tokens, rouge_stemmer)[mode]


def evaluate_modes(
    bb: Backbone,
    examples: Sequence[Example],
    options: Sequence[str],
    modes: Sequence[str],
    batch_size: int = 16,
    max_new_tokens: int = 0,
    rouge_stemmer: bool = False,
) -> dict[str, EvalResult]:
    """`evaluate` under several modes at once: with both, each batch's prompts are encoded once
    (generate_and_score), so the second mode costs its option pass or its decoding steps only."""
    for mode in modes:
        if mode not in ("score", "generate"):
            raise ValueError(f"eval mode {mode!r} must be score or generate")
        if mode == "score" and not options:
            raise ValueError("label scoring needs the task's options; use mode='generate' for generation tasks")
    was_training = bb.model.training
    bb.model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(encode(bb, examples[i])[0]))
    preds: dict[str, list[str]] = {m: [""] * len(examples) for m in modes}
    max_new = max_new_tokens or max((len(encode_answer(bb, o)) for o in options), default=32) + 2
    one_pass = bb.is_seq2seq or plain_greedy(bb)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = [examples[i] for i in idx]
        answers = {}
        if "score" in modes and "generate" in modes and one_pass:
            answers["generate"], scores = generate_and_score(bb, batch, options, max_new)
            answers["score"] = [options[b] for b in scores.argmax(-1).tolist()]
        else:  # one mode, or a generation config whose processors only generate() applies: one after the other
            if "score" in modes:
                answers["score"] = [options[b] for b in score_options(bb, batch, options).argmax(-1).tolist()]
            if "generate" in modes:
                answers["generate"] = generate_answers(bb, batch, max_new)
        for mode, got in answers.items():
            for i, a in zip(idx, got, strict=True):
                preds[mode][i] = a
    bb.model.train(was_training)
    return {mode: _scored(preds[mode], examples, options, rouge_stemmer) for mode in modes}


def _scored(preds: list[str], examples: Sequence[Example], options: Sequence[str], stemmer: bool) -> EvalResult:
    """Accuracy (lower-cased exact match) for a task with options, else mean ROUGE-L."""
    if options:
        hits = [p.strip().lower() == ex.target.strip().lower() for p, ex in zip(preds, examples, strict=True)]
        return EvalResult("accuracy", sum(hits) / max(len(hits), 1), len(examples), preds)
    score = stemmed_rouge_l() if stemmer else rouge_l
    scores = [score(p, ex.target) for p, ex in zip(preds, examples, strict=True)]
    return EvalResult("rouge_l", sum(scores) / max(len(scores), 1), len(examples), preds)
