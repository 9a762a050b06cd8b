"""Parsers of command-line values shared by the commands and the launchers' own flags."""
import argparse

from blocks.checks import shown


def whole_number(least: int):
    """An argparse type: a whole number >= least."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {shown(text)}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be positive, got {shown(value)}" if least == 1 else
                                             f"must be >= {least}, got {shown(value)}")
        return value
    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)
