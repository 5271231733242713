"""Errors the CLI reports as one clear line with a non-zero exit (no traceback)."""


class AdaplerError(Exception):
    """A user-facing error: bad input, missing file, unsupported option."""


class ParityError(AdaplerError):
    """A candidate backend disagrees with the PyTorch reference beyond the tolerances."""


class BackendUnavailable(AdaplerError):
    """A backend cannot run on this machine (no GPU, no TensorRT, no engines of that kind): the message
    says what is missing. `verify` reports such backends as not run, never as passed."""
