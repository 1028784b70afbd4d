"""LoRA / DoRA adapters on a VideoModel, through PEFT: add them, take their weights, merge them.

    add_adapters(model, spec)        PEFT layers around the targeted nn.Linear modules (in place);
                                     only their parameters require grad
    adapter_state(model)             the adapter tensors alone (what adapter.safetensors holds)
    merged_state(model)              plain VideoModel weights with the adapters folded in
    apply_adapter(model, spec, st)   a base model + saved adapter tensors -> adapted model

Keys stay VideoModel keys: `denoiser.transformer_blocks.0.attn.q.lora_A.default.weight` beside
`denoiser.transformer_blocks.0.attn.q.base_layer.weight`. PEFT is imported only here and only when
an adapter is used: it brings transformers with it (~10 s to import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ADAPTER_MODES = ("lora", "dora")
DEFAULT_TARGETS = ("attn.q", "attn.kv", "attn.out", "cross.q", "cross.kv", "cross.out", "mlp.fc1", "mlp.fc2")
_ADAPTER_KEY = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.")
_BASE_KEY = ".base_layer."


@dataclass(frozen=True)
class AdapterSpec:
    """What adapter a model carries: its kind, size and where it sits."""

    mode: str = "lora"  # lora | dora
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS  # module names inside each transformer block
    text_encoder: bool = False  # also adapt the text encoder's blocks

    def __post_init__(self) -> None:
        if self.mode not in ADAPTER_MODES:
            raise ValueError(f"adapter mode must be one of {ADAPTER_MODES}, got {self.mode!r}")

    def pattern(self) -> str:
        """The full-match regex PEFT takes as target_modules: the denoiser's transformer blocks (and
        the text encoder's blocks) at the listed module names."""
        blocks = [r"denoiser\.transformer_blocks"] + ([r"text\.blocks"] if self.text_encoder else [])
        names = "|".join(re.escape(t) for t in self.targets)
        return rf"(?:{'|'.join(blocks)})\.\d+\.(?:{names})"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": list(self.targets), "text_encoder": self.text_encoder}

    @classmethod
    def from_config(cls, train: Any) -> AdapterSpec:
        """From TrainConfig: train.mode (lora | dora) and train.adapter."""
        a = train.adapter
        return cls(mode=train.mode, rank=a.rank, alpha=a.alpha, dropout=a.dropout,
                   targets=tuple(a.target_modules), text_encoder=a.text_encoder)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSpec:
        return cls(mode=data["mode"], rank=int(data["rank"]), alpha=float(data["alpha"]),
                   dropout=float(data.get("dropout", 0.0)), targets=tuple(data["targets"]),
                   text_encoder=bool(data.get("text_encoder", False)))


def is_adapter_key(key: str) -> bool:
    return _ADAPTER_KEY.search(key) is not None


def is_adapted_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict was taken from a model carrying adapters (base_layer + lora keys)."""
    return any(_BASE_KEY in k or is_adapter_key(k) for k in state)


def has_adapters(model: nn.Module) -> bool:
    return any(is_adapter_key(name + ".") for name, _ in model.named_modules())


def add_adapters(model: nn.Module, spec: AdapterSpec, seed: int | None = None) -> nn.Module:
    """Wrap the targeted Linear layers of `model` in PEFT LoRA (or DoRA) layers, in place. lora_B
    starts at zero, so the adapted model computes what the base did; `seed` fixes lora_A's init."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=spec.pattern(), use_dora=spec.mode == "dora", bias="none")
    if seed is not None:
        torch.manual_seed(seed)
    model = inject_adapter_in_model(config, model)
    if not has_adapters(model):
        raise ValueError(f"adapter targets {list(spec.targets)} match no Linear module of the model")
    mark_adapters_trainable(model)
    return model


def mark_adapters_trainable(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_key(name))


def adapter_state(model_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {k: v.detach().float().cpu().clone() for k, v in state.items() if is_adapter_key(k)}


def apply_adapter(model: nn.Module, spec: AdapterSpec, adapter: dict[str, torch.Tensor]) -> nn.Module:
    """`model` (base weights loaded) with the saved adapter tensors on it; names a missing or an
    unknown adapter tensor."""
    model = add_adapters(model, spec)
    expected = {k for k in model.state_dict() if is_adapter_key(k)}
    missing, unknown = sorted(expected - set(adapter)), sorted(set(adapter) - expected)
    if missing or unknown:
        raise ValueError(f"adapter does not fit the model ({spec.mode}, rank {spec.rank}): "
                         f"missing {missing[:3]}, unknown {unknown[:3]}")
    model.load_state_dict(adapter, strict=False)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base Linear and put the plain Linear back (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapted model's weights as plain VideoModel weights (adapters folded in); the model is
    left as it was."""
    import copy

    return {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
            for k, v in merge_adapters(copy.deepcopy(model)).state_dict().items()}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters, and the bytes AdamW keeps for the trainable ones (fp32
    master copy + two moments = 12 bytes each; +2 more for the 16-bit weights under bf16/fp16)."""
    def numel(p: torch.Tensor) -> int:
        return getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 leaves a partitioned param empty

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    return {"trainable": trainable, "total": total, "optimizer_state_bytes": 12 * trainable,
            "gradient_bytes": 4 * trainable}
