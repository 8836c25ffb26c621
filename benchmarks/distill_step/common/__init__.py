"""What every measurement of the distillation step shares: the models
(:mod:`.configs`), the batches (:mod:`.data`), the train steps of every
phase (:mod:`.bench`) and the clocks (:mod:`.clock`)."""
