"""The timed train steps: the plain student's, the teacher's early-stopped
forward, and the distiller's in each phase of its balancer, plus the
distillation terms, the Lipschitz term and the NaN guard alone."""
import copy
from contextlib import nullcontext
from typing import Callable, List, Optional

import torch
from mmengine.registry import MODELS, init_default_scope

from .configs import MODEL_SPECS

#: the kinds of distiller step in a training run: after the balancer's
#: calibration (``steady``), during it (``calibration``: one extra backward
#: per auto-weighted term and the task) and at every ``log_interval``-th
#: step after it (``share``: the gradient shares, the same extra backwards)
PHASES = ('steady', 'calibration', 'share')


def make_sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9,
                           weight_decay=1e-4)


class TrainStep:
    """One model's train step as mmengine's ``OptimWrapper`` runs it,
    optionally under autocast (fp16 + GradScaler on GPU, bf16 on CPU)."""

    def __init__(self, name: str, device, amp: bool):
        self.name = name
        self.device = torch.device(device)
        init_default_scope(MODEL_SPECS[name]['scope'])
        self.amp = amp
        dtype = torch.float16 if self.device.type == 'cuda' \
            else torch.bfloat16
        self.autocast = (lambda: torch.autocast(self.device.type,
                                                dtype=dtype)) \
            if amp else nullcontext
        self.scaler = torch.amp.GradScaler('cuda') \
            if amp and self.device.type == 'cuda' else None

    def _build(self, cfg):
        model = MODELS.build(copy.deepcopy(cfg))
        return model, make_sgd(model)

    def _train_step(self, model, opt, batch) -> None:
        inputs, samples = batch
        with self.autocast():
            losses = model(inputs, samples, mode='loss')
        loss, _ = model.parse_losses(losses)
        opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            opt.step()


class StudentBench(TrainStep):
    """The plain student (mode (a)), with the initial weights of
    ``init_from`` (a distiller's student) when given."""

    def __init__(self, name: str, student_cfg: dict, device, amp: bool,
                 init_from=None):
        super().__init__(name, device, amp)
        self.student = MODELS.build(copy.deepcopy(student_cfg))
        if init_from is not None:
            self.student.load_state_dict(init_from.state_dict())
        self.student.to(self.device).train()
        self.opt = make_sgd(self.student)

    def step(self, batch) -> None:
        self._train_step(self.student, self.opt, batch)


class DistillerBench(TrainStep):
    """One distiller: its train step in each :data:`PHASES`, the teacher's
    forward as deep as its recorded layers need (mode (b)), and its parts
    alone."""

    def __init__(self, name: str, dcfg: dict, device, amp: bool):
        super().__init__(name, device, amp)
        self.distiller = MODELS.build(copy.deepcopy(dcfg))
        self.distiller.to(self.device).train()
        self.opt = make_sgd(self.distiller)
        #: the balancer's state once calibrated (:meth:`calibrate`)
        self.calibrated_state: Optional[dict] = None

    # ------------------------------------------------------------ phases
    @property
    def balancer(self):
        return self.distiller.balancer

    def phases(self) -> List[str]:
        """The :data:`PHASES` a training run of this distiller has."""
        b = self.balancer
        if b is None:
            return ['steady']
        return ['steady'] + (['calibration'] if b.terms else []) + (
            ['share'] if b.log_interval > 0 else [])

    def calibrate(self, batches) -> int:
        """Train steps until the balancer has fixed its weights (a user's
        first ``iters`` steps); returns how many were run."""
        b, n = self.balancer, 0
        if b is None:
            return 0
        while b.terms and not b.calibrated:
            self.step(batches[n % len(batches)])
            n += 1
        self.calibrated_state = {k: v.clone()
                                 for k, v in b.state_dict().items()}
        return n

    def set_phase(self, phase: str) -> None:
        """Put the balancer where the next step is of kind ``phase``, via
        its state dict (weights: the calibrated ones, or 0 before
        :meth:`calibrate`; the cost of a step does not depend on them)."""
        b = self.balancer
        if b is None:
            return
        state = {k: v.clone() for k, v in (
            self.calibrated_state or b.state_dict()).items()}
        iters, every = b.iters, b.log_interval
        if phase == 'calibration':
            # a step of the calibration's second half, which accumulates
            # the statistics (the balancer's docstring)
            step = iters // 2
            state['weights'].zero_()
        else:
            step = iters
            if every > 0:
                first_share = -(-(iters + 1) // every) * every - 1
                step = first_share if phase == 'share' else (
                    step + 1 if (step + 1) % every == 0 else step)
        state['count'].fill_(min(step, iters))
        state['step'].fill_(step)
        b.load_state_dict(state)

    # ------------------------------------------------------------- modes
    def step(self, batch) -> None:
        self._train_step(self.distiller, self.opt, batch)

    def phase_mode(self, phase: str) -> Callable:
        """A mode of :func:`~.clock.run_interleaved`: one train step of
        kind ``phase`` (the phase is set outside the timer)."""

        def prepare(batch):
            self.set_phase(phase)
            return lambda: self.step(batch)

        return prepare

    def teacher_fwd(self, batch, skip: bool = False) -> None:
        """The teacher's forward to its deepest recorded layer (mode (b));
        ``skip``: with the modules nothing recorded depends on skipped, as
        the distiller runs it (``teacher.skip_unread``)."""
        d = self.distiller
        d.teacher_recorder.skip_enabled = skip
        try:
            with torch.no_grad(), self.autocast(), d.teacher_recorder:
                d.teacher(batch[0], batch[1], mode='tensor')
        finally:
            d.teacher_recorder.skip_enabled = True
        d.teacher_recorder.clear()

    def _record(self, batch):
        """Both forwards (no grad, public ``record``): the student's
        features as detached leaves, the teacher's."""
        with torch.no_grad(), self.autocast():
            _, s_feats, t_feats = self.distiller.record(batch[0], batch[1])
        leaves = {k: [x.detach().requires_grad_() for x in v]
                  if isinstance(v, list) else v.detach().requires_grad_()
                  for k, v in s_feats.items()}
        return leaves, t_feats

    def prepare_terms(self, batch) -> Callable[[], None]:
        """Every distillation term (the guard's check included) forward +
        backward on recorded features."""
        d = self.distiller
        s_feats, t_feats = self._record(batch)

        def run():
            with self.autocast():
                distill, _ = d.distill_terms(s_feats, t_feats, batch[1])
            sum(distill.values()).backward()

        return run

    def prepare_guard(self, batch) -> Callable[[], None]:
        """The NaN guard's check of the terms alone."""
        d = self.distiller
        s_feats, t_feats = self._record(batch)
        with self.autocast():
            guard, d.nan_guard = d.nan_guard, False
            try:
                distill, _ = d.distill_terms(s_feats, t_feats, batch[1])
            finally:
                d.nan_guard = guard
        distill = {k: v.detach() for k, v in distill.items()}
        return lambda: d.check_finite(distill, s_feats, t_feats)

    def prepare_lipschitz(self, batch, cold: bool = False):
        """The Lipschitz term alone, forward + backward, on detached
        connector outputs; ``cold``: from reset power-iteration vectors."""
        d = self.distiller
        if d.lipschitz_loss is None or 'lipschitz' not in d.terms:
            return None
        s_feats, t_feats = self._record(batch)
        raw = [s_feats[p.student.key] for p in d.pairs]
        t_list = [t_feats[p.teacher.key] for p in d.pairs]
        with torch.no_grad(), self.autocast():
            s_conn = d.connect(raw)
        conn = [s.detach().requires_grad_() for s in s_conn]
        if cold:
            d.lipschitz_loss.reset_state()

        def run():
            with self.autocast():
                total, _ = d.terms['lipschitz'](raw, t_list, connected=conn)
            if torch.is_tensor(total):
                total.backward()

        return run

    def no_guard_mode(self) -> Callable:
        """A steady step with ``nan_guard=False``."""

        def prepare(batch):
            self.set_phase('steady')

            def run():
                self.distiller.nan_guard = False
                try:
                    self.step(batch)
                finally:
                    self.distiller.nan_guard = True

            return run

        return prepare
