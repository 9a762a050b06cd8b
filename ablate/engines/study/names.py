"""Study names become folder names (`<out>/<study>/...`, `reports/<study>`), so a name from an experiment file or
a storage must be one plain folder name: nothing that climbs out of, or goes around, the folder it is put in."""
import re

from ...foundations.errors import UsageError

MAX_LENGTH = 100  # file systems allow 255 bytes per name; a study name is also a Slurm job name and a report title
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_LENGTH - 1}}}")
RULE = (f"1 to {MAX_LENGTH} letters, digits, '-', '_' or '.', starting with a letter or digit "
        f"(e.g. structure-x-mixer)")


def is_folder_name(name: str) -> bool:
    """ASCII letters and digits first (no hidden name, no `.`/`..`, no option-like `-x`), then also `-_.`: no path
    separator, NUL, space or anything a shell or another file system reads differently."""
    return NAME.fullmatch(name) is not None


def check_name(key: str, name: str, where: str = "") -> str:
    """`name` if it can be a folder name, else a UsageError naming `key` and the rule."""
    if not is_folder_name(name):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise UsageError(f"{key} = {shown!r}{where} is not a study name: it names the study's folders, so it must "
                         f"be {RULE}")
    return name
