"""In progress."""


def add_arguments(p) -> None:
    pass


def main(args) -> int:
    raise NotImplementedError
