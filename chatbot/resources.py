"""Files that ship with the package: the vocabulary, the model configs and the sample dialogues.

The checkout's top-level `vocab/`, `configs/` and `data/` are the only copy people edit. A wheel
carries the same files as `chatbot/bundled/vocab`, `.../configs` and `.../data`: pyproject.toml maps
those folders into the package at build time, so there is no second copy in the repository that
could drift. Every default that names one of these files comes through `bundled()`, which finds
them in either layout, so the commands work from any directory after any install.
No torch here: the CLI reads these paths for `--help`.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel first; then the checkout this package sits in (editable install, PYTHONPATH).
_ROOTS = (_PACKAGE / "bundled", _PACKAGE.parent)


def bundled(relative: str) -> Path:
    """The shipped file `relative` (e.g. "vocab/vocab.txt"), in the wheel or the checkout.

    Returns the checkout's path when neither layout has it, so that the caller's own
    "not found" error names a path a person can look for.
    """
    for root in _ROOTS:
        if (root / relative).exists():
            return root / relative
    return _ROOTS[-1] / relative


VOCAB = bundled("vocab/vocab.txt")
SAMPLE_TRAIN = bundled("data/train.txt")
SAMPLE_VALID = bundled("data/valid.txt")


def config_names() -> list[str]:
    """Names of the bundled model configs (`tiny`, `small`, `base`), for `--config NAME`."""
    return sorted(p.stem for p in bundled("configs").glob("*.json"))


def resolve_config(name_or_path: str | Path) -> Path:
    """The GPT2Config JSON that `--config` names: a bundled config's name, or a path.

    Raises:
        FileNotFoundError: naming the value and the bundled configs, if it is neither.
    """
    names = config_names()
    if str(name_or_path) in names:
        return bundled(f"configs/{name_or_path}.json")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}. Pass a bundled config by name "
                                f"({', '.join(names)}) or the path of a GPT2Config JSON file")
    return path
