"""unlearn() and evaluate() leave the caller's global random state (Python, NumPy, torch) as it was."""

import random

import numpy as np
import torch

import unlearnkit
from unlearnkit.adapters.classifier_spec import MLP
from unlearnkit.request import ForgetRequest


def _states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()


def _same(a, b):
    return a[0] == b[0] and (a[1] == b[1]).all() and torch.equal(a[2], b[2])


def test_unlearn_and_evaluate_keep_the_callers_random_state():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g)
    data = [(row, int(row[0] > 0)) for row in x]
    torch.manual_seed(0)
    model = MLP(4, [16], 2)
    request = ForgetRequest(data, forget=range(8), retain=range(8, 80))
    splits = {"forget": request.forget_items(), "retain": request.retain_items()[:36], "test": request.retain_items()[36:]}
    for _ in range(2):  # the first call also imports libraries lazily (rich draws from random at import)
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        before = _states()
        unlearned, _ = unlearnkit.unlearn(model, request, method="random_label", epochs=1)
        assert _same(before, _states())
        unlearnkit.evaluate(unlearned, splits)  # its SVC membership attack drew from np.random on every call
        assert _same(before, _states())
        unlearnkit.load_benchmark("digits")
        assert _same(before, _states())
