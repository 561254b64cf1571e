"""The image-experiment runner, on tiny fake IDX files written here (no real data needed)."""

import gzip
import json
import math
import os
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from lidvae_nb import experiments, libi, report
from lidvae_nb.data import MNIST_FILES
from lidvae_nb.experiments import RunSpec, collect, load_grid, run_grid, run_one
from lidvae_nb.metrics import collapse_report
from lidvae_nb.models import ModelConfig

torch.set_num_threads(1)

PROVENANCE_KEYS = {"config", "commit", "versions", "device", "wall_seconds", "epochs"}


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fake(root: Path, name: str, n_train: int = 40, n_test: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = MNIST_FILES[split]
        _write_idx(folder / images_name, rng.integers(0, 256, size=(n, 28, 28)), 0x803)
        _write_idx(folder / labels_name, rng.integers(0, 3, size=n), 0x801)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    _write_fake(path, "mnist")
    _write_fake(path, "fashion_mnist", seed=1)
    return path


TINY = dict(
    epochs=1,
    n_train=30,
    n_val=6,
    n_test=10,
    batch_size=10,
    latent_dim=2,
    hidden=16,
    encoder_depth=1,
    depth=1,
    n_clusters=3,
    iwae_samples=5,
    verify=False,
)


def tiny(**changes) -> RunSpec:
    return RunSpec.from_dict({**TINY, **changes})


def _log_lines(run_dir: Path) -> int:
    return len((run_dir / "log.jsonl").read_text().splitlines())


# --- specs and grids ----------------------------------------------------------------------------


def test_a_grid_file_expands_to_the_cartesian_product_with_shared_settings(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'datasets = ["mnist", "omniglot"]\n'
        'methods = ["vae", "lidgmvae", "savae"]\n'
        "depths = [1, 2]\n"
        "seeds = [0, 1]\n"
        "epochs = 3\n"
        "hidden = 8\n"
        'tag = "small"\n'
    )
    specs = load_grid(grid)
    assert len(specs) == 2 * 3 * 2 * 2
    ids = [s.run_id for s in specs]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "mnist-vae-d1-s0-small"
    assert "omniglot-lidgmvae-d2-s1-small" in ids
    assert all(s.epochs == 3 and s.hidden == 8 for s in specs)
    assert {s.method for s in specs} == {"vae", "lidgmvae", "savae"}
    assert specs[5]["method"] == specs[5].method and dict(specs[5])["depth"] == specs[5].depth
    fixed = RunSpec(method="gmvae", fixed_prior_means=True).model_config()
    assert fixed.fixed_prior_means and not RunSpec().model_config().fixed_prior_means
    assert RunSpec(dataset="fashion_mnist", method="lidgmvae", depth=2).run_id == (
        "fashion_mnist-lidgmvae-d2-s0"
    )


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"method": "wae"}, "method"),
        ({"dataset": "cifar"}, "dataset"),
        ({"depth": 0}, "depth"),
        ({"epochs": 1.5}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"n_val": -1}, "n_val"),
        ({"tag": "a b"}, "tag"),
        ({"method": "savae", "flow_layers": 2}, "flow_layers"),
        ({"method": "lagging", "n_val": 0}, "n_val"),
        ({"colour": "red"}, "colour"),
        ({"fixed_prior_means": "yes"}, "fixed_prior_means"),
        ({"dataset": "yahoo", "method": "gmvae"}, "no text model"),
        ({"dataset": "yahoo", "lstm_hidden": 0}, "lstm_hidden"),
        ({"dataset": "synthetic_text", "vocab_size": -5}, "vocab_size"),
        ({"dataset": "yahoo", "max_len": 2.5}, "max_len"),
    ],
)
def test_bad_spec_values_are_named(changes, match):
    with pytest.raises(ValueError, match=match):
        RunSpec.from_dict(changes)


def test_bad_grid_files_are_named(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('datasets = ["mnist"]\nmethods = ["vae"]\ndepths = [1]\n')
    with pytest.raises(ValueError, match="seeds"):
        load_grid(grid)
    grid.write_text('datasets = ["mnist"]\nmethods = []\ndepths = [1]\nseeds = [0]\n')
    with pytest.raises(ValueError, match="methods"):
        load_grid(grid)
    grid.write_text('datasets = ["mnist"]\nmethods = ["vae"]\ndepths = [1]\nseeds = [0]\nx = 1\n')
    with pytest.raises(ValueError, match="'x'"):
        load_grid(grid)
    grid.write_text('datasets = ["mnist"]\nmethods = ["vae"]\ndepths = [1]\nseeds = [0, 0]\n')
    with pytest.raises(ValueError, match="same id"):
        load_grid(grid)


# --- runs ---------------------------------------------------------------------------------------


def test_one_run_stores_finite_metrics_and_provenance_and_is_then_skipped(root, tmp_path):
    spec = tiny()
    result = run_one(spec, tmp_path, data_root=root)
    path = tmp_path / f"{spec.run_id}.json"
    assert path.exists() and json.loads(path.read_text()) == result
    assert result["id"] == "mnist-vae-d1-s0" and result["error"] is None
    for key in ("au", "kl", "mi", "log_likelihood"):
        assert math.isfinite(result["metrics"][key]), key
    assert result["metrics"]["log_likelihood"] < 0
    assert result["n_images"] == {"train": 30, "val": 6, "test": 10}
    assert PROVENANCE_KEYS <= set(result["provenance"])
    assert result["provenance"]["config"] == spec.to_dict() == result["spec"]
    assert result["provenance"]["epochs"] == result["epochs"] == len(result["history"]) == 1
    assert "val_loss" in result["history"][0]
    # Asked again: the stored result, nothing retrained or rewritten.
    mtime = path.stat().st_mtime_ns
    again = run_one(spec, tmp_path, data_root=root)
    assert again == result
    assert path.stat().st_mtime_ns == mtime
    assert _log_lines(tmp_path / spec.run_id) == 1
    # A changed setting for the same id is refused, naming the setting.
    with pytest.raises(ValueError, match="hidden"):
        run_one(spec.replace(hidden=8), tmp_path, data_root=root)


def test_an_interrupted_run_resumes_from_its_checkpoint(root, tmp_path):
    first = run_one(tiny(epochs=1), tmp_path, data_root=root)
    second = run_one(tiny(epochs=2), tmp_path, data_root=root)
    assert second["resumed_from_epoch"] == 1 and second["epochs"] == 2
    assert len(second["history"]) == 2
    assert second["history"][0] == first["history"][0]
    # Epoch 1 was not trained again: one log line per epoch trained.
    assert _log_lines(tmp_path / "mnist-vae-d1-s0") == 2
    # A checkpoint left without a result file (a run killed mid-way) is resumed too.
    (tmp_path / "mnist-vae-d1-s0.json").unlink()
    third = run_one(tiny(epochs=3), tmp_path, data_root=root)
    assert third["resumed_from_epoch"] == 2 and len(third["history"]) == 3


def test_run_grid_runs_every_spec_and_collect_reads_them(root, tmp_path):
    specs = [tiny(), tiny(dataset="fashion_mnist", method="lidgmvae")]
    results = run_grid(specs, tmp_path, workers=1, data_root=root, progress=False)
    assert [r["id"] for r in results] == ["mnist-vae-d1-s0", "fashion_mnist-lidgmvae-d1-s0"]
    mixture = results[1]["metrics"]
    assert 0 <= mixture["cluster_accuracy"] <= 1 and math.isfinite(mixture["cluster_mi"])
    stored = collect(tmp_path)
    assert sorted(r["id"] for r in stored) == sorted(r["id"] for r in results)
    assert {r["id"]: r for r in stored} == {r["id"]: r for r in results}

    class RecordingExecutor:  # the submit(fn, *args) -> future interface of submitit
        def __init__(self):
            self.calls = 0

        def submit(self, fn, *args):
            self.calls += 1
            future = Future()
            future.set_result(fn(*args))
            return future

    executor = RecordingExecutor()
    again = run_grid(specs, tmp_path, data_root=root, executor=executor, progress=False)
    assert executor.calls == 2 and again == results
    with pytest.raises(ValueError, match="same id"):
        run_grid([tiny(), tiny()], tmp_path, data_root=root, progress=False)


def test_run_grid_through_submitits_local_executor(root, tmp_path):
    # What a SLURM cluster runs, in local processes: each job unpickles the spec and writes its
    # own result file.
    submitit = pytest.importorskip("submitit")
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=5)
    specs = [tiny(), tiny(method="beta", seed=1)]
    results = run_grid(specs, tmp_path / "out", data_root=root, executor=executor, progress=False)
    assert [r["id"] for r in results] == ["mnist-vae-d1-s0", "mnist-beta-d1-s1"]
    assert all(math.isfinite(r["metrics"]["log_likelihood"]) for r in results)
    assert {r["id"] for r in collect(tmp_path / "out")} == {r["id"] for r in results}


def test_label_posteriors_compare_the_encoder_with_the_fitted_model(root, tmp_path):
    specs = [tiny(), tiny(method="gmvae", fixed_prior_means=True)]
    results = run_grid(specs, tmp_path, data_root=root, progress=False)
    entries = experiments.label_posteriors(
        results, tmp_path, n_images=8, n_samples=4, data_root=root
    )
    assert [e["id"] for e in entries] == ["mnist-gmvae-d1-s0"]  # the mixture run only
    for part in ("encoder", "model"):
        info = entries[0][part]
        assert -1e-6 <= info["mi"] <= math.log(TINY["n_clusters"]) + 1e-6
        assert 0 <= info["accuracy"] <= 1 and info["entropy"] >= 0
    # The model read back from the checkpoint is the one that was evaluated.
    model = experiments.load_model(specs[1], tmp_path)
    assert not model.training
    sets = experiments.load_data(specs[1], root)
    again = collapse_report(model, sets["test"], iwae_samples=0, labels=sets["test_labels"].numpy())
    stored = results[1]["metrics"]
    assert again["cluster_accuracy"] == stored["cluster_accuracy"]
    assert again["cluster_mi"] == pytest.approx(stored["cluster_mi"], abs=1e-6)
    with pytest.raises(FileNotFoundError, match="mnist-beta-d1-s0"):
        experiments.load_model(tiny(method="beta"), tmp_path)


def test_the_command_line_writes_one_file_per_run(root, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items() if k != "depth")
    grid.write_text(
        'datasets = ["mnist"]\nmethods = ["beta", "lidvae"]\ndepths = [1]\nseeds = [3]\n'
        + settings
        + "\n"
    )
    out = tmp_path / "out"
    experiments.main([str(grid), "--out", str(out), "--data-root", str(root)])
    assert sorted(p.name for p in out.glob("*.json")) == [
        "mnist-beta-d1-s3.json",
        "mnist-lidvae-d1-s3.json",
    ]
    assert all(r["error"] is None for r in collect(out))
    assert "2 runs" in capsys.readouterr().out
    # Again, with the label analysis: the runs are skipped, the file holds no mixture run.
    labels = tmp_path / "labels.json"
    experiments.main(
        [str(grid), "--out", str(out), "--data-root", str(root), "--label-posteriors", str(labels)]
        + ["--label-images", "5", "--label-samples", "3"]
    )
    stored = json.loads(labels.read_text())
    assert stored["label_posteriors"] == []
    assert stored["provenance"]["config"]["n_images"] == 5 and "date" in stored["provenance"]


# --- provenance ---------------------------------------------------------------------------------


def test_provenance_lives_in_report_and_names_the_gpu_when_there_is_one(monkeypatch):
    assert libi.provenance is report.provenance
    prov = report.provenance({"a": 1}, 2.0)
    assert {"config", "commit", "versions", "device", "wall_seconds"} <= set(prov)
    assert prov["config"] == {"a": 1} and prov["wall_seconds"] == 2.0
    from datetime import UTC, datetime

    age = datetime.now(UTC) - datetime.fromisoformat(prov["date"])
    assert 0 <= age.total_seconds() < 60
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Fake GPU 80GB")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    prov = report.provenance({}, 1.0)
    assert prov["versions"]["cuda"] == "12.4"
    assert "Fake GPU 80GB" in prov["device"]


# --- summaries ----------------------------------------------------------------------------------


def _record(method, seed, metrics, error=None, seconds=(2.0, 3.0), n_train=100):
    spec = RunSpec(method=method, seed=seed).to_dict()
    return {
        "id": f"mnist-{method}-d2-s{seed}",
        "spec": spec,
        "metrics": {} if error else metrics,
        "error": error,
        "history": [{"seconds": s} for s in seconds],
        "n_images": {"train": n_train},
    }


def test_summarize_gives_mean_and_sample_sd_over_seeds_and_counts_failures():
    results = [
        _record("vae", 0, {"au": 0.1, "log_likelihood": -100.0}),
        _record("vae", 1, {"au": 0.3, "log_likelihood": -104.0}),
        _record("vae", 2, {}, error="non-finite loss"),
        _record("beta", 0, {"au": 0.5, "log_likelihood": -90.0}),
    ]
    out = experiments.summarize(results)
    vae, beta = out["mnist", "vae", 2], out["mnist", "beta", 2]
    assert vae["n"] == 3 and vae["failed"] == 1
    assert vae["au"] == pytest.approx((0.2, math.sqrt(0.02)))
    assert vae["log_likelihood"] == pytest.approx((-102.0, math.sqrt(8.0)))
    assert "kl" not in vae  # no run has it
    assert beta["n"] == 1 and beta["au"][0] == 0.5 and math.isnan(beta["au"][1])
    tagged = {**results[0], "spec": {**results[0]["spec"], "tag": "other"}}
    with pytest.raises(ValueError, match="tag"):
        experiments.summarize([*results, tagged])
    by_seed = experiments.summarize(results, by=("seed",), over=("method",))
    assert by_seed[0,]["n"] == 2 and by_seed[0,]["au"] == pytest.approx((0.3, math.sqrt(0.08)))
    with pytest.raises(ValueError, match="colour"):
        experiments.summarize(results, by=("colour",))


def test_throughput_counts_images_over_training_seconds():
    assert experiments.throughput(_record("vae", 0, {}, seconds=(2.0, 3.0))) == 40.0
    with pytest.raises(ValueError, match="no timed epochs"):
        experiments.throughput(_record("vae", 0, {}, seconds=()))


# --- text runs ----------------------------------------------------------------------------------

TEXT = dict(
    epochs=1,
    n_train=24,
    n_val=8,
    n_test=10,
    batch_size=8,
    latent_dim=3,
    hidden=8,
    depth=1,
    embed_dim=8,
    lstm_hidden=8,
    iwae_samples=4,
    optimizer="adam",
    verify=False,
)


def _write_yahoo(root: Path) -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)] + ["_UNK"]
    folder = root / "yahoo"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        lines = []
        for _ in range(60):
            n = int(rng.integers(3, 14))  # some documents longer than max_len = 10 below
            lines.append(" ".join(rng.choice(words, size=n)))
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_a_text_run_trains_the_text_model_and_reports_perplexity(tmp_path):
    spec = RunSpec.from_dict({**TEXT, "dataset": "synthetic_text", "method": "lidvae"})
    assert spec.is_text and spec.model_name == "lidsvae"
    assert spec.replace(method="savae").model_name == "svae"
    with pytest.raises(ValueError, match="data_dim"):
        spec.model_config()
    result = run_one(spec, tmp_path)
    assert result["error"] is None and result["id"] == "synthetic_text-lidvae-d1-s0"
    assert result["n_images"] == {"train": 24, "val": 8, "test": 10}
    assert result["vocab_size"] == 1004  # 1,000 words and the four special tokens
    metrics = result["metrics"]
    # Perplexity is exp(-LL per predicted token), the tokens being the words and one </s> each.
    sets = experiments.load_data(spec)
    tokens = int((sets["test"][:, 1:] != 0).sum())
    assert result["test_tokens"] == tokens == sets["test_tokens"]
    assert tokens == sum(len(row) for row in _words(sets["test"])) + 10
    ll = metrics["log_likelihood"]
    assert metrics["perplexity"] == pytest.approx(math.exp(-ll * 10 / tokens))
    assert metrics["perplexity"] > 1
    # The stored checkpoint reloads to the same model: the same log-likelihood given the same z.
    model = experiments.load_model(spec, tmp_path)
    z = torch.zeros(10, 3)
    again = experiments.load_model(spec, tmp_path)
    assert torch.equal(model.log_likelihood(sets["test"], z), again.log_likelihood(sets["test"], z))
    from lidvae_nb.data import Vocabulary
    from lidvae_nb.models import LIDSVAE

    assert isinstance(model, LIDSVAE)
    assert len(Vocabulary.load(tmp_path / spec.run_id / "vocab.json")) == 1004


def _words(x):
    return [[t for t in row.tolist() if t > 2] for row in x]


def test_yahoo_runs_use_the_short_training_documents_and_a_training_only_vocabulary(tmp_path):
    _write_yahoo(tmp_path)
    spec = RunSpec.from_dict(
        {**TEXT, "dataset": "yahoo", "method": "vae", "max_len": 10, "vocab_size": 12}
    )
    sets = experiments.load_data(spec, data_root=tmp_path)
    assert [len(sets[k]) for k in ("train", "val", "test")] == [24, 8, 10]
    assert len(sets["vocab"]) == 16  # 12 words and the four special tokens
    for name in ("train", "val", "test"):
        assert sets[name].shape[1] <= 12  # <s>, at most 10 words, </s>
    # The vocabulary is the training documents' most frequent words: each of them occurs there,
    # and the rest of the words become <unk> (3).
    train_words = {w for row in _words(sets["train"]) for w in row}
    assert train_words == set(range(3, 16))
    assert (sets["test"] == 3).any()
    # Every draw is fixed by data_seed; the seed of the run does not change the data.
    same = experiments.load_data(spec.replace(seed=3), data_root=tmp_path)
    assert all(torch.equal(sets[k], same[k]) for k in ("train", "val", "test"))
    other = experiments.load_data(spec.replace(data_seed=1), data_root=tmp_path)
    assert not torch.equal(sets["train"], other["train"])
    result = run_one(spec, tmp_path / "out", data_root=tmp_path)
    assert result["error"] is None and math.isfinite(result["metrics"]["perplexity"])
    with pytest.raises(ValueError, match="fewer than n_train"):
        experiments.load_data(spec.replace(n_train=59), data_root=tmp_path)
    with pytest.raises(ValueError, match="'mnist'"):
        experiments.load_text(spec.replace(dataset="mnist"), data_root=tmp_path)


def test_a_result_stored_before_the_text_fields_existed_is_still_reused(root, tmp_path):
    spec = tiny()
    result = run_one(spec, tmp_path, data_root=root)
    path = tmp_path / f"{spec.run_id}.json"
    old = json.loads(path.read_text())
    for key in ("embed_dim", "lstm_hidden", "lstm_layers", "vocab_size", "max_len"):
        del old["spec"][key]
    path.write_text(json.dumps(old))
    assert run_one(spec, tmp_path, data_root=root)["metrics"] == result["metrics"]


def test_the_true_models_encoder_is_fitted_to_fresh_draws_of_the_true_model():
    spec = RunSpec.from_dict({**TEXT, "dataset": "synthetic_text", "max_len": 12})
    untrained = experiments.true_model_report(spec, steps=1, batch_size=16, n_pairs=500)
    fitted = experiments.true_model_report(spec, steps=60, batch_size=16, n_pairs=500)
    assert [c["steps"] for c in fitted["checks"]] == [20, 40, 60]
    assert fitted["checks"][-1]["log_likelihood"] == fitted["log_likelihood"]
    # Sleep-phase fitting raises log q(z | x) at the latents that drew x.
    assert fitted["final_nll"] < untrained["final_nll"] - 1.0
    # The true latents explain the test sentences far better than a typical latent: the corpus
    # depends on z, so a model that ignored z could not reach the true model's likelihood.
    assert fitted["log_p_x_given_true_z"] > fitted["log_likelihood"]
    assert fitted["log_p_x_given_true_z"] == untrained["log_p_x_given_true_z"]
    assert math.isfinite(fitted["perplexity"]) and fitted["encoder_steps"] == 60
    with pytest.raises(ValueError, match="only the synthetic corpus"):
        experiments.true_model_report(spec.replace(dataset="yahoo"))


def test_the_command_line_writes_the_true_models_report(tmp_path):
    grid = tmp_path / "grid.toml"
    settings = {**{k: v for k, v in TEXT.items() if k != "depth"}, "max_len": 12}
    lines = [
        f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
        for k, v in settings.items()
    ]
    grid.write_text(
        'datasets = ["synthetic_text"]\nmethods = ["vae"]\ndepths = [1]\nseeds = [1]\n'
        + "\n".join(lines)
        + "\n"
    )
    out = tmp_path / "true.json"
    experiments.main(
        [
            str(grid),
            "--out",
            str(tmp_path / "runs"),
            "--true-model",
            str(out),
            "--true-steps",
            "4",
            "--true-pairs",
            "50",
        ]
    )
    record = json.loads(out.read_text())
    assert record["spec"]["seed"] == 0 and record["spec"]["dataset"] == "synthetic_text"
    assert record["metrics"]["encoder_steps"] == 4
    assert record["provenance"]["config"]["n_pairs"] == 50
    assert (tmp_path / "runs" / "synthetic_text-vae-d1-s1.json").exists()


# --- the reference configuration, variants and the learning-curve monitor -----------------------


def test_reference_settings_reach_the_model_and_the_trainer():
    spec = RunSpec(dataset="fashion_mnist", method="lidgmvae", **experiments.REFERENCE_SETTINGS)
    cfg, train = spec.model_config(), spec.train_config()
    for key in (
        "lift",
        "icnn_weights",
        "icnn_alpha",
        "icnn_quadratic_init",
        "data_width",
        "flow_layers",
        "flow_hidden",
        "flow_shift_only",
        "prior_mean_scale",
    ):
        assert getattr(cfg, key) == experiments.REFERENCE_SETTINGS[key], key
    for key in ("momentum", "rmsprop_alpha", "rmsprop_eps", "rmsprop_init", "reduction", "lr"):
        assert getattr(train, key) == experiments.REFERENCE_SETTINGS[key], key
    torch.manual_seed(0)
    model = experiments.build_model(spec.model_name, cfg)
    assert model.decoder.g2.potential_net.input_layers[0].out_features == 784
    assert model.decoder.lift.smallest_singular_value() > 0


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"lift": "dense"}, "lift must be one of"),
        ({"flow_hidden": -1}, "flow_hidden"),
        ({"icnn_weights": "clamp"}, "icnn_weights"),
        ({"reduction": "max"}, "reduction"),
        ({"monitor_images": -1}, "monitor_images"),
        ({"rmsprop_alpha": 1.5}, "rmsprop_alpha"),
    ],
)
def test_bad_reference_settings_are_named(changes, match):
    with pytest.raises(ValueError, match=match):
        RunSpec.from_dict(changes)


def test_grid_variants_cross_the_product_with_named_changes(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'datasets = ["mnist"]\nmethods = ["lidgmvae"]\ndepths = [1]\nseeds = [0, 1]\n'
        'lift = "learned"\n[variants.base]\n[variants.zero_one]\nlift = "zero_one"\n'
    )
    specs = load_grid(grid)
    assert [s.run_id for s in specs] == [
        "mnist-lidgmvae-d1-s0-base",
        "mnist-lidgmvae-d1-s1-base",
        "mnist-lidgmvae-d1-s0-zero_one",
        "mnist-lidgmvae-d1-s1-zero_one",
    ]
    assert [s.lift for s in specs] == ["learned"] * 2 + ["zero_one"] * 2
    grid.write_text(
        'datasets = ["mnist"]\nmethods = ["vae"]\ndepths = [1]\nseeds = [0]\n'
        '[variants.bad]\nlift = "dense"\n'
    )
    with pytest.raises(ValueError, match="variant 'bad'.*lift must be one of"):
        load_grid(grid)


def test_a_monitored_run_logs_the_learning_curve_from_step_zero(root, tmp_path):
    spec = tiny(
        method="lidgmvae",
        epochs=2,
        lift="learned",
        icnn_weights="projected",
        flow_layers=2,
        flow_shift_only=True,
        monitor_images=8,
        monitor_bound_samples=2,
        monitor_iwae_samples=3,
        reduction="sum",
        rmsprop_init=1.0,
        momentum=0.5,
        rmsprop_alpha=0.9,
    )
    result = run_one(spec, tmp_path, data_root=root)
    history = result["history"]
    assert [h["step"] for h in history] == [0, 3, 6]
    for h in history:
        for key in (
            "test_elbo",
            "test_ref_bound",
            "test_iwae",
            "test_kl_y",
            "test_kl_z",
            "test_acc_majority",
            "test_acc_hungarian",
        ):
            assert math.isfinite(h[key]), key
        assert h["test_acc_majority"] >= h["test_acc_hungarian"]
    with pytest.raises(ValueError, match="monitor_images = 50"):
        run_one(spec.replace(monitor_images=50, tag="more"), tmp_path, data_root=root)


def test_learning_curves_average_the_monitored_histories_over_seeds():
    def run(seed, values, tag="", error=None):
        spec = RunSpec(dataset="mnist", method="lidgmvae", seed=seed, tag=tag).to_dict()
        history = [{"step": s, "test_elbo": v, "test_iwae": v + 1} for s, v in values]
        return {"id": f"r{seed}{tag}", "spec": spec, "history": history, "error": error}

    results = [
        run(0, [(0, -500.0), (200, -300.0), (400, -280.0)]),
        run(1, [(0, -520.0), (200, -310.0)]),  # shorter: only the common steps are kept
        run(2, [(0, 0.0)], error="non-finite loss"),  # failed runs are left out
        run(0, [(0, -400.0), (200, -350.0)], tag="other"),
    ]
    curves = experiments.learning_curves(results, keys=("test_elbo", "test_iwae", "test_kl_y"))
    main = curves[("mnist", "lidgmvae", 2, "")]
    assert main["n"] == 2 and list(main["steps"]) == [0, 200]
    np.testing.assert_allclose(main["test_elbo"][0], [-510.0, -305.0])
    np.testing.assert_allclose(main["test_elbo"][1], [np.sqrt(200.0), np.sqrt(50.0)])
    np.testing.assert_allclose(main["test_iwae"][0], [-509.0, -304.0])
    assert "test_kl_y" not in main
    other = curves[("mnist", "lidgmvae", 2, "other")]
    assert other["n"] == 1 and np.isnan(other["test_elbo"][1]).all()


def test_a_claim_that_the_data_contradict_fails_quoting_the_sentence():
    assert report.claim("A beats B", 3.0 > 2.0, a=3.0, b=2.0)
    assert report.claim("all above zero", np.array([1.0, 2.0]) > 0)
    with pytest.raises(report.ClaimFailed, match=r"'A beats B' \(a = 1.0, b = 2.0\)"):
        report.claim("A beats B", 1.0 > 2.0, a=1.0, b=2.0)
    with pytest.raises(report.ClaimFailed, match="every seed"):
        report.claim("every seed", np.array([True, False]))


def test_glue_stores_numpy_and_torch_scalars_as_numbers_that_format(monkeypatch):
    import myst_nb

    stored = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: stored.update({name: value}))
    report.glue("a", np.float64(-3.125))
    report.glue("b", torch.tensor(0.5))
    report.glue("c", np.array([1.0, 2.0]))
    assert type(stored["a"]) is float and f"{stored['a']:.2f}" == "-3.12"
    assert type(stored["b"]) is float and stored["b"] == 0.5
    assert isinstance(stored["c"], np.ndarray)  # not a scalar: stored as it is
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # as if the book extra were missing
    with pytest.raises(ImportError, match=r"needs myst-nb.*lidvae_nb\[book\]"):
        report.glue("d", 1.0)


def test_provenance_summary_names_commits_devices_dates_and_failures():
    def rec(i, commit, dirty, error=None):
        prov = {
            "commit": commit,
            "uncommitted_changes": dirty,
            "device": "x86_64 CPU, 2 cores",
            "versions": {"torch": "2.13.0", "python": "3.11.7"},
            "date": f"2026-12-0{i}T10:00:00+00:00",
            "wall_seconds": 1800.0,
        }
        return {"id": f"r{i}", "provenance": prov, "error": error}

    text = report.provenance_summary([rec(1, "a" * 40, False), rec(2, "b" * 40, True, "nan")])
    assert "2 runs, commit(s) aaaaaaaaaa, bbbbbbbbbb (with uncommitted changes)" in text
    assert "2026-12-01T10:00:00+00:00 to 2026-12-02T10:00:00+00:00" in text
    assert "1.0 h of run time" in text and "non-finite loss: r2" in text
    with pytest.raises(ValueError, match="no stored results"):
        report.provenance_summary([])


def test_a_stored_spec_without_a_later_field_reads_as_the_code_ran_then(monkeypatch):
    monkeypatch.setitem(experiments.STORED_DEFAULTS, "icnn_weights", "projected")
    stored = {"dataset": "mnist", "method": "lidvae"}
    assert RunSpec.from_stored(stored).icnn_weights == "projected"
    assert RunSpec.from_dict(stored).icnn_weights == RunSpec().icnn_weights
    assert RunSpec.from_stored({**stored, "icnn_weights": "softplus"}).icnn_weights == "softplus"
    assert set(experiments.STORED_DEFAULTS) <= set(RunSpec().keys())


# --- locks, and where a grid stands -------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_keeps_a_second_worker_off_the_run(root, tmp_path):
    spec = tiny()
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir(parents=True)
    with experiments.run_lock(run_dir):
        holder = experiments.read_lock(run_dir)
        assert holder["pid"] == os.getpid() and not holder["stale"]
        with pytest.raises(experiments.RunLocked, match=f"process {os.getpid()}"):
            run_one(spec, tmp_path, data_root=root)
        assert run_grid([spec], tmp_path, data_root=root, progress=False) == []  # skipped
        status = experiments.grid_status([spec], tmp_path)
        assert status["runs"][0]["state"] == "running"
    assert not (run_dir / "lock").exists()  # released
    assert run_one(spec, tmp_path, data_root=root)["error"] is None


def test_the_stale_lock_of_a_dead_process_is_taken_over(root, tmp_path):
    import socket

    spec = tiny()
    run_dir = tmp_path / spec.run_id
    run_dir.mkdir(parents=True)
    lock = {"pid": _dead_pid(), "host": socket.gethostname(), "started": time.time()}
    (run_dir / "lock").write_text(json.dumps(lock))
    assert experiments.read_lock(run_dir)["stale"]
    assert experiments.grid_status([spec], tmp_path)["runs"][0]["state"] == "left"
    assert run_one(spec, tmp_path, data_root=root)["error"] is None
    # a lock from another machine is stale only after LOCK_STALE_SECONDS
    other = {"pid": 1, "host": "elsewhere", "started": time.time() - 60}
    (run_dir / "lock").write_text(json.dumps(other))
    assert not experiments.read_lock(run_dir)["stale"]
    other["started"] = time.time() - experiments.LOCK_STALE_SECONDS - 1
    (run_dir / "lock").write_text(json.dumps(other))
    assert experiments.read_lock(run_dir)["stale"]


def test_grid_status_counts_states_and_estimates_the_time_left(root, tmp_path):
    specs = [tiny(seed=0, epochs=2), tiny(seed=1, epochs=2), tiny(seed=2, epochs=2)]
    empty = experiments.grid_status(specs, tmp_path)
    assert empty["counts"]["left"] == 3 and empty["seconds_left"] is None
    done = run_one(specs[0], tmp_path, data_root=root)
    run_dir = tmp_path / specs[1].run_id  # a run stopped after one of its two epochs
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    (run_dir / "log.jsonl").write_text('{"epoch": 1}\n')
    status = experiments.grid_status(specs, tmp_path, workers=2)
    assert status["counts"] == {"done": 1, "running": 0, "partial": 1, "left": 1}
    wall = done["provenance"]["wall_seconds"]
    assert status["seconds_left"] == pytest.approx((0.5 * wall + wall) / 2)
    text = experiments.format_grid_status(status)
    assert "partial     1/2" in text and "1 done, 0 running, 1 partial, 1 left" in text


def test_the_command_line_prints_the_grid_status(root, tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'datasets = ["mnist"]\nmethods = ["vae"]\ndepths = [1]\nseeds = [0]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items() if k != "depth")
    )
    experiments.main([str(grid), "--out", str(tmp_path / "out"), "--status"])
    assert "1 runs: 0 done, 0 running, 0 partial, 1 left" in capsys.readouterr().out


def test_icnn_weight_summary_reads_the_trained_and_the_initial_weights(root, tmp_path):
    specs = [tiny(method="lidvae", icnn_weights="projected", lr=0.05), tiny(method="vae")]
    results = run_grid(specs, tmp_path, data_root=root, progress=False)
    (entry,) = experiments.icnn_weight_summary(results, tmp_path)
    assert entry["id"] == specs[0].run_id and entry["steps"] == 3
    torch.manual_seed(specs[0].seed)
    fresh = experiments.build_model("lidvae", specs[0].model_config())
    w0 = fresh.decoder.g2.potential_net.positive_weights()[-1].mean().item()
    assert entry["g2_w_init"] == pytest.approx(w0)
    assert entry["g2_w"] != pytest.approx(w0)  # training moved it


@pytest.mark.parametrize("name", ["10_book", "10_smoke", "10_table_full", "10_depth_full"])
def test_the_image_grids_state_the_image_settings(name):
    book = Path(__file__).resolve().parents[1] / "book" / "grids"
    for spec in load_grid(book / f"{name}.toml"):
        for key, value in experiments.IMAGE_SETTINGS.items():
            assert spec[key] == value, (spec.run_id, key)
    assert experiments.IMAGE_SETTINGS["flow_layers"] == 0  # SA-VAE refines a Gaussian


def test_the_runner_and_the_models_default_to_the_image_configuration():
    spec = RunSpec()
    for key, value in experiments.IMAGE_SETTINGS.items():
        assert spec[key] == value, key
    # the models' own defaults share the lift, the weights and the prior; their quadratic term
    # is the ablation's strongly monotone one (as fast per step, and its inverse converges)
    cfg = ModelConfig(data_dim=784)
    for key in ("lift", "icnn_weights", "prior_mean_scale"):
        assert getattr(cfg, key) == spec[key], key
    assert (cfg.icnn_alpha, cfg.icnn_quadratic_init) == (0.1, 1.0) != (spec.icnn_alpha, 1e-3)
    # and the stored runs made before the change still read as they ran
    old = RunSpec.from_stored({})
    assert (old.lift, old.icnn_weights, old.reduction) == ("zero_one", "softplus", "mean")
    # the RMSprop settings of the defaults do not reach another optimiser
    adam = RunSpec(optimizer="adam").train_config()
    assert adam.optimizer == "adam" and adam.momentum == 0.0 and adam.rmsprop_init == 0.0
    tf1 = RunSpec().train_config()
    assert (tf1.momentum, tf1.rmsprop_alpha, tf1.rmsprop_init) == (0.5, 0.9, 1.0)
    assert tf1.reduction == "sum"


def test_pinwheel_runs_do_not_depend_on_the_number_of_workers():
    kw = dict(likelihood="bernoulli", epochs=2, seeds=1, n_per_arm=20, iwae_samples=5)
    one = experiments.pinwheel_study(**kw, workers=1)
    two = experiments.pinwheel_study(**kw, workers=2)
    assert [r["variant"] for r in one] == list(experiments.PINWHEEL_VARIANTS)
    for a, b in zip(one, two, strict=True):
        for key in ("mi", "entropy", "model_mi", "acc", "ll", "separation"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["variant"], key)
        theirs = b["model"].state_dict()
        for name, p in a["model"].state_dict().items():
            assert torch.allclose(p, theirs[name], atol=1e-5), (a["variant"], name)


def test_a_binarised_pinwheel_run_sees_pixels_and_reports_probabilities():
    run = experiments.pinwheel_run(
        "LIDGMVAE", "bernoulli", epochs=1, seed=3, n_per_arm=20, iwae_samples=5, n_test_per_arm=10
    )
    assert set(run["x_test_in"].unique().tolist()) <= {0.0, 1.0}
    assert run["probs"].shape == (50, 5)
    assert torch.allclose(run["probs"].sum(1), torch.ones(50), atol=1e-5)
    assert 0 <= run["mi"] <= math.log(5) + 1e-6 and 0.2 <= run["acc"] <= 1
    assert not run["model"].training


@pytest.mark.parametrize(
    "args, match",
    [
        (("VAE", "bernoulli"), "variant must be one of .*'GMVAE'.*got 'VAE'"),
        (("GMVAE", "poisson"), "likelihood must be 'bernoulli' or 'gaussian', got 'poisson'"),
    ],
)
def test_bad_pinwheel_settings_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        experiments.pinwheel_run(*args, epochs=1, seed=0, n_per_arm=10)
