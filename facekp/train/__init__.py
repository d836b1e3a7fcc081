"""Training: a config and a dataset -> a workdir with checkpoints, history and model.keras.

In: a config (facekp/configs/*.py, checked by config_rules) and a dataset folder. Out: the
workdir that facekp.core.workdir describes. The loop (loop) runs under a tf.distribute strategy
with mixed precision (hardware), resumes from its backups (checkpointing) and reports (callbacks).
"""
