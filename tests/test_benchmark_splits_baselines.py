"""Folds (section / patient) and the frozen-feature baselines, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from mclstexp_hub.benchmark.baselines import (
    BLEEP_ABLATION_OVERRIDES,
    hest_ridge_alpha,
    ridge_probe_predict,
    topk_mean_predict,
)
from mclstexp_hub.benchmark.paper_numbers import paper_reported
from mclstexp_hub.benchmark.splits import her2st_patient, make_folds

SECTIONS = ["B4", "C2", "C3", "C4"]
PATIENTS = {s: her2st_patient(s) for s in SECTIONS}


def test_section_split_gives_one_fold_per_section():
    folds = make_folds(SECTIONS, "section")
    assert [f.held_out for f in folds] == [("B4",), ("C2",), ("C3",), ("C4",)]
    assert folds[0].train == ("C2", "C3", "C4")
    assert [f.fold for f in folds] == [0, 1, 2, 3]
    assert folds[1].to_dict() == {"fold": 1, "held_out": ["C2"], "train": ["B4", "C3", "C4"]}


def test_patient_split_groups_b_and_c_and_never_leaks():
    folds = make_folds(SECTIONS, "patient", PATIENTS)
    assert [f.held_out for f in folds] == [("B4",), ("C2", "C3", "C4")]
    assert [f.train for f in folds] == [("C2", "C3", "C4"), ("B4",)]
    for fold in folds:
        held = {PATIENTS[s] for s in fold.held_out}
        train = {PATIENTS[s] for s in fold.train}
        assert held.isdisjoint(train)
        assert sorted(fold.held_out + fold.train) == sorted(SECTIONS)


def test_split_errors():
    with pytest.raises(ValueError, match="at least 2 sections"):
        make_folds(["B4"], "section")
    with pytest.raises(ValueError, match="at least 2 patients"):
        make_folds(["C2", "C3"], "patient", PATIENTS)
    with pytest.raises(ValueError, match="no patient known"):
        make_folds(["B4", "X1"], "patient", PATIENTS)
    with pytest.raises(ValueError, match="more than once"):
        make_folds(["B4", "B4"], "section")
    with pytest.raises(ValueError, match="split must be one of"):
        make_folds(SECTIONS, "random")


def test_runner_refuses_bad_tower_options_before_any_work(tmp_path):
    """--encoder-input-size 0 / --precision fp16 are refused before the results folder exists."""
    from mclstexp_hub.benchmark.runner import BenchmarkOptions, run_benchmark

    out = tmp_path / "results"
    for bad, match in (({"encoder_input_size": 0}, "at least 16 px; got 0"),
                       ({"encoder_input_size": True}, "at least 16 px"),
                       ({"precision": "fp16"}, "precision must be one of")):
        with pytest.raises(ValueError, match=match):
            run_benchmark(BenchmarkOptions(out=str(out), progress=False, **bad))
        assert not out.exists()


def test_topk_mean_is_mean_of_cosine_nearest():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(120, 20))
    expr = rng.random((120, 6))
    queries = rng.normal(size=(9, 20))
    pred = topk_mean_predict(train, expr, queries, k=7)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    idx = np.argsort(-(qn @ tn.T), axis=1)[:, :7]
    np.testing.assert_allclose(pred, expr[idx].mean(1), rtol=1e-5)
    with pytest.raises(ValueError, match="larger than the spot bank"):
        topk_mean_predict(train, expr, queries, k=121)


def test_ridge_probe_fits_on_training_only_and_recovers_linear_signal():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 40))
    weights = rng.normal(size=(40, 5))
    expr = train @ weights + 3.0 + rng.normal(scale=0.1, size=(300, 5))
    queries = rng.normal(size=(50, 40))
    pred, info = ridge_probe_predict(train, expr, queries, n_components=40)
    # same pipeline by hand, fitted on the training spots only
    scaler = StandardScaler().fit(train)
    pca = PCA(40, random_state=0).fit(scaler.transform(train))
    ridge = Ridge(alpha=hest_ridge_alpha(40, 5), solver="lsqr").fit(
        pca.transform(scaler.transform(train)), expr)
    ref = ridge.predict(pca.transform(scaler.transform(queries)))
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-4)
    assert info["pca_components"] == 40 and info["ridge_alpha"] == pytest.approx(100 / 200)
    truth = queries @ weights + 3.0
    r = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(5)]
    assert min(r) > 0.99  # all components: the linear signal is recovered
    # more components requested than spots: capped, not an error
    _, info = ridge_probe_predict(train[:20], expr[:20], queries)
    assert info["pca_components"] == 20 and info["pca_components_requested"] == 256


def test_bleep_overrides_and_paper_block():
    assert BLEEP_ABLATION_OVERRIDES == {"spot_encoder_layers": 0, "use_position_embeddings": False}
    paper = paper_reported()
    assert paper["source"] == "Min et al., Briefings in Bioinformatics 2024"
    assert paper["her2st"]["pcc_acg"] == 0.2304 and paper["her2st"]["pcc_heg"] == 0.3866
    assert paper["cscc"] == {"pcc_acg": 0.3235, "pcc_heg": 0.4261, "n_sections": 12, "n_genes": 171}
    assert paper["alex10x"]["pcc_acg"] == 0.1949 and paper["alex10x"]["pcc_heg"] == 0.3611
    paper["her2st"]["pcc_acg"] = 0  # a copy: the module's numbers cannot be changed by callers
    assert paper_reported()["her2st"]["pcc_acg"] == 0.2304


def test_frozen_feature_store_policies(tmp_path):
    """`all` computes once for every fold; `train` calibrates per fold; the saved encoder state
    reproduces the features' encoder exactly."""
    import torch

    from mclstexp_hub import MclSTExpConfig, MclSTExpModel
    from mclstexp_hub.benchmark.frozen_features import FrozenFeatureStore
    from mclstexp_hub.training.features import encoder_fingerprint
    from mclstexp_hub.training.trainer import load_pretrained_encoder

    config = MclSTExpConfig(gene_names=["a", "b"], image_encoder="mobilenetv3_small_050",
                            max_position=64, patch_size=64)
    torch.manual_seed(0)
    model = MclSTExpModel(config).eval()
    g = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=g)
    sections = ["A"] * 4 + ["B"] * 4 + ["C"] * 4
    kw = {"n_views": 2, "seed": 0, "channels_last": False, "batch_size": 4, "progress": False}

    store = FrozenFeatureStore(model, patches, sections, bn_calibration="all",
                               cache_dir=tmp_path / "all", **kw)
    f1, f2 = store.for_fold(["B", "C"]), store.for_fold(["A", "C"])
    assert f1 is f2 and f1.calibrated_on == ("A", "B", "C")
    rows = np.array([4, 5, 9])
    views = f1.training_views(rows, include_clean=True)
    assert views.shape == (3, 3, model.image_encoder.num_features)
    torch.testing.assert_close(views[0], f1.clean[rows])
    assert not torch.equal(views[1], views[2])  # two different augmented views

    store = FrozenFeatureStore(model, patches, sections, bn_calibration="train",
                               cache_dir=tmp_path / "train", **kw)
    fa, fb = store.for_fold(["B", "C"]), store.for_fold(["A", "C"])
    assert fa.calibrated_on == ("B", "C") and fb.calibrated_on == ("A", "C")
    assert fa.fingerprint != fb.fingerprint
    assert set(fa.view_rows.tolist()) == set(range(4, 12))
    with pytest.raises(ValueError, match="no augmented views"):
        fa.training_views(np.array([0]), include_clean=True)  # section A never trains here

    fresh = MclSTExpModel(config).eval()
    load_pretrained_encoder(fresh, fb.encoder_path)
    assert encoder_fingerprint(fresh) == fb.fingerprint


def test_ridge_alpha_by_inner_cv_uses_training_groups_only():
    from mclstexp_hub.benchmark.baselines import RIDGE_ALPHA_GRID, select_ridge_alpha

    rng = np.random.default_rng(2)
    # few spots, many noisy features: a weak penalty overfits, CV must prefer a strong one
    train = rng.normal(size=(90, 120))
    signal = train[:, :3] @ rng.normal(size=(3, 4))
    expr = signal + rng.normal(scale=2.0, size=(90, 4))
    groups = np.repeat(["S1", "S2", "S3"], 30)
    best, scores = select_ridge_alpha(train, expr, groups, n_components=60)
    assert set(scores) == set(RIDGE_ALPHA_GRID) and best == max(scores, key=scores.get)
    assert best >= 10.0
    _, info = ridge_probe_predict(train, expr, train[:5], n_components=60, alpha="cv",
                                  groups=groups)
    assert info["ridge_alpha"] == best and info["alpha_rule"].startswith("leave-one")
    with pytest.raises(ValueError, match="needs the training spots' groups"):
        ridge_probe_predict(train, expr, train[:5], alpha="cv")
    with pytest.raises(ValueError, match="positive number"):
        ridge_probe_predict(train, expr, train[:5], alpha="big")
