"""`python -m ablate list [--json]`: mixers, datasets and presets with their params and MACs."""
import argparse
import json

import blocks

from ..engines import data
from ..engines.cost import preset_table

HELP = "mixers, presets and datasets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    doc = {"spatial": list(blocks.SPATIAL), "channel": list(blocks.CHANNEL), "presets": preset_table(),
           "datasets": data.names()}
    if args.json:
        print(json.dumps(doc))
        return 0
    print("spatial mixers:", ", ".join(doc["spatial"]))
    print("channel mixers:", ", ".join(doc["channel"]))
    print("datasets:      ", ", ".join(doc["datasets"]))
    print("presets:")
    for row in doc["presets"]:
        print(f"  {row['preset']:<18} {row['shape']:<13} {row['img_size']:>4} px  {row['params'] / 1e6:8.2f} M params"
              f"  {row['macs'] / 1e9:8.3f} G MACs  spatial={row['spatial']}")
    return 0
