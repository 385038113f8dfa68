"""Run under torchrun by tests/test_engine.py: a tiny detection run whose every rank records its own losses.

Usage: torchrun --nproc_per_node 2 detection_rank_losses.py DATA OUT
Writes OUT/rank<R>.json with that rank's per-step training losses; rank 0 also writes the run
directory (OUT/run) as `botnet detect train` does.
"""

import json
import os
import sys
from pathlib import Path

import torch

from botnet.detection.train import DetectionTrainer, TrainConfig


class RecordingTrainer(DetectionTrainer):
    """A DetectionTrainer that keeps every step's loss of this rank."""

    def step(self, batch):
        out = super().step(batch)
        self.losses.append(float(out["loss"]))
        return out


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    config = TrainConfig(
        data=str(data), out=str(out / "run"), val_split="none", epochs=1, batch_size=2, workers=0, progress=False,
        backbone="botnet_tiny", returned_layers=[2, 3, 4], fpn_channels=32, box_head_size=64, mask_head_channels=16,
        box_batch_size=64, rpn_post_nms_train=200, min_size=64, max_size=96, warmup_epochs=0.0,
    )
    trainer = RecordingTrainer(config)
    trainer.losses = []
    trainer.fit()
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps(trainer.losses))


if __name__ == "__main__":
    main()
