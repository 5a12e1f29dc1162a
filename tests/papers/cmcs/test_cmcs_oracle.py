"""The implicit hypergradient (eqs 13-14) at the recipe's own values against a ground truth that needs no
closed form (issue 27): the finite difference of L_dev over the H lower steps of Algorithm 1
(mmbench/papers/cmcs/oracle.py), on a 768-d and a 1024-d head on LayerNorm-scale features and on a small
transformer whose Hessian is indefinite. The larger sweep behind the recipe's assumption is
benchmarks/cmcs_hypergrad_agreement.py (benchmarks/results/cmcs_hypergrad_agreement.json)."""

from __future__ import annotations

import pytest
import torch

from mmbench.papers.cmcs.hypergrad import power_lambda_max, power_lambda_min
from mmbench.papers.cmcs.oracle import agreement, implicit_estimate, sgd_lower_steps, unrolled_hypergradient
from mmbench.papers.cmcs.oracle_cases import head_case, transformer_case

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def recipe_values() -> dict:
    """K, γ and H as the recipe ships them, η1 of the lower optimiser."""
    from mmbench.recipes.loader import resolve

    resolved = resolve("cmcs/twitter15")
    cfg, lr = resolved.model_config, resolved.recipe.train.optimizers["main"].lr
    scale = {"lr": lr, "power": None, "fixed": cfg.neumann_scale}[cfg.neumann_scaling]
    return {"k": cfg.neumann_terms, "scale": scale, "h": cfg.upper_every, "lr": lr, "damping": cfg.neumann_damping}


def compare(case, values: dict, info: dict | None = None) -> tuple[list[float], list[float]]:
    oracle = unrolled_hypergradient(case.theta, case.phi, case.lower_loss, case.dev_loss, case.batches, values["lr"])
    theta_h = sgd_lower_steps(case.theta, case.phi, case.lower_loss, case.batches, values["lr"])
    estimate = implicit_estimate(theta_h, case.phi, case.lower_loss, case.dev_loss, case.batches[-1], values["k"],
                                 values["scale"], values["damping"], info=info)
    return estimate.tolist(), oracle.tolist()


def test_oracle_is_the_derivative_through_the_unrolled_steps():
    """The finite difference equals reverse-mode autograd through the same H SGD steps (the oracle is
    right before anything is compared with it)."""
    case = head_case(0, d=256, h=4)
    phi = case.phi.clone().requires_grad_(True)
    theta = {k: v.clone().requires_grad_(True) for k, v in case.theta.items()}
    for batch in case.batches:  # differentiable unroll
        grads = torch.autograd.grad(case.lower_loss(theta, phi, batch), list(theta.values()), create_graph=True)
        theta = {k: v - 0.05 * g for (k, v), g in zip(theta.items(), grads)}
    exact = torch.autograd.grad(case.dev_loss(theta), phi)[0]
    fd = unrolled_hypergradient(case.theta, case.phi, case.lower_loss, case.dev_loss, case.batches, 0.05)
    assert torch.allclose(fd, exact, rtol=1e-6, atol=1e-10), (fd, exact)
    assert (exact.abs() > 1e-4).all()


CASES = {  # (builder, seeds, warm-up steps of the mid-training state): every case at init and mid-training
    "head768": (lambda seed, h, warm: head_case(seed, d=768, h=h, warm=warm), range(4), 200),
    "head1024": (lambda seed, h, warm: head_case(seed, d=1024, h=h, warm=warm), range(5, 9), 200),
}


@pytest.mark.parametrize("problem", sorted(CASES))
def test_recipe_hypergradient_agrees_with_the_unrolled_oracle_on_a_head(problem):
    """Sign in ≥ 90 % of the (α, β) cases and magnitude within ×2 in ≥ 75 % (issue 27's acceptance), at
    the recipe's K, γ, damping and η1, H. Eq 14 as the old default (γ = 1/λ̂_max, K = 60) sums the
    series of the converged θ* and is ~100× the H-step response here (see the benchmark JSON)."""
    build, seeds, warm = CASES[problem]
    values = recipe_values()
    estimates, oracle = [], []
    for seed in seeds:
        for w in (0, warm):
            e, o = compare(build(seed, values["h"], w), values)
            estimates += e
            oracle += o
    stats = agreement(estimates, oracle)
    assert stats["sign"] >= 0.9 and stats["within_factor"] >= 0.75, (stats, estimates, oracle)


@pytest.mark.slow  # 4 cases × (4 unrolls of H steps + K HVPs) + 2 × 36 power iterations through a transformer
def test_recipe_hypergradient_agrees_with_the_oracle_on_a_transformer_with_an_indefinite_hessian():
    values = recipe_values()
    estimates, oracle, indefinite = [], [], 0
    for seed in range(2):
        for warm in (0, 60):
            case = transformer_case(seed, h=values["h"], warm=warm)
            e, o = compare(case, values)
            estimates += e
            oracle += o
            if warm == 0:  # the Hessian at random init: negative curvature the series must survive
                theta = {k: v.detach().requires_grad_(True) for k, v in case.theta.items()}
                params = list(theta.values())
                grads = torch.autograd.grad(case.lower_loss(theta, case.phi, case.batches[-1]), params, create_graph=True)
                start = [torch.randn_like(p) for p in params]
                lam = power_lambda_max(grads, params, start, 12)
                indefinite += power_lambda_min(grads, params, start, lam, 24) < -0.05 * lam
    assert indefinite == 2, indefinite
    stats = agreement(estimates, oracle)
    assert stats["sign"] >= 0.9 and stats["within_factor"] >= 0.75, (stats, estimates, oracle)
