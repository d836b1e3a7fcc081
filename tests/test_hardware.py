"""Which process writes the workdir, read from TF_CONFIG (the strategies run in test_train and
test_multi_worker)."""
import json
import tempfile

import pytest

from facekp.train import hardware


def set_tf_config(monkeypatch, cluster, task_type, index):
  monkeypatch.setenv("TF_CONFIG", json.dumps(
      {"cluster": cluster, "task": {"type": task_type, "index": index}}))


def test_worker_0_is_the_chief_unless_the_cluster_names_one(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  assert hardware.is_chief() and hardware.num_workers() == 0
  workers = {"worker": ["localhost:1", "localhost:2"]}
  set_tf_config(monkeypatch, workers, "worker", 0)
  assert hardware.is_chief() and hardware.num_workers() == 2
  set_tf_config(monkeypatch, workers, "worker", 1)
  assert not hardware.is_chief()
  with_chief = dict(workers, chief=["localhost:3"])
  set_tf_config(monkeypatch, with_chief, "worker", 0)
  assert not hardware.is_chief() and hardware.num_workers() == 3
  set_tf_config(monkeypatch, with_chief, "chief", 0)
  assert hardware.is_chief()


def test_a_worker_writes_a_temporary_folder_it_deletes(monkeypatch, tmp_path):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  set_tf_config(monkeypatch, {"worker": ["localhost:1", "localhost:2"]}, "worker", 1)
  with hardware.WriterDir(tmp_path / "workdir") as writer:
    assert not writer.chief and writer.path.startswith(str(tmp_path))
    (tmp_path / writer.path / "history.csv").write_text("epoch\n")
  assert list(tmp_path.iterdir()) == []


def test_tf_config_that_is_not_json_is_named(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", "{cluster: 1}")
  with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
    hardware.num_workers()
