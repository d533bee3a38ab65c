"""Methods by name: ``make_method("wiseft", zeroshot=zs, finetuned=ft, alpha=0.3)``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from adawise.errors import UnknownNameError
from adawise.methods.base import Method

__all__ = ["register", "make_method", "registered_methods", "method_class", "default_methods"]

Factory = Callable[..., Method]
_REGISTRY: dict[str, Factory] = {}
_DEFAULT_RUN: dict[str, None] = {}  # an ordered set, in registration order

#: modules whose import registers the built-in methods, in the order of the default run (other modules of
#: the package are imported after them)
_BUILTIN_MODULES = (
    "adawise.methods.static",
    "adawise.methods.adawise",
    "adawise.methods.windowed",
    "adawise.methods.ablations",
    "adawise.methods.vrf",
    "adawise.methods.tent",
    "adawise.methods.tda",
)


def register(name: str, *, default_run: bool = False) -> Callable[[Factory], Factory]:
    """Class/function decorator: make ``name`` available to :func:`make_method`. ``default_run``: among the
    methods ``adawise run`` runs when ``--methods`` is not given (:func:`default_methods`). A function
    factory names the class it builds in a ``method_class`` attribute (for :func:`method_class`)."""

    def deco(factory: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"method name {name!r} is registered twice")
        _REGISTRY[name] = factory
        if default_run:
            _DEFAULT_RUN[name] = None
        if isinstance(factory, type) and issubclass(factory, Method) and factory.name == "method":
            factory.name = name
        return factory

    return deco


def _load_builtins() -> None:
    """Import the modules that register methods: the built-ins in their order (the default run's order),
    then every other module of :mod:`adawise.methods` (a new method's module needs no entry anywhere)."""
    import pkgutil

    import adawise.methods as package

    others = sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__))
    for module in dict.fromkeys((*_BUILTIN_MODULES, *others)):
        importlib.import_module(module)


def registered_methods() -> list[str]:
    """Names accepted by :func:`make_method`, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def make_method(name: str, zeroshot: nn.Module, finetuned: nn.Module, **options: Any) -> Method:
    """Build the method called ``name`` around the two endpoint models.

    Args:
        name: a name from :func:`registered_methods` (``zeroshot``, ``finetuned``, ``wiseft``, ...).
        zeroshot: the α = 0 endpoint (any ``nn.Module`` mapping a batch to logits).
        finetuned: the α = 1 endpoint, same architecture.
        options: method options (e.g. ``alpha`` for ``wiseft``, ``w`` for ``ose``).
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}")
    method = _REGISTRY[name](zeroshot=zeroshot, finetuned=finetuned, **options)
    method.name = name
    return method


def method_class(name: str) -> type[Method]:
    """The :class:`Method` subclass ``name`` builds: what applications read the method's metadata from
    (``uses_labels``, ``adapts``, ``static_alpha``, ``output_ensemble``, ``app_options``, ``family``, ...)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_REGISTRY))}")
    factory = _REGISTRY[name]
    return factory if isinstance(factory, type) else getattr(factory, "method_class", Method)


def default_methods() -> list[str]:
    """The methods registered with ``default_run=True``, in registration order."""
    _load_builtins()
    return list(_DEFAULT_RUN)
