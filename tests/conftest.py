"""Tiny random BERT models (hidden 32, 2 layers, WordPiece vocab built here), tiny task data in
the GLUE/SICK file formats, and a trained + exported tiny artifact shared by the tests."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the a man woman cat dog is are was on in at with and not no plays playing sits sitting runs running "
         "eats food red blue big small happy sad good bad movie film great awful very quite it this that "
         "someone nobody park street house car ball music guitar piano").split()


def write_vocab(path: Path) -> Path:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "'"] + letters + \
            [f"##{c}" for c in letters] + WORDS
    vocab = list(dict.fromkeys(vocab))  # "a" is both a letter and a word: one id each
    path.write_text("\n".join(vocab) + "\n")
    return path


def make_tokenizer(folder: Path):
    from transformers import BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(folder / "vocab.txt").read_text().split()
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def tiny_backbone_dir(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """A random tiny BertModel + tokenizer saved like a hub model (save_pretrained)."""
    import torch
    from transformers import BertConfig, BertModel
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=128, type_vocab_size=2,
                     initializer_range=0.5)  # large init: outputs that differ between inputs
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_family_dir(folder: Path, family: str, layers: int = 2, seed: int = 0) -> Path:
    """A random tiny backbone of another family (same WordPiece tokenizer; the family is the
    architecture, the tokenizer does not matter to these tests)."""
    import torch
    from transformers import AlbertConfig, AlbertModel, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel
    if family == "bert":
        return tiny_backbone_dir(folder, layers, seed)
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), max_position_embeddings=130, initializer_range=0.5, pad_token_id=0)
    if family == "roberta":
        m = RobertaModel(RobertaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                       intermediate_size=37, type_vocab_size=1, **common), add_pooling_layer=False)
    elif family == "albert":
        m = AlbertModel(AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=layers, num_hidden_groups=1,
                                     num_attention_heads=4, intermediate_size=37, type_vocab_size=2, **common),
                        add_pooling_layer=False)
    elif family == "distilbert":
        m = DistilBertModel(DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=37, **common))
    else:
        raise ValueError(family)
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


FAMILIES = ("bert", "roberta", "albert", "distilbert")


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def write_task_data(root: Path, rows: int = 64, seed: int = 0) -> Path:
    """GLUE-format RTE, SST-2, STS-B, MRPC and SemEval SICK files with random sentences whose
    labels follow a keyword (learnable by a tiny model in a few steps, so outputs spread)."""
    rng = random.Random(seed)
    for split, n in (("train", rows), ("dev", rows // 2)):
        d = root / "glue" / "RTE"
        d.mkdir(parents=True, exist_ok=True)
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            neg = rng.random() < 0.5
            b = ("nobody " if neg else "someone ") + _sentence(rng, rng.randint(2, 6))
            lines.append(f"{i}\t{_sentence(rng, rng.randint(3, 12))}\t{b}\t{'not_entailment' if neg else 'entailment'}")
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        d = root / "glue" / "SST-2"
        d.mkdir(parents=True, exist_ok=True)
        lines = ["sentence\tlabel"]
        for _ in range(n):
            y = rng.randint(0, 1)
            lines.append(f"{rng.choice(['great', 'good', 'happy'] if y else ['awful', 'bad', 'sad'])} "
                         f"{_sentence(rng, rng.randint(3, 10))} \t{y}")
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        d = root / "glue" / "STS-B"
        d.mkdir(parents=True, exist_ok=True)
        lines = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        for i in range(n):
            y = rng.uniform(0, 5)
            a = ("red " if y > 2.5 else "blue ") + _sentence(rng, 5)
            lines.append(f"{i}\tmain\tx\t2012\t{i:04d}\tnone\tnone\t{a}\t{_sentence(rng, 6)}\t{y:.3f}")
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        d = root / "glue" / "MRPC"
        d.mkdir(parents=True, exist_ok=True)
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            lines.append(f"{rng.randint(0, 1)}\t{i}\t{i + 1000}\t{_sentence(rng, 6)}\t{_sentence(rng, 5)}")
        (d / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    d = root / "sick"
    d.mkdir(parents=True, exist_ok=True)
    for fname, n in (("SICK_train.txt", rows), ("SICK_trial.txt", rows // 2)):
        lines = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
        for i in range(n):
            lines.append(f"{i}\t{_sentence(rng, 6)}\t{_sentence(rng, 5)}\t{rng.uniform(1, 5):.1f}\tNEUTRAL")
        (d / fname).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_backbone_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session", params=FAMILIES)
def family_dir(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, tiny_family_dir(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_task_data(tmp_path_factory.mktemp("data"))


def _train(tiny_dir: Path, data_dir: Path, out: Path, task: str, lte: bool, strategy: str = "alternating",
           pooling: str = "cls") -> Path:
    from train.finetune import TrainConfig, finetune
    finetune(TrainConfig(task=task, out=str(out), model=str(tiny_dir), data_dir=str(data_dir), strategy=strategy,
                         lte=lte, pooling=pooling, epochs=4, batch_size=8, lr=3e-3, max_seq_len=32, seed=0), progress=False)
    return out


@pytest.fixture(scope="session")
def rte_ckpt(tiny_dir, data_dir, tmp_path_factory) -> Path:
    return _train(tiny_dir, data_dir, tmp_path_factory.mktemp("ck") / "rte", "rte", lte=True)


@pytest.fixture(scope="session")
def stsb_ckpt(tiny_dir, data_dir, tmp_path_factory) -> Path:
    return _train(tiny_dir, data_dir, tmp_path_factory.mktemp("ck") / "stsb", "stsb", lte=True, strategy="joint")


@pytest.fixture(scope="session")
def sst2_ckpt(tiny_dir, data_dir, tmp_path_factory) -> Path:
    """Single-text task, mean pooling, no LTE, two-stage."""
    return _train(tiny_dir, data_dir, tmp_path_factory.mktemp("ck") / "sst2", "sst2", lte=False,
                  strategy="two_stage", pooling="mean")


@pytest.fixture(scope="session")
def rte_art(rte_ckpt, tmp_path_factory) -> Path:
    from export.build import ExportConfig, build
    return build(ExportConfig(str(rte_ckpt), str(tmp_path_factory.mktemp("art") / "rte")))


@pytest.fixture(scope="session")
def stsb_art(stsb_ckpt, tmp_path_factory) -> Path:
    from export.build import ExportConfig, build
    return build(ExportConfig(str(stsb_ckpt), str(tmp_path_factory.mktemp("art") / "stsb")))
