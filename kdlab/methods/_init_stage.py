"""RepDistiller's initialisation stage, shared by ``ab``, ``fsp`` and ``ft`` (:class:`InitStageMethod`).

HobbitLong/RepDistiller ``train_student.py`` trains, before the distillation run, ``--init_epochs 30`` epochs (of 240)
of an initialisation objective at a constant learning rate (``helper/pretrain.py``): AB's and FSP's student (with
AB's connectors) against the teacher's maps, FT's paraphraser on the teacher's map. kdlab runs it as a
:class:`~kdlab.methods.base.Stage` named :data:`INIT_STAGE` before the main stage; its default length is the same
share of the run (:mod:`kdlab.schedule`: 1/8 of ``train.epochs`` in whole epochs).
"""

from __future__ import annotations

from collections.abc import Sequence

from kdlab.config import MethodConfig
from kdlab.methods._feature import FeatureMethod
from kdlab.methods.base import BuildContext, Stage
from kdlab.schedule import reference_fraction, scaled_stage_epochs

#: Name of the initialisation stage (``io.progress.stage`` while it runs).
INIT_STAGE = "init"
#: The init stage's default length as a share of the run: RepDistiller's ``--init_epochs 30`` of 240 epochs.
INIT_FRACTION = reference_fraction(30)


class InitStageMethod(FeatureMethod):
    """A feature method with RepDistiller's initialisation stage before the main stage.

    The config has ``init_epochs`` (None: :data:`INIT_FRACTION` of the run; 0: no init stage) and ``init_lr`` (None:
    the run's ``optim.lr``), and may have ``init_student_mode``. :attr:`init_trains` is what the stage trains
    (``"all"``: the student and the adapters; ``"adapters"``).

    Attributes:
        init_epochs: epochs of the init stage after scaling (0: none).
    """

    init_trains = "all"

    def __init__(self, cfg: MethodConfig, ctx: BuildContext) -> None:
        super().__init__(cfg, ctx)
        if cfg.init_epochs is not None and cfg.init_epochs < 0:
            raise ValueError(f"method.init_epochs must be >= 0, got {cfg.init_epochs}")
        self.init_epochs = scaled_stage_epochs(cfg.init_epochs, INIT_FRACTION, ctx.total_epochs)

    def stages(self) -> Sequence[Stage]:
        """The init stage (none when :attr:`init_epochs` is 0): :attr:`init_trains` at ``init_lr``, constant."""
        if self.init_epochs == 0:
            return ()
        mode = getattr(self.cfg, "init_student_mode", None)
        return (Stage(INIT_STAGE, self.init_epochs, trains=self.init_trains, lr=self.cfg.init_lr, student_mode=mode),)
