"""Errors raised by sharp-vlm. Each message says what went wrong and what to do."""


class SharpError(ValueError):
    """Base class for sharp-vlm input and configuration errors."""


class ConfigError(SharpError):
    """A method configuration is invalid (e.g. retain outside (0, 1])."""


class UnsupportedModelError(SharpError):
    """The model class has no adapter."""


class InputError(SharpError):
    """The model inputs cannot be pruned as given (no visual tokens, missing ids, ...)."""


class NoVisualTokensError(InputError):
    """The input has no visual tokens: an error for a prompt to prune, plain text for a call that continues a cache."""


class MethodError(SharpError, RuntimeError):
    """A method's answer is not a valid selection for its stage (count, order, range, merge): a bug in the method."""
