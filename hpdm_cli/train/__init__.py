"""Training system: optimiser, schedule, EMA, loop, checkpoints.

    loop.py         `train(recipe, run_dir)`: the run, its steps, sync points and checkpoints
    step.py         one step's parts (network, precision, compile and its cache file, generator, forward/backward),
                    shared with bench
    init_from.py    `train.init_from`: a model started from another's weights (a pyramid grown by finer levels)
    batches.py      the per-rank stream of training clips (datasets, synthetic data, images as still videos)
    captions.py     the training captions' text embeddings (stored with the dataset, a prompt table or the encoder)
    signals.py      SIGTERM / Ctrl-C: checkpoint at the end of the step, in the loop and its data workers
    optim.py        LAMB, parameter groups, the learning-rate schedule, EMA
    checkpoint.py   checkpoint and weights files: writing, reading, listing, architectures
    run_dir.py      the names of a run directory's parts; is a folder a run, a checkpoint
    distributed.py  torchrun / DDP set-up and collectives
    stats.py        stats.jsonl, TensorBoard and the progress bar
"""

from ..errors import HPDMError


class TrainError(HPDMError, ValueError):
    """A user-fixable problem with a training run (message says what to do)."""
