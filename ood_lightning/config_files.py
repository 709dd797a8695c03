"""Every weight file or model folder a config names must exist before any work starts, and all missing ones are
reported together: a class lists the init arguments that hold local paths in `file_options` (argument -> the words
it accepts that are not paths, e.g. a backbone's "package"), and `missing_files` walks a parsed config through every
class_path, nested ones (a backbone, a fusion's detectors) included."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from ood_lightning.cli_messages import load_class

WHERE_TO_GET_THEM = "checkpoints/README.md says what each file is and where to get it; nothing is downloaded."


def missing_files(config: Mapping, prefix: str = "") -> list[str]:
    """`--option: path` for every configured path that does not exist, in config order."""
    return [f"--{option}: {path} does not exist" for option, path in configured_paths(config, prefix)
            if not Path(path).expanduser().exists()]


def configured_paths(node, prefix: str) -> Iterator[tuple[str, str]]:
    """(dotted option, path) for each path-holding init argument of each class in a config (dicts and lists)."""
    if isinstance(node, Mapping):
        if isinstance(node.get("class_path"), str) and isinstance(node.get("init_args"), Mapping):
            file_options = getattr(_load(node["class_path"]), "file_options", {})
            for option, words in file_options.items():
                value = node["init_args"].get(option)
                for path in value if isinstance(value, list) else [value]:
                    if isinstance(path, str) and path not in words and "://" not in path:
                        yield f"{prefix}init_args.{option}", path
        for key, value in node.items():
            yield from configured_paths(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from configured_paths(value, f"{prefix}{i}.")


def _load(class_path: str) -> type | None:
    try:
        return load_class(class_path)
    except (ImportError, AttributeError, ValueError):
        return None  # not a class of ours to check; instantiation reports a bad class_path
