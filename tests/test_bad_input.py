"""Bad input raises clear errors that name the primitive, the argument and the shapes."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcgrad as fg
from funcgrad.cli import main


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul.*a\.shape=\(2, 3\).*b\.shape=\(4, 5\)"):
        fg.matmul(jnp.ones((2, 3)), jnp.ones((4, 5)))


def test_matmul_batch_mismatch():
    with pytest.raises(ValueError, match=r"matmul.*\(2,\).*\(3,\)"):
        fg.matmul(jnp.ones((2, 3, 4)), jnp.ones((3, 4, 5)))


def test_dense_wrong_weight_shape():
    with pytest.raises(ValueError, match=r"dense: argument 'w' must have shape \(in, out\) = "
                                         r"\(3, out\).*got w\.shape=\(4, 2\)"):
        fg.dense(jnp.ones((5, 3)), jnp.ones((4, 2)), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"dense: argument 'b'.*\(2,\).*got b\.shape=\(3,\)"):
        fg.dense(jnp.ones((5, 3)), jnp.ones((3, 2)), jnp.zeros(3))


def test_add_shapes_that_cannot_broadcast():
    with pytest.raises(ValueError, match=r"add: shapes do not broadcast.*x\.shape=\(2, 3\).*"
                                         r"y\.shape=\(4,\)"):
        fg.add(jnp.ones((2, 3)), jnp.ones(4))


def test_errors_happen_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="mul: shapes do not broadcast"):
        jax.jit(fg.mul)(jnp.ones(2), jnp.ones(3))


def test_float_labels_are_rejected():
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: argument 'labels' must have "
                                        r"an integer dtype.*float32"):
        fg.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))


def test_label_shape_and_range():
    with pytest.raises(ValueError, match=r"labels\.shape=\(3,\)"):
        fg.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        fg.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3]))


def test_non_numeric_argument():
    with pytest.raises(TypeError, match="relu: argument 'x' must be an array or a number; "
                                        "got str"):
        fg.relu("1.0")
    with pytest.raises(TypeError, match="power: argument 'p'"):
        fg.power(jnp.ones(2), jnp.ones(2))


def test_batch_norm_shapes():
    with pytest.raises(ValueError, match=r"batch_norm: argument 'gamma'.*\(3,\).*\(4,\)"):
        fg.batch_norm(jnp.ones((4, 3)), jnp.ones(4), jnp.zeros(3))
    with pytest.raises(ValueError, match="N >= 2"):
        fg.batch_norm(jnp.ones((1, 3)), jnp.ones(3), jnp.zeros(3))


def test_reduction_axis_out_of_range():
    with pytest.raises(ValueError, match="sum: argument 'axis' 2 is out of range"):
        fg.sum(jnp.ones((2, 3)), axis=2)


def test_integer_inputs_promote_to_float():
    assert fg.add(1, 2).dtype == jnp.float32
    assert fg.exp(jnp.arange(3)).dtype == jnp.float32


# ------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv,message", [
    (["train", "--seed", "99999999999999999999"], "--seed must be in [0, 4294967295]"),
    (["train", "--seed", "-1"], "--seed must be in [0, 4294967295]"),
    (["flow", "--seed", "1e3"], "--seed must be an integer; got '1e3'"),
    (["explain", "--learning-rate", "nan"], "--learning-rate must be a finite number; got nan"),
    (["train", "--lr", "inf"], "--lr must be a finite number > 0; got inf"),
    (["train", "--momentum", "1"], "--momentum must be in [0, 1); got 1"),
])
def test_cli_rejects_bad_numbers_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["flow", "--quick"]])
def test_cli_out_that_is_a_file_fails_before_any_work(command, tmp_path, capsys):
    existing = tmp_path / "taken"
    existing.write_text("mine")
    t0 = time.perf_counter()
    assert main([*command, "--out", str(existing)]) == 2
    assert time.perf_counter() - t0 < 10  # refused up front, not after training
    err = capsys.readouterr().err
    assert f"funcgrad {command[0]}: error: --out must be a directory; got '{existing}'" in err
    assert existing.read_text() == "mine"


# ------------------------------------------------------------------------- fit
def test_fit_rejects_negative_labels_and_unknown_options():
    params = fg.nn.init_mlp(jax.random.PRNGKey(0), [2, 3])
    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, -1, 2])
    apply_fn = fg.nn.mlp
    with pytest.raises(ValueError, match="fit: argument 'train' labels y must be class "
                                         "indices >= 0; got -1"):
        fg.fit(params, (x, y), apply_fn=apply_fn, tx=fg.optimizer(0.1))
    with pytest.raises(TypeError, match="fit: unexpected keyword argument 'epoch'"):
        fg.fit(params, (x, abs(y)), apply_fn=apply_fn, tx=fg.optimizer(0.1), epoch=2)
    with pytest.raises(TypeError, match="fit: argument 'apply_fn'.*or 'loss_fn' is required"):
        fg.fit(params, (x, abs(y)), tx=fg.optimizer(0.1))


def test_fit_rejects_labels_beyond_the_model_output():
    """A label >= the output width made every loss NaN and every step skipped, silently."""
    params = fg.nn.init_mlp(jax.random.PRNGKey(0), [2, 3])
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="fit: argument 'train' labels y must be < 3, the "
                                         "width of apply_fn's output; got 7"):
        fg.fit(params, (x, np.array([0, 1, 7, 2])), apply_fn=fg.nn.mlp, tx=fg.optimizer(0.1))
    with pytest.raises(ValueError, match="fit: argument 'eval_data' labels y must be < 3"):
        fg.fit(params, (x, np.array([0, 1, 2, 2])), apply_fn=fg.nn.mlp, tx=fg.optimizer(0.1),
               eval_data=(x, np.array([3, 0, 0, 0])))


def test_cli_second_run_on_a_locked_checkpoint_dir_is_one_line(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint")
    from funcgrad.checkpoint import CheckpointManager

    out = tmp_path / "run"
    with CheckpointManager(tmp_path / "ck", keep=2, every=10):  # a live run holds the lock
        rc = main(["train", "--epochs", "1", "--hidden", "8", "--no-progress",
                   "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("funcgrad train: error: "), err
    assert not (out / "metrics.jsonl").exists()  # refused before writing anything
