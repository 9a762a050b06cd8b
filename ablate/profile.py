"""Cost of a model: parameters and multiply-accumulates (fvcore, with the handles it lacks)."""
import logging
import warnings

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def sdpa_macs(inputs, outputs) -> int:
    """QK^T and AV of fused attention: 2 * B * heads * N_q * N_k * head_dim (fvcore counts it as 0)."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n_q, d = q
    n_k = k[-2]
    v_dim = get_shape(inputs[2])[-1]
    b = 1
    for s in batch:
        b *= s
    return b * n_q * n_k * d + b * n_q * n_k * v_dim


EXTRA_HANDLES = {"aten::scaled_dot_product_attention": sdpa_macs}


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
        total = mac_analysis(model, torch.zeros(1, *shape, device=device)).total()
    model.train(was_training)
    return int(total)


def preset_table() -> list[dict]:
    """One row per preset as built without overrides: shape, image size, params and MACs."""
    import blocks
    rows = []
    for name, cfg in blocks.PRESETS.items():
        model = blocks.MetaFormer(cfg)
        rows.append({"preset": name, "shape": "isotropic" if len(cfg.depths) == 1 else "hierarchical",
                     "img_size": cfg.img_size, "spatial": cfg.spatial if isinstance(cfg.spatial, str) else
                     ",".join(cfg.spatial), "params": sum(count_params(model)),
                     "macs": count_macs(model, (cfg.in_chans, cfg.img_size, cfg.img_size))})
    return rows


def add_arguments(p) -> None:
    from .cli import add_model_args
    add_model_args(p, many=True)
    p.add_argument("--json", action="store_true")


def main(args) -> int:
    raise NotImplementedError("profile: in progress")
