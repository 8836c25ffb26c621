"""The parts of ``benchmarks/distill_step_bench.py``, one module per thing
it measures (``benchmarks/README.md`` defines every mode and ratio):

* :mod:`.common`: the models (recipe, default distiller, each term alone),
  the batches, the clocks and the train steps of every phase;
* :mod:`.steps`: the interleaved step timings of one family;
* :mod:`.schedule`: the 1x schedule, the amortised cost, the targets;
* :mod:`.memory`: the peak memory of each mode, in forked children;
* :mod:`.sweep`: the batch / image-size sweep;
* :mod:`.syncs`: host-device syncs per step (CUDA) and the profile;
* :mod:`.report`: what is printed;
* :mod:`.cli`: the command line.
"""
