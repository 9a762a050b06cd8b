"""Cost of a model, counted honestly: parameters, and MACs of one forward pass (fvcore, with the handles it
lacks: fused attention's QK^T and AV). Throughput and memory are measured in measure.py."""
import dataclasses
import functools
import hashlib
import json
import logging
import math
import warnings
from pathlib import Path

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import blocks

from ..foundations.io import write_json
from ..foundations.runtime import cache_dir

# -- params and MACs ------------------------------------------------------------------------------------------------

def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def sdpa_macs(inputs, outputs) -> int:
    """QK^T and AV of fused attention: B * heads * N_q * N_k * (d_qk + d_v) (fvcore counts it as 0)."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n_q, d = q
    n_k = k[-2]
    v_dim = get_shape(inputs[2])[-1]
    b = math.prod(batch)
    return b * n_q * n_k * d + b * n_q * n_k * v_dim


EXTRA_HANDLES = {"aten::scaled_dot_product_attention": sdpa_macs}

# Ops of the backbone, its norms, activations and channel mixers that fvcore has no handle for, left at 0 on
# purpose: elementwise ops and reductions, no multiply-accumulate work, and papers' "FLOPs" leave them out too.
# Each spatial mixer adds its own (its `uncounted_ops` trait). Anything else fvcore skips is reported (count_macs).
BACKBONE_UNCOUNTED = frozenset({
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div", "aten::neg",
    "aten::gelu", "aten::silu", "aten::relu", "aten::relu_", "aten::square", "aten::pow", "aten::softmax",
    "aten::mean", "aten::dropout", "aten::expand", "aten::fill_", "aten::ones_like", "aten::zeros_like",
    "aten::abs", "aten::sigmoid", "aten::tanh",
})
UNCOUNTED = BACKBONE_UNCOUNTED.union(*(mixer.uncounted_ops for mixer in blocks.SPATIAL.values()))

# torch's FlopCounterMode has no formula for the CPU flash-attention kernel and counts it as 0.
FCM_MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


def mac_analysis(model: nn.Module, image: torch.Tensor) -> FlopCountAnalysis:
    """fvcore's analysis of one forward pass of `image` (1, C, H, W), with fused attention counted."""
    analysis = FlopCountAnalysis(model.eval(), image)
    for op, handle in EXTRA_HANDLES.items():
        analysis.set_op_handle(op, handle)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def count_macs(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass of one image of `shape` (C, H, W), fvcore's convention."""
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    was_training = model.training
    device = next(model.parameters()).device
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore traces with torch.jit, which warns it is deprecated
        analysis = mac_analysis(model, torch.zeros(1, *shape, device=device))
        total = analysis.total()
    model.train(was_training)
    dropped = sorted(set(analysis.unsupported_ops()) - UNCOUNTED)
    if dropped:
        logging.getLogger(__name__).warning("MACs: fvcore has no handle for %s; those ops count as 0",
                                            ", ".join(dropped))
    return int(total)


def flop_counter_macs(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, int]:
    """torch FlopCounterMode's count of one forward pass, in MACs per op (matmul and conv work only).

    Runs on the model's device; on "meta" it costs no compute, which budget matching relies on.
    """
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False, custom_mapping=FCM_MAPPING)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, *shape, device=device))
    return {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}


def cost_cache() -> Path:
    return cache_dir() / "preset-costs.json"


@functools.cache
def code_fingerprint() -> str:
    """Hash of the model code, this file and the counting libraries: any change recounts every cached preset."""
    import fvcore
    digest = hashlib.sha256(f"{torch.__version__} {fvcore.__version__}".encode())
    for path in sorted(Path(blocks.__file__).parent.rglob("*.py")) + [Path(__file__)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def preset_costs(cfg: blocks.MetaFormerConfig) -> dict:
    """Params and MACs of a config, counted once and cached in cost_cache(): tracing the 224 px published
    presets takes minutes on a CPU. The key is the full config plus code_fingerprint(), never a name."""
    doc = json.dumps([code_fingerprint(), dataclasses.asdict(cfg)], sort_keys=True, default=str)
    key = hashlib.sha256(doc.encode()).hexdigest()
    path = cost_cache()
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key not in cache:
        with torch.device("meta"):
            model = blocks.MetaFormer(cfg)
        model = model.to_empty(device="cpu")  # counting needs shapes, not values: skip the weight init
        cache[key] = {"params": sum(count_params(model)),
                      "macs": count_macs(model, (cfg.in_chans, cfg.img_size, cfg.img_size))}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
    return cache[key]


def preset_table() -> list[dict]:
    """One row per preset as built without overrides: shape, image size, params and MACs."""
    return [{"preset": name, "shape": "isotropic" if len(cfg.depths) == 1 else "hierarchical",
             "img_size": cfg.img_size,
             "spatial": cfg.spatial if isinstance(cfg.spatial, str) else ",".join(cfg.spatial),
             **preset_costs(cfg)} for name, cfg in blocks.PRESETS.items()]


def tokens(cfg: blocks.MetaFormerConfig) -> int:
    """Tokens the first stage mixes: the grid after the stem, plus a class token."""
    side = cfg.img_size // cfg.patch_size
    return side * side + (cfg.head == "token")


