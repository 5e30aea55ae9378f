"""Models split over devices: ``device_map`` reaches TransformerLens and gives the same numbers.

Only CPUs here: ``device_map="auto"`` then places every layer on the CPU, which still runs the
whole loading path (accelerate's dispatch on a bridge, ``n_devices`` handling on TL 2.x/3.x).
"""

from __future__ import annotations

import pytest
import torch

from tlprobe.access import load_model, resid_hook_names, resid_stack, run_batch
from tlprobe.access.models import ModelLoadError


def test_device_map_auto_gives_the_numbers_of_one_device():
    split = load_model("minilm", device_map="auto")
    one = load_model("minilm", device="cpu")
    prompts = ["The cat sat on the mat.", "Tea came to Europe by ship."]
    a = resid_stack(run_batch(split, prompts, names=resid_hook_names(split)).cache)
    b = resid_stack(run_batch(one, prompts, names=resid_hook_names(one)).cache)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_device_and_device_map_together_are_refused():
    with pytest.raises(ModelLoadError, match="not both"):
        load_model("minilm", device="cpu", device_map="auto")
