"""`python -m benchmarks.native_tokenizer --artifact ART [--data-dir D] [--out DIR]`

Parity of the C WordPiece tokenizer (runtime/native/tokenizer.c) with the `tokenizers` library
on the artifact's tokenizer.json, in three configurations (as exported: uncased with accent
stripping; cased: no lowercase, no stripping; uncased keeping accents): every dev row of SST-2,
RTE, MRPC, STS-B and SICK (pairs as pairs, truncated longest first at the artifact's
max_seq_len), adversarial Unicode strings and random code point strings. Invalid UTF-8 must be
refused. Writes DIR/tokenizer_parity.json.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ADVERSARIAL = [
    "Héllo, WORLD! naïve café Ångström façade résumé", "中文字符 and 日本語のテキスト 한국어 텍스트", "emoji 😀👍🏽 👨‍👩‍👧 ✨",
    "zero\u200bwidth\u200djoiner\u2060word\ufeffbom", "rtl \u202eevil\u202c mark \u200f", "tab\there\nnew\rline\x0bvt\x0cff",
    "control\x01\x07\x1f\x7f\x85 chars\ufffd", "[CLS] special [SEP] tokens [MASK][PAD][UNK]x[SEP]y", "İstanbul ΣΑΣ ß ǅ ﬁ Ⅻ",
    "fullwidth ＡＢＣ１２３！", "thai ภาษาไทย devanagari हिन्दी", "combining e\u0301 a\u0308 o\u0302\u0323",
    "math ∑∫√ ≤≥ ±×÷ $5 €3 ¥2 ^_^ `~|", "wide\u3000space\u00a0nbsp\u2028ls\u2029ps", "private \ue000\uf8ff unassigned \u0378",
    "x" * 101, "y" * 100, "supercalifragilisticexpialidocious antidisestablishmentarianism", "...!!!???,,,;;;",
    "don't stop—it's “quoted” «guillemets» …", "a" * 3000, "Ⓐⓑ ① ½ ² ℃ ™ ©", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝", "  leading and trailing  ",
]
BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
          (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x214F), (0x3000, 0x303F),
          (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xF900, 0xFAFF), (0xFE00, 0xFE6F), (0xFF00, 0xFFEF),
          (0x1F300, 0x1F6FF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F), (0x1, 0x1F)]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        s = []
        for _ in range(k):
            lo, hi = rng.choice(BLOCKS)
            s.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.3:
                s.append(" ")
        out.append("".join(s).replace("\0", ""))
    return out


def _variant(tok_json: dict, lowercase: bool, strip) -> dict:
    t = json.loads(json.dumps(tok_json))
    t["normalizer"]["lowercase"], t["normalizer"]["strip_accents"] = lowercase, strip
    return t


def run(artifact: str, data_dir: str | None, random_n: int) -> dict:
    from tokenizers import Tokenizer

    from export.native import write_tokenizer
    from runtime.backends.native import NativeTokenizer
    from runtime.datasets import load_split
    from runtime.manifest import load_manifest
    m = load_manifest(artifact)
    max_len = m.max_seq_len
    base = json.loads(m.read_tokenizer())
    rows = {}
    for task in ("sst2", "rte", "mrpc", "stsb", "sick"):
        try:
            d = load_split(task, "dev", data_dir)
        except (FileNotFoundError, ValueError) as e:
            rows[task] = str(e)
            continue
        rows[task] = list(zip(d.text_a, d.text_b if d.text_b is not None else [None] * len(d.text_a)))
    extra = [(t, None) for t in ADVERSARIAL] + [(a, b) for a, b in zip(ADVERSARIAL, reversed(ADVERSARIAL))] + \
        [(t, None) for t in _random_texts(random_n)]
    result = {"artifact": str(Path(artifact).resolve()), "max_seq_len": max_len, "configs": {}}
    for name, (lower, strip) in {"uncased (as exported)": (base["normalizer"].get("lowercase", True),
                                                             base["normalizer"].get("strip_accents")),
                                 "cased": (False, None), "uncased, accents kept": (True, False)}.items():
        tj = _variant(base, lower, strip)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tokenizer.json").write_text(json.dumps(tj))
            write_tokenizer(Path(tmp), json.dumps(tj).encode())
            ref = Tokenizer.from_str(json.dumps(tj))
            ref.no_padding()
            ref.enable_truncation(max_length=max_len, strategy="longest_first")
            nat = NativeTokenizer(tmp, max_len)
            cfg = {}
            for group, items in list(rows.items()) + [("adversarial + random", extra)]:
                if isinstance(items, str):
                    cfg[group] = {"skipped": items}
                    continue
                bad, examples = 0, []
                for a, b in items:
                    e = ref.encode(a, b) if b is not None else ref.encode(a)
                    ids, tt, _ = nat.encode(a, b)
                    if ids != e.ids or tt != e.type_ids:
                        bad += 1
                        if len(examples) < 5:
                            examples.append({"text_a": a[:200], "text_b": (b or "")[:200], "tokenizers": e.tokens[:40],
                                             "native": [ref.id_to_token(i) for i in ids][:40]})
                cfg[group] = {"rows": len(items), "differ": bad, "examples": examples}
            invalid = [b"\xff\xfe", b"abc\xc3", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong", b"\xf4\x90\x80\x80 big"]
            refused = 0
            for s in invalid:
                try:
                    nat.encode(s)
                except ValueError:
                    refused += 1
            cfg["invalid UTF-8 refused"] = f"{refused}/{len(invalid)}"
            nat.close()
        result["configs"][name] = cfg
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native_tokenizer")
    p.add_argument("--artifact", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--random", type=int, default=2000, help="random code point strings")
    p.add_argument("--out", default="results/native")
    a = p.parse_args(argv)
    res = run(a.artifact, a.data_dir, a.random)
    from .timing import write_result
    path = write_result(a.out, "tokenizer_parity.json", res, "benchmarks.native_tokenizer", argv)
    for name, cfg in res["configs"].items():
        print(name, {g: (v.get("differ"), v.get("rows")) if isinstance(v, dict) else v for g, v in cfg.items()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
