"""Benchmark the Lipschitz (top singular value) estimators of LONDON.

Compares, side by side on the same transmitting matrices (TMs):

* ``ref-5`` / ``ref-10``: the reference code's estimator: ``K = TM TM^T``,
  5 or 10 power iterations from a ones vector, ``sigma = sqrt(||Kv||/||v||)``;
* ``ours-cold-20``: :class:`LipschitzLoss` without warm start: 20
  iterations on the TM itself from the cold start (see
  :mod:`mmlckd.models.losses.power_iteration`);
* ``ours-warm-2 k=K``: :class:`LipschitzLoss` (``n_iters=2``,
  ``n_vectors=K``): 2 iterations started from the vectors stored at the
  previous call (measured after warm-up);
* ``exact``: ``torch.linalg.svdvals`` (it is also the reference).

Features are synthetic ResNet-18 / ResNet-50 stage outputs (B=8, 224x224
input): a low-rank latent structure with a decaying spectrum, per-channel
means (BN biases), per-sample variation and noise, pre-ReLU (mixed sign) by
default or post-ReLU with ``--nonneg``. Every call draws a new batch that is
correlated with the previous one, and the "weights" drift slowly, as in
training.

Columns: median ms per call for all pairs of a model -- ``est`` (estimator
only, given the TMs: ``LipschitzLoss.estimate_sigma`` for ours), ``tm+est``
(from the features: the reference forms the TMs, ours is
``LipschitzLoss.lipschitz_constants``, which in a warm step multiplies by
the TM's factors and never forms it), ``fwd+bwd`` (the same with grad w.r.t.
the features, plus backward); ``max rel err`` vs exact over all calls,
samples and pairs (of the ``est`` outputs); ``x ref-10``: the
estimator-only speed-up over ``ref-10``.

Usage::

    python benchmarks/lipschitz_bench.py            # full (minutes on CPU)
    python benchmarks/lipschitz_bench.py --quick    # seconds, for CI
    python benchmarks/lipschitz_bench.py --device cuda
    python benchmarks/lipschitz_bench.py --threads 1   # on a busy machine
    python benchmarks/lipschitz_bench.py --decay 0.9 --mean 0  # flat spectra
"""
import argparse
import math
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmlckd.models.losses import LipschitzLoss, transmitting_matrix

STAGES = {
    'resnet18': [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
    'resnet50': [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)],
}


class DriftingFeatures:
    """A stream of correlated batches of synthetic stage features.

    Stage ``i`` of sample ``b``: ``F_i = W_i diag(s * (1 + j_b)) Z_i[b] +
    mu_i + noise``, where ``Z`` are ``rank`` latent spatial fields (pooled
    and re-standardised per stage), ``s = decay ** arange(rank)``, ``j_b`` a
    per-sample jitter of std ``jitter``, ``W_i`` loadings and ``mu_i``
    channel means of std ``mean``. Between calls, ``Z`` and ``j`` are partly
    redrawn (a new, correlated batch) and ``W``, ``mu`` drift slightly (a
    training step).
    """

    def __init__(self,
                 shapes: Sequence[Tuple[int, int, int]],
                 batch: int,
                 device: torch.device,
                 nonneg: bool = False,
                 rank: int = 16,
                 decay: float = 0.75,
                 jitter: float = 0.15,
                 noise: float = 0.5,
                 mean: float = 0.3,
                 batch_mix: float = 0.2,
                 weight_drift: float = 0.01,
                 seed: int = 0) -> None:
        self.gen = torch.Generator(device='cpu').manual_seed(seed)
        self.shapes, self.batch, self.device = shapes, batch, device
        self.nonneg, self.rank, self.noise = nonneg, rank, noise
        self.batch_mix, self.weight_drift = batch_mix, weight_drift
        self.jitter_std = jitter
        self.spectrum = decay**torch.arange(rank, dtype=torch.float32)
        self.loadings = [self._randn(c, rank) for c, _, _ in shapes]
        self.means = [mean * self._randn(c) for c, _, _ in shapes]
        self.z = self._randn(batch, rank, *shapes[0][1:])
        self.jitter = self._randn(batch, rank)  # unit std

    def _randn(self, *size: int) -> Tensor:
        return torch.randn(*size, generator=self.gen)

    def _mix(self, x: Tensor, a: float) -> Tensor:
        return math.sqrt(1 - a * a) * x + a * self._randn(*x.shape)

    def next(self) -> List[Tensor]:
        """Advance one step and return the stage features (on device)."""
        self.z = self._mix(self.z, self.batch_mix)
        self.jitter = self._mix(self.jitter, self.batch_mix)
        self.loadings = [
            self._mix(w, self.weight_drift) for w in self.loadings
        ]
        self.means = [self._mix(m, self.weight_drift) for m in self.means]
        scale = self.spectrum * (1 + self.jitter_std * self.jitter)
        feats = []
        for (c, h, w), load, mean in zip(self.shapes, self.loadings,
                                         self.means):
            z = F.adaptive_avg_pool2d(self.z, (h, w))
            z = (z - z.mean((2, 3), keepdim=True)) / z.std(
                (2, 3), keepdim=True)
            f = torch.einsum('cr,br,brhw->bchw', load / math.sqrt(self.rank),
                             scale, z) + mean[:, None, None]
            f = f + self.noise * self._randn(self.batch, c, h, w)
            feats.append((f.relu() if self.nonneg else f).to(self.device))
        return feats


def reference_sigma(tm: Tensor, n_iters: int) -> Tensor:
    """The reference estimator: power iteration on ``TM TM^T`` from ones."""
    k = torch.bmm(tm, tm.transpose(1, 2))
    v = torch.ones(tm.size(0), tm.size(1), 1, device=tm.device)
    for _ in range(n_iters):
        v = torch.bmm(k, v)
        v = v / v.norm(dim=1, keepdim=True)
    return torch.bmm(k, v).norm(dim=1).squeeze(1).sqrt()


FromTMs = Callable[[Sequence[Tensor]], List[Tensor]]
FromFeats = Callable[[Sequence[Tensor]], List[Tensor]]


def tms_of(feats: Sequence[Tensor]) -> List[Tensor]:
    return [transmitting_matrix(a, b) for a, b in zip(feats[:-1], feats[1:])]


def make_estimators(
    cold_iters: int, n_vectors: Sequence[int]
) -> Dict[str, Callable[[], Tuple[FromTMs, FromFeats]]]:
    """Factories of ``(from_tms, from_feats)`` pairs with fresh state.

    ``from_tms`` gets the TMs; ``from_feats`` gets the stage features and
    includes building the TMs -- for ours through
    :meth:`LipschitzLoss.lipschitz_constants`, which never forms a TM in a
    warm step (products with its factors instead).
    """

    def via_tms(fn: Callable[[Tensor], Tensor]) -> Tuple[FromTMs, FromFeats]:
        from_tms = lambda tms: [fn(t) for t in tms]  # noqa: E731
        return from_tms, lambda feats: from_tms(tms_of(feats))

    def ours(warm: bool, k: int) -> Tuple[FromTMs, FromFeats]:
        loss = LipschitzLoss(
            n_iters=2, cold_iters=cold_iters, warm_start=warm, n_vectors=k)
        return (lambda tms:
                [loss.estimate_sigma(t, 'tm', 'student', i)
                 for i, t in enumerate(tms)], loss.lipschitz_constants)

    factories = {
        'ref-5': lambda: via_tms(lambda t: reference_sigma(t, 5)),
        'ref-10': lambda: via_tms(lambda t: reference_sigma(t, 10)),
        f'ours-cold-{cold_iters}': lambda: ours(False, 1),
    }
    for k in n_vectors:
        factories[f'ours-warm-2 k={k}'] = lambda k=k: ours(True, k)
    return factories


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Run ``fn`` once; return its wall time in ms."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def run_model(name: str, args: argparse.Namespace,
              device: torch.device) -> None:
    stream = DriftingFeatures(
        STAGES[name],
        args.batch,
        device,
        nonneg=args.nonneg,
        decay=args.decay,
        jitter=args.jitter,
        noise=args.noise,
        mean=args.mean,
        seed=args.seed)
    factories = make_estimators(args.cold_iters, args.n_vectors)
    # One estimator instance per timing mode, so that the warm state of the
    # error measurement only sees one 2-iteration step per batch.
    est_only = {k: f()[0] for k, f in factories.items()}
    with_tm = {k: f()[1] for k, f in factories.items()}
    fwd_bwd = {k: f()[1] for k, f in factories.items()}
    times = {k: {'est': [], 'tm+est': [], 'fwd+bwd': []} for k in factories}
    times['exact'] = {'est': [], 'tm+est': [], 'fwd+bwd': []}
    errors = {k: 0.0 for k in times}
    gaps = []
    for call in range(args.warmup + args.calls):
        feats = stream.next()
        measured = call >= args.warmup
        with torch.no_grad():
            tms = tms_of(feats)
            svs: List[Tensor] = []  # the exact SVD is also the reference
            t_svd = timed(
                lambda: svs.extend(torch.linalg.svdvals(t) for t in tms),
                device)
            exact = [sv[:, 0] for sv in svs]
            if measured:
                times['exact']['est'].append(t_svd)
                gaps += [(sv[:, 1] / sv[:, 0]).median().item() for sv in svs]
            for k in factories:
                out: List[Tensor] = []
                t_est = timed(lambda: out.extend(est_only[k](tms)), device)
                t_all = timed(lambda: with_tm[k](feats), device)
                if measured:
                    times[k]['est'].append(t_est)
                    times[k]['tm+est'].append(t_all)
                    errors[k] = max(
                        errors[k],
                        max(((s - e).abs() / e).max().item()
                            for s, e in zip(out, exact)))
        for k, est in fwd_bwd.items():
            leaves = [f.detach().requires_grad_() for f in feats]
            t_fb = timed(lambda: sum(s.sum() for s in est(leaves)).backward(),
                         device)
            if measured:
                times[k]['fwd+bwd'].append(t_fb)

    ref10 = statistics.median(times['ref-10']['est'])
    shapes = ', '.join(f'({c},{h},{w})' for c, h, w in STAGES[name])
    print(f'\n{name}: B={args.batch}, stages {shapes}, '
          f"{'post-ReLU' if args.nonneg else 'pre-ReLU'} features, "
          f'{args.calls} calls after {args.warmup} warm-up, device {device}, '
          f'{torch.get_num_threads()} thread(s)')
    print(f'median sigma2/sigma1 of the TMs: {statistics.median(gaps):.3f} '
          f'(range {min(gaps):.3f}-{max(gaps):.3f})')
    header = (f"{'estimator':<18}{'est ms':>10}{'tm+est ms':>11}"
              f"{'fwd+bwd ms':>12}{'max rel err':>13}{'x ref-10':>10}")
    print(header)
    print('-' * len(header))

    def cell(values: List[float], width: int) -> str:
        return f'{statistics.median(values):{width}.2f}' if values else \
            f"{'-':>{width}}"

    for k, t in times.items():
        print(f"{k:<18}{cell(t['est'], 10)}{cell(t['tm+est'], 11)}"
              f"{cell(t['fwd+bwd'], 12)}{errors[k]:13.2e}"
              f"{ref10 / statistics.median(t['est']):10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--quick',
        action='store_true',
        help='seconds-long smoke run (ResNet-18, B=2)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--models', nargs='+', default=list(STAGES), choices=list(STAGES))
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--calls', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--cold-iters', type=int, default=20)
    parser.add_argument(
        '--n-vectors',
        type=int,
        nargs='+',
        default=[1, 4],
        help='LipschitzLoss(n_vectors=...) variants to time')
    parser.add_argument(
        '--nonneg',
        action='store_true',
        help='post-ReLU (non-negative) features')
    parser.add_argument(
        '--decay',
        type=float,
        default=0.75,
        help='ratio of consecutive latent scales')
    parser.add_argument(
        '--jitter',
        type=float,
        default=0.15,
        help='per-sample relative std of the latent scales')
    parser.add_argument('--noise', type=float, default=0.5)
    parser.add_argument(
        '--mean', type=float, default=0.3, help='std of the per-channel means')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch CPU threads (1 is steadier on a shared '
        'machine)')
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch, args.calls, args.warmup = \
            ['resnet18'], 2, 3, 3
        args.threads = args.threads or 1
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}')
    for name in args.models:
        run_model(name, args, device)


if __name__ == '__main__':
    main()
