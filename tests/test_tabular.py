"""The non-image path: token data sources (tabular_csv, bundled tables, criteo, text_csv) and their bad inputs, the
BERT models' contract, and every registered method on a tiny tabular BERT pair (generated from the registry)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch

from kdlab.config import build_config
from kdlab.data import DataError, load_dataset, make_loader
from kdlab.data.tabular import CLS_ID
from kdlab.methods import METHODS
from kdlab.models import MODELS, TapError, create, model_names

# --------------------------------------------------------------------------------------------------- helpers


def data_cfg(*overrides: str):
    return build_config({}, list(overrides)).data


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


@pytest.fixture
def table(tmp_path):
    rs = np.random.RandomState(0)
    rows = []
    for i in range(60):
        label = "yes" if i % 3 == 0 else "no"
        colour = ["red", "green", "blue", "rare"][i % 4] if i != 7 else "once"
        rows.append([f"{rs.normal(i % 3, 1):.3f}", "" if i % 10 == 5 else str(i % 7), colour, label])
    return write_csv(tmp_path / "t.csv", ["x1", "x2", "colour", "target"], rows)


# ------------------------------------------------------------------------------------------------ tabular_csv


def test_tabular_csv_tokens_roles_and_split(table, caplog):
    cfg = data_cfg(
        "data.name=tabular_csv",
        f"data.root={table.parent}",
        "data.train_files=[t.csv]",
        "data.tabular.label_column=target",
        "data.tabular.min_count=2",
    )
    with caplog.at_level(logging.INFO, "kdlab"):
        s = load_dataset(cfg)
    assert "inferred numeric columns ['x1', 'x2'] and categorical columns ['colour']" in caplog.text
    assert s.classes == ("no", "yes") and s.num_classes == 2 and s.fields == ("x1", "x2", "colour")
    assert len(s.train) + len(s.test) == 60 and len(s.test) == 12  # test_fraction 0.2, stratified
    ids = torch.from_numpy(np.concatenate([s.train.ids, s.test.ids]))
    assert ids.shape[1] == 4 and bool((ids[:, 0] == CLS_ID).all()) and int(ids.max()) < s.vocab_size
    # per-field id ranges never overlap: equal raw values in different fields are different tokens
    ranges = [set(ids[:, j].tolist()) for j in range(1, 4)]
    assert not (ranges[0] & ranges[1]) and not (ranges[1] & ranges[2]) and not (ranges[0] & ranges[2])


def test_unseen_and_rare_categories_map_to_the_fields_oov_id(tmp_path, table):
    test = write_csv(
        tmp_path / "test.csv",
        ["x1", "x2", "colour", "target"],
        [["0.1", "3", "purple", "no"], ["0.2", "", "red", "yes"]],
    )
    cfg = data_cfg(
        "data.name=tabular_csv",
        f"data.root={tmp_path}",
        "data.train_files=[t.csv]",
        f"data.test_file={test.name}",
        "data.tabular.label_column=target",
        "data.tabular.min_count=2",
        "data.tabular.categorical_columns=[colour]",
        "data.tabular.numeric_columns=[x1, x2]",
    )
    s = load_dataset(cfg)
    assert len(s.train) == 60 and len(s.test) == 2
    colour = s.train.ids[:, 3]
    oov = int(colour[7])  # 'once' is below min_count
    assert int(s.test.ids[0, 3]) == oov  # 'purple' was never seen in training: the same OOV id, no error
    frequent = {int(v) for i, v in enumerate(colour) if i != 7}
    assert oov not in frequent and len(frequent) == 4  # red, green, blue, rare keep their own ids
    assert int(s.test.ids[1, 2]) == int(s.train.ids[5, 2])  # an empty x2 is the field's "missing" id
    assert int(s.test.ids[1, 2]) not in {int(v) for i, v in enumerate(s.train.ids[:, 2]) if i % 10 != 5}


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("a,b\n1,2\n", [], "has no label column 'label'"),
        ("a,label\n1,0\nx,1\n", ["data.tabular.numeric_columns=[a]"], "column 'a' is numeric but line 3 holds 'x'"),
        ("", [], "is empty"),
        ("a,label\n", [], "has a header but no data rows"),
        ("a,label\n1,0\n2\n", [], "line 3 has 1 fields but the header has 2"),
        ("a,label\n1,0\n2,1\n3,2\n", ["data.tabular.classes=['0', '1']"], "label '2' (row 3) is not in the class set"),
    ],
)
def test_tabular_bad_inputs_are_clear_errors(tmp_path, content, extra, message):
    (tmp_path / "bad.csv").write_text(content)
    cfg = data_cfg("data.name=tabular_csv", f"data.root={tmp_path}", "data.train_files=[bad.csv]", *extra)
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset(cfg)


def test_test_label_outside_the_training_classes_is_an_error(tmp_path, table):
    write_csv(tmp_path / "test.csv", ["x1", "x2", "colour", "target"], [["0.1", "3", "red", "maybe"]])
    cfg = data_cfg(
        "data.name=tabular_csv",
        f"data.root={tmp_path}",
        "data.train_files=[t.csv]",
        "data.test_file=test.csv",
        "data.tabular.label_column=target",
    )
    with pytest.raises(DataError, match=r"label 'maybe' \(row 1\) is not in the class set \['no', 'yes'\]"):
        load_dataset(cfg)


@pytest.mark.parametrize(("name", "rows", "fields", "k"), [("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3)])
def test_bundled_tables(name, rows, fields, k):
    s = load_dataset(data_cfg(f"data.name={name}"))
    assert len(s.train) + len(s.test) == rows and s.num_classes == k and s.seq_len == fields + 1
    assert s.metrics == ("top1", "auc", "nll", "ece")


def test_loader_batches_are_seeded_sharded_and_carry_ids(tmp_path):
    cfg = data_cfg("data.name=wine", "data.batch_size=16", "data.val_fraction=0.1")
    s = load_dataset(cfg)
    loader = make_loader(s, cfg, torch.device("cpu"), seed=3)
    a = list(loader.train_batches(0))
    b = list(loader.train_batches(0, start_step=2))
    assert torch.equal(a[2].x, b[0].x) and torch.equal(a[2].index, b[0].index)
    assert a[0].x.dtype == torch.int64 and a[0].x.shape == (16, 14) and loader.val is not None
    loader.shard(1, 2)
    half = next(loader.train_batches(0))
    assert torch.equal(half.x, a[0].x[8:])
    with pytest.raises(ValueError, match="'strong'"):
        loader.views = ("x", "strong")


# -------------------------------------------------------------------------------------------------- criteo


def criteo_cfg(root, *extra):
    return data_cfg("data.name=criteo", f"data.root={root}", "data.tabular.min_count=2", *extra)


def test_criteo_preprocessing_split_cache_and_malformed_lines(tmp_path, caplog):
    from kdlab.data.sources.criteo import write_criteo_format

    src = write_criteo_format(tmp_path / "train.txt", 1500, seed=1, malformed=4)
    with caplog.at_level(logging.WARNING, "kdlab"):
        s = load_dataset(criteo_cfg(tmp_path))
    n = len(s.train) + len(s.val) + len(s.test)
    assert n == 1496 and 0.75 < len(s.train) / n < 0.85 and len(s.val) > 100 and len(s.test) > 100
    assert "4 malformed line(s) skipped" in caplog.text and "39 tab-separated fields, expected 40" in caplog.text
    assert isinstance(s.train.ids, np.memmap) and s.train.ids.shape[1] == 40 and s.seq_len == 40
    caches = list((tmp_path / ".kdlab_cache").glob("criteo-*"))
    assert len(caches) == 1
    meta = json.loads((caches[0] / "meta.json").read_text())
    assert meta["bad_lines"] == 4 and meta["rows"]["train"] == len(s.train)
    stamp = (caches[0] / "train_ids.npy").stat().st_mtime_ns
    again = load_dataset(criteo_cfg(tmp_path))  # cached: not rebuilt
    assert (caches[0] / "train_ids.npy").stat().st_mtime_ns == stamp and np.array_equal(again.test.ids, s.test.ids)
    # another setting rebuilds (and replaces) the cache; so does a changed source
    other = load_dataset(criteo_cfg(tmp_path, "data.tabular.min_count=5"))
    assert other.vocab_size < s.vocab_size
    assert [p.name for p in (tmp_path / ".kdlab_cache").glob("criteo-*")] != [caches[0].name]
    write_criteo_format(src, 1200, seed=2)
    assert len(load_dataset(criteo_cfg(tmp_path, "data.tabular.min_count=5")).train) < len(other.train)
    assert len(list((tmp_path / ".kdlab_cache").glob("criteo-*"))) == 1
    limited = load_dataset(criteo_cfg(tmp_path, "data.tabular.min_count=5", "data.tabular.train_limit=100"))
    assert len(limited.train) == 100


def test_criteo_split_does_not_depend_on_chunks(tmp_path):
    from kdlab.data.sources import criteo

    criteo.write_criteo_format(tmp_path / "train.txt", 700, seed=3)
    cfg = criteo_cfg(tmp_path)
    criteo.preprocess(tmp_path / "train.txt", tmp_path / "a", cfg, chunk_lines=10_000)
    criteo.preprocess(tmp_path / "train.txt", tmp_path / "b", cfg, chunk_lines=64)
    for part in ("train_ids", "val_ids", "test_y"):
        assert np.array_equal(np.load(tmp_path / "a" / f"{part}.npy"), np.load(tmp_path / "b" / f"{part}.npy"))


def test_criteo_bad_inputs(tmp_path):
    from kdlab.data.sources.criteo import bucket

    assert [bucket(v) for v in ("", "-1", "0", "2", "3", "100")] == ["", "-1", "0", "2", "1", "21"]
    with pytest.raises(DataError, match=r"train\.txt does not exist"):
        load_dataset(criteo_cfg(tmp_path))
    (tmp_path / "train.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(criteo_cfg(tmp_path))
    good = "\t".join(["1", *["3"] * 13, *["abcd0123"] * 26])
    (tmp_path / "train.txt").write_text(good + "\n" + "0\t1\t2\n" + good + "\n")
    with pytest.raises(DataError, match=r"line 2: 3 tab-separated fields, expected 40.*bad_lines=skip"):
        load_dataset(criteo_cfg(tmp_path, "data.tabular.bad_lines=fail"))
    (tmp_path / "train.txt").write_text("0\t1\t2\n")
    with pytest.raises(DataError, match="no well-formed line"):
        load_dataset(criteo_cfg(tmp_path))


# ------------------------------------------------------------------------------------------------ text_csv


@pytest.fixture
def tokenizer_dir(tmp_path):
    from transformers import BertTokenizerFast

    words = "the a movie film was good bad great awful plot actors fine".split()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    out = tmp_path / "tok"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)
    return out


def test_text_csv_jsonl_pairs_and_per_batch_padding(tmp_path, tokenizer_dir):
    texts = ["the movie was good", "awful", "a great great film with fine actors", "bad plot"] * 5
    labels = ["pos", "neg", "pos", "neg"] * 5
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "other": "the plot", "label": y}) for t, y in zip(texts, labels)) + "\n"
    )
    cfg = data_cfg(
        "data.name=text_csv",
        f"data.root={tmp_path}",
        "data.train_files=[train.jsonl]",
        f"data.tabular.tokenizer={tokenizer_dir}",
        "data.tabular.text_pair_column=other",
        "data.tabular.max_length=12",
        "data.batch_size=4",
        "data.tabular.test_fraction=0.2",
    )
    s = load_dataset(cfg)
    assert s.classes == ("neg", "pos") and s.seq_len == 12 and len(s.train) == 16
    loader = make_loader(s, cfg, torch.device("cpu"), seed=0)
    batch = next(loader.eval_batches("train"))
    assert set(batch.x) == {"input_ids", "attention_mask", "token_type_ids"}
    width = batch.x["input_ids"].shape[1]
    assert width == int(batch.x["attention_mask"].sum(1).max()) <= 12  # padded to the batch's longest text
    assert int(batch.x["token_type_ids"].max()) == 1
    model = create("bert4_tiny", num_classes=2, **s.model_kwargs)
    assert model(batch.x).shape == (batch.size, 2)


def test_text_csv_bad_inputs(tmp_path, tokenizer_dir):
    write_csv(tmp_path / "a.csv", ["sentence", "label"], [["good", "1"], ["bad", "0"]])
    base = ["data.name=text_csv", f"data.root={tmp_path}", "data.train_files=[a.csv]"]
    with pytest.raises(DataError, match="has no column 'text'"):
        load_dataset(data_cfg(*base, f"data.tabular.tokenizer={tokenizer_dir}"))
    with pytest.raises(DataError, match=r"tokenizer folder .* does not exist"):
        load_dataset(data_cfg(*base, "data.tabular.text_column=sentence", f"data.tabular.tokenizer={tmp_path}/no"))


# ------------------------------------------------------------------------------------------------- models

TOKEN_MODELS = [n for n in model_names() if MODELS.meta(n).get("inputs") == "tokens"]


def test_bert_models_are_registered_with_documented_widths():
    from kdlab.models.bert import WIDTHS

    assert {"bert12", "bert4"} <= set(TOKEN_MODELS)
    m = create("bert4", num_classes=2, vocab_size=100, max_positions=40)
    c = m.bert.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == WIDTHS["bert4"]


@pytest.mark.parametrize("name", [n for n in TOKEN_MODELS if n.endswith("_tiny")])
def test_token_model_contract(name):
    torch.manual_seed(0)
    model = create(name, num_classes=3, vocab_size=50, max_positions=9).eval()
    x = torch.randint(0, 50, (4, 9))
    with torch.no_grad():
        logits, taps = model.forward_taps(x, model.tap_names())
        assert logits.shape == (4, 3) and torch.equal(model(x), logits)
        assert torch.equal(model.classifier(taps["pool"]), logits)
        h = model.bert.config.hidden_size
        for t in model.tap_info():
            assert taps[t.name].shape == ((4, h) if t.name == "pool" else (4, 9, h)), t
        # the dict form with a full mask is the same forward
        same = model({"input_ids": x, "attention_mask": torch.ones_like(x)})
        assert torch.equal(same, logits)
    with pytest.raises(TapError, match=r"sequence model \(BERT\): it has no image feature maps such as stage3"):
        model.forward_taps(x, ["stage3"])


def test_hf_checkpoint_folder_initialises_a_model(tmp_path):
    src = create("bert4_tiny", num_classes=2, vocab_size=60, max_positions=16)
    src.bert.save_pretrained(tmp_path / "hf")
    model = create(f"hf:{tmp_path / 'hf'}", num_classes=3)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, src.bert.embeddings.word_embeddings.weight)
    resized = create(f"hf:{tmp_path / 'hf'}", num_classes=3, vocab_size=80)
    assert resized.bert.embeddings.word_embeddings.weight.shape[0] == 80
    with pytest.raises(ValueError, match="not a local Hugging Face checkpoint folder"):
        create(f"hf:{tmp_path / 'nothing'}", num_classes=2)


def test_image_model_on_tokens_and_bert_on_images_are_refused(tmp_path):
    from kdlab.config import ConfigError
    from kdlab.train.build import build_run

    with pytest.raises(ConfigError, match="model 'resnet8' does not take tokens, but dataset 'wine' yields tokens"):
        build_run(build_config({}, ["data.name=wine", "model.student=resnet8", "train.device=cpu"]))
    with pytest.raises(ConfigError, match="model 'bert4_tiny' does not take images"):
        build_run(build_config({}, ["data.name=digits", "model.student=bert4_tiny", "train.device=cpu"]))


# ---------------------------------------------------------------------------------- methods (from the registry)


def _method_overrides(tmp_path, name):
    return [
        f"method.name={name}",
        "data.name=breast_cancer",
        "data.tabular.train_limit=64",
        "data.batch_size=16",
        "data.eval_batch_size=128",
        "model.student=bert4_tiny",
        "model.teachers.0.name=bert4_tiny",
        "train.epochs=1",
        "train.max_steps=1",
        f"train.run_dir={tmp_path}",
        "train.device=cpu",
        "train.threads=1",
        "log.progress=off",
    ]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_on_a_tabular_bert_pair_or_is_refused_at_build(tmp_path, name):
    """Logit and fusion methods (and those reading only 'pool') take one step; methods that need image feature maps
    or image views are refused when the run is built, with a message that says why."""
    from kdlab.config import ConfigError
    from kdlab.train.trainer import Trainer

    cfg = build_config({}, _method_overrides(tmp_path, name))
    try:
        trainer = Trainer(cfg)
    except (TapError, ConfigError) as err:
        msg = str(err)
        assert ("sequence model" in msg and "image feature maps" in msg) or "image augmentations" in msg, msg
        return
    summary = trainer.fit()
    assert summary["steps"] == 1 and {"top1", "auc", "nll", "ece"} <= set(summary["last"])


def test_logit_and_fusion_methods_are_not_refused(tmp_path):
    """The issue's list must train (the contract test above would also accept a refusal)."""
    from kdlab.train.trainer import Trainer

    for name in ("ce", "kd", "dkd", "dist", "tekap", "anl_kd", "ada_kd", "wls_kd", "rw_kd", "tgeo_kd"):
        cfg = build_config({}, [*_method_overrides(tmp_path, name), f"train.name={name}"])
        assert Trainer(cfg).fit()["steps"] == 1, name


def test_select_by_and_metrics_are_checked_against_the_run():
    from kdlab.config import ConfigError
    from kdlab.train.trainer import run_metrics

    wine = load_dataset(data_cfg("data.name=wine"))
    assert run_metrics(build_config({}, ["train.select_by=nll"]), wine) == ("top1", "auc", "nll", "ece")
    digits = load_dataset(data_cfg("data.name=digits"))
    assert run_metrics(build_config({}, []), digits) == ("top1", "top5")
    with pytest.raises(ConfigError, match=r"train.select_by='auc' is not among the run's metrics \['top1', 'top5'\]"):
        run_metrics(build_config({}, ["train.select_by=auc"]), digits)
    with pytest.raises(ConfigError, match="unknown metric 'acu' \\(did you mean 'auc'\\?\\)"):
        run_metrics(build_config({}, ["train.metrics=[top1, acu]"]), digits)
