"""Checkpoints written safely: no planted symlink is written through, no temporary outlives a killed
writer, and a resumed run equals an uninterrupted one step for step."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tinytransformer import _files
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.training.loop import Trainer, TrainingConfig, save_checkpoint

CONFIG = TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)


def _model():
    return TinyTransformer(CONFIG, seed=0)


def test_a_symlink_planted_at_the_old_partial_name_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "model.gguf.partial").symlink_to(victim)
    save_checkpoint(_model(), tmp_path / "model.gguf")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "model.gguf").is_symlink()


def test_a_symlink_planted_at_the_temporary_name_is_not_written_through(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    planted = tmp_path / f".model.gguf.tmp-{os.getpid()}-000000000000"
    planted.symlink_to(victim)
    names = iter([str(planted)])
    real = _files._temporary_name
    monkeypatch.setattr(_files, "_temporary_name", lambda target: next(names, None) or real(target))
    save_checkpoint(_model(), tmp_path / "model.gguf")
    assert victim.read_bytes() == b"precious"
    assert planted.is_symlink()  # ours (this pid, newer than the process): left alone, not followed


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_stale_temporary_of_a_dead_writer_is_removed_by_the_next_save(tmp_path):
    stale = tmp_path / f".model.gguf.tmp-{_dead_pid()}-0123456789ab"
    stale.write_bytes(b"x" * 100)
    other = tmp_path / f".other.gguf.tmp-{_dead_pid()}-0123456789ab"  # another checkpoint's: not ours to judge
    other.write_bytes(b"x")
    old_own = tmp_path / f".model.gguf.tmp-{os.getpid()}-00000000000a"  # this pid's, from before this process
    old_own.write_bytes(b"x")
    os.utime(old_own, (_files._STARTED - 60, _files._STARTED - 60))
    save_checkpoint(_model(), tmp_path / "model.gguf")
    assert not stale.exists() and not old_own.exists()
    assert other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.gguf", other.name])


KILLED_SAVER = """
import sys, time
from tinytransformer import _files
from tinytransformer.model import TinyTransformer, TransformerConfig
from tinytransformer.training.loop import save_checkpoint
real = _files._create_temporary
def slow(target, where):
    fd, name = real(target, where)
    print(name, flush=True)
    time.sleep(60)  # killed here, mid-save
    return fd, name
_files._create_temporary = slow
save_checkpoint(TinyTransformer(TransformerConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2,
                                                  max_seq_len=16), seed=0), sys.argv[1])
"""


def test_a_sigkilled_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    target = tmp_path / "model.gguf"
    save_checkpoint(_model(), target)
    before = target.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(target)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        name = child.stdout.readline().strip()  # the child has created its temporary
        assert name and os.path.exists(name)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert os.path.exists(name) and target.read_bytes() == before  # the old checkpoint is intact
    save_checkpoint(_model(), target)
    assert not os.path.exists(name)
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_a_disk_full_error_names_the_path(tmp_path, monkeypatch):
    real = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="model.gguf.*No space left"):
        save_checkpoint(_model(), tmp_path / "model.gguf")
    monkeypatch.setattr(os, "fsync", real)
    assert list(tmp_path.iterdir()) == []


def _trainer(objective="next-token"):
    if objective == "masked":
        config = TransformerConfig(vocab_size=12, d_model=8, n_layers=1, n_heads=2, max_seq_len=16, causal=False)
        training = TrainingConfig(batch_size=4, context=8, total_steps=20, warmup_steps=5, max_lr=3e-2,
                                  objective="masked", mask_id=11)
    else:
        config, training = CONFIG, TrainingConfig(batch_size=4, context=8, total_steps=20, warmup_steps=5,
                                                  max_lr=3e-2, micro_batches=2)
    return Trainer(TinyTransformer(config, seed=0), np.arange(300) % 11, training)


@pytest.mark.parametrize("objective", ["next-token", "masked"])
def test_a_resumed_run_equals_an_uninterrupted_one_step_for_step(tmp_path, objective):
    straight = _trainer(objective)
    losses = [straight.step()["loss"] for _ in range(20)]
    first = _trainer(objective)
    head = [first.step()["loss"] for _ in range(10)]
    first.save(tmp_path / "ckpt.gguf")
    for _ in range(3):
        first.step()  # steps taken after the save are forgotten by the resume
    second = _trainer(objective).resume(tmp_path / "ckpt.gguf")
    assert second.step_count == 10 and second.optimizer.t == 10
    records = [second.step() for _ in range(10)]
    assert [r["step"] for r in records] == list(range(10, 20))
    np.testing.assert_allclose(head + [r["loss"] for r in records], losses, rtol=1e-6, atol=0)
    for name, p in straight.model.params.items():
        np.testing.assert_allclose(second.model.params[name], p, rtol=1e-5, atol=1e-7, err_msg=name)


def test_resume_refuses_another_config_or_a_plain_checkpoint(tmp_path):
    trainer = _trainer()
    trainer.step()
    trainer.save(tmp_path / "ckpt.gguf")
    other = Trainer(TinyTransformer(CONFIG, seed=0), np.arange(300) % 11, TrainingConfig(batch_size=4, context=8))
    with pytest.raises(ValueError, match="ckpt.gguf.*saved with TrainingConfig"):
        other.resume(tmp_path / "ckpt.gguf")
    save_checkpoint(trainer.model, tmp_path / "plain.gguf")
    with pytest.raises(ValueError, match="plain.gguf.*expected a resumable checkpoint"):
        _trainer().resume(tmp_path / "plain.gguf")


def test_a_flipped_bit_in_tensor_data_is_refused_naming_the_file(tmp_path):
    from tinytransformer.gguf import GGUFError, GGUFFile
    from tinytransformer.llama import load_model

    path = _trainer().save(tmp_path / "ckpt.gguf")
    load_model(path)  # the checksum matches
    with GGUFFile(path) as f:
        where = f.data_offset + f.tensors["blk.0.attn_q.weight"].offset + 5
    data = bytearray(path.read_bytes())
    data[where] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="ckpt.gguf: the tensor data does not match its checksum"):
        load_model(path)
