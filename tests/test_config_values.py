"""Settings from ``-c`` files are checked like flags: read as the text written, parsed by the flag's parser.

Before: YAML's own typing gave ``out: 2024-01-01`` a date, ``out: 123`` an
int, ``model: yes`` a bool and ``model_kwargs: {heads: many}`` reached the
model unchecked; each ended in a TypeError traceback. Now a value either means
what the same text after its flag means, or is one line naming the file, the
key, what was expected and what was given (exit 2).
"""

from __future__ import annotations

import pytest

from botnet.cli import build_parser, main
from botnet.cli._options import config_overrides
from botnet.training.config import load_config_file


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own exit
        return int(stop.code)


def _config_class(command: tuple[str, ...]) -> type:
    if command == ("train",):
        from botnet.classification.train import TrainConfig
    else:
        from botnet.detection.train import TrainConfig
    return TrainConfig


TRAIN, DETECT = ("train",), ("detect", "train")

# (command, YAML text, the key as the message names it, what is expected, what was given)
REFUSED = [
    (TRAIN, "model_kwargs: {heads: many}", "'model_kwargs' model option 'heads'", "must be an integer", "'many'"),
    (TRAIN, "model_kwargs: [heads=many]", "'model_kwargs' model option 'heads'", "must be an integer", "'many'"),
    (TRAIN, "model_kwargs: {heads: 2.5}", "'model_kwargs' model option 'heads'", "must be an integer", "'2.5'"),
    (TRAIN, "model_kwargs: {se_ratio: lots}", "'model_kwargs' model option 'se_ratio'", "must be a number", "'lots'"),
    (TRAIN, "model_kwargs: {zero_init_last: maybe}", "'model_kwargs' model option 'zero_init_last'",
     "must be true or false", "'maybe'"),
    (TRAIN, "model_kwargs: {act: [relu]}", "'model_kwargs' model option 'act'", "must be text", "['relu'] (list)"),
    (TRAIN, "model_kwargs: {ref_img_size: [8, 8, 8]}", "'model_kwargs' model option 'ref_img_size'",
     "must be one side or [height, width]", "['8', '8', '8']"),
    (TRAIN, "model_kwargs: {stages: 3}", "'model_kwargs' model option 'stages'", "must be four stages", "'3'"),
    (TRAIN, "model_kwargs: {heads: null}", "'model_kwargs' model option 'heads'", "must be given", "got nothing"),
    (TRAIN, "model_kwargs: {drop_rate: 0.1}", "'model_kwargs' entry 'drop_rate'", "set by the run", "--drop-rate"),
    (TRAIN, "model_kwargs: {num_classes: 3}", "'model_kwargs' entry 'num_classes'", "set by the run", "class count"),
    (TRAIN, "model_kwargs: {headz: 2}", "'model_kwargs' unknown model option(s) ['headz']", "valid options", "heads"),
    (TRAIN, "model_kwargs: 5", "'model_kwargs'", "must be key=value pairs", "'5'"),
    (TRAIN, "out: [a, b]", "'out'", "must be a single value", "['a', 'b'] (a list)"),
    (TRAIN, "model: {name: x}", "'model'", "must be a single value", "{'name': 'x'}"),
    (TRAIN, "model: null", "'model'", "must be given", "got nothing"),
    (TRAIN, "epochs: 2.5", "'epochs'", "must be an integer", "'2.5'"),
    (TRAIN, "epochs: 0x10", "'epochs'", "must be an integer", "'0x10'"),  # the flag refuses it too
    (TRAIN, "amp: maybe", "'amp'", "must be true or false", "'maybe'"),
    (TRAIN, "epoch: 3", "unknown key 'epoch'", "did you mean", "'epochs'"),
    (DETECT, "backbone: [botnet50]", "'backbone'", "must be a single value", "['botnet50']"),
    (DETECT, "norm: yes", "'norm'", "must be one of frozen, bn, syncbn", "'yes'"),
    (DETECT, "returned_layers: [1, x]", "'returned_layers'", "must be an integer", "'x'"),
    (DETECT, "max_train_images: many", "'max_train_images'", "must be an integer", "'many'"),
    (DETECT, "data: null", "'data'", "must be given", "got nothing"),
]


@pytest.mark.parametrize(("command", "text", "key", "expected", "given"), REFUSED,
                         ids=[f"{' '.join(c)}:{t}" for c, t, *_ in REFUSED])
def test_a_wrong_value_in_a_config_file_is_one_line_naming_file_key_expected_and_given(
        tmp_path, capsys, command, text, key, expected, given):
    path = tmp_path / "settings.yaml"
    path.write_text(text + "\n")
    code = _run([*command, "-c", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith(f"botnet {command[0]}: error: {str(path)!r}: "), line
    for piece in (key, expected, given):
        assert piece in line, (piece, line)
    assert not (tmp_path / "run").exists()  # refused before anything was made


# (command, YAML text, key, the value the flag's parser gives for the text as written)
ACCEPTED = [
    (TRAIN, "out: 2024-01-01", "out", "2024-01-01"),  # YAML: a date
    (TRAIN, "out: 123", "out", "123"),  # YAML: an int
    (TRAIN, "out: 017", "out", "017"),  # YAML 1.1: the octal 15
    (TRAIN, "model: yes", "model", "yes"),  # YAML 1.1: True
    (TRAIN, "data_dir: on", "data_dir", "on"),  # YAML 1.1: True
    (TRAIN, "data_dir: 1_000", "data_dir", "1_000"),  # YAML 1.1: 1000
    (TRAIN, "data_dir: ~", "data_dir", None),  # null where the setting allows nothing
    (TRAIN, "amp: on", "amp", True),
    (TRAIN, "lr: 1e-3", "lr", 0.001),
    (TRAIN, "epochs: '7'", "epochs", 7),
    (TRAIN, "model_kwargs: {heads: 2, ref_img_size: [8, 12], act: silu, dim_head: null}", "model_kwargs",
     {"heads": 2, "ref_img_size": [8, 12], "act": "silu", "dim_head": None}),
    (TRAIN, "model_kwargs: [heads=2, zero_init_last=no]", "model_kwargs", {"heads": 2, "zero_init_last": False}),
    (DETECT, "data: 2024-01-01", "data", "2024-01-01"),
    (DETECT, "val_split: no", "val_split", "no"),
    (DETECT, "train_split: 2017", "train_split", "2017"),
    (DETECT, "returned_layers: [2, 3]", "returned_layers", [2, 3]),
]


@pytest.mark.parametrize(("command", "text", "key", "value"), ACCEPTED,
                         ids=[f"{' '.join(c)}:{t}" for c, t, *_ in ACCEPTED])
def test_a_config_value_means_what_its_text_means_after_the_flag(tmp_path, command, text, key, value):
    cls = _config_class(command)
    path = tmp_path / "settings.yaml"
    path.write_text(text + "\n")
    from_file = load_config_file(path, cls)
    assert from_file == {key: value}
    config = cls(**from_file)
    config.validate()  # what a run checks again before it starts
    assert getattr(config, key) == value
    if value is None:
        return
    # The same text after the flag gives the same value (the flag's parser is the file's).
    written = text.split(":", 1)[1].strip().strip("'")
    if key == "model_kwargs" or isinstance(value, (list, bool)):
        return  # structured values (YAML in a file, items after a flag) and switches (flags without a value)
    args = build_parser().parse_args([*command, f"--{key.replace('_', '-')}", written])
    assert config_overrides(args, cls)[key] == value


def test_settings_built_in_python_get_the_same_check():
    from botnet import create_model
    from botnet.classification.train import TrainConfig

    with pytest.raises(ValueError, match=r"^--out must be text, got 2024 \(int\)$"):
        TrainConfig(out=2024).validate()
    with pytest.raises(ValueError, match=r"^model option 'heads' must be an integer, got 'many'$"):
        create_model("botnet_tiny", heads="many")
    with pytest.raises(ValueError, match="--model-kwargs entry 'in_chans' is set by the run: use --in-chans"):
        TrainConfig(model_kwargs={"in_chans": 1}).validate()


def test_model_kwargs_flag_is_checked_at_parsing(capsys):
    code = _run(["train", "--model-kwargs", "heads=many"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--model-kwargs" in err and "'heads' must be an integer, got 'many'" in err
