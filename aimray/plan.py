"""The memory plan: what a run needs on a device, before it starts, and the micro-batch it would use.

    python -m aimray plan --preset paper --model llama-2-7b --device cuda --memory 80GiB

A run holds the frozen backbone, the adapter's state (the live tensors, their gradients, AdamW's two moments
and the loop's copies: anchor, deltas, importance EMAs, best state), the activations one micro-batch keeps
for its backward pass, and, between tasks, the evaluation's peak. The activations are counted from the
architecture, per token and layer, from what autograd saves when the base is frozen and only the LoRA
adapters learn (a frozen linear keeps no input; a LoRA linear keeps its input and its dropout mask; a norm
keeps its fp32 input; attention keeps q, k, v and its output with SDPA, the n x s probabilities with the
eager kernel; a gated MLP keeps three intermediate-wide tensors). With activation checkpointing a layer
keeps its input only and one layer is recomputed at a time. benchmarks/memory.py puts these predictions
beside measured peaks. No weights are read: a meta-device model gives the parameter counts.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from aimray import assets
from aimray.config import DEFAULT_BACKBONE, RunConfig
from aimray.files import read_json, write_json_atomic

GiB = 1024**3
SHAPES = Path(__file__).parent / "shapes"  # published architectures' configs, known by name (no weights)
ANSWER_TOKENS = 8  # answer tokens beside the prompt budget (label words and EOS) in the plan's worst case
ADAPTER_COPIES = 13  # fp32 adapter-sized tensors: live, grad, 2 AdamW moments, initial, anchor, before, 2 deltas,
# the fused result, 2 importance EMAs, the best state
TOKEN_CACHE_BYTES = 36  # a cached token id on the host: a Python int (28 B) and its list slot (8 B)
OPTIONS_ASSUMED = 10  # label words per task when the benchmark's tasks cannot be read here


@dataclass(frozen=True)
class Arch:
    """What the plan needs of a backbone, read from its configuration."""

    name: str
    seq2seq: bool
    params: int  # frozen weights
    layers: int  # layers over the prompt: every layer of a decoder-only model, a T5's encoder
    decoder_layers: int  # a T5's decoder (0 for decoder-only models)
    hidden: int
    intermediate: int
    heads: int
    head_dim: int
    kv_heads: int
    vocab: int
    gated: bool  # a gated MLP (Llama, Flan-T5) keeps three intermediate-wide tensors, a plain one (T5) one
    dropout: float  # the backbone's own dropout in training (T5: 0.1; Llama: 0)
    adapter: int  # LoRA parameters
    lora_in: int  # per layer over the prompt: in_features summed over the LoRA-targeted linears
    lora_modules: int  # per layer over the prompt: how many linears carry LoRA
    cross_lora_in: int  # per T5 decoder layer: LoRA-targeted cross-attention linears over the encoder's tokens
    linear_params: int  # weights of the frozen linears (what bf16 autocast casts, and keeps for the backward)


def hf_config(name_or_path: str):
    """The backbone's HF configuration: the offline default, a model folder, a shape shipped in
    aimray/shapes by name (t5-large, llama-2-7b, llama-2-13b), or an HF id loadable here."""
    if name_or_path == DEFAULT_BACKBONE:
        return AutoConfig.from_pretrained(assets.backbone_dir())
    shape = SHAPES / f"{name_or_path}.json"
    if not Path(name_or_path).exists() and shape.exists():
        values = read_json(shape)
        return AutoConfig.for_model(values.pop("model_type"), **values)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        known = ", ".join(sorted(p.stem for p in SHAPES.glob("*.json")))
        raise FileNotFoundError(
            f"model {name_or_path!r}: no configuration readable here (not the offline default, not a model folder "
            f"with a config.json, not a shape the plan knows: {known}; no hub access?): {err}"
        ) from None


def read_arch(name_or_path: str, lora_r: int = 8, lora_targets: tuple[str, ...] = ()) -> Arch:
    """The backbone's Arch: counts from a meta-device model built from its configuration (no weights)."""
    from aimray.model import _default_targets

    hf = hf_config(name_or_path)
    seq2seq = bool(getattr(hf, "is_encoder_decoder", False))
    with torch.device("meta"):
        model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_config(hf)
    targets = set(lora_targets or _default_targets(model))
    lora = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]
    prompt_side = [m for name, m in lora if not seq2seq or ".encoder." in f".{name}"]
    cross = [m for name, m in lora if seq2seq and "EncDecAttention" in name]
    layers = hf.num_layers if seq2seq else hf.num_hidden_layers
    heads = hf.num_heads if seq2seq else hf.num_attention_heads
    hidden = hf.d_model if seq2seq else hf.hidden_size
    decoder_layers = (getattr(hf, "num_decoder_layers", None) or layers) if seq2seq else 0
    return Arch(
        name=name_or_path,
        seq2seq=seq2seq,
        params=sum(p.numel() for p in model.parameters()),
        layers=layers,
        decoder_layers=decoder_layers,
        hidden=hidden,
        intermediate=hf.d_ff if seq2seq else hf.intermediate_size,
        heads=heads,
        head_dim=hf.d_kv if seq2seq else getattr(hf, "head_dim", None) or hidden // heads,
        kv_heads=heads if seq2seq else getattr(hf, "num_key_value_heads", None) or heads,
        vocab=hf.vocab_size,
        gated=bool(getattr(hf, "is_gated_act", False)) if seq2seq else True,
        dropout=float(getattr(hf, "dropout_rate", 0.0)) if seq2seq else float(getattr(hf, "attention_dropout", 0.0)),
        adapter=sum(lora_r * (m.in_features + m.out_features) for _, m in lora),
        lora_in=sum(m.in_features for m in prompt_side) // layers,
        lora_modules=len(prompt_side) // layers,
        cross_lora_in=sum(m.in_features for m in cross) // max(1, decoder_layers),
        linear_params=sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)),
    )


# ------------------------------------------------------------------------------------------- the counts


@dataclass(frozen=True)
class Setting:
    """How a run computes, as far as memory goes."""

    weight_bytes: int  # 4 for a float32 base, 2 for bfloat16/float16
    act_bytes: int  # activations: 2 under bf16 autocast or a 16-bit base, else 4
    mask_bytes: int  # a dropout mask's element: 1 on a GPU (bool), the input's on a CPU
    eager: bool  # the eager attention kernel (keeps n x s probabilities per token)
    checkpointing: bool
    lora_r: int
    lora_dropout: float
    tokens: int  # per example: the prompt budget and the answer
    answer: int = ANSWER_TOKENS  # answer tokens per example (the positions whose logits the loss reads)


def layer_bytes(a: Arch, s: Setting) -> int:
    """Bytes a layer over the prompt keeps per token for the backward pass (no checkpointing)."""
    q = a.heads * a.head_dim
    act, mask = s.act_bytes, s.mask_bytes
    norms = 2 * a.hidden * 4  # each norm keeps its input in fp32
    lora = a.lora_in * (act + (mask if s.lora_dropout else 0)) + a.lora_modules * s.lora_r * act
    if s.eager:  # q, k, v for the two matmuls; the softmax's fp32 output and its cast
        attention = 3 * q * act + a.heads * s.tokens * (4 + act)
        if a.dropout:  # attention dropout: its mask and output
            attention += a.heads * s.tokens * (mask + act)
    else:  # SDPA: q, k, v, the output and the log-sum-exp
        attention = 4 * q * act + a.heads * 4
    mlp = (3 if a.gated else 1) * a.intermediate * act
    if a.dropout:  # the MLP's and the two residual branches' dropout masks
        mlp += a.intermediate * mask + 2 * a.hidden * mask
    return norms + lora + attention + mlp


def activation_bytes(a: Arch, s: Setting, micro: int) -> int:
    """Bytes one micro-batch's forward pass keeps for its backward pass, with the backward's working set
    (half a layer's tensors again, as gradients); with checkpointing each layer keeps its input (in the residual
    stream's dtype) and one layer is recomputed at a time."""
    tokens = micro * s.tokens
    per_layer = layer_bytes(a, s)
    if s.checkpointing:
        kept = a.layers * a.hidden * max(s.weight_bytes, 2) * tokens + per_layer * tokens
    else:
        kept = a.layers * per_layer * tokens
    working = per_layer * tokens // 2  # the backward's gradients of the layer it is in, as its own tensors go
    if a.seq2seq:  # the decoder's cross-attention keeps its k, v and LoRA inputs over the encoder's tokens
        cross = a.decoder_layers * (2 * a.heads * a.head_dim * s.act_bytes + a.cross_lora_in * s.act_bytes)
        kept += cross * tokens
        if s.eager:  # the T5 position bias with the mask: (batch, heads, s, s) in fp32, once
            kept += a.heads * s.tokens * 4 * tokens
    logits = micro * (s.answer + 1) * a.vocab * 4 * 2  # the answer positions' logits and their log-softmax
    return kept + working + logits + autocast_copies(a, s)


def autocast_copies(a: Arch, s: Setting) -> int:
    """bf16 autocast over a float32 base casts every frozen linear's weight in each pass and keeps the copy
    for the backward pass (autocast caches only weights that require grad): half the linears' fp32 bytes, or
    one layer's with checkpointing."""
    if not (s.weight_bytes == 4 and s.act_bytes == 2):
        return 0
    copies = a.linear_params * 2
    return copies // (a.layers + a.decoder_layers) if s.checkpointing else copies


def eval_bytes(a: Arch, s: Setting, batch: int, options: int, mode: str, max_new: int) -> int:
    """The evaluation's peak beside the weights: the prompt pass's KV cache (label scoring repeats it per
    option), one layer's intermediates, and the logits."""
    kv = 2 * a.layers * a.kv_heads * a.head_dim * s.act_bytes  # per token
    prompt = batch * s.tokens
    intermediates = prompt * max(3 * a.intermediate, 4 * a.heads * a.head_dim) * s.act_bytes
    if s.eager:
        intermediates += prompt * a.heads * s.tokens * 4
    if mode == "score":
        cache = prompt * kv * (1 + options)
        logits = batch * options * ANSWER_TOKENS * a.vocab * 4 * 2
    else:
        cache = batch * (s.tokens + max_new) * kv
        logits = batch * a.vocab * 4 * 2
    return cache + intermediates + logits


# --------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    model: str
    params: int
    adapter: int
    device: str
    memory: int  # the device's bytes
    memory_source: str
    batch: int
    tokens: int
    weights: int
    adapter_state: int
    activations: dict[int, int]  # micro-batch -> bytes (as configured)
    activations_other: dict[int, int]  # micro-batch -> bytes with checkpointing the other way
    evaluation: int
    host_tokens: int  # the token cache (host memory)
    reserve: int  # what the runtime and the allocator take beside the tensors
    micro: int | None  # the largest micro-batch that fits (None: none does)
    setting: dict

    def peak(self, micro: int) -> int:
        """The device's peak at this micro-batch: weights, adapter state, and training's or evaluation's peak."""
        return self.weights + self.adapter_state + max(self.activations[micro], self.evaluation)

    def to_dict(self) -> dict:
        return asdict(self)


def divisors(n: int) -> list[int]:
    """The micro-batches an optimizer step of n examples can use, largest first."""
    return [m for m in range(n, 0, -1) if n % m == 0]


def make_plan(cfg: RunConfig, device: str, memory: int | None = None, arch: Arch | None = None) -> Plan:
    """The plan of a run's config on a device (cpu or cuda) with `memory` bytes (None: this machine's)."""
    arch = arch or read_arch(cfg.model.name_or_path, cfg.model.lora_r, cfg.model.lora_targets)
    setting = run_setting(cfg, arch, device)
    total, source = (memory, "given") if memory else device_memory(device)
    world_batch = cfg.train.batch_size
    options = benchmark_options(cfg)
    evaluation = eval_bytes(arch, setting, cfg.train.eval_batch_size, options, cfg.eval.mode, _max_new(cfg))
    other = Setting(**{**asdict(setting), "checkpointing": not setting.checkpointing})
    acts = {m: activation_bytes(arch, setting, m) for m in divisors(world_batch)}
    weights = arch.params * setting.weight_bytes
    adapter_state = arch.adapter * 4 * ADAPTER_COPIES
    examples = cfg.data.train + cfg.data.dev + cfg.data.test
    host = len(_task_names(cfg)) * examples * setting.tokens * TOKEN_CACHE_BYTES
    reserve = GiB + total // 20 if device == "cuda" else GiB + host
    fits = [m for m, b in acts.items() if weights + adapter_state + max(b, evaluation) + reserve <= total]
    return Plan(
        model=arch.name,
        params=arch.params,
        adapter=arch.adapter,
        device=device,
        memory=total,
        memory_source=source,
        batch=world_batch,
        tokens=setting.tokens,
        weights=weights,
        adapter_state=adapter_state,
        activations=acts,
        activations_other={m: activation_bytes(arch, other, m) for m in acts},
        evaluation=evaluation,
        host_tokens=host,
        reserve=reserve,
        micro=max(fits) if fits else None,
        setting=asdict(setting),
    )


def run_setting(cfg: RunConfig, arch: Arch, device: str) -> Setting:
    """The run's Setting on a device: model.autocast "auto" counts as bf16 on a GPU and on a CPU with native
    bf16 matmuls (the precision probe may still choose fp32 there: fp32 activations are twice as large)."""
    from aimray.model import native_bf16

    m = cfg.model
    weight_bytes = 4 if m.dtype == "float32" else 2
    bf16 = m.autocast == "bf16" or (m.autocast == "auto" and (device == "cuda" or native_bf16(torch.device("cpu"))))
    act = 2 if bf16 or weight_bytes == 2 else 4
    eager = m.attention == "eager" or (m.attention == "auto" and device == "cpu" and bf16) or arch.seq2seq
    return Setting(
        weight_bytes=weight_bytes,
        act_bytes=act,
        mask_bytes=1 if device == "cuda" else 4,
        eager=eager,
        checkpointing=m.gradient_checkpointing,
        lora_r=m.lora_r,
        lora_dropout=m.lora_dropout,
        tokens=m.max_prompt_tokens + ANSWER_TOKENS,
    )


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, where the figure comes from) of this machine's device: the GPU's total, the host's available
    memory; an 80 GiB GPU assumed where this machine has none."""
    if device == "cuda":
        if torch.cuda.is_available():
            return torch.cuda.mem_get_info()[1], torch.cuda.get_device_name()
        return 80 * GiB, "assumed, no GPU here; --memory sets it"
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024, "this machine's available memory"


def _task_names(cfg: RunConfig) -> list[str]:
    from aimray.tasks import get_benchmark

    return list(get_benchmark(cfg.benchmark).order(cfg.order))


def benchmark_options(cfg: RunConfig) -> int:
    """The most label words of the run's tasks (what label scoring repeats the KV cache for)."""
    from aimray.assets import AssetMissingError
    from aimray.tasks import benchmark_tasks

    try:
        specs = benchmark_tasks(cfg.benchmark, cfg.order, cfg.data_dir)
    except (AssetMissingError, FileNotFoundError, ValueError, KeyError, OSError):  # no data here: assume
        return OPTIONS_ASSUMED
    return max((len(s.labels) for s in specs), default=1) or 1


def _max_new(cfg: RunConfig) -> int:
    return cfg.eval.max_new_tokens or ANSWER_TOKENS + 2


def parse_bytes(text: str) -> int:
    """ "80GiB", "80 GB", "512MiB", "1.5TiB" or a number of bytes -> bytes (GB read as GiB)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"--memory={text!r}: expected a size such as 80GiB, 24GB or 512MiB")
    scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * scale)


# ------------------------------------------------------------------------------ train.micro_batch_size=auto


def resolve_micro_batch(cfg: RunConfig, bb, per_rank: int) -> tuple[int | None, dict]:
    """train.micro_batch_size as a run uses it: None (the whole batch), a number, or for "auto" the plan's
    largest fitting micro-batch, on a GPU confirmed by a probe (one forward and backward pass of the largest
    candidate at the prompt budget; one out of memory tries the next smaller), the choice cached per machine,
    model, dtype and prompt budget in $AIMRAY_HOME/micro_batch.json. Returns (micro, the manifest's record)."""
    micro = cfg.train.micro_batch_size
    if micro != "auto":
        return micro, ({"size": micro, "source": "config"} if micro else {})
    device = bb.device.type
    made = make_plan(cfg, device)
    candidates = [m for m in divisors(per_rank) if made.micro is not None and m <= made.micro] or [1]
    record = {"source": "plan", "predicted_peak": made.peak(candidates[0])}
    if made.micro is None:
        record["note"] = f"the plan fits no micro-batch in {gib(made.memory)}: 1 tried"
    if device == "cuda":
        record.update(probe_micro_batch(bb, candidates, made.tokens))
    record["size"] = record.get("size", candidates[0])
    return record["size"], record


def probe_micro_batch(bb, candidates: list[int], tokens: int) -> dict:
    """The largest candidate whose training pass fits this GPU, with its measured peak (cached per machine)."""
    from aimray.model import probe_key

    path = assets.home() / "micro_batch.json"
    key = f"{probe_key(bb)}|tokens={tokens}|checkpointing={bb.config.gradient_checkpointing}|{candidates}"
    cache = read_json(path) if path.exists() else {}
    if key in cache:
        return {**cache[key], "source": f"cached probe ({path})"}
    for size in candidates:
        try:
            peak = measure_pass(bb, size, tokens)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        found = {"size": size, "measured_peak": peak}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**cache, key: found}, sort_keys=True)
        return {**found, "source": "probe"}
    raise RuntimeError(f"train.micro_batch_size=auto: not even one example of {tokens} tokens fits this GPU")


def measure_pass(bb, size: int, tokens: int) -> int:
    """Peak GPU bytes of one training pass (forward and backward of the answer loss) of `size` synthetic
    examples at `tokens` tokens; the adapter's gradients are cleared after it."""
    from aimray.model import answer_loss
    from aimray.tasks.spec import Example

    words = " ".join(["word"] * tokens)
    batch = [Example("probe", words, f"label{i}") for i in range(size)]
    torch.cuda.reset_peak_memory_stats(bb.device)
    try:
        answer_loss(bb, batch).backward()
        torch.cuda.synchronize(bb.device)
        return int(torch.cuda.max_memory_allocated(bb.device))
    finally:
        for p in bb.model.parameters():
            p.grad = None
        for ex in batch:
            bb._encoded.pop((ex.prefix, ex.text, ex.suffix, ex.target), None)


def to_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=1)


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 2**20:.1f} MiB"


def describe(plan: Plan) -> list[str]:
    """The plan as the CLI prints it."""
    st = plan.setting
    ckpt = "on" if st["checkpointing"] else "off"
    act = "bf16" if st["act_bytes"] == 2 else "fp32"
    lines = [
        f"memory plan: {plan.model} ({plan.params / 1e6:,.0f} M parameters, LoRA {plan.adapter / 1e6:.2f} M) "
        f"on {plan.device}: {gib(plan.memory)} ({plan.memory_source})",
        f"batch {plan.batch}, {plan.tokens} tokens per example (prompt budget + answer), {act} activations, "
        f"{'eager' if st['eager'] else 'SDPA'} attention, activation checkpointing {ckpt}",
        "",
        f"  frozen weights              {gib(plan.weights):>11}",
        f"  adapter, grads, AdamW, copies {gib(plan.adapter_state):>9}",
        f"  evaluation's peak           {gib(plan.evaluation):>11}",
        f"  runtime and allocator       {gib(plan.reserve):>11}   (host: token cache {gib(plan.host_tokens)})",
        "",
        f"  {'micro-batch':>11} {'activations':>12} {'checkpointing ' + ('off' if st['checkpointing'] else 'on'):>20}"
        f" {'peak':>11}  fits",
    ]
    for m, b in plan.activations.items():
        fits = plan.micro is not None and m <= plan.micro
        lines.append(
            f"  {m:>11} {gib(b):>12} {gib(plan.activations_other[m]):>20} {gib(plan.peak(m)):>11}  "
            f"{'yes' if fits else 'no'}"
        )
    lines.append("")
    if plan.micro is None:
        hint = "" if st["checkpointing"] else "; try model.gradient_checkpointing=true"
        lines.append(f"does not fit: even micro-batch 1 needs more than {gib(plan.memory)}{hint}")
    else:
        steps = math.ceil(plan.batch / plan.micro)
        lines.append(f"fits: micro-batch {plan.micro} ({steps} pass{'es' if steps > 1 else ''} per optimizer step)")
    return lines
