"""BoTNet as a Mask R-CNN / Faster R-CNN backbone (torchvision), any image size.

Everything runs on CPU with botnet_tiny, small FPN / heads and 64-128 px
images, so the whole file stays within about two minutes.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from botnet import create_model
from botnet.detection import (
    anchor_generator_for,
    botnet_fpn_backbone,
    build_detector,
    fasterrcnn_botnet_fpn,
    freeze_batchnorm,
    maskrcnn_botnet_fpn,
)
from botnet.detection.checkpoint import detector_meta, load_detector, save_detector
from botnet.detection.models import DetectorConfig, build_from_config
from botnet.detection.data import CocoDetection, collate, make_synthetic_shapes, split_paths
from botnet.detection.metrics import coco_evaluate, to_coco_results

pycocotools = pytest.importorskip("pycocotools")
# pycocotools' own decode under numpy 2; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# A CPU-sized Mask R-CNN: botnet_tiny (strides 2..8 for layers 2-4), narrow FPN and heads.
SMALL = dict(
    returned_layers=(2, 3, 4), fpn_channels=32, box_head_size=128, mask_head_channels=32,
    min_size=64, max_size=128, box_batch_size_per_image=64, rpn_post_nms_top_n_train=200,
)


def small_maskrcnn(num_classes: int = 4, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return maskrcnn_botnet_fpn("botnet_tiny", num_classes=num_classes, **{**SMALL, **kwargs})


def box_target(height: int, width: int, boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[int(y0):int(y1), int(x0):int(x1)] = 1
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "masks": masks}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_synthetic_shapes(root, {"train": 12, "val": 6}, min_size=64, max_size=96, seed=3)
    return root


# --- backbone ------------------------------------------------------------------------------------

def test_backbone_levels_follow_the_models_strides():
    backbone = botnet_fpn_backbone("botnet_tiny", returned_layers=(2, 3, 4), out_channels=32)
    assert backbone.out_channels == 32
    assert backbone.strides == (2, 4, 8, 16)
    for height, width in ((64, 96), (72, 40)):  # not multiples of the stride either
        features = backbone(torch.randn(1, 3, height, width))
        assert list(features) == ["0", "1", "2", "pool"]
        for feature, stride in zip(features.values(), backbone.strides):
            assert feature.shape == (1, 32, -(-height // stride), -(-width // stride))


def test_botnet50_backbone_matches_torchvision_layout():
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = botnet_fpn_backbone("botnet50")
    assert backbone.strides == (4, 8, 16, 32, 64)
    assert backbone.featmap_names == ["0", "1", "2", "3"]
    # From scratch: every stage trains, with ordinary BN (torchvision's rule without weights).
    assert all(p.requires_grad for p in backbone.parameters())
    ours = anchor_generator_for(backbone.strides)
    default = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    assert [a.tolist() for a in ours.cell_anchors] == [a.tolist() for a in default.cell_anchors]


def test_freeze_batchnorm_keeps_the_function():
    model = create_model("botnet_tiny", num_classes=0)
    with torch.no_grad():  # non-trivial statistics, so the copy is checked
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(2, 3, 40, 48)
    expected = model(x)
    frozen = freeze_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(frozen.train()(x), expected, rtol=1e-5, atol=1e-5)  # frozen even in train mode


def test_trainable_layers_and_resnet_weights():
    source = create_model("resnet_tiny", num_classes=0).state_dict()
    backbone = botnet_fpn_backbone("botnet_tiny", weights=source, returned_layers=(2, 3, 4), out_channels=32)
    assert backbone.load_report is not None and backbone.load_report.loaded
    body = backbone.body
    # Conv stages come from the ResNet; BN is frozen with its statistics; 3 stages train.
    torch.testing.assert_close(body.layer2[0].conv2.weight, source["layer2.0.conv2.weight"])
    torch.testing.assert_close(body.layer3[0].bn1.running_var, source["layer3.0.bn1.running_var"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    trains = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trains == {"layer2", "layer3", "layer4"}
    assert all(p.requires_grad for p in backbone.fpn.parameters())

    with pytest.raises(ValueError, match="trainable_layers must be in 0..5"):
        botnet_fpn_backbone("botnet_tiny", trainable_layers=6)
    with pytest.warns(UserWarning, match="freezes randomly initialised"):
        botnet_fpn_backbone("botnet_tiny", trainable_layers=2)
    with pytest.raises(ValueError, match="norm_layer must be"):
        botnet_fpn_backbone("botnet_tiny", norm_layer=nn.GroupNorm)
    with pytest.raises(ValueError, match="no tensor of the source fits the model"):
        botnet_fpn_backbone("botnet_tiny", weights={"unrelated.weight": torch.zeros(3)})


# --- detectors -----------------------------------------------------------------------------------

def test_training_step_with_two_image_sizes():
    model = small_maskrcnn().train()
    attention_table = next(p for n, p in model.named_parameters() if "attn.pos" in n)
    # The BoT block's last BN starts at gamma 0 (authors' init), which would stop
    # every gradient into the attention at the first step; open the path.
    nn.init.ones_(model.backbone.body.layer4[0].bn3.weight)
    batches = [  # every image its own size, and the two batches differ too
        ([torch.rand(3, 64, 96), torch.rand(3, 80, 64)],
         [box_target(64, 96, [[10, 8, 50, 40]], [1]), box_target(80, 64, [[5, 30, 40, 75], [42, 2, 60, 20]], [2, 3])]),
        ([torch.rand(3, 112, 128)], [box_target(112, 128, [[20, 20, 90, 100]], [3])]),
    ]
    for images, targets in batches:
        model.zero_grad()
        losses = model(images, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        # Gradients reach the stem and the attention position tables through the whole detector.
        assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
        assert attention_table.grad is not None and attention_table.grad.abs().sum() > 0


def test_inference_output_format():
    model = small_maskrcnn(box_score_thresh=0.0).eval()
    sizes = [(64, 96), (100, 72)]
    with torch.no_grad():
        outputs = model([torch.rand(3, h, w) for h, w in sizes])
    assert len(outputs) == 2
    for output, (height, width) in zip(outputs, sizes):
        n = len(output["boxes"])
        assert n > 0
        assert output["boxes"].shape == (n, 4) and output["boxes"].dtype == torch.float32
        assert output["labels"].shape == (n,) and output["labels"].dtype == torch.int64
        assert output["masks"].shape == (n, 1, height, width)  # pasted back at the input's own size
        boxes = output["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert set(output["labels"].tolist()) <= {1, 2, 3}
        scores = output["scores"]
        assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()
        assert ((output["masks"] >= 0) & (output["masks"] <= 1)).all()


def test_resnet50_detector_is_torchvisions_maskrcnn_resnet50_fpn():
    """Same modules, names and function: torchvision's COCO weights load into ours."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    options = dict(num_classes=5, min_size=64, max_size=96, box_detections_per_img=20)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **options)
    ours = maskrcnn_botnet_fpn("resnet50", **options)
    ours.load_state_dict(reference.state_dict())  # strict: every key and shape matches
    images = [torch.rand(3, 64, 90)]
    with torch.no_grad():
        expected, got = reference.eval()(images)[0], ours.eval()(images)[0]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_faster_rcnn_and_builder_options():
    torch.manual_seed(0)
    model = fasterrcnn_botnet_fpn("botnet_tiny", num_classes=3, **{k: v for k, v in SMALL.items() if k != "mask_head_channels"})
    losses = model.train()([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([2])}])
    assert "loss_mask" not in losses and torch.isfinite(sum(losses.values()))
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,))  # 8 x strides 2..16
    with pytest.raises(ValueError, match="at least 2"):
        build_detector("maskrcnn", 1, "botnet_tiny")
    with pytest.raises(ValueError, match="arch must be"):
        build_detector("retinanet", 3, "botnet_tiny")


# --- data ----------------------------------------------------------------------------------------

def test_synthetic_shapes_are_consistent(shapes):
    dataset = CocoDetection(*split_paths(shapes, "train"), with_masks=True)
    assert dataset.class_names == ["rectangle", "ellipse", "triangle"] and dataset.num_classes == 4
    assert not dataset.report
    sizes = set()
    for index in range(len(dataset)):
        image, target = dataset[index]
        sizes.add(tuple(image.shape[1:]))
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert len(target["boxes"]) >= 1
        for box, mask in zip(target["boxes"], target["masks"]):  # each box is its mask's tight box
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert len(sizes) > 5  # images of many sizes
    # Same seed, same files.
    again = make_synthetic_shapes(shapes / "again", {"train": 12, "val": 6}, min_size=64, max_size=96, seed=3)
    assert again["train"][1].read_text() == split_paths(shapes, "train")[1].read_text()


def test_training_flip_moves_boxes_with_masks(shapes):
    dataset = CocoDetection(*split_paths(shapes, "train"), train=True)
    torch.manual_seed(0)
    flipped = 0
    plain = CocoDetection(*split_paths(shapes, "train"))
    for index in range(len(dataset)):
        image, target = dataset[index]
        original, _ = plain[index]
        if not torch.equal(image, original):
            flipped += 1
            torch.testing.assert_close(image, original.flip(-1))
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert 0 < flipped < len(dataset)


def _write_coco(root: Path, annotations: list[dict], images: list[dict] | None = None) -> tuple[Path, Path]:
    from PIL import Image

    images = images or [{"id": 1, "file_name": "a.png", "height": 64, "width": 80}]
    (root / "img").mkdir(parents=True, exist_ok=True)
    for info in images:
        Image.new("RGB", (info["width"], info["height"]), (20, 20, 20)).save(root / "img" / info["file_name"])
    ann_file = root / "ann.json"
    categories = [{"id": 7, "name": "thing"}, {"id": 9, "name": "other"}]
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root / "img", ann_file


def _ann(ann_id: int, bbox: list[float], category_id: int = 7, **extra) -> dict:
    x, y, w, h = bbox
    polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": 1, "category_id": category_id, "bbox": bbox, "iscrowd": 0,
            "segmentation": [polygon], "area": w * h, **extra}


def test_bad_annotations_are_cleaned_and_counted(tmp_path):
    anns = [
        _ann(1, [10, 10, 20, 20]),  # fine
        _ann(2, [60, 50, 40, 30], category_id=9),  # reaches outside the 80x64 image: clipped
        _ann(3, [30, 30, 0, 10]),  # zero width: dropped
        _ann(4, [100, 100, 5, 5]),  # entirely outside: nothing left after clipping, dropped
        _ann(5, [5, 40, 10, 10], segmentation=[]),  # no mask: dropped for Mask R-CNN
        _ann(6, [40, 5, 10, 10], iscrowd=1),  # crowd: left out of training targets
        _ann(7, [50, 5, 10, 10], segmentation=[[200, 200, 210, 200, 210, 210]]),  # mask outside the image
    ]
    images, ann_file = _write_coco(tmp_path, anns)
    with pytest.warns(UserWarning, match="1 boxes clipped to the image") as record:
        dataset = CocoDetection(images, ann_file)
    message = str(record[0].message)
    assert "2 degenerate boxes" in message and "1 annotations without a usable mask" in message and "1 crowd" in message
    assert dataset.category_ids == [7, 9] and dataset.class_names == ["thing", "other"]
    with pytest.warns(UserWarning, match="1 annotation.* whose mask has no pixel"):
        image, target = dataset[0]
    assert target["boxes"].tolist() == [[10, 10, 30, 30], [60, 50, 80, 64]]
    assert target["labels"].tolist() == [1, 2]  # COCO ids 7, 9 -> contiguous labels
    assert target["masks"].shape == (2, 64, 80) and target["masks"].flatten(1).any(1).all()
    # The cleaned targets train without trouble.
    losses = small_maskrcnn(num_classes=dataset.num_classes).train()([image], [target])
    assert torch.isfinite(sum(losses.values()))

    # Without masks (Faster R-CNN) the mask rules do not apply.
    with pytest.warns(UserWarning):
        boxes_only = CocoDetection(images, ann_file, with_masks=False)
    assert len(boxes_only[0][1]["boxes"]) == 4 and "masks" not in boxes_only[0][1]


@pytest.mark.parametrize(
    ("annotation", "error", "match"),
    [
        (_ann(1, [1, 1, 5, 5], category_id=3), ValueError, r"category_id 3.*known category ids: \[7, 9\]"),
        ({**_ann(1, [1, 1, 5, 5]), "image_id": 42}, ValueError, "annotation 1 has image_id 42"),
        ({**_ann(1, [1, 1, 5, 5]), "bbox": [1, 2, 3]}, ValueError, r"bad bbox.*expected \[x, y, width, height\]"),
    ],
)
def test_broken_annotations_raise_clear_errors(tmp_path, annotation, error, match):
    images, ann_file = _write_coco(tmp_path, [annotation])
    with pytest.raises(error, match=match):
        CocoDetection(images, ann_file)


def test_missing_and_mismatched_images(tmp_path):
    images, ann_file = _write_coco(tmp_path, [_ann(1, [1, 1, 5, 5])])
    (images / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="not in"):
        CocoDetection(images, ann_file)
    images, ann_file = _write_coco(tmp_path, [_ann(1, [1, 1, 5, 5])],
                                   images=[{"id": 1, "file_name": "a.png", "height": 64, "width": 80}])
    payload = json.loads(ann_file.read_text())
    payload["images"][0]["width"] = 81
    ann_file.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="image is 80x64 .* says 81x64"):
        CocoDetection(images, ann_file)[0]
    with pytest.raises(FileNotFoundError, match="no annotation file"):
        CocoDetection(images, tmp_path / "nope.json")


# --- metrics -------------------------------------------------------------------------------------

def test_ground_truth_as_detections_scores_perfect_map(shapes):
    dataset = CocoDetection(*split_paths(shapes, "val"))
    results = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        n = len(target["boxes"])
        output = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.linspace(1, 0.5, n),
                  "masks": target["masks"][:, None].float()}
        results += to_coco_results(output, target["image_id"], dataset.category_ids)
    metrics = coco_evaluate(dataset.coco, results, ["bbox", "segm"])
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)
    # Shifted boxes lose AP at the strict thresholds; no detections at all score 0.
    shifted = [{**r, "bbox": [r["bbox"][0] + 0.3 * r["bbox"][2], *r["bbox"][1:]]} for r in results]
    degraded = coco_evaluate(dataset.coco, shifted, ["bbox"])["bbox"]
    assert degraded["AP"] < 0.5 and degraded["AP50"] == pytest.approx(1.0)
    assert coco_evaluate(dataset.coco, [], ["bbox"])["bbox"]["AP"] == 0.0


# --- learning ------------------------------------------------------------------------------------

def test_short_cpu_training_lowers_loss_and_finds_the_shapes(tmp_path):
    """60 AdamW steps of 4 images (64-80 px) from scratch, then COCO mAP on 12 held-out images.

    Measured on the 2-core CPU (2026-11-21, this exact setup with seeds 0, 1, 2
    for the init / sampling): loss of the last 4 steps / first 4 = 0.41, 0.41,
    0.40; box AP 0.238, 0.356, 0.309 (AP50 0.41-0.63); mask AP 0.28-0.41;
    about 17 s of training. The thresholds sit at about half the worst seed:
    box AP > 0.12 (mask AP too), AP50 > 0.2, loss ratio < 0.6.
    """
    from torch.utils.data import DataLoader, RandomSampler

    from functools import partial

    from botnet.detection.evaluate import evaluate
    from botnet.detection.train import detection_step
    from botnet.training.engine import train_one_epoch
    from botnet.training.optim import lr_schedule

    steps = 60
    paths = make_synthetic_shapes(tmp_path, {"train": 48, "val": 12}, min_size=64, max_size=80, max_objects=2, seed=0)
    train_set, val_set = CocoDetection(*paths["train"], train=True), CocoDetection(*paths["val"])
    model = small_maskrcnn(max_size=80)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=1e-4)
    scheduler = lr_schedule(optimizer, steps, 5, "cosine")
    sampler = RandomSampler(train_set, replacement=True, num_samples=4 * steps, generator=torch.Generator().manual_seed(0))
    losses: list[float] = []
    train_one_epoch(model, partial(detection_step, model), DataLoader(train_set, batch_size=4, sampler=sampler,
                    collate_fn=collate), optimizer, scheduler=scheduler,
                    on_step=lambda values: losses.append(values["loss"]))
    assert len(losses) == steps
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4]), losses

    metrics = evaluate(model, DataLoader(val_set, batch_size=4, collate_fn=collate), torch.device("cpu"),
                       val_set.coco, val_set.category_ids, ["bbox", "segm"])
    assert metrics["bbox"]["AP"] > 0.12, metrics
    assert metrics["bbox"]["AP50"] > 0.2, metrics
    assert metrics["segm"]["AP"] > 0.12, metrics


# --- checkpoints ---------------------------------------------------------------------------------

def test_detector_save_load_round_trip(tmp_path):
    config = DetectorConfig(
        arch="maskrcnn", backbone="botnet_tiny", num_classes=3, norm="frozen", trainable_layers=3,
        returned_layers=[2, 3, 4], fpn_channels=32, box_head_size=64, mask_head_channels=16,
        backbone_kwargs={"ref_img_size": 48}, detector_kwargs={"min_size": 64, "max_size": 96, "box_score_thresh": 0.0},
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_from_config(config).eval()
    meta = detector_meta(model, config, class_names=["a", "b"], category_ids=[1, 2])
    save_detector(tmp_path / "run" / "best.safetensors", model, meta)
    loaded, loaded_meta = load_detector(tmp_path / "run")
    assert loaded_meta == meta
    image = [torch.rand(3, 70, 90)]
    with torch.no_grad():
        expected, got = model(image)[0], loaded(image)[0]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    assert isinstance(loaded.backbone.body.bn1, FrozenBatchNorm2d)

    from botnet.checkpoint import save_model

    save_model(tmp_path / "classifier.safetensors", create_model("botnet_tiny", num_classes=10))
    with pytest.raises(ValueError, match="not a detector"):
        load_detector(tmp_path / "classifier.safetensors")


# --- command line --------------------------------------------------------------------------------

CLI_MODEL = [
    "--backbone", "botnet_tiny", "--returned-layers", "2", "3", "4", "--fpn-channels", "32", "--box-head-size", "64",
    "--mask-head-channels", "16", "--box-batch-size", "64", "--rpn-post-nms-train", "200",
    "--min-size", "64", "--max-size", "96", "--workers", "0", "--batch-size", "4", "--warmup-epochs", "1",
]


def test_cli_train_resume_eval_predict(tmp_path, capsys):
    from PIL import Image

    from botnet.cli import main

    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["detect", "make-synthetic", str(data), "--train", "8", "--val", "4", "--min-size", "64",
                 "--max-size", "96"]) == 0
    train = ["detect", "train", "--data", str(data), "--out", str(run), *CLI_MODEL]
    assert main([*train, "--epochs", "1", "--no-progress"]) == 0

    def epochs() -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    first = epochs()
    assert [r["epoch"] for r in first] == [1] and "bbox_AP" in first[0] and "segm_AP" in first[0]
    assert {"best.pt", "last.pt", "best.safetensors", "last.safetensors", "config.json", "manifest.json"} <= {
        p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.suffix == ".tmp"]
    assert json.loads((run / "config.json").read_text())["task"] == "detection"

    # Resuming continues after epoch 1 with the run's own settings (none repeated here) and the
    # optimizer state; other model options are refused.
    assert main(["detect", "train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in epochs()] == [1, 2]
    assert main(["detect", "train", "--resume", str(run), "--epochs", "3", "--fpn-channels", "16"]) == 2
    assert "cannot change fpn_channels when resuming (32 in the checkpoint, 16 given)" in capsys.readouterr().err
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["detect", "train", "--resume", str(run), "--epochs", "2"]) == 0  # complete: nothing to train
    assert "already complete" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # and nothing written

    metrics_file = tmp_path / "metrics.json"
    assert main(["detect", "eval", "--checkpoint", str(run), "--data", str(data), "--workers", "0",
                 "--json", str(metrics_file)]) == 0
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics) == {"bbox", "segm"} and 0 <= metrics["bbox"]["AP"] <= 1

    out = tmp_path / "pred"
    assert main(["detect", "predict", str(data / "val"), "--checkpoint", str(run / "last.pt"), "--out", str(out),
                 "--score-threshold", "0", "--json", str(tmp_path / "det.json")]) == 0
    pngs = sorted(out.glob("*_det.png"))
    assert len(pngs) == 4
    with Image.open(pngs[0]) as drawn, Image.open(sorted((data / "val").glob("*.png"))[0]) as source:
        assert min(drawn.size) >= 384 and drawn.size[0] * source.size[1] == drawn.size[1] * source.size[0]
    detections = json.loads((tmp_path / "det.json").read_text())
    assert len(detections) == 4 and all(d["detections"] for d in detections)


def test_cli_errors_are_one_line(tmp_path, capsys, shapes):
    from botnet.cli import main

    # Sizes whose attention cannot fit are refused before any step (botnet_tiny attends at stride 4).
    assert main(["detect", "train", "--data", str(shapes), "--out", str(tmp_path / "big"), "--backbone", "botnet_tiny",
                 "--min-size", "2000", "--max-size", "2000"]) == 2
    assert "GiB of attention logits per image" in capsys.readouterr().err

    assert main(["detect", "eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "botnet detect: error: no best/last" in capsys.readouterr().err
    assert main(["detect", "train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "no annotation file" in capsys.readouterr().err
    assert main(["detect", "predict", str(tmp_path / "none.png"), "--checkpoint", str(tmp_path),
                 "--out", str(tmp_path)]) == 2
    assert "no image or folder" in capsys.readouterr().err


def test_frozen_resnet_start_keeps_the_bot_blocks_trainable():
    """With ResNet weights and frozen BN, the BoT blocks (no ResNet statistics to freeze) keep trainable
    BatchNorm: frozen at their zero-initialised last gamma they would never pass a gradient to attention."""
    from botnet.layers import BoTBlock

    source = create_model("resnet_tiny", num_classes=0).state_dict()
    backbone = botnet_fpn_backbone("botnet_tiny", weights=source, returned_layers=(2, 3, 4), out_channels=16)
    body = backbone.body
    bot = [m for m in body.modules() if isinstance(m, BoTBlock)]
    assert bot and all(isinstance(m.bn3, nn.BatchNorm2d) for m in bot)
    assert isinstance(body.layer3[0].bn1, FrozenBatchNorm2d) and isinstance(body.bn1, FrozenBatchNorm2d)
    features = backbone(torch.randn(2, 3, 48, 48))
    sum(f.float().pow(2).mean() for f in features.values()).backward()
    for block in bot:
        assert block.attn.qkv.weight.grad.abs().sum() > 0 or block.bn3.weight.grad.abs().sum() > 0
    # The rule does not depend on the weights, so a saved detector is rebuilt with the same modules.
    scratch = botnet_fpn_backbone("botnet_tiny", norm_layer="frozen", returned_layers=(2, 3, 4), out_channels=16)
    assert [type(m) for m in scratch.body.modules()] == [type(m) for m in body.modules()]


def test_blocks_take_a_norm_layer():
    frozen = create_model("botnet_tiny", num_classes=5, norm_layer=FrozenBatchNorm2d).eval()
    plain = create_model("botnet_tiny", num_classes=5).eval()
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    frozen.load_state_dict(plain.state_dict(), strict=False)  # FrozenBatchNorm2d drops num_batches_tracked
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), plain(x))
