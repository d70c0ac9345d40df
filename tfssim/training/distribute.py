"""Distribution: the strategy, which process is the chief, failure all-reduce, the multi-worker loop.

Under ``strategy="multiworker"`` only the chief (task 0) writes the run folder, and training runs
in a custom distributed loop instead of ``model.fit`` (see :func:`_custom_fit`).
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfssim.errors import InputError


def _make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "multiworker":
        # Must run before anything initialises the TF runtime (even listing logical devices).
        if "TF_CONFIG" not in os.environ:
            raise InputError("--strategy multiworker needs the TF_CONFIG environment variable describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def _strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy's public name, or ``"default"`` for TensorFlow's no-distribution strategy."""
    # tf.distribute.MultiWorkerMirroredStrategy is the class CollectiveAllReduceStrategy.
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    name = type(strategy).__name__
    # tf.distribute.get_strategy() outside any scope: the private _DefaultDistributionStrategy
    return "default" if name.startswith("_") else name


def _strategy_label(strategy: tf.distribute.Strategy) -> str:
    """For the banner: ``default (1 device)`` or ``MirroredStrategy (2 replica(s))``."""
    name = _strategy_name(strategy)
    if name == "default":
        return "default (1 device)"
    return f"{name} ({strategy.num_replicas_in_sync} replica(s))"


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process is the chief, the one that writes the run folder.

    TensorFlow's rule (``tensorflow.python.distribute.multi_worker_util.is_chief``): the
    ``chief`` task (and an ``evaluator``, which runs on its own) is chief; worker 0 is chief only
    when the cluster has no ``chief`` task; no cluster (one process) is chief. It is also the
    task that holds replica 0 (``multi_worker_util.id_in_cluster``), which ``_from_chief`` uses.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if not task_type:
        return True
    if task_type in ("chief", "evaluator"):
        return True
    has_chief_task = bool(resolver.cluster_spec().as_dict().get("chief"))
    return task_type == "worker" and int(resolver.task_id or 0) == 0 and not has_chief_task


def _from_chief(strategy: tf.distribute.Strategy, tensors: Sequence[Any]) -> list[tf.Tensor]:
    """Every worker gets task 0's values of ``tensors`` (one all-reduce of a flat float64 vector).

    Only the chief reads the run folder, so on ``--resume`` the other workers take the epoch
    count and the restored weights from it. Replica 0 lives on the chief (task 0: the chief,
    else worker 0), as ``_is_chief`` decides.
    """
    values = [tf.convert_to_tensor(t) for t in tensors]
    flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1]) for v in values], 0)

    def pick(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
        return flat if ctx.replica_id_in_sync_group == 0 else tf.zeros_like(flat)

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.experimental_distribute_values_from_function(pick),
                            axis=None)
    parts = tf.split(total, [int(np.prod(v.shape)) for v in values])
    return [tf.cast(tf.reshape(part, v.shape), v.dtype) for part, v in zip(parts, values)]


def _custom_fit(model: keras.Model, strategy: tf.distribute.Strategy, train_ds: tf.data.Dataset,
                val_patches: np.ndarray | None, *, batch_size: int, epochs: int, initial_epoch: int, steps: int,
                callbacks: list[keras.callbacks.Callback], verbose: int, jit_compile: bool) -> None:
    """``model.fit`` as a custom loop, for MultiWorkerMirroredStrategy only.

    Keras 3 (checked up to 3.15.1) cannot ``fit`` under MultiWorkerMirroredStrategy
    (keras-team/keras#20585: ``_maybe_symbolic_build`` reduces the first PerReplica batch, and
    ``reduce_per_replica`` reduces the scalar logs along axis 0), while TensorFlow runs the
    strategy fine. The step is ``fit``'s own: ``model.compute_loss`` (Keras divides each replica's
    mean loss by the number of replicas, so their SUM is the global batch's mean), the
    optimizer's loss scaling, and ``apply_gradients``, which all-reduces (sums) the gradients.
    ``batch_size`` is the global batch: each global batch of the index-seeded pipeline is split
    across the replicas, so the patches seen match a one-device run. The callbacks (the run
    state, TensorBoard, Keras's progress bar) get the same calls and logs as under ``fit``.
    """
    sum_ = tf.distribute.ReduceOp.SUM
    replicas = strategy.num_replicas_in_sync
    options = tf.data.Options()
    # Every worker builds the same global batches and keeps its replicas' share of each
    # (the pipeline has no files to shard by).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_dist = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    val_dist = None
    if val_patches is not None:
        val_ds = tf.data.Dataset.from_tensor_slices((val_patches, val_patches)).batch(batch_size)
        val_dist = strategy.experimental_distribute_dataset(val_ds.with_options(options))

    def replica_gradients(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            scaled = model.optimizer.scale_loss(loss)
        return loss, tape.gradient(scaled, model.trainable_weights)

    def replica_test_loss(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Summed per patch, so the uneven last batch (some replicas may get none) weighs right.
        count = tf.cast(tf.shape(x)[0], tf.float32)
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
        return loss * replicas * count, count

    if jit_compile:
        # XLA compiles the model, loss and gradients; the update stays outside, because XLA
        # cannot compile collectives on CPU ("Collectives are not yet implemented for CPU
        # devices when compiling with XLA").
        replica_gradients = tf.function(replica_gradients, jit_compile=True)
        replica_test_loss = tf.function(replica_test_loss, jit_compile=True)

    def replica_train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        loss, gradients = replica_gradients(x, y)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_weights))
        return loss

    @tf.function
    def train_step(iterator: Any) -> tf.Tensor:
        return strategy.reduce(sum_, strategy.run(replica_train_step, args=next(iterator)), axis=None)

    @tf.function
    def test_step(batch: Any) -> tuple[tf.Tensor, tf.Tensor]:
        total, count = strategy.run(replica_test_loss, args=batch)
        return strategy.reduce(sum_, total, axis=None), strategy.reduce(sum_, count, axis=None)

    callback_list = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, model=model,
                                                 verbose=verbose, epochs=epochs, steps=steps)
    model.stop_training = False
    iterator = iter(train_dist)
    logs: dict[str, float] = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            # The reduced loss is the same on every worker, so all stop at the same step.
            total += float(train_step(iterator))
            logs = {"loss": total / (step + 1)}
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        if val_dist is not None and math.isfinite(logs["loss"]):
            val_total, val_count = 0.0, 0.0
            for batch in val_dist:
                batch_total, batch_count = test_step(batch)
                val_total, val_count = val_total + float(batch_total), val_count + float(batch_count)
            logs["val_loss"] = val_total / max(val_count, 1.0)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)


class _StoppedElsewhere(InputError):
    """Another worker of a multi-worker run failed before training; this one stops too."""


@contextlib.contextmanager
def _all_workers(strategy: tf.distribute.Strategy, chief: bool) -> Iterator[None]:
    """Run a block that may fail on some workers only; afterwards every worker knows whether one did.

    Under MultiWorkerMirroredStrategy a worker that raises while the others go on leaves them
    waiting in their next collective (hung, or a TensorFlow error when the health check notices
    the dead peer). Here each worker ends the block with one small all-reduce of "did I fail"
    (and "was it the chief"): a worker that failed re-raises its own error, the others raise
    :class:`_StoppedElsewhere` (a ``ValueError``: the CLI's one ``Error:`` line, exit 2). The
    block must run no collective itself (or the same ones on every worker up to its failure).
    A no-op under the other strategies, which run in one process.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    try:
        yield
    except Exception:
        _count_failures(strategy, chief, failed=True)
        raise
    chief_failed, failed = _count_failures(strategy, chief, failed=False)
    if chief_failed:
        raise _StoppedElsewhere(
            "the chief stopped before training (its Error: line names the problem, e.g. a run folder that exists "
            "without --resume); fix that and start every worker again"
        )
    if failed:
        raise _StoppedElsewhere(
            "another worker stopped before training (its Error: line names the problem); fix that and start every "
            "worker again"
        )


def _count_failures(strategy: tf.distribute.Strategy, chief: bool, failed: bool) -> tuple[bool, bool]:
    """(did the chief fail, did any worker fail): one all-reduce over every replica of the cluster."""
    flags = tf.constant([float(failed and chief), float(failed)], tf.float32)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM,
                            strategy.experimental_distribute_values_from_function(lambda ctx: flags), axis=None)
    chief_failed, any_failed = (float(v) for v in total.numpy())
    return chief_failed > 0, any_failed > 0
