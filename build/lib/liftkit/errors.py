"""User-facing errors.

Every error a user can cause (a bad file, a bad flag, a missing weight file) is a :class:`LiftKitError` whose message
is one line that names the culprit and says what to do. Scripts print ``error: <message>`` and exit non-zero instead
of showing a traceback; anything else escaping is a bug.
"""


class LiftKitError(Exception):
    """Base class: a one-line, actionable message for the user."""


class ImageLoadError(LiftKitError):
    """An input image cannot be read or used (empty, truncated, not an image, too small, too large)."""


class WeightsNotFoundError(LiftKitError):
    """No weight file was found in any of the places looked at, and downloading was not allowed or failed."""


class CheckpointError(LiftKitError):
    """A checkpoint file is malformed, partial or does not fit the model it is loaded into."""


class IncompatibleLiftError(LiftKitError):
    """A LiFT module is applied to a backbone, layer, facet or channel count it was not trained for."""


class ConfigError(LiftKitError):
    """An unknown name or an unusable option value (model type, facet, layer, size...)."""


class DatasetError(LiftKitError):
    """A dataset folder, list file or annotation is missing, empty or inconsistent (names the sequence and frame)."""


def failure_report(header: str, items) -> str:
    """The end-of-run summary every batch script prints to stderr: ``error: <header>:`` then one ``  - item`` line
    per failure (each item already a one-line message)."""
    return "\n".join([f"error: {header}:"] + [f"  - {item}" for item in items])
