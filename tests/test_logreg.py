"""The ``logreg`` head (CLIP's linear-probe protocol): scikit-learn's L-BFGS solution, C chosen
on a validation split carved from training rows, the torch solver agreeing, CLI wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures_cache import make_feature_cache
from sklearn.linear_model import LogisticRegression

from featcache.cli import main
from featcache.errors import FeatcacheError
from featcache.heads import HEADS, HeadContext, MemberSpec, build_head
from featcache.heads.logreg import START_LOG10_C, fit_logreg, stratified_val


def _data(n: int = 300, d: int = 10, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.55, 0.25, 0.12, 0.08])
    x = rng.normal(size=(k, d))[y] * 0.8 + rng.normal(size=(n, d))
    return x, y


def test_head_equals_scikit_learn_with_c_chosen_on_carved_validation() -> None:
    x, y = _data()
    feats, labels = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    member = MemberSpec(seed=3, stream="logreg/instance")
    head = build_head("logreg", HeadContext(10, 4), [member])
    pool = torch.arange(250)  # the member's training rows; the rest are never read
    result = head.fit(feats, labels, [pool])
    c = result.chosen_c[0]
    xt, yt = feats[:250].double().numpy(), y[:250]
    # the chosen C is the best (validation balanced accuracy) of CLIP's starting grid or finer
    val = stratified_val(yt, member.generator("val"))
    assert 0 < val.sum() < 250 and set(np.unique(yt[val])) == set(range(4))

    def val_score(cc: float) -> float:
        clf = LogisticRegression(C=cc, solver="lbfgs", max_iter=1000).fit(xt[~val], yt[~val])
        pred = clf.predict(xt[val])
        return np.mean([(pred[yt[val] == k] == k).mean() for k in range(4)])

    assert val_score(c) >= max(val_score(10.0 ** e) for e in START_LOG10_C) - 1e-12
    # refit on every training row with that C: scikit-learn's own coefficients
    ref = LogisticRegression(C=c, solver="lbfgs", max_iter=1000).fit(xt, yt)
    np.testing.assert_allclose(head.weight[0].detach().double().numpy(), ref.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.bias[0].detach().double().numpy(), ref.intercept_, rtol=1e-5, atol=1e-6)
    logits = head(feats[None, 250:])[0].detach().double().numpy()
    np.testing.assert_allclose(torch.softmax(torch.as_tensor(logits), 1).numpy(),
                               ref.predict_proba(feats[250:].double().numpy()), atol=1e-5)


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_torch_solver_equals_scikit_learn(c: float) -> None:
    x, y = _data(seed=1)
    Ws, bs = fit_logreg(x, y, 4, c, solver="sklearn", tol=1e-10)
    Wt, bt = fit_logreg(x, y, 4, c, solver="torch", tol=1e-10)
    np.testing.assert_allclose(Wt, Ws, atol=1e-5)
    # unpenalised biases are defined up to a common shift: compare them centred
    np.testing.assert_allclose(bt - bt.mean(), bs - bs.mean(), atol=3e-5)
    probs = [torch.softmax(torch.as_tensor(x @ W.T + b), 1).numpy() for W, b in ((Ws, bs), (Wt, bt))]
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-5)


def test_binary_and_absent_classes() -> None:
    x, y = _data(k=4)
    keep = y < 2
    W, b = fit_logreg(x[keep], y[keep], 4, 1.0)
    ref = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000).fit(x[keep], y[keep])
    probs = torch.softmax(torch.as_tensor(x[keep] @ W.T + b), 1).numpy()
    np.testing.assert_allclose(probs[:, :2], ref.predict_proba(x[keep]), atol=1e-8)
    assert probs[:, 2:].max() < 1e-100  # absent classes are never predicted


def test_logreg_refuses_sgd_only_settings() -> None:
    assert "logreg" in HEADS
    with pytest.raises(FeatcacheError, match="--loss ce"):
        build_head("logreg", HeadContext(4, 3), [MemberSpec(loss="focal")])
    with pytest.raises(FeatcacheError, match="--sampler instance"):
        build_head("logreg", HeadContext(4, 3), [MemberSpec(sampler="wrs")])


def test_train_head_cli_runs_logreg(tmp_path) -> None:  # noqa: ANN001
    cache = make_feature_cache(tmp_path / "c.h5", num_classes=3, counts=[60, 30, 20], dim=8,
                               test_per_class=5, noise=0.3)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-head", "--cache", str(cache), "--head", "logreg",
                                    "--seeds", "0,1", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(m["logreg_c"] > 0 for m in metrics["per_seed"]) and metrics["acc"] > 0.5
    res = CliRunner().invoke(main, ["grid", "--cache", str(cache), "--head", "logreg",
                                    "--param", "lr=0.1,0.2", "--device", "cpu"])
    assert res.exit_code == 2 and "not in a grid" in res.output
