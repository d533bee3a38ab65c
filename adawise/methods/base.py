"""The one interface every method implements, adaptive or not.

Online protocol (the loop in :mod:`adawise.evaluation.loop` is the only place that drives it):

1. ``prepare(stream)`` once before a run (no-op except label-using upper bounds such as ``oracle``);
2. for each batch: ``on_domain(domain)`` when the domain changes, ``logits = method(images)``
   (the prediction, final and scored), then ``observe(images, logits)`` (unsupervised updates);
3. ``reset()`` restores the exact initial state (called by the ``reset_each_shift`` setting at
   domain boundaries, and by users).

A method never changes the models it is given, whatever mode they are in: they are not its submodules
(``method.eval()``, ``.to()``, ``.train()`` leave them alone), they run under :func:`evaluating` (eval mode
for the call, every submodule's own mode restored after it, so batch norm neither uses batch statistics
nor updates its buffers) and their weights are only read. :meth:`Method.endpoints` names them; the log
header hashes their weights. ``alpha`` is the mixing coefficient in force (``None`` where the method has
none) and ``info`` the per-batch record that goes into the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from adawise.core.alpha_engine import evaluating

__all__ = ["Method", "EndpointPair", "evaluating"]


class Method(nn.Module):
    """Base class: ``forward(images) -> [B, C]`` logits (output ensembles return log-probabilities)."""

    #: registry name, set by :func:`adawise.methods.registry.register`
    name: str = "method"
    #: whether state carries over from batch to batch (False for the static baselines)
    adapts: bool = False
    #: whether the method reads labels (upper bounds only); marked in every table
    uses_labels: bool = False
    #: the α of θ(α) = (1 - α)·θ_zs + α·θ_ft it always predicts with (``None``: none, or not fixed); an
    #: application with the logits of θ(α) at hand (the demo's α sweep) replays it instead of running it
    static_alpha: ClassVar[float | None] = None
    #: a function of the two endpoints' outputs only (the demo feeds it the endpoints' logits from its sweep)
    output_ensemble: ClassVar[bool] = False
    #: options an application passes when it has them (``preset`` and ``seed``: AdaWiSE's search; ``index``: the
    #: Zero-Shot-Failure index an application builds or takes from the command line)
    app_options: ClassVar[frozenset[str]] = frozenset()
    #: options the method cannot run without -> how to get one (an application skips the method with that text)
    required_options: ClassVar[dict[str, str]] = {}
    #: the family it is drawn in (one colour per family in the plots): static, adaptive, ensemble, tta, bound
    family: ClassVar[str] = "other"

    @classmethod
    def sweep_replay(cls, sweep: Any) -> tuple[Callable[[int, str | None], float], float, dict[str, Any]] | None:
        """How to replay this method from an α sweep of the stream (:class:`~adawise.methods.ablations.StreamSweep`):
        (batch index, domain -> α, forward passes per batch it costs on its own, its options), or ``None``
        when it must run. Static-α methods replay at :attr:`static_alpha` when the sweep has it."""
        a = cls.static_alpha
        if a is None or a not in list(sweep.alphas):
            return None
        return (lambda t, d: a), 1.0, {"alpha": a}

    def forward(self, images: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, images: Any, logits: Tensor) -> None:
        """Called after the batch was scored; unsupervised updates happen here."""

    def prepare(self, stream: Any) -> None:
        """Called once before a run; only label-using upper bounds do anything here."""

    def on_domain(self, domain: str) -> None:
        """Called before the first batch of each new domain (domain names are not labels)."""

    def reset(self) -> None:
        """Restore the exact initial state (adaptive methods override this)."""

    @property
    def alpha(self) -> float | None:
        """The weight-space mixing coefficient in force, or ``None``."""
        return None

    @property
    def info(self) -> dict[str, Any]:
        """Per-batch record for the log (at least ``forward_passes``)."""
        return {"forward_passes": 1.0}

    def options(self) -> dict[str, Any]:
        """Constructor options, written into the log header."""
        return {}

    def endpoints(self) -> dict[str, nn.Module]:
        """The models this method was given, by role (``zeroshot``, ``finetuned``): read only, never
        changed; the log header identifies a run by their weights."""
        return dict(self.__dict__.get("_given", {}))

    def _keep(self, **models: nn.Module | None) -> None:
        """Remember the given models by role, outside the module tree (not submodules)."""
        self.__dict__["_given"] = {role: m for role, m in models.items() if m is not None}


class EndpointPair:
    """Mixin for methods given both endpoints: ``zeroshot`` / ``finetuned`` read from :meth:`Method.endpoints`."""

    @property
    def zeroshot(self) -> nn.Module:
        """The zero-shot model given to the method."""
        return self.endpoints()["zeroshot"]  # type: ignore[attr-defined]

    @property
    def finetuned(self) -> nn.Module:
        """The fine-tuned model given to the method."""
        return self.endpoints()["finetuned"]  # type: ignore[attr-defined]
