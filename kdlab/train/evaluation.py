"""Evaluation: top-k counts, the registered metrics of a model over a split, a run's metric names, and the
:class:`~kdlab.train.trainer.Trainer`'s evaluation of its exported model (several processes: each its shard)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch import Tensor, nn

from kdlab.config import ConfigError, RunConfig
from kdlab.distributed import World
from kdlab.metrics import DEFAULT_METRICS, METRICS, resolve_metrics
from kdlab.metrics import evaluate as evaluate_metrics
from kdlab.train import distributed
from kdlab.train.build import Run
from kdlab.types import Batch


def accuracy(logits: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is among the top-k predictions, for each k (``[B, K]``, ``[B]``)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == y[:, None]
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def evaluate(
    model: nn.Module,
    batches: Iterator[Batch],
    reduce: Callable[[Tensor], Tensor] | None = None,
    names: tuple[str, ...] = DEFAULT_METRICS,
) -> dict[str, float]:
    """The registered metrics ``names`` (:mod:`kdlab.metrics`; default top-1/top-5 %), the mean cross-entropy
    ``loss`` and the sample count ``n`` of ``model`` over ``batches`` (eval mode).

    ``reduce`` sums a tensor over processes when each process evaluated its own shard of the split (rows of
    sample-level state, e.g. AUC's scores, are gathered from every process then).
    """
    gather = None
    if reduce is not None:
        from kdlab.distributed import gather_rows

        gather = lambda t: gather_rows(t)[0]  # noqa: E731
    return evaluate_metrics(model, batches, names, reduce_sum=reduce, gather_rows=gather)


def run_metrics(cfg: RunConfig, splits: object) -> tuple[str, ...]:
    """The evaluation metrics of a run (``train.metrics``, else the dataset's defaults) with ``train.select_by``
    checked against them; a bad name is a :class:`ConfigError` naming the fix."""
    try:
        names = resolve_metrics(cfg.train.metrics, getattr(splits, "metrics", None))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    detection = any(METRICS.get(n).task == "detection" for n in names)
    allowed = names if detection else (*names, "loss")  # a detector's evaluation has no loss (kdlab.metrics.evaluate)
    if cfg.train.ema_decay is not None:  # the student EMA's metrics (kdlab/train/ema.py) may choose the best epoch
        allowed += tuple(f"ema_{n}" for n in allowed)
    if cfg.train.select_by not in allowed:
        ema = ", or ema_<one of them> with train.ema_decay" if cfg.train.select_by.startswith("ema_") else ""
        also = "" if detection else f" (or 'loss'{ema})"
        raise ConfigError(
            f"train.select_by={cfg.train.select_by!r} is not among the run's metrics {list(names)}{also}; "
            f"choose one of them, or add it to train.metrics"
        )
    return names


class TrainerEvaluationMixin:
    """The :class:`~kdlab.train.trainer.Trainer`'s evaluation. Reads ``run``, ``world``, ``metric_names``,
    ``step_module`` and ``_ddp_ignore``."""

    run: Run
    world: World
    metric_names: tuple[str, ...]
    step_module: nn.Module
    _ddp_ignore: list[str]

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Accuracy of the exported model on ``split`` (several processes: each its shard, counts summed), and with
        ``train.ema_decay`` the moving average's beside it as ``ema_<metric>`` (:mod:`kdlab.train.ema`)."""
        if not self.world.distributed:

            def model_metrics(model: nn.Module) -> dict[str, float]:
                return evaluate(model, self.run.data.eval_batches(split), names=self.metric_names)

        else:
            distributed.broadcast_buffers(self.step_module, skip=self._ddp_ignore)  # rank 0's BN statistics everywhere
            device = self.run.device

            def model_metrics(model: nn.Module) -> dict[str, float]:
                return evaluate(
                    model,
                    self.run.data.eval_batches(split, shard=True),
                    reduce=lambda t: distributed.reduce_sum(t.to(device)).to(t.device),
                    names=self.metric_names,
                )

        return self._ema_metrics(model_metrics(self.run.method.export(self.run.student)), model_metrics)
