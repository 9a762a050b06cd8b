"""Where the spelled-out CPU bf16 attention (blocks/spatial/attention.py) scales its scores: in bf16 before the
softmax's cast to fp32 (as it does), or in fp32 after it. Prints each variant's mean and largest error against fp32
SDPA on the same bf16 inputs, and its forward + backward time on one thread (min of 15 rounds, the variants
interleaved).

    python benchmarks/cpu_bf16_attention.py
"""
import time

import torch
import torch.nn.functional as F

import blocks

HEADS, TOKENS, HEAD_DIM = 2, 49, 32  # `tiny`: width 64, 7x7 tokens, heads of 32


def scaled_in_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (q @ k.transpose(-2, -1)).float().mul_(HEAD_DIM ** -0.5).softmax(-1).to(q.dtype) @ v


def fwd_bwd_ms(attend, inputs: list[torch.Tensor]) -> float:
    q, k, v = [t.clone().requires_grad_() for t in inputs]
    start = time.perf_counter()
    for _ in range(10):
        attend(q, k, v).float().sum().backward()
    return (time.perf_counter() - start) / 10 * 1e3


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    inputs = [(2 * torch.randn(256, HEADS, TOKENS, HEAD_DIM)).bfloat16() for _ in range(3)]
    exact = F.scaled_dot_product_attention(*(t.float() for t in inputs))
    variants = {"scaled in bf16 (as built)": blocks.SPATIAL["attention"](HEADS * HEAD_DIM, (7, 7)).attend,
                "scaled in fp32": scaled_in_fp32}
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(15):
        for name, attend in variants.items():
            best[name] = min(best[name], fwd_bwd_ms(attend, inputs))
    for name, attend in variants.items():
        with torch.no_grad():
            error = (attend(*inputs).float() - exact).abs()
        print(f"{name}: abs error mean {error.mean().item():.4f}, max {error.max().item():.4f}; "
              f"forward + backward {best[name]:.2f} ms")


if __name__ == "__main__":
    main()
