"""``python -m benchmarks.autoencoder_ceiling`` runs end to end on a phantom cohort and a tiny latent model (the ACDC
data it is meant for stay outside the repository): one row per model on the card's own patients, the reconstructions
are the slices through the model's autoencoder, and a model without an autoencoder is refused."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from CMRSynthLib.audit.slices import Slices
from CMRSynthLib.training.checkpoint import load_checkpoint
from CMRSynthLib.training.loop import Trainer
from training_fixtures import phantom, tiny_flow, train_config  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]


def benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.autoencoder_ceiling", *args], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_ceiling_table_and_its_reconstructions(phantom, tiny_flow, tmp_path):  # noqa: F811
    from benchmarks.autoencoder_ceiling import reconstruct

    model = tmp_path / "ldm"
    Trainer(train_config(phantom, model, family="ldm", max_steps=6, autoencoder_fraction=0.5)).run()
    run = benchmark("--data", str(phantom), "--model", str(model), "--out", str(tmp_path / "out"),
                    "--segmenter-steps", "20")
    assert run.returncode == 0, run.stderr[-3000:]
    header, _, row = (tmp_path / "out" / "autoencoder_ceiling.md").read_text(encoding="utf-8").splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    generator, card = load_checkpoint(model)
    assert cells[0] == str(model) and cells[1] == f"{len(card['members'])} / {len(card['holdout'])}"
    assert 0 <= float(cells[3].split()[0]) <= 1 and len(cells[4].split(" (")[0].split(" / ")) == 3

    images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32)).astype(np.float32)
    slices = Slices(images, np.zeros((3, 32, 32), np.uint8), ["p"] * 3, ["A"] * 3, ["ED"] * 3, ["NOR"] * 3)
    recon = reconstruct(generator.eval(), slices)
    with torch.no_grad():
        expected = generator.autoencoder.decode(generator.autoencoder.encode(torch.from_numpy(images)[:, None]))
    assert np.allclose(recon.images, expected[:, 0].clamp(-1, 1).numpy(), atol=1e-5)
    assert np.array_equal(recon.masks, slices.masks) and list(recon.patients) == ["p"] * 3

    refused = benchmark("--data", str(phantom), "--model", str(tiny_flow))
    assert refused.returncode != 0 and "only a latent model (ldm) has an autoencoder" in refused.stderr
