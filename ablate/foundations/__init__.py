"""The bottom layer: run config, runtime and device helpers, torchrun, atomic files, errors, storage URLs.
Imports nothing from ablate's upper layers (engines, commands)."""
