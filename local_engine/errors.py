"""Errors local_engine raises for bad input (a folder that is not a model it can run)."""


class ModelError(Exception):
    """A model folder is missing, corrupt or unsupported. One line naming the file/tensor.

    ``python -m local_engine`` maps it to exit status 2; app code maps it to its UsageError.
    """


class InputError(ValueError):
    """A request the loaded engine cannot serve (prompt longer than max_seq_len, batch too big)."""
