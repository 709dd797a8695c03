"""The errors a user fixes by changing the command, the config or the files (a refused checkpoint, untrained weights,
a checkpoint of another configuration): train.py and evaluate.py print their message alone, without a traceback.
Each also derives from the built-in type that says what went wrong, so callers may catch either."""


class UserFixableError(Exception):
    """Its message says what to change; a traceback would add nothing."""


class UntrainedWeightsError(UserFixableError, RuntimeError):
    """A detector that needs training was asked to score weights that were never trained."""


class PreprocessingMismatchError(UserFixableError, ValueError):
    """Weights trained on other features (image size, normalisation, backbone) than the config gives."""


class CheckpointMismatchError(UserFixableError, RuntimeError):
    """--ckpt_path holds the weights of a model configured differently from the one the config builds."""


class UnsafeCheckpointError(UserFixableError, ValueError):
    """A checkpoint needs Python objects beyond tensors and containers to load: it is refused, never run."""


class StateDictMismatchError(UserFixableError, ValueError):
    """A weight file's tensors do not fit the model built from the config (missing, extra or wrongly shaped keys)."""


class UnlabelledSetError(UserFixableError, ValueError):
    """A mode that needs each image's class label (DiffGuard's oracle) met an in-distribution image without one."""
