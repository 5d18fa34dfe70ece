"""The run config: frozen dataclasses, presets (YAML), `key=value` overrides, validation.

A run has one input, a RunConfig. Presets live in aimray/presets/<name>.yaml; overrides use dotted keys
(`controller.threshold_factor=2.5`, `train.lr=1e-3`, `data.train=64`). An unknown key or a bad value
fails with a message naming the field and the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aimray.merging.controller import SCHEDULES
from aimray.merging.fusion import FUSIONS
from aimray.methods import METHODS
from aimray.tasks import get_benchmark
from aimray.tasks.spec import ADDED_LATER_FIELD, SplitSizes

PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_BACKBONE = "smollm2"  # the embedded default: SmolLM2-135M-Instruct from the offline assets

# How a field enters a run's identity (config_hash, the resume check), in its dataclass metadata: NEUTRAL
# never (it does not change results: how many threads compute them); ADDED_LATER_FIELD only away from its
# default, so that runs committed before the field existed keep their hashes (tasks.spec defines it, for
# SplitSizes.release_split); any other field always.
NEUTRAL = {"identity": "neutral"}


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and adapter. LoRA defaults are the paper's (r 8, alpha 32, dropout 0.05, query/value)."""

    name_or_path: str = DEFAULT_BACKBONE
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ()  # empty: q_proj/v_proj (decoder LMs) or q/v (T5), found in the model
    max_prompt_tokens: int = 192  # the task text is truncated so the prompt fits
    dtype: str = "float32"
    device: str = "auto"  # "auto": the GPU when torch sees one (Ray assigns it), else the CPU
    # bf16 autocast of the forward passes (training, monitoring, scoring; weights, adapter, optimizer and
    # losses stay in `dtype`): "auto" where bf16 matmuls are native (a CPU with AMX or AVX512-BF16, a GPU
    # with bf16) and a timed training step shows it faster (aimray.model.resolve_precision, cached per
    # machine), "bf16" always, "off" never.
    autocast: str = "auto"
    # Attention kernel of causal LMs: "auto" = the faster of eager and SDPA in that probe (under autocast
    # "auto"), else eager under bf16 on a CPU and SDPA otherwise. "sdpa" or "eager" force one.
    attention: str = "auto"
    # "train": each transformer layer runs through torch.compile in training steps (evaluation stays eager),
    # compiled once per machine into inductor's on-disk cache (aimray.model.compile_for_training). "off": eager.
    compile: str = field(default="off", metadata=ADDED_LATER_FIELD)
    # Activation checkpointing of the transformer layers (non-reentrant): each layer keeps only its input
    # and recomputes the rest in the backward pass; the same numbers (dropout masks included), less memory,
    # about one more forward pass of time. Not a part of a run's identity.
    gradient_checkpointing: bool = field(default=False, metadata=NEUTRAL)

    def __post_init__(self) -> None:
        _check(self.lora_r >= 1, "model.lora_r", self.lora_r, "must be >= 1")
        _check(self.lora_alpha > 0, "model.lora_alpha", self.lora_alpha, "must be > 0")
        _check(0 <= self.lora_dropout < 1, "model.lora_dropout", self.lora_dropout, "must be in [0, 1)")
        _check(self.max_prompt_tokens >= 16, "model.max_prompt_tokens", self.max_prompt_tokens, "must be >= 16")
        _one_of("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _one_of("model.autocast", self.autocast, ("auto", "bf16", "off"))
        _one_of("model.attention", self.attention, ("auto", "sdpa", "eager"))
        _one_of("model.compile", self.compile, ("off", "train"))
        _check(
            not (self.gradient_checkpointing and self.compile == "train"),
            "model.gradient_checkpointing",
            self.gradient_checkpointing,
            "cannot be combined with model.compile=train (the compiled layers would be recomputed eagerly); "
            "set one of them off",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Inner optimisation per task (AdamW, linear decay after warm-up, grad clipping)."""

    lr: float = 3e-4
    batch_size: int = 32
    epochs: float = 1.0  # passes over the task's training set (fractions allowed)
    warmup_steps: int = 50
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    eval_batch_size: int = 32
    threads: int = field(default=0, metadata=NEUTRAL)  # torch threads; 0 = leave as is
    # Gradient accumulation: examples per forward/backward pass (on each data-parallel rank); an optimizer
    # step sums batch_size / micro_batch_size of them, its gradient the whole batch's. null: the whole batch
    # in one pass; "auto": the largest that the memory plan fits on the device (aimray.plan; on a GPU
    # confirmed by a short out-of-memory probe, kept per machine). Every count of the method stays in
    # optimizer steps. Not a part of a run's identity: with dropout 0 the same numbers up to float rounding
    # (dropout masks are drawn per pass).
    micro_batch_size: int | str | None = field(default=None, metadata=NEUTRAL)

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "must be >= 1")
        _check(self.epochs > 0, "train.epochs", self.epochs, "must be > 0")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(self.grad_clip > 0, "train.grad_clip", self.grad_clip, "must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.threads >= 0, "train.threads", self.threads, "must be >= 0")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, "must be >= 1")
        micro = self.micro_batch_size
        if isinstance(micro, str):
            _check(micro == "auto", "train.micro_batch_size", micro, "must be a positive integer, auto or null")
        elif micro is not None:
            _check(micro >= 1, "train.micro_batch_size", micro, "must be >= 1")
            _check(
                self.batch_size % micro == 0,
                "train.micro_batch_size",
                micro,
                f"does not divide train.batch_size={self.batch_size}: an optimizer step sums whole micro-batches",
            )


@dataclass(frozen=True)
class MemoryConfig:
    """Rehearsal memory: a fraction or a count of each earlier task's training set, class-balanced."""

    fraction: float | None = 0.02
    per_task: int | None = None
    batch_size: int = 32  # memory batch for the forgetting signal and the rehearsal burst
    # "capped": over 50 distinct outputs (a generation task) a plain random sample; "literal": the released
    # sampler, max(1, n // C) per distinct output with no cap (nearly the whole training set on SuperNI)
    class_rule: str = field(default="capped", metadata=ADDED_LATER_FIELD)

    def __post_init__(self) -> None:
        _check(
            (self.fraction is None) != (self.per_task is None),
            "memory.fraction/per_task",
            (self.fraction, self.per_task),
            "must set exactly one of fraction and per_task (the other to null)",
        )
        if self.fraction is not None:
            ok = _is_number(self.fraction, (int, float)) and 0 < self.fraction <= 1
            _check(ok, "memory.fraction", self.fraction, "must be a number in (0, 1]")
        if self.per_task is not None:
            ok = _is_number(self.per_task, int) and self.per_task >= 1
            _check(ok, "memory.per_task", self.per_task, "must be a positive integer")
        _check(self.batch_size >= 1, "memory.batch_size", self.batch_size, "must be >= 1")
        _one_of("memory.class_rule", self.class_rule, ("capped", "literal"))


@dataclass(frozen=True)
class ControllerConfig:
    """The AimMerging merge controller; defaults are the released code's constants (docs/method.md)."""

    s0: int = 8  # initial merge interval S
    m0: int = 8  # initial rehearsal-burst length M; M = int(S * m0 / s0)
    s_min: int = 2
    s_max: int = 128
    halve_at: int = 64  # after a shrink, S >= halve_at is halved; when growing, the factor gets +0.5
    threshold_factor: float = 2.0  # delta = factor x mean(memory losses of the first floor(2S/3) steps)
    cold_start: int = 3  # S changes only once more than this many learning signals are stored
    early_count: int = 3  # activations that fire a merge before S steps
    forced_multiple: float = 2.0  # after forced_multiple x S steps every step counts as an activation
    trend: str = "last"  # "last": compare with the previous Lambda; "window": with the mean of a window
    trend_window: int = 3
    new_task_important_s: int = 70  # cue "new task important" = S <= this
    # fusion rule (aimray.merging.fusion.FUSIONS): "rule" (the paper's cues), "fixed" (fixed_w_in/out) or
    # "mask" (importance masks); a method sets its own default (fixed_interval: mask, single_merge: fixed)
    weights: str = "rule"
    fixed_w_in: float = 0.5
    fixed_w_out: float = 0.5
    outer_lr: float | None = None  # None: the burst uses the inner optimizer (released code)
    fs_mode: str = "train"  # forgetting-signal forward in "train" (dropout on, released code) or "eval" mode
    # memory losses that set the threshold: "spec", floor(2S/3) of them, monitoring from the next step;
    # "code", the released code's floor(2S/3) + 1, monitoring one step later
    warmup_count: str = field(default="spec", metadata=ADDED_LATER_FIELD)
    # the burst's loss multiplied by this before its backward pass: the released code's burst goes through
    # the trainer's step, which divides by the gradient-accumulation factor (32 / 8: 0.25); the method: 1
    burst_loss_scale: float = field(default=1.0, metadata=ADDED_LATER_FIELD)
    # Fixed-interval baseline (Recurrent-KIF style) and importance-mask fusion
    fixed_s: int = 8
    fixed_m: int = 4
    importance_beta: float = 0.85
    importance_top: float = 0.2

    def __post_init__(self) -> None:
        _check(self.s0 >= 1, "controller.s0", self.s0, "must be >= 1")
        _check(self.fixed_s >= 1, "controller.fixed_s", self.fixed_s, "must be >= 1")
        _check(self.fixed_m >= 0, "controller.fixed_m", self.fixed_m, "must be >= 0")
        _check(self.m0 >= 0, "controller.m0", self.m0, "must be >= 0")
        _check(
            1 <= self.s_min <= self.s_max,
            "controller.s_min/s_max",
            (self.s_min, self.s_max),
            "need 1 <= s_min <= s_max",
        )
        _check(self.threshold_factor > 0, "controller.threshold_factor", self.threshold_factor, "must be > 0")
        _check(self.cold_start >= 0, "controller.cold_start", self.cold_start, "must be >= 0")
        _check(self.early_count >= 1, "controller.early_count", self.early_count, "must be >= 1")
        _check(self.forced_multiple >= 1, "controller.forced_multiple", self.forced_multiple, "must be >= 1")
        _check(self.trend in ("last", "window"), "controller.trend", self.trend, "must be last or window")
        _check(self.trend_window >= 1, "controller.trend_window", self.trend_window, "must be >= 1")
        _check(self.fs_mode in ("train", "eval"), "controller.fs_mode", self.fs_mode, "must be train or eval")
        _one_of("controller.warmup_count", self.warmup_count, ("spec", "code"))
        ok = _is_number(self.burst_loss_scale, (int, float)) and 0 < self.burst_loss_scale <= 1e6
        _check(ok, "controller.burst_loss_scale", self.burst_loss_scale, "must be a number > 0")
        if self.outer_lr is not None:
            _check(self.outer_lr > 0, "controller.outer_lr", self.outer_lr, "must be > 0 or null")
        _check(
            0 < self.importance_beta < 1,
            "controller.importance_beta",
            self.importance_beta,
            "must be in (0, 1)",
        )
        _check(
            0 < self.importance_top <= 1,
            "controller.importance_top",
            self.importance_top,
            "must be in (0, 1]",
        )


@dataclass(frozen=True)
class EvalConfig:
    mode: str = "score"  # "score" (label-word likelihood) or "generate" (exact match / ROUGE-L)
    # several scorings from one run, e.g. [generate, score]: every evaluation row carries its mode, and each
    # mode gets its own matrices and metrics; the first is the run's headline mode (eval.mode is set to it).
    # Both come from one pass over each prompt where the model allows (aimray.model.evaluate_modes).
    modes: tuple[str, ...] = field(default=(), metadata=ADDED_LATER_FIELD)
    splits: tuple[str, ...] = ("test", "dev")
    base: bool = True  # evaluate the untrained adapter first (row 0: the base model, for FWT vs base)
    # generated tokens: 0 = the longest option + 2 (32 + 2 for a task without options); the released code: 128
    max_new_tokens: int = field(default=0, metadata=ADDED_LATER_FIELD)
    # ROUGE-L with the Porter stemmer (rouge-score, extra [reference]): the released code
    rouge_stemmer: bool = field(default=False, metadata=ADDED_LATER_FIELD)
    # "full": every task after every task on the whole split (T x T); "metrics": the whole split only where
    # OP, BWT and FWT read (task j and j+1 after task j, every task after the last), the other cells on a
    # fixed seeded subsample of matrix_subsample examples per task (forgetting curves, marked subsampled)
    matrix: str = field(default="full", metadata=ADDED_LATER_FIELD)
    matrix_subsample: int = field(default=20, metadata=ADDED_LATER_FIELD)

    def __post_init__(self) -> None:
        bad_modes = [m for m in self.modes if m not in ("score", "generate")]
        _check(
            not bad_modes and len(set(self.modes)) == len(self.modes),
            "eval.modes",
            list(self.modes),
            "must list distinct modes among score, generate",
        )
        if self.modes:  # canonical: the headline mode in eval.mode, eval.modes only when there are several
            object.__setattr__(self, "mode", self.modes[0])
            if len(self.modes) == 1:
                object.__setattr__(self, "modes", ())
        _check(self.mode in ("score", "generate"), "eval.mode", self.mode, "must be score or generate")
        _one_of("eval.matrix", self.matrix, ("full", "metrics"))
        ok = _is_number(self.matrix_subsample, int) and self.matrix_subsample >= 1
        _check(ok, "eval.matrix_subsample", self.matrix_subsample, "must be an integer >= 1")
        ok = _is_number(self.max_new_tokens, int) and 0 <= self.max_new_tokens <= 4096
        _check(ok, "eval.max_new_tokens", self.max_new_tokens, "must be an integer in [0, 4096]")
        bad = [s for s in self.splits if s not in ("train", "dev", "test")]
        _check(
            not bad and self.splits,
            "eval.splits",
            self.splits,
            "must be a non-empty subset of train, dev, test",
        )

    @property
    def all_modes(self) -> tuple[str, ...]:
        """The scorings a run evaluates, its headline mode first."""
        return self.modes or (self.mode,)


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0  # also checkpoint every N optimizer steps inside a task (0 = task ends only)
    # per task: keep the "last" state, the "best_dev" one (highest dev score) or "best_dev_loss" (lowest dev
    # loss: the released code); both read past-task dev data
    keep: str = "last"
    best_dev_every: int = 40  # best_dev(_loss): evaluate every N steps ...
    best_dev_examples: int = 25  # ... on this many dev examples of each seen task
    # > 0: hold this fraction of each task's training set out of training and select the best state on it
    # instead of dev (the released single-task runs: 0.1)
    holdout_fraction: float = field(default=0.0, metadata=ADDED_LATER_FIELD)

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "checkpoint.every_steps", self.every_steps, "must be >= 0")
        _one_of("checkpoint.keep", self.keep, ("last", "best_dev", "best_dev_loss"))
        _check(self.best_dev_every >= 1, "checkpoint.best_dev_every", self.best_dev_every, "must be >= 1")
        _check(self.best_dev_examples >= 1, "checkpoint.best_dev_examples", self.best_dev_examples, "must be >= 1")
        ok = _is_number(self.holdout_fraction, (int, float)) and 0 <= self.holdout_fraction < 1
        _check(ok, "checkpoint.holdout_fraction", self.holdout_fraction, "must be in [0, 1)")


@dataclass(frozen=True)
class RunConfig:
    method: str = "aimmerging"
    benchmark: str = "offline-standard"
    order: int = 1
    seed: int = 0
    data_dir: str | None = None
    data: SplitSizes = field(default_factory=SplitSizes)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        _check(self.seed >= 0, "seed", self.seed, "must be >= 0")
        check_names(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_names(cfg: RunConfig) -> None:
    """The names a config gives checked against the registries (methods, benchmarks and their orders, fusion
    rules), and the rules a merge schedule sets on the controller (Schedule.check_config)."""
    if cfg.method not in METHODS:
        raise ValueError(
            f"method={cfg.method!r} is unknown; valid: {', '.join(METHODS)} (a method of your own: register it "
            "in a plugin, --plugins or AIMRAY_PLUGINS, so that Ray workers register it too)"
        )
    try:
        get_benchmark(cfg.benchmark).order(cfg.order)
    except KeyError as err:
        raise ValueError(f"benchmark/order: {err.args[0]}") from err
    fusion = FUSIONS.get(cfg.controller.weights)
    _check(fusion is not None, "controller.weights", cfg.controller.weights, f"is unknown; valid: {', '.join(FUSIONS)}")
    check = getattr(SCHEDULES[METHODS[cfg.method].schedule], "check_config", None)
    if check is not None:
        check(cfg.controller, fusion)


# ------------------------------------------------------------------------------------------ identity


def _identity_rules(cls: type, prefix: str = "") -> dict[str, str]:
    """{"train.threads": "neutral", "model.compile": "added_later", ...} from the fields' metadata."""
    hints, rules = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rules.update(_identity_rules(hints[f.name], f"{prefix}{f.name}."))
        elif "identity" in f.metadata:
            rules[prefix + f.name] = f.metadata["identity"]
    return rules


IDENTITY_RULES = _identity_rules(RunConfig)
ADDED_LATER = tuple(name for name, rule in IDENTITY_RULES.items() if rule == "added_later")


def identity_dict(config: dict) -> dict:
    """A config dict (RunConfig.to_dict(), or a manifest's) as it enters a run's identity: less the neutral
    fields, and less the fields added later while they hold their defaults."""
    defaults = json.loads(json.dumps(RunConfig().to_dict()))  # as JSON has it: a tuple default reads as a list
    out = json.loads(json.dumps(config))
    for name, rule in IDENTITY_RULES.items():
        section, key = name.split(".")
        if key in out.get(section, {}) and (rule == "neutral" or out[section][key] == defaults[section][key]):
            del out[section][key]
    return out


def run_identity(config: dict) -> str:
    """What must match for a checkpoint to be resumed: the identity dict as canonical JSON."""
    return json.dumps(identity_dict(config), sort_keys=True)


def config_hash(cfg: RunConfig) -> str:
    """8 hex digits identifying a run's config (less neutral fields): caches key finished runs by it."""
    return hashlib.sha256(run_identity(cfg.to_dict()).encode()).hexdigest()[:8]


def _check(ok: bool, name: str, value: Any, why: str) -> None:
    """The one validation style: raise ValueError("<field>=<value> <why>") unless ok."""
    if not ok:
        raise ValueError(f"{name}={value!r} {why}")


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
    _check(value in valid, name, value, f"must be one of {', '.join(valid)}")


def _is_number(value: object, kind: type | tuple[type, ...]) -> bool:
    """isinstance(value, kind), bools excluded."""
    return isinstance(value, kind) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------ construction


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Turn a YAML/CLI value into the field's type; raise naming the field."""
    hint = typing.get_origin(annotation)
    if hint in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_null and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, name)
                except ValueError:
                    continue
        raise ValueError(f"{name}={value!r} is not a valid {annotation}")
    if hint is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}={value!r} must be a list")
        return tuple(str(v) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{name}={value!r} must be true or false")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be an integer")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} must be an integer") from None
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise ValueError(f"{name}={value!r} must be an integer")
        return int(as_float)
    if annotation is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} must be a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{name}={value!r} must be a finite number")
        return number
    if annotation is str:
        if isinstance(value, bool):  # YAML (and key=value) read on/off/yes/no as booleans
            return "on" if value else "off"
        if isinstance(value, dict | list):
            raise ValueError(f"{name}={value!r} must be a string")
        return str(value)
    raise ValueError(f"{name}: unsupported type {annotation}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"in {prefix.rstrip('.')}" if prefix else "at the top level"
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} {where}; "
            f"valid: {', '.join(prefix + k for k in fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{name} must be a mapping of its fields, got {value!r}")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    try:
        return cls(**kwargs)
    except ValueError as err:  # a section whose own checks do not name it (data: SplitSizes)
        if prefix and not str(err).startswith(prefix):
            raise ValueError(f"{prefix.rstrip('.')}: {err}") from None
        raise


def deep_merge(base: dict, extra: dict) -> dict:
    """base with extra's values, nested mappings merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nest(flat: dict[str, Any]) -> dict:
    """{"controller.s0": 8, "method": "replay"} -> {"controller": {"s0": 8}, "method": "replay"}."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def parse_overrides(items: list[str]) -> dict:
    """["train.lr=1e-3", "method=replay"] -> nested dict (values parsed as YAML scalars)."""
    flat = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=1e-3)")
        key, raw = item.split("=", 1)
        try:
            flat[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not a YAML scalar ({err.problem})") from None
    return nest(flat)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(preset_names())}")
    return read_yaml(path)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file (empty file: {}); ValueError naming the file, line and column when it
    does not parse or is not a mapping, FileNotFoundError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML: {where}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def make_config(preset: str | None = None, overrides: dict | None = None, **top: Any) -> RunConfig:
    """Preset YAML, then top-level values (method, benchmark, ...), the method's defaults, the preset's own
    section for that method (`methods: {single_task: {...}}`), then nested overrides."""
    values = load_preset(preset) if preset else {}
    per_method = values.pop("methods", None) or {}
    if not isinstance(per_method, dict) or not all(isinstance(v, dict) for v in per_method.values()):
        raise ValueError(f"preset {preset!r}: methods must map method names to config sections")
    values = deep_merge(values, {k: v for k, v in top.items() if v is not None})
    method = deep_merge(values, overrides or {}).get("method", RunConfig.method)
    values = deep_merge(values, method_defaults(method))
    values = deep_merge(values, per_method.get(method, {}))
    values = deep_merge(values, overrides or {})
    return _build(RunConfig, values, "")


def method_defaults(name: Any) -> dict:
    """The config values a method sets (its fusion rule ...), applied over the preset, under the overrides."""
    method = METHODS.get(name if isinstance(name, str) else RunConfig.method)
    return method.defaults if method is not None else {}


def config_from_dict(values: dict) -> RunConfig:
    """Rebuild a RunConfig from RunConfig.to_dict() (a manifest)."""
    return _build(RunConfig, values, "")
