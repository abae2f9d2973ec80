"""Third-party models behind the tap contract (DESIGN.md, "Models and feature taps").

- :func:`create_timm` / :class:`TimmTapModel`: a timm model through timm's feature API (``feature_info``,
  ``forward_intermediates``, ``forward_head``). ``kdlab.models.create("timm:<name>")`` calls it. Needs
  ``timm>=1.0`` (``pip install kdlab[timm]``).
- :class:`HookTapModel`: any ``nn.Module`` through forward hooks on named submodules. This is the only place in
  kdlab where module paths appear; everything downstream uses the canonical tap names.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.models.base import TapError, TapModel
from kdlab.types import TapInfo

_CANONICAL = re.compile(r"^(stem|stage[1-9][0-9]*(\.pre)?|pool)$")

_TIMM_MISSING = (
    "timm is not installed, so timm model {name!r} cannot be built: install it with `pip install kdlab[timm]` "
    "(or `pip install timm`)"
)


def create_timm(name: str, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> TimmTapModel:
    """Build timm model ``name`` and wrap it as a :class:`TimmTapModel`.

    Args:
        name: a timm model name (``timm.list_models()``), without the ``timm:`` prefix.
        num_classes: output classes ``K``.
        in_channels: input channels ``C`` (timm's ``in_chans``).
        **kwargs: passed to ``timm.create_model`` (e.g. ``pretrained=True``, ``drop_rate=0.1``).

    Returns:
        A tap model: ``forward(x [B, C, H, W]) -> [B, K]``, taps ``stage1..stageN`` (one per timm
        ``feature_info`` entry) and ``pool``.

    Raises:
        ImportError: timm is not installed (the message says how to install it).
    """
    from kdlab.compat import TorchvisionMismatchError, import_timm

    try:
        timm = import_timm()
    except TorchvisionMismatchError:
        raise
    except ImportError as err:
        raise ImportError(_TIMM_MISSING.format(name=name)) from err
    model = timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kwargs)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    height_width = tuple(cfg.get("input_size", (in_channels, 224, 224)))[1:]
    return TimmTapModel(model, name=f"timm:{name}", input_size=(in_channels, *height_width))


class TimmTapModel(TapModel):
    """A timm classifier with the tap contract, through timm's feature API.

    Taps: ``stageK`` is the ``K``-th entry of the model's ``feature_info`` (``num_chs`` channels at stride
    ``reduction``; for a timm ResNet ``stage1`` is therefore the stem at stride 2), computed with
    ``forward_intermediates(x, indices=...)`` only when asked; ``pool`` is ``forward_head(features,
    pre_logits=True)`` ``[B, D]``. There are no ``.pre`` taps and no ``stem`` tap.

    Args:
        model: a timm model (``timm>=1.0``: it needs ``feature_info``, ``forward_intermediates``,
            ``forward_features`` and ``forward_head``).
        name: model name used in error messages.
        input_size: native ``(C, H, W)``.
    """

    def __init__(self, model: nn.Module, name: str | None = None, input_size: Sequence[int] = (3, 224, 224)) -> None:
        super().__init__()
        self.name = name or type(model).__name__
        for attr in ("feature_info", "forward_intermediates", "forward_features", "forward_head"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"timm model {self.name!r} has no {attr!r}: kdlab reads timm features through "
                    "forward_intermediates / feature_info (timm>=1.0); upgrade timm or wrap it with HookTapModel"
                )
        self.model = model
        self.input_size = tuple(input_size)
        entries = list(getattr(model.feature_info, "info", model.feature_info))
        self.stage_modules = {f"stage{i}": str(e.get("module", "")) for i, e in enumerate(entries, start=1)}
        pool_dim = getattr(model, "head_hidden_size", None) or model.num_features
        self._info = (
            *(TapInfo(f"stage{i}", int(e["num_chs"]), int(e["reduction"])) for i, e in enumerate(entries, start=1)),
            TapInfo("pool", int(pool_dim), 1, "pool"),
        )

    @property
    def classifier(self) -> nn.Module:
        """The final linear layer (timm's ``get_classifier()``); read-only (use timm's ``reset_classifier``)."""
        return self.model.get_classifier()

    def __setattr__(self, name: str, value: object) -> None:
        if name == "classifier":
            raise AttributeError(f"{self.name}: replace a timm head with model.model.reset_classifier(num_classes)")
        super().__setattr__(name, value)

    def tap_info(self) -> tuple[TapInfo, ...]:
        return self._info

    def check_taps(self, taps: Collection[str], model_name: str | None = None) -> frozenset[str]:
        """As :meth:`TapModel.check_taps`, naming the timm model by default."""
        return super().check_taps(taps, model_name or self.name)

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}
        indices = sorted(int(t.removeprefix("stage")) - 1 for t in taps if t.startswith("stage"))
        if not taps:
            return self.model(x), out
        if indices:
            features, intermediates = self.model.forward_intermediates(x, indices=indices)
            for i, feat in zip(indices, intermediates, strict=True):
                out[f"stage{i + 1}"] = feat
        else:
            features = self.model.forward_features(x)
        if "pool" in taps:
            out["pool"] = self.model.forward_head(features, pre_logits=True)
        return self.model.forward_head(features), out


def _first_tensor(value: object) -> Tensor:
    """A module's output, or the first element of a tuple/list output."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(f"a hooked module returned {type(value).__name__}, not a tensor")
    return value


class HookTapModel(TapModel):
    """Any classifier ``nn.Module`` with the tap contract, through forward hooks on named submodules.

    Hooks are registered for the requested taps only, for the duration of one forward, and removed afterwards
    (so copies and checkpoints of the model carry no hooks). ``tap_info`` comes from one dry run of a batch of 2
    zeros of ``input_size`` in eval mode (channels ``C`` of each captured ``[B, C, H, W]`` tensor, stride
    ``input H / H``), in the order the modules ran.

    Args:
        module: the model; ``module(x [B, C, H, W])`` must return ``[B, K]`` logits.
        taps: canonical tap name -> submodule path (``module.get_submodule`` syntax, e.g. ``"layer3"``,
            ``"features.6"``); the tap is that submodule's output (the first element if it returns a tuple; the
            last call if it runs several times).
        classifier_path: path of the final ``nn.Linear``; exposed as ``classifier``, and its input (flattened to
            ``[B, D]``) is the ``pool`` tap unless ``taps`` maps ``pool`` elsewhere.
        input_size: native ``(C, H, W)`` for the dry run.
        name: model name used in error messages.

    Raises:
        ValueError: a tap name is not canonical or a path names no submodule.
        TapError: at forward time, a hooked module did not run or its output was later modified in place.
    """

    def __init__(
        self,
        module: nn.Module,
        taps: Mapping[str, str],
        classifier_path: str | None = None,
        input_size: Sequence[int] = (3, 224, 224),
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name or type(module).__name__
        self.model = module
        self.input_size = tuple(input_size)
        self.paths = dict(taps)
        if classifier_path is not None and "pool" not in self.paths:
            self.paths["pool"] = classifier_path
        self._pool_from_classifier = classifier_path is not None and "pool" not in taps
        self._classifier_path = classifier_path
        for tap, path in self.paths.items():
            if not _CANONICAL.match(tap):
                raise ValueError(f"{self.name}: {tap!r} is not a canonical tap name (stem, stageK, stageK.pre, pool)")
            try:
                module.get_submodule(path)
            except AttributeError as err:
                raise ValueError(f"{self.name}: tap {tap!r} names module path {path!r}, which does not exist") from err
        self._info: tuple[TapInfo, ...] | None = None

    @property
    def classifier(self) -> nn.Module:
        """The final linear layer (the submodule at ``classifier_path``); assigning replaces that submodule."""
        if self._classifier_path is None:
            raise AttributeError(f"{self.name}: no classifier_path was given")
        return self.model.get_submodule(self._classifier_path)

    def __setattr__(self, name: str, value: object) -> None:
        if name != "classifier":
            super().__setattr__(name, value)
            return
        if self._classifier_path is None:
            raise AttributeError(f"{self.name}: no classifier_path was given")
        parent_path, _, leaf = self._classifier_path.rpartition(".")
        setattr(self.model.get_submodule(parent_path) if parent_path else self.model, leaf, value)

    def check_taps(self, taps: Collection[str], model_name: str | None = None) -> frozenset[str]:
        """As :meth:`TapModel.check_taps`, naming the wrapped model by default."""
        return super().check_taps(taps, model_name or self.name)

    def tap_info(self) -> tuple[TapInfo, ...]:
        if self._info is None:
            self._info = self._probe()
        return self._info

    @torch.no_grad()
    def _probe(self) -> tuple[TapInfo, ...]:
        """One dry run capturing every tap; returns their :class:`TapInfo` in execution order (``pool`` last)."""
        param = next(iter(self.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = self.training
        self.eval()
        try:
            _, feats = self._forward(torch.zeros(2, *self.input_size, device=device), frozenset(self.paths))
        finally:
            self.train(was_training)
        order = [n for n in feats if n != "pool"] + (["pool"] if "pool" in feats else [])
        infos = []
        for tap in order:
            feat = feats[tap]
            if tap == "pool" or feat.ndim < 3:
                infos.append(TapInfo(tap, int(feat.shape[1]), 1, "pool" if tap == "pool" else "post"))
            else:
                stride = max(1, round(self.input_size[-1] / feat.shape[-1]))
                infos.append(TapInfo(tap, int(feat.shape[1]), stride, "pre" if tap.endswith(".pre") else "post"))
        return tuple(infos)

    def _forward(self, x: Tensor, taps: frozenset[str]) -> tuple[Tensor, dict[str, Tensor]]:
        captured: dict[str, Tensor] = {}
        versions: dict[str, int] = {}

        def store(tap: str, value: object) -> None:
            feat = _first_tensor(value)
            if feat.is_inference():  # no version counter to check later: keep a copy instead
                feat = feat.clone()
            else:
                versions[tap] = feat._version
            captured[tap] = feat

        handles = []
        try:
            for tap in taps:
                sub = self.model.get_submodule(self.paths[tap])
                if tap == "pool" and self._pool_from_classifier:
                    handles.append(sub.register_forward_pre_hook(lambda _m, args, t=tap: store(t, args)))
                else:
                    handles.append(sub.register_forward_hook(lambda _m, _args, output, t=tap: store(t, output)))
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = sorted(taps - captured.keys())
        if missing:
            paths = ", ".join(f"{self.paths[t]!r} (tap {t!r})" for t in missing)
            raise TapError(f"model {self.name!r}: module(s) {paths} did not run in forward")
        out: dict[str, Tensor] = {}
        for tap, feat in captured.items():  # execution order
            if tap in versions and feat._version != versions[tap]:
                raise TapError(
                    f"model {self.name!r}: the output of module {self.paths[tap]!r} (tap {tap!r}) was modified in "
                    "place later in the forward (e.g. by an inplace ReLU); hook another module"
                )
            out[tap] = torch.flatten(feat, 1) if tap == "pool" else feat
        return logits, out
