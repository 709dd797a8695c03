"""What the command line says to a person: a short --help that lists the detectors and configs, argument errors
rewritten from jsonargparse's reports (every union subtype, the whole given value) into one line per problem, and
errors that are the user's to fix printed without a traceback."""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ood_lightning.console import quiet_console

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# The models a config can name, listed by the short --help; importing them also lets --model.help take a short name.
DETECTORS = (
    "ood_lightning.detectors.lfdn.module.LFDNDetector",
    "ood_lightning.detectors.baselines.ClassifierBaselines",
    "ood_lightning.detectors.posthoc.PostHocDetector",
    "ood_lightning.detectors.diffguard.gdm.DiffGuardGDM",
    "ood_lightning.detectors.diffguard.ldm.DiffGuardLDM",
    "ood_lightning.detectors.fusion.CascadeFusion",
)
TRAINING_MODELS = (
    "ood_lightning.training.diffusion.ClassConditionalDiffusion",
    "ood_lightning.training.classifier.ClassifierTraining",
)

HELP_FLAGS = ("-h", "--help")
FULL_HELP_FLAG = "--help-all"


def load_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _first_line(cls: type) -> str:
    return (inspect.getdoc(cls) or "").split("\n")[0]


def short_help(prog: str, description: str) -> str:
    """The usage, the entry point's examples, the models and configs there are, and where the full help is."""
    classes = {"detectors": [load_class(c) for c in DETECTORS], "training": [load_class(c) for c in TRAINING_MODELS]}
    lines = [f"usage: {prog} [--config FILE] [--SECTION.OPTION VALUE ...] [--ckpt_path FILE | last]", "",
             description.strip(), "", "Detectors (--model CLASS, or class_path in a config):"]
    width = 2 + max(len(cls.__name__) for group in classes.values() for cls in group)
    lines += [f"  {cls.__name__:<{width}}{_first_line(cls)}" for cls in classes["detectors"]]
    lines += ["", "Models train.py trains for DiffGuard (configs/diffusion/, configs/classifier/):"]
    lines += [f"  {cls.__name__:<{width}}{_first_line(cls)}" for cls in classes["training"]]
    if CONFIG_DIR.is_dir():
        lines += ["", "Configs (--config; each file's opening comment says what it runs; README: 'Configs'):"]
        for folder in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir()):
            names = ", ".join(p.stem for p in sorted(folder.glob("*.yaml")))
            lines.append(f"  configs/{folder.name}/: {names}")
    lines += ["", "More help:",
              f"  {prog} {FULL_HELP_FLAG:<28}every option (trainer, data, model), typed and documented",
              f"  {prog} --model.help CLASS           one model's options, e.g. --model.help LFDNDetector",
              f"  {prog} --data.help OODDataModule    the data options (benchmark presets, sizes, subsets)",
              f"  {prog} --config FILE --print_config the resolved config of a run, every default filled in"]
    return "\n".join(lines)


def readable_argument_errors(message: str, offending: list[str], known: list[str]) -> list[str]:
    """One line per problem of an ArgumentError message; `offending` are the command-line options it is about,
    `known` the parser's option strings (for suggestions)."""
    if _is_unknown_option(message):
        nested = re.search(r"Option '(\w+)' is not accepted", message)
        if offending:
            return [f"{arg}: {_unknown_option_text(arg, message, known)}" for arg in offending]
        if nested:  # from a config file
            return [f"config: {_unknown_option_text(nested.group(1), message, known)}"]
    if re.search(r"the following arguments are required: .*\bmodel\b", message):
        return ["no model: give a config (--config FILE; --help lists them) or --model CLASS. Without any argument, "
                "train.py runs the offline demo."]
    key = re.match(r'Parser key "([^"]+)":', message)
    key = key.group(1) if key else None
    if "Does not validate against any of the Union subtypes" in message:
        errors = _union_errors(message)
        text = "; ".join([e for e in errors if "Expected a <class 'NoneType'>" not in e] or errors)
        given = re.search(r"^\s*Given value: (.*)$", message, re.MULTILINE)
        if given and len(given.group(1)) <= 80 and "NestedArg" not in given.group(1):
            text += f" (given: {given.group(1)})"
    else:
        text = " ".join(line.strip() for line in message.splitlines()[1 if key else 0:])
    if "Expected a <class 'dict'>" in text and key:
        text += (f". Give a mapping, e.g. --{key} '{{tin: /data/tin, mnist: /data/mnist}}' (YAML: a space after "
                 f"each colon), or one entry at a time: --{key}.tin /data/tin")
    return [f"--{key}: {text}" if key else text]


def _union_errors(message: str) -> list[str]:
    """The '- ...' entries under 'Errors:' of a union report, each joined into one line."""
    block = message.split("Errors:", 1)[-1].split("Given value type:", 1)[0]
    entries = re.split(r"^\s*- ", block, flags=re.MULTILINE)
    return [" ".join(line.strip() for line in entry.splitlines() if line.strip()) for entry in entries if entry.strip()]


def _is_unknown_option(message: str) -> bool:
    return "unrecognized arguments:" in message or re.search(r"Option '\w+' is not accepted", message) is not None


def offending_arguments(message: str, args: list[str]) -> list[str]:
    """The command-line options (as written in `args`, without values) a parse error is about; [] when the error
    comes from a config file or names nothing on the command line."""
    options = [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]
    match = re.search(r"unrecognized arguments: (.*)", message)
    if match:
        return [token.split("=", 1)[0] for token in match.group(1).split() if token.split("=", 1)[0] in options]
    match = re.search(r"Option '(\w+)' is not accepted", message)
    if match and "NestedArg" in message:
        return [option for option in options if option.endswith(f".{match.group(1)}")][:1]
    key = re.match(r'Parser key "([^"]+)":', message)
    return [f"--{key.group(1)}"] if key and f"--{key.group(1)}" in options else []


def _unknown_option_text(arg: str, message: str, known: list[str]) -> str:
    """'X has no option Y (did you mean Z?)' for an option of a class_path, 'no such option' otherwise."""
    owner = re.search(r"Problem with given class_path '([\w.]+)'", message)
    if owner:
        options = list(inspect.signature(load_class(owner.group(1))).parameters)
        option = arg.rsplit(".", 1)[-1]
        guess = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else f"; its options: {', '.join(options)}"
        return f"{owner.group(1).rpartition('.')[2]} has no option '{option}'{hint}"
    guess = difflib.get_close_matches(arg, known, n=1)
    return "no such option" + (f" (did you mean {guess[0]}?)" if guess else "")


def run_entry_point(main: Callable[[], None]) -> None:
    """Run an entry point's main with a quiet console (ood_lightning.console). An error the user fixes (a missing
    file, ood_lightning.errors) is printed without a traceback, exit status 2; any other error keeps its traceback."""
    quiet_console()
    try:
        main()
    except Exception as error:
        from ood_lightning.errors import UserFixableError

        if not isinstance(error, (FileNotFoundError, UserFixableError)):
            raise
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
