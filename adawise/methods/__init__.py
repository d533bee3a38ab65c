"""Methods: one module per family, all :class:`~adawise.methods.base.Method` subclasses, by name."""

from adawise.methods.base import Method
from adawise.methods.registry import make_method, register, registered_methods

__all__ = ["Method", "make_method", "register", "registered_methods"]
