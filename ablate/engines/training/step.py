"""One optimizer step, as `run` takes it and as `profile` times it: the same code, so a measured throughput is the
throughput of training."""
import torch
import torch.nn.functional as F

from ...foundations.runtime import autocast


def memory_format(device: torch.device) -> torch.memory_format:
    """NHWC on GPUs: cuDNN's convs (stem, downsampling) prefer it, and the blocks' (B, H, W, C) views are free."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


class Step:
    """forward -> cross-entropy (under `precision`'s autocast), then zero_grad -> backward -> optimizer step.

    `loss` and `update` are apart so that the caller can look at the loss (divergence) before updating.
    """

    def __init__(self, forward, optimizer: torch.optim.Optimizer, device: torch.device, precision: str,
                 label_smoothing: float = 0.0):
        self.forward, self.optimizer, self.device, self.precision = forward, optimizer, device, precision
        self.label_smoothing, self.memory_format = label_smoothing, memory_format(device)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            logits = self.forward(x.contiguous(memory_format=self.memory_format))
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW from timm's factory: no weight decay on norms, biases and model.no_weight_decay() (embeddings)."""
    from timm.optim import create_optimizer_v2
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay)
