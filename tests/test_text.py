"""Text data and the sequential VAEs: vocabulary, corpora, padding, the synthetic corpus, and the
SequentialVAE / LIDSVAE models under every training scheme. Small corpora are made here; one
test reads the real Yahoo files when $LIDVAE_DATA holds them."""

import math
import os
from pathlib import Path

import pytest
import torch

from lidvae_nb import metrics
from lidvae_nb.data import (
    SHA256,
    YAHOO_FILES,
    Vocabulary,
    pad_batch,
    read_corpus,
    synthetic_text,
    yahoo,
)
from lidvae_nb.models import LIDSVAE, ModelConfig, SequentialVAE, build_model
from lidvae_nb.trainer import TrainConfig, Trainer

torch.set_num_threads(1)

PAD, BOS, EOS, UNK = Vocabulary.PAD, Vocabulary.BOS, Vocabulary.EOS, Vocabulary.UNK
N_WORDS = 40
V = N_WORDS + len(Vocabulary.SPECIALS)
TEXT_MODELS = ["svae", "lidsvae"]


def tiny(name, seed=0, **kw):
    base = dict(data_dim=V, latent_dim=3, hidden=16, embed_dim=8, lstm_hidden=12)
    base.update(kw)
    torch.manual_seed(seed)
    return build_model(name, ModelConfig(**base))


def corpus(n=24, seed=0):
    x, _, _ = synthetic_text(
        n, seed=seed, vocab_size=N_WORDS, hidden=16, embed_dim=8, min_len=3, max_len=8
    )
    return x


def sentences(seed=0):
    """Four id sequences of different lengths (words and <unk>)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(UNK, V, (n,), generator=g).tolist() for n in (5, 1, 9, 3)]


# ---------------------------------------------------------------------------- vocabulary
def test_vocabulary_orders_words_and_maps_the_corpus_unk_to_unk(tmp_path):
    docs = [["b", "a", "_UNK", "c"], ["a", "b", "a", "<s>"], ["d"]]
    vocab = Vocabulary.build(docs)
    assert vocab.words == ["a", "b", "c", "d"]  # by count, ties alphabetically
    assert len(vocab) == 8 and vocab.encode(["<pad>"]) == [UNK]
    assert vocab.decode([PAD, BOS, EOS, UNK], skip_special=False) == list(Vocabulary.SPECIALS)
    ids = vocab.encode(["a", "_UNK", "zebra", "<unk>", "</s>", "d"])
    assert ids == [4, UNK, UNK, UNK, UNK, 7]
    assert vocab.decode(ids) == ["a", "<unk>", "<unk>", "<unk>", "<unk>", "d"]
    assert vocab.decode(torch.tensor([BOS, 5, EOS, PAD])) == ["b"]
    # the table does not depend on document order; max_size counts the specials; min_count
    assert Vocabulary.build(docs[::-1]) == vocab
    assert Vocabulary.build(docs, max_size=6).words == ["a", "b"]
    assert Vocabulary.build(docs, min_count=2).words == ["a", "b"]
    # JSON round trip
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab
    assert Vocabulary.numbered(3).words == ["w0", "w1", "w2"]


def test_vocabulary_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="split it first"):
        Vocabulary.build(["a b c"])
    with pytest.raises(ValueError, match="split it first"):
        Vocabulary.build([["a"]]).encode("a b")
    with pytest.raises(ValueError, match="'a' twice"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(ValueError, match="'_UNK' is reserved"):
        Vocabulary(["_UNK"])
    with pytest.raises(ValueError, match="without spaces, got 'a b'"):
        Vocabulary(["a b"])
    with pytest.raises(ValueError, match=r"max_size must be an integer >= 4 .*got 3"):
        Vocabulary.build([["a"]], max_size=3)
    with pytest.raises(ValueError, match=r"ids must be integers in \[0, 5\), got 5"):
        Vocabulary(["a"]).decode([5])
    with pytest.raises(ValueError, match="special tokens must be"):
        Vocabulary.from_dict({"specials": ["<pad>"], "words": ["a"]})


# ---------------------------------------------------------------------------- files
def test_read_corpus_drops_long_documents_and_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a b c\n\n  \nd e\nf g h i j\nk\n", encoding="utf-8")
    assert read_corpus(path) == [["a", "b", "c"], ["d", "e"], ["f", "g", "h", "i", "j"], ["k"]]
    assert read_corpus(path, max_len=3) == [["a", "b", "c"], ["d", "e"], ["k"]]
    assert read_corpus(path, max_len=3, max_docs=2) == [["a", "b", "c"], ["d", "e"]]
    with pytest.raises(ValueError, match="max_len must be a positive integer, got 0"):
        read_corpus(path, max_len=0)


def test_yahoo_reads_the_folder_named_by_the_environment(tmp_path, monkeypatch):
    folder = tmp_path / "yahoo"
    folder.mkdir()
    (folder / "val.txt").write_text("what is _UNK ?\nhello world\n", encoding="utf-8")
    monkeypatch.setenv("LIDVAE_DATA", str(tmp_path))
    docs = yahoo("val", verify=False)
    assert docs == [["what", "is", "_UNK", "?"], ["hello", "world"]]
    assert Vocabulary.build(docs).encode(docs[0])[2] == UNK
    with pytest.raises(ValueError, match="sha256 mismatch"):
        yahoo("val")  # the fake file does not have the real file's hash
    with pytest.raises(FileNotFoundError) as error:
        yahoo("test")
    message = str(error.value)
    assert str(folder) in message and "LIDVAE_DATA" in message
    assert all(name in message for name in YAHOO_FILES.values())
    with pytest.raises(ValueError, match="split must be one of"):
        yahoo("train")
    assert {"yahoo/val.txt", "yahoo/test.txt"} <= set(SHA256)


@pytest.mark.skipif(
    not os.environ.get("LIDVAE_DATA")
    or not (Path(os.environ.get("LIDVAE_DATA", ".")) / "yahoo" / "test.txt").is_file(),
    reason="LIDVAE_DATA is unset or has no yahoo/ folder",
)
def test_the_real_yahoo_files_verify_and_load():
    for split in YAHOO_FILES:
        docs = yahoo(split, max_docs=300)  # checks the SHA-256 of the whole file
        assert len(docs) == 300 and all(20 <= len(d) <= 200 for d in docs)
    short = yahoo("test", max_len=40, max_docs=50)
    assert all(len(d) <= 40 for d in short)
    vocab = Vocabulary.build(docs, max_size=2000)
    x = pad_batch(short, vocab)
    assert x.shape[0] == 50 and (x == UNK).any()  # _UNK occurs and maps to <unk>


# ---------------------------------------------------------------------------- padding
def test_pad_batch_frames_each_sentence_and_pads_after_it():
    vocab = Vocabulary(["a", "b", "c"])
    x = pad_batch([["a", "b"], [], ["c", "_UNK", "zz"]], vocab)
    expected = [[BOS, 4, 5, EOS, PAD], [BOS, EOS, PAD, PAD, PAD], [BOS, 6, UNK, UNK, EOS]]
    assert x.dtype == torch.int64 and x.tolist() == expected
    assert pad_batch([[4, 5], [6]], vocab).tolist() == [[BOS, 4, 5, EOS], [BOS, 6, EOS, PAD]]
    assert pad_batch([["a"]], vocab, length=3).tolist() == [[BOS, 4, EOS, PAD, PAD]]
    with pytest.raises(ValueError, match="sequence 0 has 2 tokens, more than length=1"):
        pad_batch([["a", "b"]], vocab, length=1)
    with pytest.raises(ValueError, match=r"ids must be ints in \[3, 7\).*got 2"):
        pad_batch([[4, EOS]], vocab)
    with pytest.raises(ValueError, match="sequence 0 is a str"):
        pad_batch(["a b"], vocab)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_padding_has_no_effect_on_the_likelihood_the_posterior_or_the_loss(name):
    """Each sentence alone (no padding) scores as it does in a padded batch."""
    model = tiny(name).double()
    vocab = Vocabulary.numbered(N_WORDS)
    seqs = sentences()
    x = pad_batch(seqs, vocab)
    z = torch.randn(len(seqs), 3, dtype=torch.float64)
    q = model.encode(x)
    batch_ll = model.log_likelihood(x, z)
    longer = torch.cat([x, torch.zeros(len(seqs), 7, dtype=torch.long)], 1)  # extra padding
    torch.testing.assert_close(model.log_likelihood(longer, z), batch_ll)
    for i, seq in enumerate(seqs):
        alone = pad_batch([seq], vocab)
        assert (alone != PAD).all()
        torch.testing.assert_close(model.log_likelihood(alone, z[i : i + 1]), batch_ll[i : i + 1])
        qi = model.encode(alone)
        torch.testing.assert_close(qi.mean[0], q.mean[i])
        torch.testing.assert_close(qi.stddev[0], q.stddev[i])
    # the loss is -log p(x | z) + KL at one reparameterised draw, per sentence
    torch.manual_seed(3)
    out = model.loss(x)
    torch.manual_seed(3)
    z_draw = model.encode(x).rsample()
    torch.testing.assert_close(out["rec"], -model.log_likelihood(x, z_draw).detach())
    torch.testing.assert_close(
        out["kl_term"], torch.distributions.kl_divergence(q, model.prior()).detach()
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([[BOS, 4, PAD, 5, EOS]], "<pad> .* inside the sentence"),
        ([[4, 5, EOS]], "starts with id 4, not <s>"),
        ([[BOS, 4, 5, 6]], r"does not end with </s>"),
        ([[BOS, 4, EOS, 5, EOS]], "<s> or </s> inside the sentence"),
        ([[BOS, V, EOS]], rf"token ids must lie in \[0, {V}\)"),
    ],
)
def test_malformed_token_rows_are_rejected(rows, message):
    model = tiny("svae")
    with pytest.raises(ValueError, match=message):
        model.loss(torch.tensor(rows))
    with pytest.raises(ValueError, match="integer token ids"):
        model.encode(torch.tensor(rows).float())


def test_log_likelihood_broadcasts_samples_and_chunks_rows():
    model = tiny("lidsvae")
    x = corpus(6)
    z = torch.randn(5, 6, 3)
    ll = model.log_likelihood(x, z)
    assert ll.shape == (5, 6)
    torch.testing.assert_close(ll[2], model.log_likelihood(x, z[2]))
    model.max_logits = 1  # one row at a time
    torch.testing.assert_close(model.log_likelihood(x, z), ll)
    with pytest.raises(ValueError, match=r"z must be \(\.\.\., 6, 3\)"):
        model.log_likelihood(x, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., B, 3\)"):
        model.log_likelihood(x, torch.randn(6, 2))


# ---------------------------------------------------------------------------- synthetic corpus
def test_synthetic_corpus_is_fixed_by_the_seed_and_respects_the_lengths():
    state = torch.get_rng_state()
    x, z, model = synthetic_text(30, seed=4, vocab_size=50, min_len=5, max_len=12)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    x2, z2, model2 = synthetic_text(30, seed=4, vocab_size=50, min_len=5, max_len=12)
    assert torch.equal(x, x2) and torch.equal(z, z2)
    assert not torch.equal(synthetic_text(30, seed=5, vocab_size=50)[1], z)
    assert isinstance(model, SequentialVAE) and model.cfg.lstm_layers == 2
    assert model.cfg.latent_dim == 5 and z.shape == (30, 5)
    words = (x != PAD).sum(1) - 2
    assert words.min() >= 5 and words.max() <= 12 and x.shape[1] == words.max() + 2
    assert not ((x == UNK) | ((x == BOS) & (torch.arange(x.shape[1]) > 0))).any()
    ll = model.log_likelihood(x, z)
    assert torch.isfinite(ll).all()
    # the length limits are part of the model: a 2-word sentence is impossible under it
    short = pad_batch([[4, 5]], Vocabulary.numbered(50))
    assert model.log_likelihood(short, z[:1]).item() == -math.inf


def test_the_latents_of_the_synthetic_corpus_matter():
    """Sentences drawn from the same z share more words than sentences from different z, and a
    sentence is far more likely under its own z than under another sentence's."""
    x, z, model = synthetic_text(60, seed=0)
    g = torch.Generator().manual_seed(1)
    again = model.sample(z, generator=g)

    def bag(row):
        return set(row[row > UNK].tolist())

    def overlap(a, b):
        return len(a & b) / len(a | b)

    same = sum(overlap(bag(x[i]), bag(again[i])) for i in range(60)) / 60
    other = sum(overlap(bag(x[i]), bag(again[(i + 1) % 60])) for i in range(60)) / 60
    assert same > 2.5 * other
    with torch.no_grad():
        own = model.log_likelihood(x, z)
        shuffled = model.log_likelihood(x, z.roll(1, 0))
    assert (own - shuffled).mean() > 20  # nats per sentence


# ---------------------------------------------------------------------------- the models
@pytest.mark.parametrize("name", TEXT_MODELS)
@pytest.mark.parametrize("scheme", ["elbo", "beta", "savae", "lagging"])
def test_both_models_train_with_every_scheme(name, scheme):
    model = tiny(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(
        epochs=1,
        batch_size=8,
        scheme=scheme,
        savae_steps=2,
        savae_lr=0.1,
        lagging_max_inner=3,
        progress=False,
    )
    history = Trainer(model, config).fit(corpus(16), corpus(8, seed=1))
    record = history[-1]
    assert all(math.isfinite(record[k]) for k in ("train_loss", "val_loss", "val_mi"))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("decoder.") for k in changed)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_z_conditions_the_decoder(name):
    """Changing z changes log p(x | z) of a fixed sentence, through the LSTM state (the original
    LIDSVAE code never fed z to its LSTM) and through the per-step path as well."""
    model = tiny(name)
    x = corpus(1)
    z1, z2 = torch.randn(2, 1, 3)
    with torch.no_grad():
        assert (model.log_likelihood(x, z1) - model.log_likelihood(x, z2)).abs() > 1e-3
        h1, _ = model.decoder.run(x[:, :-1], z1)
        h2, _ = model.decoder.run(x[:, :-1], z2)
        assert (h1 - h2).abs().amax() > 1e-3  # z reaches the LSTM
        # with the initial state cut off from z, z still enters at every step: as LSTM input
        # (SequentialVAE) or through g1([z, h_i]) (LIDSVAE, whose LSTM then ignores z)
        model.decoder.init_state.weight.zero_()
        h1, _ = model.decoder.run(x[:, :-1], z1)
        h2, _ = model.decoder.run(x[:, :-1], z2)
        if name == "lidsvae":
            torch.testing.assert_close(h1, h2)
        else:
            assert (h1 - h2).abs().amax() > 1e-3
        assert (model.log_likelihood(x, z1) - model.log_likelihood(x, z2)).abs() > 1e-3


def test_lidsvae_distinct_latents_give_distinct_next_word_distributions():
    """For a fixed history h, [z, h] -> logits is injective: random pairs of z give different
    distributions, and [z, h] is recovered from the logits."""
    model = tiny("lidsvae").double()
    g = torch.Generator().manual_seed(0)
    h = torch.rand(1, 12, generator=g, dtype=torch.float64) * 2 - 1
    h = h.expand(64, 12)
    z1 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    z2 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    positions = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        p1 = model.next_token_logits(h, z1, positions).log_softmax(-1)
        p2 = model.next_token_logits(h, z2, positions).log_softmax(-1)
        free1 = model.decoder.logits(h, z1)
    allowed = torch.ones(V, dtype=torch.bool)
    allowed[[PAD, BOS]] = False
    assert torch.isinf(p1[:, ~allowed]).all() and torch.isfinite(p1[:, allowed]).all()
    assert ((p1 - p2)[:, allowed].abs().amax(1) > 1e-6).all()
    back = model.decoder.inverse(free1)
    torch.testing.assert_close(back, torch.cat([z1, h], 1), atol=1e-6, rtol=0)


def test_a_classical_sequence_decoder_can_ignore_z():
    """The collapse LIDSVAE rules out: cut z off (initial state and input) and p(x | z) is flat."""
    model = tiny("svae")
    with torch.no_grad():
        model.decoder.init_state.weight.zero_()
        model.decoder.lstm.weight_ih_l0[:, 8:].zero_()  # the z columns of the input weights
        x = corpus(4)
        torch.testing.assert_close(
            model.log_likelihood(x, torch.randn(4, 3)), model.log_likelihood(x, torch.randn(4, 3))
        )


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_save_load_round_trip_restores_every_parameter(name, tmp_path):
    model = tiny(name)
    model.set_length_limits(2, 9)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = tiny(name, seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert set(fresh.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, msg=key)
    x, z = corpus(5), torch.randn(5, 3)
    torch.testing.assert_close(fresh.log_likelihood(x, z), model.log_likelihood(x, z))
    assert fresh.length_limits.tolist() == [2, 9]


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_collapse_report_and_sampling_run_on_a_tiny_model(name):
    model = tiny(name)
    report = metrics.collapse_report(model, corpus(12), iwae_samples=4)
    assert set(report) == {"au", "kl", "mi", "log_likelihood"}
    assert all(math.isfinite(v) for v in report.values())
    x = model.sample(torch.randn(7, 3), max_len=6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 8) and (x[:, 0] == BOS).all()
    assert torch.isfinite(model.log_likelihood(x, torch.randn(7, 3))).all()  # well-formed rows


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_long_sentences_and_a_large_vocabulary_work(name):
    v = 10_000
    model = tiny(name, data_dim=v, hidden=8)
    g = torch.Generator().manual_seed(0)
    vocab = Vocabulary.numbered(v - len(Vocabulary.SPECIALS))
    x = pad_batch([torch.randint(UNK, v, (n,), generator=g) for n in (40, 25)], vocab)
    assert x.shape == (2, 42)
    out = model.loss(x)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_bad_text_configurations_are_rejected():
    with pytest.raises(ValueError, match=r"latent_dim \+ lstm_hidden \(3 \+ 40 = 43\)"):
        tiny("lidsvae", lstm_hidden=40)
    assert isinstance(tiny("svae", lstm_hidden=40), SequentialVAE)
    with pytest.raises(ValueError, match="must exceed the 4 special tokens, got 4"):
        tiny("svae", data_dim=4)
    with pytest.raises(ValueError, match="embed_dim must be a positive integer, got 0"):
        ModelConfig(data_dim=V, embed_dim=0)
    with pytest.raises(ValueError, match="model must be one of .*'lidsvae'.*got 'lstm'"):
        tiny("lstm")
    assert isinstance(tiny("lidsvae"), LIDSVAE) and LIDSVAE.injective


def test_lidsvae_takes_the_icnn_weight_parametrisation_and_quadratic_start():
    from lidvae_nb.models import ModelConfig, build_model

    cfg = ModelConfig(
        data_dim=30,
        latent_dim=2,
        hidden=8,
        lstm_hidden=6,
        embed_dim=5,
        icnn_weights="projected",
        icnn_alpha=0.01,
        icnn_quadratic_init=0.01,
    )
    model = build_model("lidsvae", cfg)
    for g in (model.decoder.g1, model.decoder.g2):
        assert g.potential_net.weights == "projected"
        assert abs(g.potential_net.quadratic_coefficient().detach().item() - 0.011) < 1e-4
