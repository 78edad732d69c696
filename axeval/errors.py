"""Which exceptions are a user's problem (bad input, a failed outside service, the machine), kept free of heavy
imports so the CLI can name them before it loads torch. Everything else is a defect of ours (`axdata.errors`)."""

from axdata.errors import AxbenchError

# Ours, phrased for a user; and the OS's: a missing file, a refused connection, a Hub HTTP error (an OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (AxbenchError, OSError)
# The machine, not the code: out of (GPU) memory. Named, so this module need not import torch.
_RESOURCE_ERRORS = {"OutOfMemoryError": "lower the batch size (inference.latent_batch_size / steering_batch_size, "
                                        "a method's per_device_train_batch_size) or use a larger device"}


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's to fix (shown as one line) rather than a bug in axbench (shown with its
    traceback)."""
    return isinstance(error, USER_ERRORS) or type(error).__name__ in _RESOURCE_ERRORS


def user_message(error: BaseException) -> str:
    """The one line a user error is shown as (a resource error gets its fix appended)."""
    fix = _RESOURCE_ERRORS.get(type(error).__name__)
    return f"{error} ({fix})" if fix else str(error)
