import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from geomlab.plots.e1 import pareto_figure  # noqa: E402


def _tables(methods):
    eps = [1e-4, 1e-3]
    agg = pd.DataFrame(
        [{"epsilon": e, "method": m, "kl_step_mean": e, "kl_step_std": 0.0,
          "delta_loss_mean": e * (2 if m != "sgd" else 1), "delta_loss_std": 0.0,
          "kl_ratio_mean": 1.0, "kl_ratio_std": 0.0} for m in methods for e in eps]
    )  # fmt: skip
    adv = {m: pd.DataFrame({"epsilon": eps, "advantage_pct": [100.0, 100.0],
                            "advantage_pct_seed_std": [0.0, 0.0]})
           for m in methods if m != "sgd"}  # fmt: skip
    return agg, adv


def test_one_advantage_curve_per_method_against_sgd():
    agg, adv = _tables(["sgd", "natgrad", "kfac", "ekfac"])
    fig = pareto_figure(agg, adv)
    panel = fig.axes[1]
    assert [t.get_text() for t in panel.get_legend().get_texts()] == [
        "Natural gradient", "K-FAC", "EK-FAC"
    ]  # fmt: skip
    assert panel.get_ylabel() == "Advantage over SGD (%)"


def test_natural_gradient_alone_keeps_the_notebook_panel():
    agg, adv = _tables(["sgd", "natgrad"])
    for advantage in (adv, adv["natgrad"]):
        panel = pareto_figure(agg, advantage).axes[1]
        assert panel.get_ylabel() == "NG advantage (%)"
        assert panel.get_legend() is None
        assert len(panel.lines) >= 1
