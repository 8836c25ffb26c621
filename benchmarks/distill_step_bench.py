"""Benchmark one LONDON distillation train step against its parts.

For RetinaNet, Faster R-CNN and DeepLabV3+ (the recipes' nets in
``configs/``, random init), times side by side and interleaved (a) the
plain student's train step, (b) the teacher's no-grad forward as deep as
the distiller's recorded layers need and (c) the distiller's train step in
each phase of its loss balancer (steady, calibration, gradient share), for
the README's drop-in distiller (every argument default: balanced weights)
and for each of its terms alone, and prints

* ``steady = t_steady / (t_student + t_teacher)``;
* ``amortised``: the same for the mean step of the recipe's 1x schedule
  (calibration steps, gradient-share steps and the NaN guard included);
* ``calibration = t_calibration / t_steady``;
* ``memory = peak_distill / (peak_student + teacher_weights_and_activations)``;

a table of these against issue 21's targets (PASS/MISS), and a batch /
image-size sweep of the terms' share of the step. ``benchmarks/README.md``
defines every mode and ratio and keeps the measured tables; the code is in
``benchmarks/distill_step/``, one module per measurement.

Usage (with mmlckd installed, or ``PYTHONPATH=.`` from the repository
root)::

    python benchmarks/distill_step_bench.py                  # CPU, minutes
    python benchmarks/distill_step_bench.py --quick          # seconds (CI)
    python benchmarks/distill_step_bench.py --threads 1 --no-sweep
    python benchmarks/distill_step_bench.py --threads 2 --no-sweep
    python benchmarks/distill_step_bench.py --device cuda [--amp]
    python benchmarks/distill_step_bench.py --models retinanet --no-sweep \\
        --json out.json
"""
from distill_step.cli import main

if __name__ == '__main__':
    main(description=__doc__.split('\n')[0])
