"""The `botnet` command line: info and error handling."""

from __future__ import annotations

import json
import subprocess
import sys

from botnet.cli import main


def test_info_side_by_side(capsys) -> None:
    assert main(["info", "botnet50"]) == 0
    out = capsys.readouterr().out
    assert "20,852,008" in out and "25,557,032" in out
    assert "196 / 49" in out  # attention positions per head in c5


def test_info_json_and_size(capsys) -> None:
    assert main(["info", "botnet_tiny", "--img-size", "32", "48", "--compare", "none", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    stages = data["botnet_tiny"]["stages"]
    assert [s["name"] for s in stages] == ["stem", "c2", "c3", "c4", "c5", "head"]
    assert stages[4]["out_shape"] == [1, 512, 4, 6]
    assert stages[4]["attention_positions"] == [96]  # 8x12 before the pool
    assert data["botnet_tiny"]["total_params"] == sum(s["params"] for s in stages)


def test_user_errors_are_one_line(capsys) -> None:
    assert main(["info", "botnet5O"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("botnet info: error: unknown model 'botnet5O'") and "Traceback" not in err
    assert main(["info", "botnet50", "--img-size", "16", "16"]) == 2
    assert "at least 32 px" in capsys.readouterr().err


def test_module_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "botnet", "info", "--list"], capture_output=True, text=True)
    assert result.returncode == 0 and "botnet_s1_128" in result.stdout
