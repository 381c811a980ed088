import pytest
import torch

import deepslim as ds


@pytest.fixture(scope="module")
def digits():
    return ds.load_data("digits")


def test_lenet300_learns_real_digits(digits):
    model = ds.create_model("lenet300", in_features=64)
    result = ds.fit(model, digits, epochs=15, lr=2e-3)
    test = ds.evaluate(model, digits.test)
    assert test.samples == 359 and test.accuracy >= 0.94  # a linear model gets ~0.95; chance is 0.10
    assert len(result.history) == 15 and result.best_val_accuracy >= 0.94
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_fit_is_deterministic_and_runs_hooks(digits):
    class Counter:
        steps = 0

        def after_step(self, model):
            self.steps += 1

    def run():
        torch.manual_seed(1)
        model = ds.create_model("lenet300", in_features=64, hidden=(32, 16))
        counter = Counter()
        ds.fit(model, digits, epochs=2, seed=5, hooks=[counter], restore_best=False)
        return model, counter.steps

    (m1, steps), (m2, _) = run(), run()
    assert steps == 2 * len(digits.train)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))


def test_fit_rejects_bad_settings(digits):
    model = ds.create_model("lenet300", in_features=64)
    with pytest.raises(ds.ConfigError, match="lr must be positive"):
        ds.fit(model, digits, epochs=1, lr=0)
    with pytest.raises(ds.ConfigError, match="epochs"):
        ds.fit(model, digits, epochs=-1)


def test_fit_checkpoints_the_best_epoch(tmp_path):
    import deepslim as ds

    data = ds.load_data("digits")
    model = ds.create_model("lenet300", in_features=64)
    result = ds.fit(model, data, epochs=3, lr=3e-3, checkpoint=tmp_path / "best.pt")
    saved = ds.load_model(tmp_path / "best.pt")
    assert ds.evaluate(saved, data.val).accuracy == result.best_val_accuracy
    assert not list(tmp_path.glob(".*tmp*"))
