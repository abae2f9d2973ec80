"""The solver of the learned fusion policies (:mod:`kdlab.methods.fusion.learned`): a one-step-unrolled
hypergradient of the held-out label loss, exact by forward mode (:class:`HypergradientStep`).

Reference: learning-to-reweight (Ren et al., ICML 2018, arXiv 1803.09050) and Meta-Weight-Net (Shu et al., NeurIPS
2019, arXiv 1902.07379) for the one-step unroll; TGeo-KD (arXiv 2312.15112) for its use in sample-wise fusion.

Deviations:
- The virtual step is plain SGD at the main optimiser's current learning rate (no momentum or weight decay), as in
  learning-to-reweight and Meta-Weight-Net, from the parameters of the main step (before its optimiser step: the
  virtual step is the real step's plain-SGD twin and reuses its gradient); BatchNorm statistics of both functional
  forwards are computed on copies of the student's buffers, which are left untouched.
- Under torchrun every process computes the hypergradient of its own part of the batch against the same held-out
  mini-batch, and omega's gradient is averaged over processes before its step, so all processes keep one omega.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab import distributed
from kdlab.losses import fusion as fusion_losses
from kdlab.methods.base import AuxObjective
from kdlab.methods.fusion.base import SampleTerms
from kdlab.methods.fusion.jvp import BatchNormJvp
from kdlab.methods.heldout import HeldoutStream
from kdlab.types import Batch, StepIO

if TYPE_CHECKING:
    from kdlab.methods.fusion.learned import LearnedFusion


def _tangent(dual: Any) -> Tensor:
    """The forward-mode derivative of an unpacked dual tensor (zeros when it does not depend on the tangents)."""
    return torch.zeros_like(dual.primal) if dual.tangent is None else dual.tangent


class HypergradientStep(AuxObjective):
    """The outer step of a learned fusion policy: one-step-unrolled hypergradient of the held-out label loss.

    ``theta' = theta - eta * grad_theta mean_i(a_i(omega) K_i(theta) + b_i(omega) G_i(theta))`` on the training
    batch just used, then ``omega <- Adam(omega, grad_omega CE(f(x_val; theta'), y_val))``. It runs between the main
    step's backward and its optimiser step (:attr:`before_optimizer_step`), so ``theta`` is the student the main
    step's gradient was taken at, and that gradient is the virtual step's: the trainer hands it over
    (``ctx.step_grads``) when it is exactly ``grad_theta`` of the fused loss (fp32, no loss scaling or term factors,
    one process; under gradient clipping it runs before the clipping); otherwise the step computes it (one more
    forward and backward of the training batch).

    The training loss is linear in the weights ``a_i``, ``b_i`` (and they do not depend on ``theta``: the policy reads
    the student detached), so with ``v = grad_theta' CE(f(x_val; theta'), y_val)`` the chain rule gives, exactly,
    ``d CE_val / d a_i = -eta / B <v, grad_theta K_i(theta)>`` (likewise ``b_i`` with ``G_i``). The inner products of
    all ``B`` samples are one forward-mode derivative of ``[K_i(theta)]_i`` along ``v`` (dual numbers), whose primal
    pass also gives the features of ``a_i(omega)``. So with the main step's gradient the step costs two passes of the
    student (held-out batch forward and backward; one forward-mode pass of the training batch) and no second-order
    backward; the teachers' outputs of the training batch are the main step's (``ctx.teachers``). The result equals
    the double-backward hypergradient through ``create_graph`` (tested to 1e-6 in float64, with and without the
    handed-over gradient).

    Args:
        method: the learned policy that owns ``omega`` (``method.ratio_net``).
    """

    before_optimizer_step = True

    def __init__(self, method: LearnedFusion) -> None:
        cfg = method.cfg
        self.method = method
        self.every = cfg.meta_every
        self.virtual_lr = cfg.virtual_lr
        self.optimizer = torch.optim.Adam(self.parameters(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay)
        self.heldout = HeldoutStream()  # held-out mini-batches in order, tracked in samples (resumable)

    def parameters(self) -> list[nn.Parameter]:
        """``omega``: the parameters this objective trains."""
        return list(self.method.ratio_net.parameters())

    def due(self, progress) -> bool:
        return progress.step % self.every == 0

    def _next_heldout(self, ctx: Any, size: int) -> Batch:
        return self.heldout.take(ctx.heldout_batches, size)

    def hypergradient(self, ctx: Any, heldout: Batch) -> tuple[list[Tensor], Tensor]:
        """``(d CE_val / d omega per parameter of omega, CE_val)`` for the training batch ``ctx.batch`` at the
        student's current parameters; the virtual step's gradient is ``ctx.step_grads`` when the trainer hands it
        over (the main step's gradient of the same loss at the same parameters), else it is computed here."""
        method, student = self.method, ctx.student
        teachers = tuple(ctx.teachers) or ctx.teacher_outputs(ctx.batch)
        lr = self.virtual_lr if self.virtual_lr is not None else ctx.lr
        smoothing = getattr(ctx, "label_smoothing", 0.0)
        step_grads = getattr(ctx, "step_grads", None)
        named = dict(student.named_parameters())
        names = [n for n, p in named.items() if p.requires_grad]
        frozen = {n: p.detach() for n, p in named.items() if not p.requires_grad}

        def buffers() -> dict[str, Tensor]:  # BN statistics go to copies: the student's stay untouched
            return {n: b.clone() for n, b in student.named_buffers()}

        def train_terms(*params: Tensor) -> tuple[StepIO, SampleTerms]:
            out = ctx.student_outputs(ctx.batch, {**dict(zip(names, params)), **frozen, **buffers()})
            io = StepIO(out, teachers, ctx.batch, ctx.progress, label_smoothing=smoothing)
            return io, method.sample_terms(io)

        omega = self.parameters()
        theta = [named[n].detach() for n in names]
        kd_w = gt_w = None
        with torch.enable_grad():
            if step_grads is None:
                # 1. the training loss at theta, the weights as constants: its gradient makes the virtual step
                theta = [p.requires_grad_(True) for p in theta]
                io, terms = train_terms(*theta)
                kd_w, gt_w = method.weights(io, terms, method.ratio(io, terms))  # a graph to omega only
                inner = fusion_losses.fused_loss(terms.kd, terms.gt, kd_w.detach(), gt_w.detach())
                grads = torch.autograd.grad(inner, theta, allow_unused=True)
                del io, terms, inner
            else:  # 1'. the main step's gradient of the same loss at the same theta: no student pass here
                grads = [step_grads.get(n) for n in names]
            updated = [(p if g is None else p - lr * g).detach().requires_grad_(True) for p, g in zip(theta, grads)]
            # 2. the held-out loss at theta' and its gradient v
            logits = ctx.student_outputs(heldout, {**dict(zip(names, updated)), **frozen, **buffers()})["x"].logits
            outer = F.cross_entropy(logits, heldout.y)
            v = torch.autograd.grad(outer, updated, allow_unused=True)
        del grads, logits
        # 3. <v, grad_theta K_i> and <v, grad_theta G_i> for every sample: one forward-mode pass along v (dual
        # numbers; no_grad keeps autograd from recording the pass, forward-mode derivatives still flow); its primal
        # is the training batch's forward at theta, which gives the weights when step 1 did not run
        with torch.no_grad(), fwad.dual_level(), BatchNormJvp():  # BatchNormJvp: batch norm's exact, cheaper tangent
            duals = _make_duals(theta, v)
            along_io, along = train_terms(*duals)
            d_kd, d_gt = (_tangent(fwad.unpack_dual(term)) for term in (along.kd, along.gt))
            if kd_w is None:
                io, terms = _primal_io(along_io, along)
        # 4. d outer / d kd_w_i = -lr * d inner / d kd_w_i with K_i replaced by its derivative along v (linearity)
        with torch.enable_grad():
            if kd_w is None:
                kd_w, gt_w = method.weights(io, terms, method.ratio(io, terms))  # a graph to omega only
            along_v = fusion_losses.fused_loss(d_kd.detach(), d_gt.detach(), kd_w, gt_w)
            hyper = torch.autograd.grad(-lr * along_v, omega, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(omega, hyper)], outer.detach()

    def step(self, ctx: Any) -> dict[str, float]:
        return self.step_with(ctx, self._next_heldout(ctx, ctx.batch.size))

    def step_with(self, ctx: Any, heldout: Batch) -> dict[str, float]:
        """One update of ``omega`` against the held-out mini-batch ``heldout``; returns the logged scalars."""
        grads, outer = self.hypergradient(ctx, heldout)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.parameters(), grads):
            p.grad = g
        distributed.average_gradients(self.parameters())  # under torchrun: one omega, moved by the global batch
        self.optimizer.step()
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
        values = torch.stack([outer.float(), norm]).tolist()
        return {"meta.heldout_ce": values[0], "meta.hypergrad_norm": values[1]}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), **self.heldout.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.heldout.load_state_dict(state)


def _make_duals(theta: list[Tensor], v: tuple[Tensor | None, ...]) -> list[Tensor]:
    """Forward-mode dual tensors of ``theta`` with tangents ``v`` (a ``None`` tangent: the plain tensor), inside an
    ``fwad.dual_level()``. The first ``make_dual`` of a process imports torch's JVP decompositions
    (``torch/_decomp/decompositions_for_jvp.py``), which call ``torch.jit.script`` and so emit its deprecation
    FutureWarning from inside torch; that warning, and only it, is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        return [p.detach() if t is None else fwad.make_dual(p.detach(), t) for p, t in zip(theta, v)]


def _primal_io(io: StepIO, terms: SampleTerms) -> tuple[StepIO, SampleTerms]:
    """The primal (plain-tensor) copies of a forward-mode pass's student outputs and per-sample terms."""

    def primal(t: Tensor) -> Tensor:
        return fwad.unpack_dual(t).primal

    student = {
        view: o.replace(logits=primal(o.logits), taps={k: primal(f) for k, f in o.taps.items()})
        for view, o in io.student.items()
    }
    return io.replace(student=student), dataclasses.replace(terms, kd=primal(terms.kd), gt=primal(terms.gt))
