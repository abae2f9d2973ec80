"""A tiny run config for the run-record tests: the ce method on synthetic 8x8 images, 3 steps per epoch."""

from __future__ import annotations

from pathlib import Path

import yaml

RECORD_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt", "student.pt")


def write_tiny_config(tmp_path: Path, name: str = "r", epochs: int = 2, **sections) -> Path:
    """``tmp_path/tiny.yaml``: a run named ``name`` under ``tmp_path/runs`` (sections merged over the defaults)."""
    config = {
        "model": {"student": "convnet_xs"},
        "data": {
            "name": "synthetic",
            "num_classes": 4,
            "image_size": 8,
            "channels": 3,
            "train_size": 48,
            "test_size": 16,
            "batch_size": 16,
            "augment": "crop_flip",
            "crop_padding": 2,
        },
        "method": {"name": "ce"},
        "optim": {"lr": 0.05, "milestones": [1]},
        "train": {"epochs": epochs, "device": "cpu", "threads": 1, "run_dir": str(tmp_path / "runs"), "name": name},
        "log": {"progress": "off"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def record_bytes(run_dir: Path) -> dict[str, bytes]:
    """The bytes of a run's record files that exist."""
    return {n: (run_dir / n).read_bytes() for n in RECORD_FILES if (run_dir / n).is_file()}
