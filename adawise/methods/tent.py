"""TENT: test-time entropy minimisation on the normalisation layers' affine parameters.

Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021 (reference code
DequanWang/tent; the same method in mariodoebler/test-time-adaptation). For each batch:

1. one forward pass of the method's own copy of the model; its logits are the prediction;
2. the loss is the mean Shannon entropy of the batch's (projected) predictions;
3. one SGD step (momentum 0.9) on the affine parameters (scale and shift) of every normalisation layer:
   ``LayerNorm`` (a ViT has only these), ``GroupNorm``, ``BatchNorm*``, ``RMSNorm``; every other weight
   stays as it was.

The prediction is the pre-update pass, as in the reference (its ``forward_and_adapt`` returns the outputs
of the pass whose entropy it then minimises): the update of step 3 only reaches the next batches, so a
batch's prediction is never influenced by its own update. Step 3 runs in the same call as step 1, after
the logits are computed, so the method adapts whether or not the caller calls ``observe`` (the loop's
``observe`` adds nothing).

Where this differs from the reference, and why:

- **Learning rate.** The published ImageNet default is lr 2.5e-4 at batch 64; here the step size is
  ``lr · n / lr_batch`` for a batch of ``n`` images (``lr_batch=64``), the linear scaling rule, so every
  image moves the parameters by the same amount whatever the batch size (a short last batch moves them
  less). ``lr_batch=None`` uses ``lr`` as given on every batch.
- **Batch norm.** As in the reference, batch-norm layers normalise with the statistics of the current
  batch and never update their running statistics. A layer that sees a single value per channel (a
  ``BatchNorm1d`` on a batch of one) cannot compute batch statistics; it uses its source running
  statistics for that call (what mariodoebler/test-time-adaptation does for single samples).
- **Modes.** The reference puts the whole model in train mode (dropout active where a model has it);
  here the copy runs in eval mode except for batch norm's batch statistics, so a prediction is
  deterministic (CLIP ViTs have no dropout, so for them both read alike).
- **Batch size 1.** With layer norm (a ViT) a single image is a valid batch: the step minimises that
  image's entropy (``lr`` scaled to 1/64 of a batch's step by default).
- **Rows with non-finite logits** are left out of the loss; a batch with none left, or an empty batch,
  makes no step (``info["updated"]`` is False).

Starting point: the fine-tuned model (α = 1, the default), or with ``alpha=`` the WiSE-FT weights θ(α)
built once (:func:`adawise.methods.static.merged_copy`). The copy is the method's own submodule; the
given models are only read to build it and are never changed. ``reset()`` restores the copy's
normalisation parameters and the optimiser's state exactly (``continual`` keeps them across domains,
``reset_each_shift`` restores them at every domain boundary).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from adawise.core.objectives import entropy
from adawise.errors import ModelMismatchError, UsageError
from adawise.methods.base import Method, evaluating
from adawise.methods.registry import register
from adawise.methods.static import check_alpha, merged_copy

__all__ = ["Tent", "norm_parameters", "NORM_LAYERS"]

#: normalisation layers whose affine parameters TENT adapts
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, _BatchNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def norm_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The affine parameters (``weight``: scale, ``bias``: shift) of every normalisation layer of ``model``
    (:data:`NORM_LAYERS`), by qualified name, in module order; layers without affine parameters add none."""
    found: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, NORM_LAYERS):
            continue
        for name, param in module.named_parameters(recurse=False):
            if name in ("weight", "bias") and id(param) not in seen:
                seen.add(id(param))
                found.append((f"{module_name}.{name}" if module_name else name, param))
    return found


def _batch_statistics(model: nn.Module) -> int:
    """Make every batch-norm layer of ``model`` normalise with the current batch's statistics and never
    update its running ones (TENT's batch-norm handling); a call that sees one value per channel uses
    the running (source) statistics instead. Returns the number of batch-norm layers."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for layer in layers:
        layer.track_running_stats = False  # running buffers kept (the one-value fallback), never updated

        def before(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            module.__dict__["_tent_mode"] = module.training
            # batch statistics where the batch has them; a BatchNorm layer in eval mode with
            # track_running_stats False and its buffers kept normalises with the running statistics
            module.training = x.ndim >= 2 and x.shape[1] > 0 and x.numel() // x.shape[1] > 1

        def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            module.training = module.__dict__.pop("_tent_mode", module.training)

        layer.register_forward_pre_hook(before)
        layer.register_forward_hook(after)
    return len(layers)


@register("tent")
class Tent(Method):
    """TENT (Wang et al., ICLR 2021): one SGD step per batch on the normalisation layers' affine
    parameters of the method's own copy, minimising the batch's mean prediction entropy; the prediction
    is the pre-update pass (module docstring).

    Args:
        zeroshot, finetuned: the endpoints (only read). Without ``alpha`` only ``finetuned`` is used.
        alpha: ``None`` (default): start from the fine-tuned model; a number in [0, 1]: start from the
            WiSE-FT weights θ(α) (0: the zero-shot model).
        lr: SGD learning rate at ``lr_batch`` images per batch (2.5e-4: the published ImageNet value).
        lr_batch: reference batch size of ``lr`` (64); the step of a batch of ``n`` images uses
            ``lr · n / lr_batch``. ``None``: ``lr`` on every batch.
        momentum: SGD momentum (0.9, published).

    ``info`` after a call: ``forward_passes`` 1, ``backward_passes`` 1 (0 when no step was made),
    ``updated``, ``lr`` (the step size used), ``loss`` (the mean entropy the step minimised), ``seconds``.
    """

    adapts = True
    family = "tta"

    def __init__(self, zeroshot: nn.Module | None = None, finetuned: nn.Module | None = None,
                 alpha: float | None = None, lr: float = 2.5e-4, lr_batch: int | None = 64,
                 momentum: float = 0.9) -> None:
        super().__init__()
        if finetuned is None:
            raise UsageError("tent needs the fine-tuned model (finetuned=...), the model it adapts")
        for name, value, low in (("lr", lr, 0.0), ("momentum", momentum, 0.0)):
            try:
                ok = math.isfinite(float(value)) and float(value) >= low
            except (TypeError, ValueError):
                ok = False
            if not ok or (name == "momentum" and float(value) >= 1.0):
                bound = "in [0, 1)" if name == "momentum" else "a finite number >= 0"
                raise UsageError(f"tent: {name} must be {bound}, got {value!r}")
        if lr_batch is not None and (isinstance(lr_batch, bool) or not isinstance(lr_batch, int) or lr_batch < 1):
            raise UsageError(f"tent: lr_batch must be a whole number of images >= 1 (or None: no scaling), "
                             f"got {lr_batch!r}")
        if alpha is None:
            model = copy.deepcopy(finetuned).eval()
            self._keep(finetuned=finetuned)
            self._alpha = 1.0
        else:
            if zeroshot is None:
                raise UsageError("tent with alpha= needs the zero-shot model too (zeroshot=...)")
            check_alpha(alpha, "tent")
            model = merged_copy(zeroshot, finetuned, alpha, "tent")
            self._keep(zeroshot=zeroshot, finetuned=finetuned)
            self._alpha = float(alpha)
        model.requires_grad_(False)
        params = norm_parameters(model)
        if not params:
            raise ModelMismatchError(
                f"tent adapts the affine parameters of normalisation layers (LayerNorm, GroupNorm, BatchNorm, "
                f"RMSNorm), and {type(finetuned).__name__} has none with affine parameters; use a model with "
                "them (a CLIP ViT has LayerNorm) or another method")
        for _, p in params:
            p.requires_grad_(True)
        self.batch_norm_layers = _batch_statistics(model)
        self.model = model  # the method's own copy: a submodule (moves with .to(), saved in state_dict)
        self.param_names = [n for n, _ in params]
        self._params = [p for _, p in params]
        self._initial = [p.detach().clone() for p in self._params]
        self.lr, self.lr_batch, self.momentum = float(lr), lr_batch, float(momentum)
        self.optimizer = self._new_optimizer()
        self._info: dict[str, Any] = {"forward_passes": 0.0}

    def _new_optimizer(self) -> torch.optim.SGD:
        return torch.optim.SGD(self._params, lr=self.lr, momentum=self.momentum)

    def forward(self, images: Any) -> Tensor:
        t0 = time.perf_counter()
        first = self._params[0]
        with torch.inference_mode(False), torch.enable_grad(), evaluating(self.model):
            if torch.is_tensor(images):  # a normal tensor on the copy's device (also under inference_mode)
                images = images.to(first.device)
                images = images.clone() if images.is_inference() else images
            logits = self.model(images)
            n = int(logits.shape[0]) if torch.is_tensor(logits) and logits.ndim == 2 else 0
            step = self.lr * n / self.lr_batch if self.lr_batch else self.lr
            loss, updated = None, False
            if n and logits.requires_grad:
                rows = torch.isfinite(logits).all(-1)
                if bool(rows.any()):
                    value = entropy(logits[rows]).mean()
                    loss = float(value.detach())
                    if math.isfinite(loss):
                        self.optimizer.zero_grad(set_to_none=True)
                        value.backward()
                        for group in self.optimizer.param_groups:
                            group["lr"] = step
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                        updated = True
        self._info = {"forward_passes": 1.0, "backward_passes": 1.0 if updated else 0.0, "updated": updated,
                      "lr": step if updated else 0.0, "loss": loss, "seconds": time.perf_counter() - t0}
        return logits.detach()

    def reset(self) -> None:
        """Restore the copy's normalisation parameters and a fresh optimiser (no momentum): the exact
        initial state."""
        with torch.no_grad():
            for p, p0 in zip(self._params, self._initial, strict=True):
                p.copy_(p0)
                p.grad = None
        self.optimizer = self._new_optimizer()
        self._info = {"forward_passes": 0.0}

    def _apply(self, fn: Any, recurse: bool = True) -> Tent:  # type: ignore[override]
        """``.to()`` / ``.cuda()`` / ``.half()``: the copy moves as a submodule; the initial values and the
        optimiser's momentum buffers follow it."""
        super()._apply(fn, recurse)
        self._initial = [fn(t) for t in self._initial]
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = fn(value)
        return self

    @property
    def alpha(self) -> float:
        """The α of the starting weights (1: the fine-tuned model); TENT then moves its normalisation
        parameters away from θ(α)."""
        return self._alpha

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def options(self) -> dict[str, Any]:
        return {"alpha": self._alpha, "lr": self.lr, "lr_batch": self.lr_batch, "momentum": self.momentum,
                "norm_parameters": sum(p.numel() for p in self._params), "norm_tensors": len(self._params),
                "batch_norm_layers": self.batch_norm_layers}
