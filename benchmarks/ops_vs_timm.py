"""Where a pair of `vs_timm.py` spends its time: torch.profiler's per-op table of ablate's model and of timm's, for
20 warm training or inference steps (CPU, fp32, 2 threads). Op time adds up without the wall clock's noise, so it
says why a ratio is what it is.

    python benchmarks/ops_vs_timm.py --model vit --mode train
"""
import argparse

import torch

from ablate.engines.measure import infer_step, train_step
from ablate.foundations.timing import warm_times
from vs_timm import PAIRS, build_pair

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(PAIRS), default="vit")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=14)
    args = parser.parse_args()
    torch.set_num_threads(2)
    x, y = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    for who, model in zip(("ablate", "timm"), build_pair(args.model)):
        step = train_step(model, x, y, "fp32") if args.mode == "train" else infer_step(model, x, "fp32")
        warm_times(step, CPU, repeats=1)
        with torch.profiler.profile() as prof:
            for _ in range(20):
                step()
        print(f"{who}: {args.model}, {args.mode}, batch {args.batch_size}, 20 warm steps")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
