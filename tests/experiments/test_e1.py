import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from geomlab.config import ConfigError
from geomlab.data.synthetic import gaussian_clusters
from geomlab.experiments import e1_pareto, get
from geomlab.geometry.gates import psd_gate_from_eigenvalues
from geomlab.geometry.natural_gradient import SolveSpec, softmax_regression_kl_matched_steps
from geomlab.models import softmax_regression as sr

FIXTURE = Path(__file__).parents[1] / "fixtures" / "e1_notebook_cpu.json"


@pytest.fixture(scope="module")
def notebook_rows() -> pd.DataFrame:
    return pd.DataFrame(json.loads(FIXTURE.read_text())["rows"])


@pytest.fixture(scope="module")
def paper_rows() -> pd.DataFrame:
    """Every (seed, eps, method) of the paper configuration, computed by the library."""
    cfg = e1_pareto.Config()
    inputs, labels = gaussian_clusters(n_samples=cfg.n_samples, n_features=cfg.n_features,
                                       n_classes=cfg.n_classes, seed=cfg.data_seed)  # fmt: skip
    eps = torch.tensor(cfg.epsilon_values, dtype=torch.float64)
    frames = []
    for kl_measurement in ("exact", "notebook"):
        for seed in cfg.seed_list:
            weight = sr.init_weights(cfg.n_classes, cfg.n_features, seed=seed)
            pair = softmax_regression_kl_matched_steps(
                weight,
                inputs,
                labels,
                eps,
                solve=SolveSpec(rcond=cfg.rcond),
                kl_measurement=kl_measurement,
            )
            gate = psd_gate_from_eigenvalues(pair.solves["natgrad"].inverse.eigenvalues,
                                             rel_tol=1e-7)  # fmt: skip
            assert gate.passed
            frame = pd.DataFrame(e1_pareto.records(pair), columns=e1_pareto.RAW_COLUMNS[1:])
            frame["seed"] = seed
            frame["kl_measurement"] = kl_measurement
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_loss_reductions_match_the_notebook_to_1e9_relative(notebook_rows, paper_rows):
    ours = paper_rows[paper_rows["kl_measurement"] == "exact"]
    merged = notebook_rows.merge(ours, on=["seed", "epsilon", "method"], suffixes=("_nb", ""))
    assert len(merged) == len(notebook_rows) == 180
    for column in ("loss_before", "loss_after", "delta_loss", "eta"):
        rel = ((merged[column] - merged[f"{column}_nb"]).abs() / merged[f"{column}_nb"].abs()).max()
        assert rel < 1e-9, column
    ng = merged[merged["method"] == "natgrad"]
    assert (ng["cos_g_v"] - ng["cos_g_v_nb"]).abs().max() < 1e-12


def test_notebook_kl_switch_reproduces_the_notebooks_defective_kl(notebook_rows, paper_rows):
    ours = paper_rows[paper_rows["kl_measurement"] == "notebook"]
    merged = notebook_rows.merge(ours, on=["seed", "epsilon", "method"], suffixes=("_nb", ""))
    rel = ((merged["kl_step"] - merged["kl_step_nb"]).abs() / merged["kl_step_nb"]).max()
    assert rel < 1e-6
    # ... and that number carries no information: it is ~1e-9 for every epsilon.
    assert merged["kl_step"].max() < 1e-8


def test_exact_measured_kl_tracks_target_and_ratio_tends_to_one(paper_rows):
    exact = paper_rows[paper_rows["kl_measurement"] == "exact"]
    by_eps = exact.groupby("epsilon")["kl_ratio"].agg(lambda r: (r - 1).abs().max())
    assert by_eps.iloc[0] < 3e-3  # smallest epsilon
    assert by_eps.is_monotonic_increasing
    assert (exact["kl_step"] > 0).all()


def test_natural_gradient_beats_sgd_at_matched_kl(paper_rows):
    exact = paper_rows[paper_rows["kl_measurement"] == "exact"]
    raw = exact.rename(columns={})
    adv = e1_pareto.relative_advantage(raw)
    assert (adv["advantage_pct"] > 0).all()
    agg = e1_pareto.aggregate(raw)
    assert list(agg.columns[:8]) == [
        "epsilon", "method", "delta_loss_mean", "delta_loss_std",
        "kl_step_mean", "kl_step_std", "kl_ratio_mean", "kl_ratio_std",
    ]  # fmt: skip
    assert (agg["n_seeds"] == 10).all()


def test_alias_and_presets():
    assert get("ng-pareto") is not None and get("ng-pareto").name == "e1"
    quick = get("e1").make_config("quick")
    assert quick.n_seeds < 10
    assert get("e1").make_config("paper") == e1_pareto.Config()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"epsilon_values": [1e-3, -1.0]}, "epsilon_values.1"),
        ({"n_classes": 1}, "n_classes"),
        ({"rcond": -1}, "rcond"),
        ({"n_seeds": 0}, "n_seeds"),
        ({"dtype": "float16"}, "dtype"),
        ({"n_classes": 20}, "n_features"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        get("e1").make_config("paper", overrides)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown config key.*'n_sample'"):
        get("e1").make_config("paper", {"n_sample": 10})


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="paper, quick"):
        get("e1").make_config("huge")


def test_runaway_steps_fail_a_gate_and_stay_out_of_the_means(tmp_path, fake_context):
    config = get("e1").make_config(
        "quick", {"n_samples": 200, "n_seeds": 2, "epsilon_values": [1e-3, 1e3]}
    )
    result = e1_pareto.run(config, fake_context(tmp_path))
    gate = next(g for g in result.gates if g.name == "kl_runaway")
    assert not gate.passed and not result.gates_passed
    assert gate.details["n_runaway"] >= 2 and "1000" in gate.message
    raw = pd.read_csv(tmp_path / "E1_results_raw.csv")
    assert len(raw) == 8  # every step is still recorded ...
    agg = pd.read_csv(tmp_path / "E1_results_aggregated.csv")
    assert set(agg["epsilon"]) == {1e-3}  # ... but the runaway ones enter no mean
    summary = json.loads((tmp_path / "E1_summary.json").read_text())
    assert summary["kl_gate_passed"] is False
    assert [r["epsilon"] for r in summary["relative_advantage_by_epsilon"]] == [1e-3]


def test_float32_passes_gate_a_with_a_dtype_scaled_tolerance(tmp_path, fake_context):
    config = get("e1").make_config("quick", {"n_samples": 500, "n_seeds": 3, "dtype": "float32"})
    result = e1_pareto.run(config, fake_context(tmp_path))
    gates = pd.read_csv(tmp_path / "E1_gate_validation.csv")
    assert gates["gate_a_passed"].all()
    assert (gates["rel_tol"] > 1e-5).all()  # P * eps(float32), not the float64 default
    assert result.summary["kl_gate_passed"] is True


def test_kl_band_must_contain_one():
    with pytest.raises(ConfigError, match="kl_ratio_max"):
        get("e1").make_config("paper", {"kl_ratio_max": 0.9})


def test_any_model_writes_the_same_artifacts_plus_solver_diagnostics(tmp_path, fake_context):
    overrides = {"model": "mlp", "mlp_hidden": [8], "n_samples": 200, "n_seeds": 1,
                 "epsilon_values": [1e-6, 1e-3], "methods": ["sgd", "natgrad", "kfac", "ekfac"],
                 "solver": "cg", "damping": 1e-3, "cg_tol": 1e-8}  # fmt: skip
    config = get("e1").make_config("quick", overrides)
    result = e1_pareto.run(config, fake_context(tmp_path))
    raw = pd.read_csv(tmp_path / "E1_results_raw.csv")
    assert list(raw.columns) == e1_pareto.RAW_COLUMNS + [
        "solver", "damping", "cg_iterations", "relative_residual", "null_space_share",
        "direction_seconds", "cg_tol", "solve_converged", "dropped_above_floor",
    ]  # fmt: skip
    assert set(raw["method"]) == {"sgd", "natgrad", "kfac", "ekfac"}
    ng_rows = raw[raw["method"] == "natgrad"]
    assert (ng_rows["solver"] == "cg").all() and (ng_rows["cg_iterations"] > 0).all()
    assert (ng_rows["relative_residual"] < 1e-7).all() and ng_rows["solve_converged"].all()
    assert (ng_rows["cg_tol"] == 1e-8).all()
    smallest = raw[raw["epsilon"] == 1e-6]
    assert ((smallest["kl_ratio"] - 1).abs() < 1e-2).all()  # every method KL-matched
    for name in ("E1_results_aggregated.csv", "E1_gate_validation.csv", "E1_summary.json",
                 "E1_figure.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0
    assert set(result.summary["advantage_pct_by_method"]) == {"natgrad", "kfac", "ekfac"}


def test_softmax_regression_through_the_generic_operator_equals_the_notebook_path():
    paper = get("e1").make_config("quick", {"n_samples": 300, "n_seeds": 1})
    generic = paper.model_copy(update={"methods": ["natgrad", "sgd"]})  # not the notebook path
    assert paper.notebook_path and not generic.notebook_path
    eps = torch.tensor(paper.epsilon_values, dtype=torch.float64)
    fast = pd.DataFrame(e1_pareto.one_seed(paper, 0, *load(paper), eps)["rows"])
    data = generic.load_data(torch.device("cpu"))
    slow = pd.DataFrame(e1_pareto.one_seed_any_model(generic, 0, data, eps)["rows"])
    merged = fast.merge(slow, on=["seed", "epsilon", "method"], suffixes=("", "_generic"))
    assert len(merged) == len(fast) == 10
    for column in ("loss_before", "loss_after", "delta_loss", "kl_step", "eta", "cos_g_v"):
        a, b = merged[column], merged[f"{column}_generic"]
        assert ((a - b).abs() <= 1e-6 * a.abs().max()).all() or a.isna().equals(b.isna()), column


def load(config):
    from geomlab.experiments.softmax_common import load_cluster_data

    return load_cluster_data(config, torch.device("cpu"))


def test_mnist_cnn_with_a_users_image_data(tmp_path, fake_context, monkeypatch):
    (tmp_path / "my_images.py").write_text(
        "import torch\n"
        "def images():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return torch.randn(40, 1, 28, 28, generator=g), torch.arange(40) % 10\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = {"model": "mnist-cnn", "data": "my_images:images", "n_samples": 24,
                 "n_seeds": 1, "dtype": "float32", "epsilon_values": [1e-3],
                 "methods": ["sgd", "natgrad"], "solver": "cg", "damping": 1e-3,
                 "cg_max_iterations": 3, "batch_size": 12}  # fmt: skip
    config = get("e1").make_config("quick", overrides)
    out = tmp_path / "run"
    out.mkdir()
    e1_pareto.run(config, fake_context(out))
    raw = pd.read_csv(out / "E1_results_raw.csv")
    assert set(raw["method"]) == {"sgd", "natgrad"}  # (K-FAC: see the MLP test; fc1's 9217-wide
    assert (raw.loc[raw["method"] == "natgrad", "cg_iterations"] == 3).all()  # factor is slow)
    assert raw["kl_step"].gt(0).all()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": "resnet"}, "model"),
        ({"data": "no_such_module_xyz:load"}, "data"),
        ({"solver": "lbfgs"}, "solver"),
        ({"methods": ["sgd", "adam"]}, "methods.1"),
        ({"damping": -1}, "damping"),
    ],
)
def test_bad_model_data_and_solver_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        get("e1").make_config("paper", overrides)


def test_mnist_cnn_preset_is_valid_and_leaves_paper_unchanged():
    preset = get("e1").make_config("mnist-cnn")
    assert preset.model == "mnist-cnn" and preset.data == "mnist" and not preset.notebook_path
    assert get("e1").make_config("paper").notebook_path


# --- Honest solves, the epsilon floor, user transformers ------------------------------------


def test_epsilons_below_the_dtype_round_off_floor_are_refused_naming_the_floor():
    with pytest.raises(
        ConfigError, match=r"epsilon_values.*1e-07.*float32 round-off floor 1\.19e-06"
    ):
        get("e1").make_config("quick", {"dtype": "float32", "epsilon_values": [1e-7, 1e-3]})
    assert e1_pareto.epsilon_floor("float64") == pytest.approx(2.22e-15, rel=1e-2)
    get("e1").make_config("quick", {"dtype": "float32", "epsilon_values": [2e-6]})  # above it


MLP_CG = {"model": "mlp", "mlp_hidden": [8], "n_samples": 200, "n_seeds": 1,
          "epsilon_values": [1e-4, 1e-3], "solver": "cg", "damping": 1e-4,
          "cg_tol": 1e-8}  # fmt: skip


def test_an_unconverged_cg_solve_fails_a_gate_unless_inexact_ok(tmp_path, fake_context):
    capped = get("e1").make_config("quick", {**MLP_CG, "cg_max_iterations": 3})
    (tmp_path / "a").mkdir()
    result = e1_pareto.run(capped, fake_context(tmp_path / "a"))
    gate = next(g for g in result.gates if g.name == "cg_converged")
    raw = pd.read_csv(tmp_path / "a" / "E1_results_raw.csv")
    residual = raw.loc[raw["method"] == "natgrad", "relative_residual"].max()
    label = f"CG, 3 iterations, residual {residual:.2g}"
    assert residual > 1e-3 and not gate.passed and not result.gates_passed
    assert label in gate.message and "inexact_ok" in gate.message
    assert result.summary["natgrad_solve"] == label and result.headline["natgrad_solve"] == label
    assert not raw.loc[raw["method"] == "natgrad", "solve_converged"].any()

    accepted = capped.model_copy(update={"inexact_ok": True})
    (tmp_path / "b").mkdir()
    result = e1_pareto.run(accepted, fake_context(tmp_path / "b"))
    gate = next(g for g in result.gates if g.name == "cg_converged")
    assert gate.passed and gate.message.startswith("PASS (inexact_ok)") and result.gates_passed
    assert result.headline["natgrad_solve"] == label
    assert (tmp_path / "b" / "E1_figure.png").stat().st_size > 0

    converged = get("e1").make_config("quick", MLP_CG)
    (tmp_path / "c").mkdir()
    result = e1_pareto.run(converged, fake_context(tmp_path / "c"))
    gate = next(g for g in result.gates if g.name == "cg_converged")
    assert gate.passed and gate.details["max_relative_residual"] <= 1e-7
    assert "natgrad_solve" not in result.headline and result.summary["natgrad_solve_converged"]


def test_mnist_cnn_preset_accepts_its_capped_cg_and_says_so():
    preset = get("e1").make_config("mnist-cnn")
    assert preset.cg_max_iterations == 10 and preset.inexact_ok


def test_no_figure_message_says_why_when_every_step_left_the_band(tmp_path, fake_context, caplog):
    config = get("e1").make_config("quick", {"n_samples": 200, "n_seeds": 1,
                                             "epsilon_values": [1e300]})  # fmt: skip
    with caplog.at_level("ERROR"):
        e1_pareto.run(config, fake_context(tmp_path))
    assert not (tmp_path / "E1_figure.png").exists()
    text = caplog.text
    assert "outside the KL band" in text and "figure not drawn" in text
    assert "non-finite results: PASS" not in text


class TinyEncoderClassifier(torch.nn.Module):
    """nn.TransformerEncoder (fast path in eval mode) on the 16 synthetic features as 4 tokens."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(4, 8)
        layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x.reshape(-1, 4, 4))).mean(1))


def tiny_transformer():
    return TinyEncoderClassifier()


def tiny_transformer_linear_layers_only():
    """K-FAC on the transformer: freeze what is not nn.Linear (attention in-projection, norms)."""
    from geomlab.geometry.curvature import kfac_ineligible_parameters

    model = TinyEncoderClassifier()
    frozen = set(kfac_ineligible_parameters(model))  # attention (out_proj too), LayerNorms
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    return model


TRANSFORMER = {"model": f"{__name__}:tiny_transformer", "n_samples": 60, "n_seeds": 1,
               "epsilon_values": [1e-7, 1e-3]}  # fmt: skip


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_e1_on_a_user_transformer_encoder(tmp_path, fake_context, solver):
    config = get("e1").make_config("quick", {**TRANSFORMER, "solver": solver, "damping": 1e-3})
    result = e1_pareto.run(config, fake_context(tmp_path))
    raw = pd.read_csv(tmp_path / "E1_results_raw.csv")
    assert result.gates_passed and set(raw["method"]) == {"sgd", "natgrad"}
    smallest = raw[raw["epsilon"] == 1e-7]
    assert ((smallest["kl_ratio"] - 1).abs() < 1e-2).all()
    assert raw["solve_converged"].all()


def test_e1_kfac_on_a_transformer_is_refused_before_work_and_runs_frozen(tmp_path, fake_context):
    from geomlab.geometry.curvature import UnsupportedShapeError

    methods = {"methods": ["sgd", "natgrad", "kfac"], "solver": "cg", "damping": 1e-3}
    config = get("e1").make_config("quick", {**TRANSFORMER, **methods})
    with pytest.raises(UnsupportedShapeError, match=r"self_attn\.in_proj_weight.*requires_grad_"):
        e1_pareto.run(config, fake_context(tmp_path))
    assert not (tmp_path / "E1_results_raw.csv").exists()
    frozen = config.model_copy(update={"model": f"{__name__}:tiny_transformer_linear_layers_only"})
    result = e1_pareto.run(frozen, fake_context(tmp_path))
    raw = pd.read_csv(tmp_path / "E1_results_raw.csv")
    assert result.gates_passed and set(raw["method"]) == {"sgd", "natgrad", "kfac"}
    assert ((raw[raw["epsilon"] == 1e-7]["kl_ratio"] - 1).abs() < 1e-2).all()


def test_a_non_positive_measured_kl_is_counted_as_unresolved_not_as_a_runaway():
    config = get("e1").make_config("quick", {"dtype": "float32"})
    raw = pd.DataFrame({"seed": [0, 0, 0], "epsilon": [1e-5, 1e-5, 1e-1],
                        "method": ["sgd", "natgrad", "natgrad"], "loss_before": 1.0,
                        "loss_after": 0.9, "delta_loss": 0.1, "kl_step": [1e-5, -2e-8, 0.5],
                        "kl_ratio": [1.0, -2e-3, 5.0], "eta": 1.0})  # fmt: skip
    gate, ok = e1_pareto.kl_runaway_gate(raw, config)
    assert not gate.passed and ok.tolist() == [True, False, False]
    assert gate.details["n_unresolved_kl"] == 1 and gate.details["n_runaway"] == 1
    assert "1 of them measured KL <= 0: below the dtype's resolution, not a runaway" in gate.message


def full_rank_regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    return x, torch.stack([torch.sin(x[:, 0] * x[:, 1]), x[:, 2] ** 2 - 1], 1)


def test_dense_natgrad_warns_when_rcond_drops_real_curvature(tmp_path, fake_context, caplog):
    overrides = {"model": "mlp", "mlp_hidden": [32], "data": f"{__name__}:full_rank_regression",
                 "n_samples": 200, "n_seeds": 1, "epsilon_values": [1e-4]}  # fmt: skip
    (tmp_path / "a").mkdir()
    with caplog.at_level("WARNING"):
        result = e1_pareto.run(get("e1").make_config("quick", overrides),
                               fake_context(tmp_path / "a"))  # fmt: skip
    raw = pd.read_csv(tmp_path / "a" / "E1_results_raw.csv")
    # 226 parameters, Fisher full rank (smallest eigenvalue 2.3e-10 x the largest): the default
    # rcond = 1e-8 drops 12 eigenvalues above the round-off floor.
    assert raw.loc[raw["method"] == "natgrad", "dropped_above_floor"].tolist() == [12]
    assert "dropped up to 12 eigenvalues" in result.summary["rcond_warning"]
    assert result.summary["rcond_warning"] in caplog.text
    (tmp_path / "b").mkdir()
    exact = get("e1").make_config("quick", {**overrides, "rcond": 0.0})
    result = e1_pareto.run(exact, fake_context(tmp_path / "b"))
    raw = pd.read_csv(tmp_path / "b" / "E1_results_raw.csv")
    assert raw.loc[raw["method"] == "natgrad", "dropped_above_floor"].tolist() == [0]
    assert result.summary["rcond_warning"] == ""
