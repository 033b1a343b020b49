"""The invariance protocol runs one loop for any model: softmax regression's analytic case and
the same model as an nn.Module agree, and NG is invariant in function space where SGD is not."""

import torch
from torch import nn

from geomlab.data.synthetic import gaussian_clusters
from geomlab.geometry import reparam
from geomlab.geometry.natural_gradient import SolveSpec
from geomlab.models import softmax_regression as sr
from geomlab.models.modes import eval_mode


def test_one_protocol_for_the_analytic_case_and_any_model():
    inputs, labels = gaussian_clusters(n_samples=300, n_features=6, n_classes=3, seed=0)
    weight = sr.init_weights(3, 6, seed=0)
    options = {"scalings": list(reparam.Scaling), "kappas": [1.0, 100.0], "eta": 1e-2,
               "solve": SolveSpec(rcond=1e-8), "gate_rel_tol": None, "gate_c_tol": 1e-5,
               "scope": "seed=0"}  # fmt: skip
    analytic = reparam.invariance(
        reparam.softmax_regression_case(weight, inputs, labels, pattern_seed=3), **options
    )
    linear = nn.Linear(6, 3, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
    with eval_mode(linear):
        case = reparam.model_case(linear, [(inputs, labels)], loss="cross_entropy",
                                  pattern_seed=3, dense=True)  # fmt: skip
        generic = reparam.invariance(case, **options)
    assert [g.name for g in analytic.gates] == [g.name for g in generic.gates]
    assert all(g.passed for g in analytic.gates + generic.gates)
    assert len(analytic.rows) == len(generic.rows) == 4  # 2 scalings x kappa 100 x 2 methods
    for a, b in zip(analytic.rows, generic.rows, strict=True):
        assert (a["scaling"], a["kappa"], a["method"]) == (b["scaling"], b["kappa"], b["method"])
        assert abs(a["max_diff"] - b["max_diff"]) <= 1e-6 * a["max_diff"] + 1e-10
        if a["method"] == "natgrad":
            assert a["logit_diff"] < 1e-10 and b["logit_diff"] < 1e-10
        else:
            assert a["logit_diff"] > 1e-4
    assert len(analytic.cutoffs) == 1 + 2  # the reference solve, then one per rescaling
