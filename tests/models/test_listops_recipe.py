"""The parts of the ListOps recipe do what they claim: a frozen parser, its own learning rate,
proximal steps with a clipped ratio, normalised advantages, an adapted entropy bonus, a curriculum."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from zoo.callbacks import LengthCurriculum
from zoo.data.listops import ListOpsDataModule, collate, generate
from zoo.estimators import GreedyBaseline, Reinforce, StraightThrough
from zoo.estimators.reinforce import Rollout
from zoo.models.listops import BinaryComposer, LatentTreeClassifier
from zoo.structures import Categorical


def _trainer(steps: int, **kwargs) -> L.Trainer:
    """A quiet trainer of ``steps`` steps; no validation unless ``kwargs`` ask for it."""
    kwargs.setdefault("limit_val_batches", 0)
    return L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _data() -> ListOpsDataModule:
    return ListOpsDataModule(num_train=64, num_val=8, max_length=12, batch_size=8, test_file=None)


def _model(**kwargs) -> LatentTreeClassifier:
    estimator = kwargs.pop("estimator", None) or Reinforce(2, baseline=GreedyBaseline())
    return LatentTreeClassifier(estimator, embedding_dim=8, hidden_dim=8, score_dim=8, **kwargs)


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_a_frozen_parser_gets_no_update_and_the_composer_does(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = _model(parser_warmup_steps=3)
    parser = _snapshot(torch.nn.ModuleList([model.encoder, model.scorer]))
    composer = _snapshot(model.composer)
    _trainer(3).fit(model, _data())
    assert not _moved(parser, torch.nn.ModuleList([model.encoder, model.scorer]))
    assert _moved(composer, model.composer)
    _trainer(4).fit(model, _data())  # one step past the warm-up (a fresh trainer: step 0 again)
    torch.manual_seed(0)
    model = _model(parser_warmup_steps=2)
    parser = _snapshot(torch.nn.ModuleList([model.encoder, model.scorer]))
    _trainer(3).fit(model, _data())
    assert _moved(parser, torch.nn.ModuleList([model.encoder, model.scorer]))


def test_the_parser_has_its_own_learning_rate() -> None:
    model = _model(parser_lr=1e-4, lr=1e-3)
    optimizer = model.configure_optimizers()
    rest, parser = optimizer.param_groups
    assert parser["lr"] == 1e-4 and rest["lr"] == 1e-3
    assert {id(p) for p in parser["params"]} == {
        id(p) for m in (model.encoder, model.scorer) for p in m.parameters()
    }
    assert {id(p) for p in rest["params"]} == {id(p) for p in model.composer.parameters()}


def test_the_clipped_surrogate_is_ppo_s_on_a_hand_computed_case() -> None:
    estimator = Reinforce(2, policy_updates=2, clip_ratio=0.2)
    z = torch.eye(3)[[0, 1]].reshape(2, 1, 1, 3)  # (S=2, B=1, one variable, 3): outcomes 0, 1
    old = torch.log(torch.tensor([[0.5], [0.25]]))
    advantage = torch.tensor([[1.0], [-1.0]])  # costs: outcome 0 worse than average
    theta = torch.log(torch.tensor([[[0.8, 0.1, 0.1]]])).requires_grad_()
    q = Categorical(theta)
    value = estimator.clipped_surrogate(q, Rollout(z, old, advantage))
    # r = (1.6, 0.4): A = 1 takes max(1.6, 1.2) = 1.6 (unclipped); A = −1 takes
    # max(−0.4, −0.8) = −0.4 (unclipped): the pessimistic side of each.
    torch.testing.assert_close(value, torch.tensor([(1.6 - 0.4) / 2]))
    # A ratio past the clip on the optimistic side has no gradient: with A = −1 and
    # r = 1.6 the clipped −1.2 is the larger, a constant.
    value = estimator.clipped_surrogate(q, Rollout(z[:1], old[:1], -advantage[:1]))
    torch.testing.assert_close(value, torch.tensor([-1.2]))
    value.sum().backward()
    assert float(theta.grad.abs().sum()) == 0.0
    with pytest.raises(RuntimeError, match="policy_updates"):
        Reinforce(2).clipped_surrogate(q)


def test_proximal_steps_move_only_the_parser(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ends = {}
    for updates in (1, 3):
        torch.manual_seed(0)
        model = _model(estimator=Reinforce(2, baseline=GreedyBaseline(), policy_updates=updates))
        L.seed_everything(0)
        _trainer(2).fit(model, _data())
        ends[updates] = model
    one, three = ends[1], ends[3]
    for a, b in zip(one.composer.parameters(), three.composer.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the composer took the same two steps
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(one.scorer.parameters(), three.scorer.parameters(), strict=True)
    )


def test_advantages_are_divided_by_the_running_std_when_it_passes_one() -> None:
    torch.manual_seed(0)
    theta = torch.zeros(4, 1, 5, requires_grad=True)
    q = Categorical(theta)

    def cost(z):
        return 10.0 * z.argmax(-1).squeeze(-1).to(torch.float32)  # costs 0..40: std ≫ 1

    grads = {}
    for normalize in (False, True):
        estimator = Reinforce(8, normalize_advantages=normalize, normalization_decay=0.0)
        torch.manual_seed(1)
        theta.grad = None
        estimator(q, cost).surrogate.sum().backward()
        grads[normalize] = theta.grad.clone()
        if normalize:
            scale = float(estimator.advantage_var.sqrt())
    assert scale > 1.0
    torch.testing.assert_close(grads[True], grads[False] / scale)


def test_the_entropy_weight_is_adapted_towards_the_target(tmp_path, monkeypatch) -> None:
    batch = collate(generate(8, seed=0, min_length=3, max_length=12))
    model = _model(entropy_weight=0.1, target_entropy=2.0, target_rate=0.5)
    model.train()
    model.regularizer(model.posterior(batch), batch)  # H/N ≈ 1.2 < 2: λ grows
    entropy = float(model._entropy)
    model.on_train_batch_end(None, batch, 0)
    assert float(model.entropy_weight) == pytest.approx(0.1 + 0.5 * (2.0 - entropy))
    model.target_entropy = 0.0  # above the target: λ shrinks, and stops at 0
    before = float(model.entropy_weight)
    model.regularizer(model.posterior(batch), batch)
    model.on_train_batch_end(None, batch, 0)
    assert 0.0 <= float(model.entropy_weight) < before
    for _ in range(20):
        model.regularizer(model.posterior(batch), batch)
        model.on_train_batch_end(None, batch, 0)
    assert float(model.entropy_weight) == 0.0
    assert "entropy_weight" in model.state_dict()  # adapted λ is state (exact resume)
    assert "entropy_weight" not in _model(entropy_weight=0.1).state_dict()


def test_the_adapted_entropy_weight_stops_at_its_cap() -> None:
    batch = collate(generate(8, seed=0, min_length=3, max_length=12))
    model = _model(entropy_weight=0.1, target_entropy=5.0, target_rate=0.5, max_entropy_weight=1.0)
    for _ in range(10):  # H/N ≈ 1.2, far below 5: λ would reach 0.1 + 10 · 0.5 · 3.8 ≈ 19
        model.regularizer(model.posterior(batch), batch)
        model.on_train_batch_end(None, batch, 0)
    assert float(model.entropy_weight) == 1.0
    with pytest.raises(ValueError, match=r"max_entropy_weight must be ≥ entropy_weight \(0.5\)"):
        _model(entropy_weight=0.5, max_entropy_weight=0.1)


@pytest.mark.parametrize("structure", ["projective", "binary"])
def test_capped_scores_keep_the_entropy_finite_and_right(structure: str) -> None:
    """Scores of 10⁴ (a parser that has committed) gave float32 entropies that were wrong
    by whole nats; capped at c they lie in (−c, c) and the entropy matches float64's."""
    batch = collate(generate(4, seed=0, min_length=6, max_length=14))
    model = _model(structure=structure, score_cap=10.0)
    with torch.no_grad():
        for p in model.scorer.parameters():
            p.mul_(1e4)
    q = model.posterior(batch)
    assert float(q.log_potentials.abs().max()) <= 10.0
    same = {} if structure == "binary" else {"multiroot": False}
    exact = type(q)(q.log_potentials.double(), lengths=batch["lengths"], **same).entropy()
    torch.testing.assert_close(q.entropy().double(), exact, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="score_cap must be > 0 or None, got 0"):
        _model(score_cap=0)


def test_an_adapted_entropy_bonus_keeps_the_entropy_up(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    batch = collate(generate(8, seed=0, min_length=3, max_length=12))
    ends = {}
    for target in (None, 0.8):
        torch.manual_seed(0)
        model = _model(estimator=StraightThrough(), lr=3e-2, target_entropy=target, target_rate=0.2)
        _trainer(60).fit(model, _data())
        model.eval()
        with torch.no_grad():
            ends[target] = float((model.posterior(batch).entropy() / batch["lengths"]).mean())
    assert ends[0.8] > 0.7 and ends[0.8] > ends[None] + 0.15


def test_a_curriculum_trains_on_short_expressions_until_validation_passes(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = ListOpsDataModule(num_train=200, num_val=8, max_length=40, batch_size=8)
    data.setup("fit")
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((trainer.global_step, int(batch["lengths"].max())))

    curriculum = LengthCurriculum(lengths=(8, 40), monitor="val/accuracy", threshold=0.0)
    trainer = _trainer(
        12, limit_val_batches=1.0, val_check_interval=6, callbacks=[curriculum, Spy()]
    )
    trainer.fit(_model(), data)
    assert all(n <= 8 for step, n in seen if step < 6)
    assert any(n > 8 for step, n in seen if step >= 6)  # threshold 0 passed at step 6
    assert curriculum.state_dict() == {"stage": 1}
    missing = LengthCurriculum(lengths=(8, 40), monitor="val/uas_201+")  # no such example
    trainer = _trainer(4, limit_val_batches=1.0, val_check_interval=2, callbacks=[missing])
    with pytest.warns(UserWarning, match="val/uas_201.*staying at lengths ≤ 8"):
        trainer.fit(_model(), data)
    assert missing.stage == 0
    with pytest.raises(ValueError, match="increasing"):
        LengthCurriculum(lengths=(30, 30))


def test_structures_and_composers_are_checked() -> None:
    with pytest.raises(ValueError, match="structure must be one of"):
        _model(structure="projectiv")
    with pytest.raises(ValueError, match="needs a DependencyComposer"):
        _model(composer=BinaryComposer(16, 8, 8))
    with pytest.raises(ValueError, match="multiroot"):
        _model(structure="binary", multiroot=True)
