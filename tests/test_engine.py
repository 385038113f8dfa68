"""The one epoch loop (botnet.training.engine): micro-batches, means over ranks, the non-finite policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from botnet.training.engine import micro_batch, train_one_epoch

SRC = Path(__file__).resolve().parents[1] / "src"


def _linear_step(model: nn.Module):
    def step(batch):
        inputs, targets = batch
        outputs = model(inputs)
        return {"loss": nn.functional.mse_loss(outputs, targets), "count": torch.tensor(inputs.shape[0]),
                "hits": (outputs.sign() == targets.sign()).sum()}

    return step


def test_micro_batches_interleave_every_entry():
    batch = (torch.arange(6), [f"t{i}" for i in range(6)])
    first, second = micro_batch(batch, 0, 2), micro_batch(batch, 1, 2)
    assert first[0].tolist() == [0, 2, 4] and first[1] == ["t0", "t2", "t4"]
    assert second[0].tolist() == [1, 3, 5] and micro_batch(batch, 0, 1) is batch


def test_means_are_weighted_by_count_and_accumulation_gives_the_same_step():
    """Two micro-batches of 4 give the gradient of one batch of 8 (a mean loss), and the epoch means are
    sums over every item divided by the item count, whatever the batch sizes."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(20, 3), torch.randn(20, 1)
    loader = [(inputs[:8], targets[:8]), (inputs[8:16], targets[8:16]), (inputs[16:], targets[16:])]  # 8, 8, 4
    results = []
    for accum in (1, 2):
        torch.manual_seed(1)
        model = nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        result = train_one_epoch(model, _linear_step(model), loader, optimizer, accum_steps=accum)
        results.append((model.weight.detach().clone(), result))
    (w1, r1), (w2, r2) = results
    torch.testing.assert_close(w1, w2)
    assert r1.images == r2.images == 20 and r1.steps == 3
    # Recompute the first run's logged means by hand: every batch's loss before its own step.
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_sum = hits = 0.0
    for x, y in loader:
        out = model(x)
        loss = nn.functional.mse_loss(out, y)
        loss_sum += float(loss.detach()) * len(x)
        hits += float((out.sign() == y.sign()).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert r1.means["loss"] == pytest.approx(loss_sum / 20, rel=1e-6)
    assert r1.means["hits"] == pytest.approx(hits / 20)
    assert 0 <= r1.data_wait <= 1


def test_a_non_finite_loss_stops_before_the_update():
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.full((2, 3), float("nan")), torch.zeros(2, 1))]
    with pytest.raises(FloatingPointError, match=r"loss is not finite at epoch 3, step 1 \(loss=nan\)"):
        train_one_epoch(model, _linear_step(model), loader, optimizer, epoch=2)
    assert torch.equal(model.weight, before)


@pytest.mark.slow
def test_detection_logs_the_mean_loss_over_ranks(tmp_path):
    """2 gloo processes: the training loss in metrics.jsonl is the mean over both ranks' steps, not rank 0's."""
    pytest.importorskip("pycocotools")
    from botnet.detection.data import make_synthetic_shapes

    data = tmp_path / "data"
    make_synthetic_shapes(data, {"train": 8, "val": 2}, min_size=64, max_size=96, max_objects=2, seed=0)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).parent / "scripts" / "detection_rank_losses.py"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(data), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 8 images, 2 per step, 2 ranks
    means = [sum(losses) / len(losses) for losses in ranks]
    assert means[0] != pytest.approx(means[1], rel=1e-3)  # the ranks saw different images
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert logged == pytest.approx(sum(means) / 2, rel=1e-6)
