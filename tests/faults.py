"""Fault injection from outside the training loop, for the recovery tests: a
Ray Train callback, run in the Train controller, that SIGKILLs one worker
process once a given checkpoint is registered."""

import os
import signal

import ray.cloudpickle
import ray.train


class KillWorkerAfterCheckpoint(ray.train.UserCallback):
    """SIGKILL world rank `rank` once, right after the checkpoint reported at
    `global_step` is registered (Ray Train runs user callbacks after its
    checkpoint manager, and registers no later report before this returns),
    so the restart resumes from exactly that checkpoint. `marker`: a file
    written before the kill, the tests' proof that it happened."""

    def __init__(self, rank: int, global_step: int, marker: str):
        self.rank, self.global_step, self.marker = rank, global_step, str(marker)

    def after_report(self, run_context, metrics, checkpoint):
        mine = metrics[self.rank]
        if checkpoint is None or mine.get("global_step") != self.global_step or os.path.exists(self.marker):
            return
        open(self.marker, "w").close()
        os.kill(mine["pid"], signal.SIGKILL)


# the controller cannot import tests/: ship this module's code with the callback
ray.cloudpickle.register_pickle_by_value(__import__(__name__))
