"""What ``tools/train.py`` and ``tools/test.py`` (and the demo) do beyond
mmengine's Runner, one module per responsibility (the README's "What
tools/train.py adds" lists it for users):

* :mod:`.args`: the arguments every tool shares, reading the config;
* :mod:`.train_cfg`: the config rewrites and the config checks;
* :mod:`.resume`: ``--resume`` into ``resume``/``load_from``;
* :mod:`.work_dir`: one run per work dir, an earlier run moved aside;
* :mod:`.data_checks`: a training set mmdet would silently shrink;
* :mod:`.run_checks`: a built run that would train, or end, without a
  word.

The top floor of the package: nothing in ``mmlckd`` imports it.
"""
